"""Tokenizers from GGUF files: the HF ``tokenizers`` Tokenizer, chat template and special tokens that a GGUF
file's metadata (llama.cpp's ``tokenizer.*`` keys, read with the ``gguf`` package) describes.

The Tokenizer is the one ``transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)`` builds, id for
id:

* ``tokenizer.ggml.model = 'gpt2'`` (byte-level BPE) is supported. The vocabulary is ``tokenizer.ggml.tokens``
  (a token written with characters outside GPT-2's byte alphabet is respelled from its UTF-8 bytes), the merges
  are ``tokenizer.ggml.merges``. Tokens of type CONTROL become special added tokens (only those spelled in the
  byte alphabet: any other is a mislabelled byte-level token), tokens of type USER_DEFINED become plain added
  tokens (matched whole in text), and the bos/eos/unk/padding tokens the file names are special tokens.
  ``tokenizer.ggml.add_bos_token`` / ``add_eos_token`` go into the post-processor (used only when encoding
  with ``add_special_tokens=True``). ``add_space_prefix`` does not apply to byte-level BPE (neither llama.cpp
  nor transformers uses it there).
* ``tokenizer.ggml.pre`` picks the split before BPE (:data:`PRE_TOKENIZER_SPLITS`): GPT-2's own split for
  ``'default'``, ``'gpt2'``, ``'gpt-2'`` and ``'smollm'``, the Llama-3 regex for ``'llama-bpe'`` and its
  aliases, the Qwen2 regex for ``'qwen2'``. Any other value is refused rather than guessed.
* SentencePiece (``'llama'``) and the other tokenizer models are refused with a ValueError naming the file,
  the key and the value.

Two deliberate differences from transformers, neither of which shows on SmolLM2's file:

* For ``'smollm'`` llama.cpp (and SmolLM2's own tokenizer.json) split digits off before GPT-2's split, which
  transformers does not; we follow transformers. The ids differ only where a run of two or more whitespace
  characters precedes a digit, e.g. ``"a  1"``: transformers ``a, Ġ, Ġ, 1`` (ours), llama.cpp ``a, ĠĠ, 1``.
* transformers' GPT-2 class adds a token ``<|endoftext|>`` to a vocabulary that lacks one (its default
  special token), an id past the model's embedding; we add nothing the file does not name.

Reading a GGUF file's metadata takes seconds (every token is a field part), so it is read once per file
version (path, size and modification time) and shared.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

_K = gguf.Keys.Tokenizer
GGUF_MAGIC = b"GGUF"
BYTE_LEVEL_MODEL = "gpt2"
SPECIAL_TOKEN_KEYS: dict[str, str] = {"bos_token": _K.BOS_ID, "eos_token": _K.EOS_ID, "unk_token": _K.UNK_ID,
                                      "pad_token": _K.PAD_ID}
"""The special tokens a GGUF file names, with the metadata key holding each one's id."""

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS: dict[str, str | None] = {
    # None: the byte-level pre-tokenizer's own GPT-2 split (contractions, letters, numbers, other, spaces).
    "default": None, "gpt2": None, "gpt-2": None, "smollm": None,
    "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
"""``tokenizer.ggml.pre`` values this module builds, and the regex each one splits text with before BPE."""


def tokenizer_from_gguf(path: str | os.PathLike) -> Tokenizer:
    """Builds the HF ``tokenizers.Tokenizer`` that the GGUF file at ``path`` describes (see the module docstring).

    Returns:
        A new Tokenizer (the caller may change it).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a GGUF file, a tokenizer key missing or malformed, or a tokenizer model or
            pre-tokenizer this module does not build (the message names the file, the key and the value).
    """
    meta = _metadata(path)
    model = meta.get(_K.MODEL)
    if model != BYTE_LEVEL_MODEL:
        hint = (" (SentencePiece; give the model's tokenizer.json as 'hf:PATH' instead)" if model == "llama"
                else "")
        raise ValueError(f"{path}: tokenizer model {_K.MODEL} = {model!r} is not supported{hint}; supported: "
                         f"{BYTE_LEVEL_MODEL!r} (byte-level BPE)")
    pre = meta.get(_K.PRE, "default")
    if pre not in PRE_TOKENIZER_SPLITS:
        raise ValueError(f"{path}: pre-tokenizer {_K.PRE} = {pre!r} is not supported; supported: "
                         f"{', '.join(sorted(PRE_TOKENIZER_SPLITS))}")
    tokens = _required(meta, _K.LIST, path)
    types = meta.get(_K.TOKEN_TYPE) or [int(gguf.TokenType.NORMAL)] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(f"{path}: {_K.TOKEN_TYPE} has {len(types)} entries for {len(tokens)} tokens in {_K.LIST}")
    spelling = byte_spelling()
    alphabet = set(spelling.values())
    spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")) for t in tokens]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(spelled)}, merges=_merges(meta, path),
                               dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS[pre]
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                              use_regex=False)])
    tok.decoder = decoders.ByteLevel()

    control = [t for t, kind in zip(tokens, types) if kind == gguf.TokenType.CONTROL and set(t) <= alphabet]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    vocab = tok.get_vocab()
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == gguf.TokenType.USER_DEFINED and t in vocab])
    added = {t.content for t in tok.get_added_tokens_decoder().values()}
    named = special_tokens_from_gguf(path)
    missing = [named[k] for k in SPECIAL_TOKEN_KEYS if named[k] is not None and named[k] not in added]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(missing)])
    tok.post_processor = _post_processor(named, bool(meta.get(_K.ADD_BOS, False)), bool(meta.get(_K.ADD_EOS, False)))
    return tok


def is_gguf_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def chat_template_from_gguf(path: str | os.PathLike) -> str | None:
    """The file's default chat template (``tokenizer.chat_template``), or None when it has none.

    Raises:
        FileNotFoundError, ValueError: as :func:`tokenizer_from_gguf`.
    """
    template = _metadata(path).get(_K.CHAT_TEMPLATE)
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{path}: {_K.CHAT_TEMPLATE} must be a string, got {type(template).__name__}")
    return template


def special_tokens_from_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """The special tokens the file names: ``{'bos_token', 'bos_token_id', 'eos_token', 'eos_token_id',
    'unk_token', 'unk_token_id', 'pad_token', 'pad_token_id'}``; a token the file does not name is None (string
    and id).

    Raises:
        FileNotFoundError: no file. ValueError: not a GGUF file, or an id outside ``tokenizer.ggml.tokens``.
    """
    meta = _metadata(path)
    tokens = _required(meta, _K.LIST, path)
    out: dict[str, Any] = {}
    for name, key in SPECIAL_TOKEN_KEYS.items():
        token_id = meta.get(key)
        if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < len(tokens)):
            raise ValueError(f"{path}: {key} = {token_id!r} is not an id of the {len(tokens)} tokens in {_K.LIST}")
        out[name] = None if token_id is None else tokens[token_id]
        out[f"{name}_id"] = token_id
    return out


def tokenizer_config_from_gguf(path: str | os.PathLike) -> dict[str, Any]:
    """What transformers' ``tokenizer_config.json`` would say for the file: the bos/eos/unk/pad token strings
    (None when not named), ``chat_template`` (None when absent), ``add_bos_token`` and ``add_eos_token``.

    Raises:
        FileNotFoundError, ValueError: as :func:`special_tokens_from_gguf`.
    """
    meta = _metadata(path)
    named = special_tokens_from_gguf(path)
    config: dict[str, Any] = {name: named[name] for name in SPECIAL_TOKEN_KEYS}
    config["chat_template"] = chat_template_from_gguf(path)
    config["add_bos_token"] = bool(meta.get(_K.ADD_BOS, False))
    config["add_eos_token"] = bool(meta.get(_K.ADD_EOS, False))
    return config


@functools.lru_cache(maxsize=None)
def byte_spelling() -> dict[int, str]:
    """GPT-2's byte alphabet: the printable character each of the 256 bytes is written as in a byte-level BPE
    vocabulary. Printable Latin-1 bytes stand for themselves; the others (controls, space, DEL, NBSP, soft
    hyphen) take the characters from U+0100 on, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in kept}
    for n, b in enumerate(b for b in range(256) if b not in spelling):
        spelling[b] = chr(256 + n)
    return spelling


def _post_processor(named: dict[str, Any], add_bos: bool, add_eos: bool) -> processors.TemplateProcessing:
    """The bos/eos template that ``encode(..., add_special_tokens=True)`` applies (no-op when neither is added)."""
    bos, eos = named["bos_token"], named["eos_token"]
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    special = ([(bos, named["bos_token_id"])] if add_bos else []) + ([(eos, named["eos_token_id"])] if add_eos else [])
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _merges(meta: dict[str, Any], path) -> list[tuple[str, str]]:
    merges = []
    for n, merge in enumerate(_required(meta, _K.MERGES, path)):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}: {_K.MERGES}[{n}] = {merge!r} is not two tokens separated by one space")
        merges.append((parts[0], parts[1]))
    return merges


def _required(meta: dict[str, Any], key: str, path) -> Any:
    if key not in meta:
        raise ValueError(f"{path}: GGUF key {key} is missing; the file has no complete tokenizer")
    return meta[key]


def _metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``tokenizer.*`` metadata of the GGUF file at ``path`` (shared: do not change it)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path} not found")
    stat = os.stat(path)
    return _read_metadata(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_metadata(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    del size, mtime_ns  # part of the cache key only: a rewritten file is read again
    if not is_gguf_file(path):
        raise ValueError(f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as e:
        raise ValueError(f"{path}: cannot read the GGUF file ({e})") from e
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}

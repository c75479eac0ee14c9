"""Vocabularies by name: :func:`get_vocabulary` (the gin configurable) and :func:`vocabulary_size`.

The names are listed in :mod:`textbooks.vocab`. Each vocabulary is built once per process and shared.
"""

from __future__ import annotations

import os
import threading

import gin
import seqio

from textbooks import data_packages
from textbooks.vocab import VOCABULARY_NAMES, VOCABULARY_SIZES
from textbooks.vocab.gguf_tokenizer import is_gguf_file
from textbooks.vocab.hf_tokenizer import TOKENIZER_FILE, TokenizerVocabulary
from textbooks.vocab.phi import PhiVocabulary
from textbooks.vocab.spm import sentencepiece_vocabulary, spm8k_vocabulary

_cache: dict[str, seqio.Vocabulary] = {}
_lock = threading.Lock()


def _make(name: str) -> seqio.Vocabulary:
    if name == "phi":
        return PhiVocabulary()
    if name == "spm8k":
        return spm8k_vocabulary()
    if name == "byte":
        return seqio.ByteVocabulary()
    if name.startswith("spm:"):
        return sentencepiece_vocabulary(name[len("spm:"):])
    if name.startswith("hf:"):
        return TokenizerVocabulary(_tokenizer_json(name[len("hf:"):], name))
    if name.startswith("gguf:"):
        return TokenizerVocabulary(_gguf_file(name[len("gguf:"):], name))
    raise ValueError(f"unknown vocabulary {name!r}; known names: {', '.join(VOCABULARY_NAMES)}; give one of "
                     f"them, or 'spm:/path/to/model.model' for a SentencePiece model file")


def _tokenizer_json(path: str, name: str) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, TOKENIZER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary {name!r}: {path} not found (give a {TOKENIZER_FILE} file or a "
                                f"folder holding one)")
    if is_gguf_file(path):
        raise ValueError(f"vocabulary {name!r}: {path} is a GGUF file; name it 'gguf:{path}'")
    return path


def _gguf_file(path: str, name: str) -> str:
    path = data_packages.resolve_checkpoint(path)  # 'gguf:smollm2-135m-instruct': a registered file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary {name!r}: GGUF file {path} not found")
    if not is_gguf_file(path):
        raise ValueError(f"vocabulary {name!r}: {path} is not a GGUF file; for a {TOKENIZER_FILE} name it "
                         f"'hf:{path}'")
    return path


@gin.configurable
def get_vocabulary(name: str = "phi") -> seqio.Vocabulary:
    """Returns the seqio Vocabulary called ``name`` (one shared instance per name).

    Args:
        name: ``'phi'``, ``'spm8k'``, ``'byte'``, ``'spm:PATH'``, ``'hf:PATH'`` (a tokenizer.json file or a
            folder holding one) or ``'gguf:PATH'`` (a GGUF file).

    Returns:
        A ``seqio.Vocabulary``.

    Raises:
        ValueError: unknown name (the message lists the known ones), or a tokenizer file that cannot be used.
        FileNotFoundError: a model or tokenizer file is missing (the message names the path).
    """
    with _lock:
        if name not in _cache:
            _cache[name] = _make(name)
        return _cache[name]


def vocabulary_size(name: str) -> int:
    """Number of ids of vocabulary ``name``: a built-in one's without building it, a file's by loading it.

    Raises:
        ValueError: unknown name. FileNotFoundError: a missing model file.
    """
    if name in VOCABULARY_SIZES:
        return VOCABULARY_SIZES[name]
    return int(get_vocabulary(name).vocab_size)

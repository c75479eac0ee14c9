"""Vocabularies by name: :func:`get_vocabulary` (the gin configurable) and :func:`vocabulary_size`.

The names are listed in :mod:`textbooks.vocab`. Each vocabulary is built once per process and shared.
"""

from __future__ import annotations

import threading

import gin
import seqio

from textbooks.vocab import VOCABULARY_NAMES, VOCABULARY_SIZES
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
    raise ValueError(f"unknown vocabulary {name!r}; known names: {', '.join(VOCABULARY_NAMES)}; give one of "
                     f"them, or 'spm:/path/to/model.model' for a SentencePiece model file")


@gin.configurable
def get_vocabulary(name: str = "phi") -> seqio.Vocabulary:
    """Returns the seqio Vocabulary called ``name`` (one shared instance per name).

    Args:
        name: ``'phi'``, ``'spm8k'``, ``'byte'`` or ``'spm:PATH'``.

    Returns:
        A ``seqio.Vocabulary``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
        FileNotFoundError: a model file is missing.
    """
    with _lock:
        if name not in _cache:
            _cache[name] = _make(name)
        return _cache[name]


def vocabulary_size(name: str) -> int:
    """Number of ids of vocabulary ``name``: a built-in one's without building it, ``'spm:PATH'``'s by loading it.

    Raises:
        ValueError: unknown name. FileNotFoundError: a missing model file.
    """
    if name in VOCABULARY_SIZES:
        return VOCABULARY_SIZES[name]
    return int(get_vocabulary(name).vocab_size)

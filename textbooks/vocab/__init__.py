"""Vocabularies by name, as seqio Vocabularies that work in Python and in tf.data.

* ``'phi'``: the phi-1 / phi-1.5 tokenizer (codegen-350M-mono's byte-level BPE, 50,295 tokens, end-of-text
  ``<|endoftext|>`` = 50256); see :mod:`textbooks.vocab.phi`.
* ``'spm8k'``: the project's 8,192-piece SentencePiece BPE trained on Python docs and standard-library code
  with whitespace preserved (pad 0, end-of-text 1, unk 2, byte fallback); see :mod:`textbooks.vocab.spm`.
* ``'spm:PATH'``: any SentencePiece model file, e.g. one trained with ``textbooks vocab train``.
* ``'byte'``: seqio's ``ByteVocabulary`` (UTF-8 bytes, 259 ids; fast, for tests and byte-level ablations).

This module imports only gin; seqio and TensorFlow load when a vocabulary is first requested.
"""

from __future__ import annotations

import threading

import gin

VOCABULARY_NAMES: tuple[str, ...] = ("phi", "spm8k", "byte")
_cache: dict[str, object] = {}
_lock = threading.Lock()


def _make(name: str):
    if name == "phi":
        from textbooks.vocab.phi import PhiVocabulary

        return PhiVocabulary()
    if name == "spm8k":
        from textbooks.vocab.spm import spm8k_vocabulary

        return spm8k_vocabulary()
    if name == "byte":
        import seqio

        return seqio.ByteVocabulary()
    if name.startswith("spm:"):
        from textbooks.vocab.spm import sentencepiece_vocabulary

        return sentencepiece_vocabulary(name[len("spm:"):])
    raise ValueError(f"unknown vocabulary {name!r}; known names: {', '.join(VOCABULARY_NAMES)}; give one of "
                     f"them, or 'spm:/path/to/model.model' for a SentencePiece model file")


@gin.configurable
def get_vocabulary(name: str = "phi"):
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


def __getattr__(attr: str):
    # Lazy access to the classes without importing TensorFlow at package import.
    if attr == "PhiVocabulary":
        from textbooks.vocab.phi import PhiVocabulary

        return PhiVocabulary
    raise AttributeError(f"module 'textbooks.vocab' has no attribute {attr!r}")

"""Text normalization, word tokens and stable hashing shared by dedup, decontamination and heuristics.

Everything here is deterministic across processes and machines (no use of Python's salted ``hash``), so
Beam workers on different hosts compute the same keys:

* :func:`word_tokens` — lowercased ``\\w+`` runs (letters, digits, underscore; punctuation dropped). This is
  the "normalized word token" unit of MinHash shingles and of benchmark n-gram overlap.
* :func:`whitespace_tokens` / :func:`count_tokens` — ``str.split()`` tokens; the token unit of the curation
  report (:func:`count_tokens` remembers the last text it counted, so the stages of one fused Beam step
  that each count the same document split it once).
* :func:`hash_words` — 64-bit BLAKE2b of each word (cached per process).
* :func:`ngram_hashes` — 64-bit hashes of every window of ``n`` consecutive words, computed with numpy from
  the word hashes (a polynomial combination followed by the splitmix64 finalizer).
* :func:`combine_hashes` — the same combination of the rows of a uint64 array (MinHash LSH band keys).
* :func:`exact_key` — a 16-byte digest of a document's normalized text for exact deduplication.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_SPACE_RE = re.compile(r"\s+", re.UNICODE)
_PUNCT_RE = re.compile(r"[^\w\s]+", re.UNICODE)
_DIGIT_RE = re.compile(r"\d", re.UNICODE)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# Odd 64-bit multiplier for the polynomial combination of word hashes (arithmetic wraps mod 2**64).
_POLY = np.uint64(0x9E3779B97F4A7C15)
_CACHE_LIMIT = 1 << 18
_word_cache: dict[str, int] = {}
# (text, whitespace tokens) of the last text count_tokens counted; rebound as one tuple, so threads never see
# a text with another text's count.
_last_count: tuple[str | None, int] = (None, 0)


def word_tokens(text: str) -> list[str]:
    """Lowercased runs of word characters (``\\w+``), NFKC-normalized first."""
    return _WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def whitespace_tokens(text: str) -> list[str]:
    """``text.split()``: the report's token unit ("whitespace tokens")."""
    return text.split()


def count_tokens(text: str) -> int:
    """Number of whitespace tokens in ``text`` (the same str object as the last call's is not split again:
    a record passes through the stages of a fused Beam step one at a time, and each of them counts it)."""
    global _last_count
    last_text, last_count = _last_count
    if text is last_text:
        return last_count
    count = len(text.split())
    _last_count = (text, count)
    return count


def normalize_for_exact(text: str, *, lowercase: bool = True, strip_punctuation: bool = False,
                        normalize_digits: bool = False) -> str:
    """The text exact deduplication compares: NFKC, optionally lowercased / without punctuation / digits
    mapped to 0, whitespace runs collapsed to one space, stripped."""
    text = unicodedata.normalize("NFKC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCT_RE.sub(" ", text)
    if normalize_digits:
        text = _DIGIT_RE.sub("0", text)
    return _SPACE_RE.sub(" ", text).strip()


def digest16(text: str) -> bytes:
    """The 16-byte BLAKE2b digest of ``text``'s UTF-8 (lone surrogates passed through): what stands for a text
    or an id wherever curation compares them by digest (two texts with one digest are a 2**-128 event)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exact_key(text: str, **normalize_kwargs) -> bytes:
    """16-byte BLAKE2b digest (:func:`digest16`) of :func:`normalize_for_exact` of ``text``."""
    return digest16(normalize_for_exact(text, **normalize_kwargs))


def stable_hash64(data: bytes | str) -> int:
    """A 64-bit BLAKE2b hash of ``data`` (str is UTF-8 encoded)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def stable_unit_interval(key: str, salt: str = "") -> float:
    """A deterministic pseudo-random number in [0, 1) derived from ``key`` (used for splits and sampling)."""
    return stable_hash64(salt + "\x00" + key) / 2.0 ** 64


def hash_words(words: list[str]) -> np.ndarray:
    """64-bit hashes (uint64) of ``words``; a bounded per-process cache makes repeated words cheap (emptied
    before it would pass ``_CACHE_LIMIT`` words, so a worker's memory does not grow with the corpus's
    vocabulary)."""
    cache = _word_cache
    missing = set(words).difference(cache)
    if missing and len(cache) + len(missing) > _CACHE_LIMIT:
        cache.clear()
        missing = set(words)
    for w in missing:
        cache[w] = stable_hash64(w)
    return np.fromiter(map(cache.__getitem__, words), dtype=np.uint64, count=len(words))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, vectorized (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def _combine(columns, n: int) -> np.ndarray:
    """The polynomial combination of ``n`` equally shaped uint64 arrays (in order), finalized by splitmix64."""
    acc = None
    with np.errstate(over="ignore"):
        for col in columns:
            acc = col.copy() if acc is None else acc * _POLY + col
        acc = acc + np.uint64(n)  # Sequences of different lengths never share a hash by construction of acc alone.
    return _splitmix64(acc)


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of all windows of ``n`` consecutive words (``len - n + 1`` of them, or none if shorter).

    Equal word sequences give equal hashes in every process; the value depends on the order of the words.
    """
    count = len(word_hashes) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    return _combine((word_hashes[k:k + count] for k in range(n)), n)


def combine_hashes(rows: np.ndarray) -> np.ndarray:
    """One 64-bit hash per row of ``rows`` (uint64, the last axis combined in order, as :func:`ngram_hashes`
    combines a window): e.g. the LSH band keys of MinHash signatures."""
    return _combine((rows[..., k] for k in range(rows.shape[-1])), rows.shape[-1])


def sentences(text: str) -> list[str]:
    """A simple sentence split on ``.``, ``!`` or ``?`` followed by whitespace (used by the C4 rules)."""
    parts = re.split(r"(?<=[.!?])[\"')\]]*\s+", text.strip())
    return [p for p in parts if p.strip()]

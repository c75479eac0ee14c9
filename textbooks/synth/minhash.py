"""MinHash signatures and a banded LSH index for near-duplicate detection inside synthetic-data runs.

Used to deduplicate topic titles while the topic tree grows and to measure the near-duplicate rate of a run's
outputs (the diversity report). Corpus-scale deduplication of finished shards is the curation stage's job
(``textbooks.curate``); this module is the light in-process version.

Each shingle is hashed once to 64 bits (blake2b); the ``num_perm`` hash functions are that value XORed with a
random 64-bit mask and passed through the splitmix64 finalizer, and the signature keeps the minimum of each.
The probability that two sets agree on one signature entry is their Jaccard similarity.
"""

from __future__ import annotations

import hashlib
import re
from typing import Hashable, Iterable, Iterator

import numpy as np

_WORD_RE = re.compile(r"\w+", re.UNICODE)


def word_shingles(text: str, n: int = 5) -> set[str]:
    """Sets of ``n`` consecutive lower-cased words (the whole text when it is shorter)."""
    words = _WORD_RE.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def char_shingles(text: str, n: int = 3) -> set[str]:
    """Sets of ``n`` consecutive characters (for short strings such as topic titles)."""
    t = f" {text} "
    return {t[i:i + n] for i in range(max(1, len(t) - n + 1))}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity of two sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class MinHasher:
    """Computes MinHash signatures of shingle sets.

    Args:
        num_perm: signature length (more = more precise Jaccard estimates).
        seed: chooses the hash functions; signatures are comparable only for equal seeds and lengths.
    """

    def __init__(self, num_perm: int = 128, seed: int = 1):
        if num_perm < 1:
            raise ValueError(f"num_perm must be positive, got {num_perm}")
        self.num_perm = num_perm
        self._masks = np.random.default_rng(seed).integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2)

    def signature(self, shingles: Iterable[str]) -> np.ndarray:
        """The ``[num_perm]`` uint64 signature (all ones for an empty set, which then matches only itself)."""
        hashes = np.fromiter((int.from_bytes(hashlib.blake2b(s.encode("utf-8", "replace"), digest_size=8).digest(),
                                             "little") for s in shingles), dtype=np.uint64)
        if hashes.size == 0:
            return np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            mixed = _splitmix64(hashes[:, None] ^ self._masks[None, :])
        return mixed.min(axis=0)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        """Estimated Jaccard similarity of the sets behind two signatures."""
        return float(np.mean(a == b))


def lsh_params(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm whose S-curve midpoint (1/b)^(1/r) is closest to threshold."""
    best, best_err = (1, num_perm), float("inf")
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        err = abs((1.0 / bands) ** (1.0 / rows) - threshold)
        if err < best_err:
            best, best_err = (bands, rows), err
    return best


class LSHIndex:
    """Banded locality-sensitive hashing over MinHash signatures; candidates are then verified.

    Args:
        num_perm: signature length of the inserted signatures.
        threshold: Jaccard similarity above which two items count as near duplicates.
    """

    def __init__(self, num_perm: int = 128, threshold: float = 0.8):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.num_perm = num_perm
        self.threshold = threshold
        self.bands, self.rows = lsh_params(num_perm, threshold)
        self._tables: list[dict[bytes, list[Hashable]]] = [{} for _ in range(self.bands)]
        self._signatures: dict[Hashable, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._signatures)

    def _band_keys(self, sig: np.ndarray) -> Iterator[tuple[int, bytes]]:
        for b in range(self.bands):
            yield b, sig[b * self.rows:(b + 1) * self.rows].tobytes()

    def candidates(self, sig: np.ndarray) -> list[Hashable]:
        """Keys of inserted items that share at least one band with ``sig`` (unverified)."""
        seen: dict = {}
        for b, key in self._band_keys(sig):
            for item in self._tables[b].get(key, ()):
                seen.setdefault(item, None)
        return list(seen)

    def query(self, sig: np.ndarray) -> list[Hashable]:
        """Keys of inserted items whose estimated similarity to ``sig`` is at least the threshold."""
        return [k for k in self.candidates(sig) if MinHasher.similarity(sig, self._signatures[k]) >= self.threshold]

    def insert(self, key: Hashable, sig: np.ndarray) -> None:
        """Adds an item (keys must be unique)."""
        if key in self._signatures:
            raise KeyError(f"key {key!r} already in the index")
        self._signatures[key] = sig
        for b, band in self._band_keys(sig):
            self._tables[b].setdefault(band, []).append(key)


def near_duplicate_clusters(texts: list[str], *, threshold: float = 0.8, num_perm: int = 128,
                            shingle: int = 5, seed: int = 1) -> list[int]:
    """Assigns each text the index of the first earlier text it nearly duplicates (itself if none).

    Returns:
        ``rep[i]``: the index of the representative of text ``i``; ``rep[i] != i`` marks a near duplicate.
    """
    hasher = MinHasher(num_perm, seed)
    index = LSHIndex(num_perm, threshold)
    rep = []
    for i, text in enumerate(texts):
        sig = hasher.signature(word_shingles(text, shingle))
        hits = index.query(sig)
        if hits:
            rep.append(rep[min(hits)])
        else:
            rep.append(i)
        index.insert(i, sig)
    return rep

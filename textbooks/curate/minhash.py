"""MinHash signatures and LSH band hashes, computed for whole batches of documents with numpy, and the
in-memory near-duplicate clustering that uses them (the Beam stages are in :mod:`textbooks.curate.dedup`).

A batch of documents is normalized like :func:`textnorm.word_tokens` (NFKC, lowercased), joined with NUL
separators and turned into one array of code points; a table of the characters that the regex ``\\w``
matches marks the words, so the words are exactly ``word_tokens``'s and never span two documents. Every word
gets a 64-bit hash (each character's code point and position in the word mixed by splitmix64 and summed, then
finalized), every window of ``shingle_size`` words of one document a shingle hash (the polynomial combination
of :func:`textnorm.combine_hashes`; a document with fewer words is one shingle of all of them), and its top 32
bits are the shingle ``x``.

The ``num_perm`` hash functions are multiply-add-shift hashes ``h(x) = ((a*x + b) mod 2**64) >> 32`` with
random 64-bit ``a`` (odd) and ``b``, a strongly universal family for 32-bit ``x`` (Dietzfelbinger). Since the
shift is monotone, the minimum of ``h`` over a document is the top half of the minimum of ``a*x + b``: one
multiply and one add per shingle and permutation, in ``(shingles x num_perm)`` blocks, reduced per document
with ``np.minimum.reduceat``. Repeated shingles do not change a minimum, so they are not removed.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Iterable, Sequence

import gin
import numpy as np

from textbooks.curate.components import ComponentsConfig
from textbooks.curate.textnorm import _splitmix64, combine_hashes
from textbooks.curate.union_find import connected_components

DECISIONS = ("join", "side_input", "reread")  # the ways decisions reach the records; "auto" picks one
_WORD_RE = re.compile(r"\w", re.UNICODE)
_MAX_CODE_POINT = 0x110000
_TABLE_BLOCK = 1 << 16  # code points per block while the word table is built
_BLOCK = 2048  # shingles per (block x num_perm) product (about 2 MB, reused)
_CHAR_BUDGET = 1 << 20  # characters hashed together (bounds the per-character temporaries)
_POSITION = np.uint64(0x9E3779B97F4A7C15)
_PAIRWISE_LIMIT = 64
_word_table: np.ndarray | None = None


def word_table() -> np.ndarray:
    """``bool[0x110000]``: the code points that the regex ``\\w`` matches (built once per process, a block of
    code points at a time: ``str.join`` lists its input first, and a list of all 1.1 million one-character
    strings would cost a worker about 90 MB at its peak)."""
    global _word_table
    if _word_table is None:
        table = np.zeros(_MAX_CODE_POINT, dtype=bool)
        for start in range(0, _MAX_CODE_POINT, _TABLE_BLOCK):
            chars = "".join(map(chr, range(start, min(start + _TABLE_BLOCK, _MAX_CODE_POINT))))
            table[start + np.fromiter((m.start() for m in _WORD_RE.finditer(chars)), dtype=np.int64)] = True
        _word_table = table
    return _word_table


@gin.configurable
@dataclasses.dataclass
class MinHashConfig:
    """MinHash LSH near-deduplication.

    Attributes:
        shingle_size: words per shingle (FineWeb: 5).
        num_bands / rows_per_band: LSH banding (FineWeb: 14 × 8); the signature has their product of hashes.
        seed: seeds the hash functions (must be equal on all workers; it is part of the config).
        keep: which member of a cluster survives: ``'min_id'`` or ``'longest'``.
        verify_threshold: optional minimum fraction of agreeing signature positions (an estimate of Jaccard
            similarity) for a candidate pair to count; None keeps every candidate, as FineWeb does.
        min_words: documents with fewer normalized words are not near-deduplicated (kept as they are).
        batch_size: documents whose signatures a worker computes and sends together (its buffer holds at most
            this many documents, and at most about a million characters of them).
        bucket_shards: shuffle keys per band; the documents of one key are grouped on one worker, so a worker
            holds about ``documents / bucket_shards`` band hashes at a time.
        components: how the candidate graph's connected components are found (:mod:`components`: one-worker
            union-find for small graphs, distributed large-star/small-star rounds for big ones).
        decisions: how drop decisions reach the records: ``'join'`` (``CoGroupByKey`` on the id; scales),
            ``'side_input'`` (every worker holds all decisions; one-machine runs only), ``'reread'`` (as
            ``'side_input'``, but the records are read again from the input files, so no text goes through a
            shuffle; only where near dedup is the first stage and ids are not checked) or ``'auto'`` (the
            default: on the local runners, whose driver holds every shuffle's data anyway, ``'reread'`` where it
            applies and else ``'side_input'``; ``'join'`` on every other runner; see
            :mod:`textbooks.curate.dedup`).
    """

    shingle_size: int = 5
    num_bands: int = 14
    rows_per_band: int = 8
    seed: int = 1
    keep: str = "min_id"
    verify_threshold: float | None = None
    min_words: int = 0
    batch_size: int = 1000
    bucket_shards: int = 16
    components: ComponentsConfig = dataclasses.field(default_factory=ComponentsConfig)
    decisions: str = "auto"

    def __post_init__(self):
        if self.keep not in ("min_id", "longest"):
            raise ValueError(f"MinHashConfig.keep must be 'min_id' or 'longest', got {self.keep!r}")
        if self.decisions not in ("auto", *DECISIONS):
            raise ValueError(f"MinHashConfig.decisions must be one of 'auto', {', '.join(map(repr, DECISIONS))}, got "
                             f"{self.decisions!r} (set MinHashConfig.decisions in the gin file)")
        if min(self.shingle_size, self.num_bands, self.rows_per_band, self.batch_size, self.bucket_shards) < 1:
            raise ValueError("MinHashConfig: shingle_size, num_bands, rows_per_band, batch_size and bucket_shards "
                             f"must be positive, got {self.shingle_size}, {self.num_bands}, {self.rows_per_band}, "
                             f"{self.batch_size} and {self.bucket_shards}")

    @property
    def num_perm(self) -> int:
        return self.num_bands * self.rows_per_band

    def candidate_probability(self, jaccard: float) -> float:
        """Probability that a pair with this Jaccard similarity shares at least one band."""
        return 1.0 - (1.0 - jaccard ** self.rows_per_band) ** self.num_bands


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Position of every element within its segment, for segments of ``lengths`` laid end to end."""
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - offsets


class MinHasher:
    """Shingles, MinHash signatures and LSH band hashes for one :class:`MinHashConfig` (see the module
    docstring for the hashing)."""

    def __init__(self, config: MinHashConfig):
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.a = rng.integers(0, 1 << 64, size=config.num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.b = rng.integers(0, 1 << 64, size=config.num_perm, dtype=np.uint64, endpoint=False)
        self.table = word_table()

    def words(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(uint64 word hashes, int64 document index of each)`` of ``texts``, in order."""
        normalized = [unicodedata.normalize("NFKC", t).lower() for t in texts]
        joined = "\x00".join(normalized)  # a separator that is no word character
        cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        is_word = self.table[cps]
        edges = np.diff(is_word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        lengths = ends - starts
        chars = cps[is_word].astype(np.uint64)
        position = _segments(starts, lengths).astype(np.uint64)
        with np.errstate(over="ignore"):
            mixed = _splitmix64(chars * _POSITION + position)
        hashes = np.add.reduceat(mixed, np.cumsum(lengths) - lengths) if len(lengths) else mixed[:0]
        hashes = _splitmix64(hashes + lengths.astype(np.uint64))
        ends_of_docs = np.cumsum(np.fromiter(map(len, normalized), dtype=np.int64, count=len(texts)) + 1)
        docs = np.searchsorted(ends_of_docs, starts, side="right")
        return hashes, docs

    def shingle_values(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(uint64 shingles x < 2**32, their document index, int64 words per document)`` of ``texts``."""
        hashes, docs = self.words(texts)
        counts = np.bincount(docs, minlength=len(texts))
        n = self.config.shingle_size
        parts, owners = [], []
        if len(hashes) >= n:
            windows = np.lib.stride_tricks.sliding_window_view(hashes, n)
            whole = docs[n - 1:] == docs[:len(docs) - n + 1]
            parts.append(combine_hashes(windows[whole]))
            owners.append(docs[:len(docs) - n + 1][whole])
        first = np.cumsum(counts) - counts
        for m in range(1, n):  # documents shorter than a shingle: one shingle of all their words
            short = np.flatnonzero(counts == m)
            if len(short):
                parts.append(combine_hashes(hashes[first[short][:, None] + np.arange(m)]))
                owners.append(short)
        if not parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), counts
        values, owner = np.concatenate(parts), np.concatenate(owners)
        if len(parts) > 1:
            order = np.argsort(owner, kind="stable")
            values, owner = values[order], owner[order]
        return values >> np.uint64(32), owner, counts

    def shingles(self, text: str) -> np.ndarray:
        """Unique shingles ``x`` (uint64 below 2**32) of one text; a short document is one shingle."""
        return np.unique(self.shingle_values([text])[0])

    def _minimum(self, values: np.ndarray, owner: np.ndarray, rows: int) -> np.ndarray:
        """``uint64[rows, num_perm]``: per document the minimum of ``a*x + b`` over its shingles."""
        out = np.full((rows, self.config.num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        block = np.empty((min(_BLOCK, len(values)), self.config.num_perm), dtype=np.uint64)  # reused
        for start in range(0, len(values), _BLOCK):
            x, own = values[start:start + _BLOCK], owner[start:start + _BLOCK]
            y = block[:len(x)]
            np.multiply(x[:, None], self.a[None, :], out=y)
            y += self.b[None, :]
            cuts = np.r_[0, np.flatnonzero(own[1:] != own[:-1]) + 1]
            docs = own[cuts]
            out[docs] = np.minimum(out[docs], np.minimum.reduceat(y, cuts, axis=0))
        return out

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(uint32[n, num_perm] signatures, int64[n] words per document)``; a document without words has
        the all-ones row (and 0 words)."""
        sigs = np.empty((len(texts), self.config.num_perm), dtype=np.uint32)
        counts = np.zeros(len(texts), dtype=np.int64)
        start = 0
        while start < len(texts):
            stop, size = start + 1, len(texts[start])
            while stop < len(texts) and size + len(texts[stop]) <= _CHAR_BUDGET:
                size += len(texts[stop])
                stop += 1
            values, owner, counts[start:stop] = self.shingle_values(texts[start:stop])
            sigs[start:stop] = (self._minimum(values, owner, stop - start) >> np.uint64(32)).astype(np.uint32)
            start = stop
        return sigs, counts

    def signature_of_shingles(self, shingles: np.ndarray) -> np.ndarray:
        """``uint32[num_perm]``: the signature of one document's shingles ``x``."""
        owner = np.zeros(len(shingles), dtype=np.int64)
        return (self._minimum(shingles.astype(np.uint64), owner, 1)[0] >> np.uint64(32)).astype(np.uint32)

    def signature(self, text: str) -> np.ndarray | None:
        """``uint32[num_perm]`` MinHash signature, or None for a document without words."""
        sigs, counts = self.signatures([text])
        return sigs[0] if counts[0] else None

    def band_hashes(self, sigs: np.ndarray) -> np.ndarray:
        """``uint64[n, num_bands]``: a 64-bit hash of each band's rows of each signature (``uint32[n, num_perm]``)
        — a polynomial combination of the rows followed by the splitmix64 finalizer."""
        rows = sigs.reshape(len(sigs), self.config.num_bands, self.config.rows_per_band).astype(np.uint64)
        return combine_hashes(rows)

    def band_keys(self, sig: np.ndarray) -> list[bytes]:
        """One key per band: the band index and the band's 64-bit hash (:meth:`band_hashes`)."""
        hashes = self.band_hashes(sig[None, :])[0]
        return [band.to_bytes(2, "little") + int(h).to_bytes(8, "little") for band, h in enumerate(hashes)]


def priority(keep: str, text: str | int) -> tuple:
    """What orders documents for survival before their id (a node is ``(priority, id)``, the smallest
    survives): nothing for ``'min_id'``, the length for ``'longest'`` (of ``text``, or ``text`` is the length),
    longest first. The id is the node's second element, so it is not repeated here."""
    return () if keep == "min_id" else (-(text if isinstance(text, int) else len(text)),)


def bucket_edges(members: Sequence[tuple], verify_threshold: float | None) -> list[tuple]:
    """Candidate edges of one LSH bucket. ``members`` are ``(priority, id, signature-or-None)``."""
    members = sorted({(m[0], m[1]): m for m in members}.values(), key=lambda m: (m[0], m[1]))
    if len(members) < 2:
        return []
    head = members[0]
    if verify_threshold is None or len(members) > _PAIRWISE_LIMIT:
        return [((head[0], head[1]), (m[0], m[1])) for m in members[1:]]
    edges = []
    for i in range(len(members)):
        for j in range(i + 1, len(members)):
            if float(np.mean(members[i][2] == members[j][2])) >= verify_threshold:
                edges.append(((members[i][0], members[i][1]), (members[j][0], members[j][1])))
    return edges


def near_duplicate_clusters(docs: Iterable[tuple[str, str]], config: MinHashConfig) -> list[list[str]]:
    """In-memory near-dedup: clusters (lists of ids, the survivor first) of ``(id, text)`` pairs."""
    hasher = MinHasher(config)
    docs = list(docs)
    sigs, counts = hasher.signatures([text for _, text in docs]) if docs else (None, [])
    buckets: dict[bytes, list] = {}
    for (doc_id, text), sig, words in zip(docs, sigs if docs else [], counts):
        if words == 0 or (config.min_words and words < config.min_words):
            continue
        member = (priority(config.keep, text), doc_id, sig)
        for key in hasher.band_keys(sig):
            buckets.setdefault(key, []).append(member)
    edges = [e for members in buckets.values() for e in bucket_edges(members, config.verify_threshold)]
    return [[node[1] for node in comp] for comp in connected_components(edges)]

"""Deduplication: exact (normalized-text hash) and near-duplicate (MinHash LSH) as Beam transforms.

Exact: documents are keyed by a 16-byte digest of their normalized text (:func:`textnorm.exact_key`), grouped,
and the smallest id of each group is kept.

Near-duplicates (Broder's MinHash with LSH banding, as FineWeb): each document's word shingles (``shingle_size``
consecutive normalized word tokens) are hashed; ``num_bands × rows_per_band`` universal hash permutations give
the signature; each band of the signature gets a 64-bit band hash (:meth:`MinHasher.band_hashes`). Then

1. Documents sharing a band hash are candidates. Workers send band hashes in batches of ``batch_size``
   documents, one element per bucket shard (``band × bucket_shards + hash mod bucket_shards``) holding the
   hashes as bytes and their members, so the shuffle moves a few hundred elements per batch instead of
   ``num_bands`` per document; a ``GroupByKey`` on the shard then sorts its hashes and each run of equal ones
   (an LSH bucket) emits edges from its smallest member to the others (star edges; with ``verify_threshold``
   only pairs whose signatures agree on at least that fraction of positions, checked pairwise in buckets of up
   to 64 documents).
2. Connected components of the candidate graph (:mod:`textbooks.curate.components`): distributed
   large-star/small-star rounds (no worker holds more than its share of the edges), or, for a candidate graph
   of at most ``ComponentsConfig.union_find_max_edges`` distinct edges, a union-find on one worker; the choice
   is made at run time from the edge count (or forced by ``ComponentsConfig.method``) and the counters
   ``near_dedup/components_union_find`` / ``near_dedup/components_distributed`` say which ran. Both give the
   same clusters.
3. One document per component survives: the smallest by the ``keep`` policy (``'min_id'``: smallest id;
   ``'longest'``: most characters, then smallest id), a deterministic choice. The others are dropped with
   ``meta.curation = {reason: 'near_duplicate', duplicate_of, cluster_size}``. The decisions (one per dropped
   document: its id, the survivor's id and the cluster size) reach the records in one of two ways, chosen by
   ``decisions``:

   * ``'join'`` (the default): records and decisions are keyed by id and joined with ``CoGroupByKey``; the
     shuffle spreads both over the workers, so no worker holds more than its share of either, on any runner
     and at any size.
   * ``'side_input'``: the decisions are a dict side input and the records stream past it without a shuffle;
     faster on one machine (the direct runner's join hands each worker its whole share of the records at once),
     but every worker holds every decision (a few hundred bytes per dropped document): only for runs whose
     dropped ids fit in each worker's memory, never at web scale (hundreds of millions of dropped documents).

   Both give the same kept and dropped records; the counter ``near_dedup/decisions_join`` or
   ``near_dedup/decisions_side_input`` (bundles applied) says which ran.

The probability that a pair with Jaccard similarity ``s`` becomes a candidate is ``1 - (1 - s**r)**b``; with the
FineWeb setting (5-grams, 14 bands × 8 rows) pairs above ~0.75 are found with high probability.

:func:`near_duplicate_clusters` runs the same algorithm in memory for use from Python without Beam.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import apache_beam as beam
import gin
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from textbooks.curate import stages
from textbooks.curate.components import Components, ComponentsConfig, connected_components
from textbooks.curate.textnorm import combine_hashes, exact_key, hash_words, ngram_hashes, word_tokens

_P61 = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64(0xFFFFFFFF)
_CHUNK = 2048
_PAIRWISE_LIMIT = 64
CLUSTERS = "clusters"
DECISIONS = ("join", "side_input")


@gin.configurable
@dataclasses.dataclass
class ExactDedupConfig:
    """Exact deduplication on normalized text (NFKC, whitespace collapsed, and the options below)."""

    lowercase: bool = True
    strip_punctuation: bool = False
    normalize_digits: bool = False


@gin.configurable
@dataclasses.dataclass
class MinHashConfig:
    """MinHash LSH near-deduplication.

    Attributes:
        shingle_size: words per shingle (FineWeb: 5).
        num_bands / rows_per_band: LSH banding (FineWeb: 14 × 8); the signature has their product of hashes.
        seed: seeds the hash permutations (must be equal on all workers; it is part of the config).
        keep: which member of a cluster survives: ``'min_id'`` or ``'longest'``.
        verify_threshold: optional minimum fraction of agreeing signature positions (an estimate of Jaccard
            similarity) for a candidate pair to count; None keeps every candidate, as FineWeb does.
        min_words: documents with fewer normalized words are not near-deduplicated (kept as they are).
        batch_size: documents whose band hashes a worker sends together (its buffer holds at most this many
            signatures).
        bucket_shards: shuffle keys per band; the documents of one key are grouped on one worker, so a worker
            holds about ``documents / bucket_shards`` band hashes at a time.
        components: how the candidate graph's connected components are found (:mod:`components`: one-worker
            union-find for small graphs, distributed large-star/small-star rounds for big ones).
        decisions: how drop decisions reach the records: ``'join'`` (``CoGroupByKey`` on the id; scales, the
            default) or ``'side_input'`` (every worker holds all decisions; one-machine runs only).
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
    decisions: str = "join"

    def __post_init__(self):
        if self.keep not in ("min_id", "longest"):
            raise ValueError(f"MinHashConfig.keep must be 'min_id' or 'longest', got {self.keep!r}")
        if self.decisions not in DECISIONS:
            raise ValueError(f"MinHashConfig.decisions must be one of {', '.join(map(repr, DECISIONS))}, got "
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


class MinHasher:
    """Computes shingles, MinHash signatures and LSH band hashes for one :class:`MinHashConfig`."""

    def __init__(self, config: MinHashConfig):
        self.config = config
        rng = np.random.RandomState(config.seed)
        # Universal hashing (a*x + b) mod p with a, b, x < 2**32 so that a*x + b never overflows uint64.
        self.a = rng.randint(1, 1 << 32, size=config.num_perm, dtype=np.uint64)
        self.b = rng.randint(0, 1 << 32, size=config.num_perm, dtype=np.uint64)

    def shingles(self, text: str) -> np.ndarray:
        """Unique 32-bit shingle hashes (as uint64) of ``text``; a short document is one shingle."""
        words = word_tokens(text)
        if not words:
            return np.zeros(0, dtype=np.uint64)
        n = min(self.config.shingle_size, len(words))
        grams = ngram_hashes(hash_words(words), n)
        return np.unique(grams >> np.uint64(32))

    def _permuted(self, x: np.ndarray) -> np.ndarray:
        """``((x * a + b) mod p) & 0xFFFFFFFF`` for a column of shingles ``x`` against every permutation, with
        the Mersenne-prime reduction ``(y & p) + (y >> 61)`` (then at most one subtraction of p) instead of a
        division; equal to the ``%`` form for every uint64 ``y``."""
        y = x * self.a[None, :]
        y += self.b[None, :]
        r = y & _P61
        y >>= np.uint64(61)
        r += y
        np.subtract(r, _P61, out=r, where=r >= _P61)
        r &= _MAX32
        return r

    def signature_of_shingles(self, shingles: np.ndarray) -> np.ndarray:
        sig = np.full(self.config.num_perm, _MAX32, dtype=np.uint64)
        for start in range(0, len(shingles), _CHUNK):
            np.minimum(sig, self._permuted(shingles[start:start + _CHUNK, None]).min(axis=0), out=sig)
        return sig.astype(np.uint32)

    def signature(self, text: str) -> np.ndarray | None:
        """``uint32[num_perm]`` MinHash signature, or None for a document without words."""
        sh = self.shingles(text)
        if len(sh) == 0:
            return None
        return self.signature_of_shingles(sh)

    def band_hashes(self, sigs: np.ndarray) -> np.ndarray:
        """``uint64[n, num_bands]``: a 64-bit hash of each band's rows of each signature (``uint32[n, num_perm]``)
        — a polynomial combination of the rows followed by the splitmix64 finalizer, like :func:`ngram_hashes`."""
        rows = sigs.reshape(len(sigs), self.config.num_bands, self.config.rows_per_band).astype(np.uint64)
        return combine_hashes(rows)

    def band_keys(self, sig: np.ndarray) -> list[bytes]:
        """One key per band: the band index and the band's 64-bit hash (:meth:`band_hashes`)."""
        hashes = self.band_hashes(sig[None, :])[0]
        return [band.to_bytes(2, "little") + int(h).to_bytes(8, "little") for band, h in enumerate(hashes)]


def _priority(keep: str, doc_id: str, text: str | int) -> tuple:
    """The order of survival: by id, or (``'longest'``) by length (of ``text``, or ``text`` is the length)."""
    return (doc_id,) if keep == "min_id" else (-(text if isinstance(text, int) else len(text)), doc_id)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


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
            if _agreement(members[i][2], members[j][2]) >= verify_threshold:
                edges.append(((members[i][0], members[i][1]), (members[j][0], members[j][1])))
    return edges


def near_duplicate_clusters(docs: Iterable[tuple[str, str]], config: MinHashConfig) -> list[list[str]]:
    """In-memory near-dedup: clusters (lists of ids, the survivor first) of ``(id, text)`` pairs."""
    hasher = MinHasher(config)
    buckets: dict[bytes, list] = {}
    for doc_id, text in docs:
        if config.min_words and len(word_tokens(text)) < config.min_words:
            continue
        sig = hasher.signature(text)
        if sig is None:
            continue
        member = (_priority(config.keep, doc_id, text), doc_id, sig)
        for key in hasher.band_keys(sig):
            buckets.setdefault(key, []).append(member)
    edges = [e for members in buckets.values() for e in bucket_edges(members, config.verify_threshold)]
    return [[node[1] for node in comp] for comp in connected_components(edges)]


# ----------------------------------------------------------------------------------------------------------
# Beam: exact.


class _ExactDoFn(beam.DoFn):
    def __init__(self, stage: str):
        self.stage = stage
        self.counters = None

    def setup(self):
        self.counters = stages.StageCounters(self.stage)

    def process(self, item):
        key, group = item
        group = sorted(group, key=lambda r: r["id"])
        keeper = group[0]
        for r in group:
            self.counters.seen(r)
        self.counters.kept(keeper)
        yield keeper
        if len(group) > 1:
            self.counters.inc("clusters")
            yield beam.pvalue.TaggedOutput(CLUSTERS, {"stage": self.stage, "keeper": keeper["id"],
                                                      "size": len(group), "members": [r["id"] for r in group[:20]]})
        for r in group[1:]:
            self.counters.dropped(r, "exact_duplicate")
            yield beam.pvalue.TaggedOutput(stages.DROPPED, stages.mark_dropped(
                    r, self.stage, "exact_duplicate", duplicate_of=keeper["id"], cluster_size=len(group)))


class ExactDedup(beam.PTransform):
    """Beam stage: keeps the smallest id among documents with equal normalized text.

    Returns a dict of PCollections: ``kept``, ``dropped``, ``clusters`` (groups with more than one member).
    """

    def __init__(self, config: ExactDedupConfig | None = None, stage: str = "exact_dedup"):
        super().__init__()
        self.config = config or ExactDedupConfig()
        self.stage = stage

    def expand(self, records):
        cfg = dataclasses.asdict(self.config)
        out = (records
               | "Key" >> beam.Map(lambda r, c=cfg: (exact_key(r["text"], **c), r))
               | "Group" >> beam.GroupByKey()
               | "Decide" >> beam.ParDo(_ExactDoFn(self.stage)).with_outputs(stages.DROPPED, CLUSTERS, main="kept"))
        return {"kept": out.kept, "dropped": out[stages.DROPPED], "clusters": out[CLUSTERS]}


# ----------------------------------------------------------------------------------------------------------
# Beam: MinHash LSH.


class _SignatureDoFn(beam.DoFn):
    """Documents -> LSH band hashes, sent in batches: for every ``batch_size`` documents, one element per
    bucket shard ``(band * bucket_shards + hash % bucket_shards, (hashes, ids, lengths, signatures))``: the
    uint64 band hashes as bytes and, in the same order, the documents' ids, their lengths as int64 bytes (only
    for ``keep='longest'``) and their signatures as uint32 bytes (only with ``verify_threshold``), else None. A
    worker buffers at most one batch; the shuffle moves ~``num_bands * bucket_shards`` compact elements per
    batch instead of one tuple per band and document."""

    def __init__(self, config: MinHashConfig, stage: str):
        self.config = config
        self.stage = stage
        self.hasher = None
        self.counters = None
        self._ids: list[str] = []
        self._lengths: list[int] = []
        self._sigs: list[np.ndarray] = []

    def setup(self):
        self.hasher = MinHasher(self.config)
        self.counters = stages.StageCounters(self.stage)

    def start_bundle(self):
        self.counters.inc("bundles/signatures")
        self._ids, self._lengths, self._sigs = [], [], []

    def process(self, record: dict):
        text = record["text"]
        if self.config.min_words and len(word_tokens(text)) < self.config.min_words:
            self.counters.inc("skipped_short")
            return
        sig = self.hasher.signature(text)
        if sig is None:
            self.counters.inc("skipped_no_words")
            return
        self._ids.append(record["id"])
        self._lengths.append(len(text))
        self._sigs.append(sig)
        if len(self._sigs) >= self.config.batch_size:
            yield from self._flush()

    def finish_bundle(self):
        for item in self._flush():
            yield GlobalWindows.windowed_value(item)

    def _flush(self):
        if not self._sigs:
            return
        cfg, shards = self.config, self.config.bucket_shards
        sigs = np.stack(self._sigs)
        hashes = self.hasher.band_hashes(sigs)  # [docs, bands]
        bands = np.arange(cfg.num_bands, dtype=np.int64)[None, :]
        keys = bands * shards + (hashes % np.uint64(shards)).astype(np.int64)
        keys, hashes = keys.ravel(), hashes.ravel()
        docs = np.repeat(np.arange(len(self._sigs)), cfg.num_bands)
        lengths = np.asarray(self._lengths, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        for part in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1):
            rows = docs[part]
            yield int(keys[part[0]]), (hashes[part].tobytes(), [self._ids[d] for d in rows],
                                       lengths[rows].tobytes() if cfg.keep == "longest" else None,
                                       sigs[rows].tobytes() if cfg.verify_threshold is not None else None)
        self._ids, self._lengths, self._sigs = [], [], []


class _BucketEdgesDoFn(beam.DoFn):
    """One bucket shard's batches -> candidate edges of each LSH bucket (documents with an equal band hash)."""

    def __init__(self, config: MinHashConfig, stage: str):
        self.config = config
        self.stage = stage
        self.counters = None

    def setup(self):
        self.counters = stages.StageCounters(self.stage)

    def process(self, item):
        _, batches = item
        cfg = self.config
        hashes, ids, lengths, sigs = [], [], [], []
        for data, batch_ids, batch_lengths, batch_sigs in batches:
            hashes.append(np.frombuffer(data, dtype=np.uint64))
            ids.extend(batch_ids)
            if batch_lengths is not None:
                lengths.append(np.frombuffer(batch_lengths, dtype=np.int64))
            if batch_sigs is not None:
                sigs.append(np.frombuffer(batch_sigs, dtype=np.uint32).reshape(-1, cfg.num_perm))
        hashes = np.concatenate(hashes)
        lengths = np.concatenate(lengths) if lengths else None
        sigs = np.concatenate(sigs) if sigs else None
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        starts, ends = np.r_[0, bounds], np.r_[bounds, len(ordered)]
        for start, stop in zip(starts[ends - starts >= 2], ends[ends - starts >= 2]):
            rows = order[start:stop]
            bucket = [(_priority(cfg.keep, ids[i], 0 if lengths is None else int(lengths[i])), ids[i],
                       None if sigs is None else sigs[i]) for i in rows]
            self.counters.inc("candidate_buckets")
            for edge in bucket_edges(bucket, cfg.verify_threshold):
                self.counters.inc("candidate_edges")
                yield edge


class _ApplyDecisionsDoFn(beam.DoFn):
    """Records -> kept, or dropped with their decision. With ``decisions='join'`` the elements are the
    ``CoGroupByKey`` groups ``(id, {'record': [...], 'decision': [...]})``; with ``'side_input'`` they are the
    records, and the decisions dict (id -> decision) is a side input."""

    def __init__(self, stage: str, reason: str, decisions: str):
        self.stage = stage
        self.reason = reason
        self.decisions = decisions
        self.counters = None

    def setup(self):
        self.counters = stages.StageCounters(self.stage)

    def start_bundle(self):
        self.counters.inc("bundles/decisions")
        self.counters.inc(f"decisions_{self.decisions}")

    def process(self, item, decisions: dict | None = None):
        if decisions is not None:
            yield from self._apply(item, decisions.get(item["id"]))
            return
        _, joined = item
        found = list(joined["decision"])
        for record in joined["record"]:
            yield from self._apply(record, found[0] if found else None)

    def _apply(self, record: dict, decision: dict | None):
        tokens = self.counters.seen(record)
        if decision is not None:
            self.counters.dropped(record, self.reason, tokens)
            yield beam.pvalue.TaggedOutput(stages.DROPPED, stages.mark_dropped(
                    record, self.stage, self.reason, **decision))
        else:
            self.counters.kept(record, tokens)
            yield record


class NearDedup(beam.PTransform):
    """Beam stage: MinHash LSH near-deduplication (see the module docstring for the steps).

    Returns a dict of PCollections: ``kept``, ``dropped``, ``clusters`` (one summary per cluster).
    """

    def __init__(self, config: MinHashConfig | None = None, stage: str = "near_dedup"):
        super().__init__()
        self.config = config or MinHashConfig()
        self.stage = stage

    def expand(self, records):
        edges = (records
                 | "Signatures" >> beam.ParDo(_SignatureDoFn(self.config, self.stage))
                 | "Buckets" >> beam.GroupByKey()
                 | "Edges" >> beam.ParDo(_BucketEdgesDoFn(self.config, self.stage))
                 | "DistinctEdges" >> beam.Distinct())
        comps = edges | "Components" >> Components(self.config.components, self.stage, CLUSTERS)
        apply = _ApplyDecisionsDoFn(self.stage, "near_duplicate", self.config.decisions)
        if self.config.decisions == "side_input":
            items, args = records, [beam.pvalue.AsDict(comps["decisions"])]
        else:
            keyed = records | "KeyById" >> beam.Map(lambda r: (r["id"], r))
            items, args = {"record": keyed, "decision": comps["decisions"]} | "Join" >> beam.CoGroupByKey(), []
        out = items | "Apply" >> beam.ParDo(apply, *args).with_outputs(stages.DROPPED, main="kept")
        return {"kept": out.kept, "dropped": out[stages.DROPPED], "clusters": comps[CLUSTERS]}

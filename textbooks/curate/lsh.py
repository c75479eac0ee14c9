"""The candidate edges of MinHash LSH as Beam stages (step 1 of the near dedup in :mod:`textbooks.curate.dedup`):
band hashes go through the shuffle with compact references to their documents, and ids are read back only
for the documents that share a bucket.

A worker computes the signatures of a batch of documents at once (:meth:`MinHasher.signatures`) and gives the
batch a key, a 16-byte digest of its ids and lengths. It sends the batch twice:

* its id table, once: ``(batch key, (ids as one UTF-8 blob, uint32 offsets into it, int64 lengths or None))``
  (the lengths only for ``keep='longest'``);
* its band hashes, one element per bucket shard (``band * bucket_shards + hash % bucket_shards``):
  ``(shard, (batch key, uint64 hashes, row of each document in the batch, uint32 signatures or None))``
  (the rows as uint16 in batches of up to 65,536 documents, else uint32; the signatures only with
  ``verify_threshold``), so the shuffle that all documents go through carries 10 bytes per document and
  band, not the document's id once per band.

A ``GroupByKey`` on the shard sorts its hashes, and each run of equal ones (an LSH bucket) gives edges between
document references (batch key + row; :func:`~textbooks.curate.minhash.bucket_edges`: star edges from one
member, or with ``verify_threshold`` the pairs that agree on at least that fraction of positions in buckets of
up to 64); the distinct ones are looked up in the id tables of their ends' batches (a ``CoGroupByKey`` on the
batch key), and the two ends of each edge meet again (a ``GroupByKey`` on the edge). The result is the
distinct edges between nodes that sort like ``(priority, id)`` (:func:`~textbooks.curate.minhash.priority`),
each one bytes object (:func:`~textbooks.curate.union_find.node_key`: the rank and the id's UTF-8, copied from
the id table without decoding), as :class:`~textbooks.curate.components.Components` takes them. Which member
of a bucket the star edges start from does not change the connected components, so the clusters are those of
the in-memory algorithm (:func:`~textbooks.curate.minhash.near_duplicate_clusters`).
"""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from textbooks.curate import stages
from textbooks.curate.minhash import MinHashConfig, MinHasher, bucket_edges
from textbooks.curate.union_find import node_key

IDS = "ids"
_BATCH_CHARS = 1 << 20  # characters a signature batch holds at most (plus one document)
_KEY = 16  # bytes of a batch key
_REF = _KEY + 4  # a document reference: batch key + row (uint32, little-endian)
_OFFSETS_MAX = np.iinfo(np.uint32).max  # bytes of ids one batch's table can hold (uint32 offsets)


def row_dtype(count: int) -> type:
    """The narrowest unsigned type that holds the rows of a batch of ``count`` documents (uint16 or uint32)."""
    return np.uint16 if count <= 1 << 16 else np.uint32


def band_rows(members: bytes, hashes: bytes) -> np.ndarray:
    """The rows of a band element's documents (uint16 or uint32: the width follows from the 8-byte hashes)."""
    return np.frombuffer(members, dtype=np.uint16 if 4 * len(members) == len(hashes) else np.uint32)


def batch_key(blob: bytes, offsets: np.ndarray, lengths: np.ndarray | None) -> bytes:
    """The key of a batch: a 16-byte BLAKE2b digest of its id table (equal tables, equal keys)."""
    digest = hashlib.blake2b(offsets.tobytes(), digest_size=_KEY)
    digest.update(blob)
    if lengths is not None:
        digest.update(lengths.tobytes())
    return digest.digest()


def _windowed(item):
    if isinstance(item, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(item.tag, GlobalWindows.windowed_value(item.value))
    return GlobalWindows.windowed_value(item)


class _SignatureDoFn(beam.DoFn):
    """Documents -> per batch of ``batch_size`` documents (or about a million characters), the batch's id
    table under the ``ids`` tag and its band hashes as one element per bucket shard (see the module
    docstring). A worker buffers at most one batch."""

    def __init__(self, config: MinHashConfig, stage: str):
        self.config = config
        self.stage = stage
        self.hasher = None
        self.counters = None
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._chars = 0

    def setup(self):
        self.hasher = MinHasher(self.config)
        self.counters = stages.StageCounters(self.stage)

    def start_bundle(self):
        self.counters.inc("bundles/signatures")
        self._ids, self._texts, self._chars = [], [], 0

    def process(self, record: dict):
        self._ids.append(record["id"])
        self._texts.append(record["text"])
        self._chars += len(record["text"])
        if len(self._texts) >= self.config.batch_size or self._chars >= _BATCH_CHARS:
            yield from self._flush()

    def finish_bundle(self):
        for item in self._flush():
            yield _windowed(item)

    def _flush(self):
        if not self._texts:
            return
        cfg, shards = self.config, self.config.bucket_shards
        sigs, words = self.hasher.signatures(self._texts)
        lengths = np.fromiter(map(len, self._texts), dtype=np.int64, count=len(self._texts))
        ids = self._ids
        self._ids, self._texts, self._chars = [], [], 0
        keep = words >= max(cfg.min_words, 1)
        short = int(np.count_nonzero(words < cfg.min_words)) if cfg.min_words else 0
        if short:
            self.counters.inc("skipped_short", short)
        if len(words) - short - np.count_nonzero(keep):
            self.counters.inc("skipped_no_words", int(len(words) - short - np.count_nonzero(keep)))
        rows = np.flatnonzero(keep)
        if not len(rows):
            return
        encoded = [ids[r].encode("utf-8", "surrogatepass") for r in rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        if offsets[-1] > _OFFSETS_MAX:
            raise ValueError(f"near dedup: the ids of one signature batch take {offsets[-1]} bytes, more than its "
                             f"id table's uint32 offsets hold; lower MinHashConfig.batch_size "
                             f"(now {cfg.batch_size})")
        offsets = offsets.astype(np.uint32)
        blob = b"".join(encoded)
        lengths = lengths[rows] if cfg.keep == "longest" else None
        key = batch_key(blob, offsets, lengths)
        yield beam.pvalue.TaggedOutput(IDS, (key, (blob, offsets.tobytes(),
                                                   None if lengths is None else lengths.tobytes())))
        sigs = sigs[rows]
        hashes = self.hasher.band_hashes(sigs)  # [docs, bands]
        bands = np.arange(cfg.num_bands, dtype=np.int64)[None, :]
        keys = bands * shards + (hashes % np.uint64(shards)).astype(np.int64)
        keys, hashes = keys.ravel(), hashes.ravel()
        docs = np.repeat(np.arange(len(rows), dtype=row_dtype(len(rows))), cfg.num_bands)
        order = np.argsort(keys, kind="stable")
        for part in np.split(order, np.flatnonzero(np.diff(keys[order])) + 1):
            members = docs[part]
            yield int(keys[part[0]]), (key, hashes[part].tobytes(), members.tobytes(),
                                       sigs[members].tobytes() if cfg.verify_threshold is not None else None)


class _BucketEdgesDoFn(beam.DoFn):
    """One bucket shard's batches -> the candidate edges of each LSH bucket (documents with an equal band
    hash) between document references, each edge the 40 bytes of its two references."""

    def __init__(self, config: MinHashConfig, stage: str):
        self.config = config
        self.stage = stage
        self.counters = None

    def setup(self):
        self.counters = stages.StageCounters(self.stage)

    def process(self, item):
        _, batches = item
        cfg = self.config
        keys, hashes, rows, sigs = [], [], [], []
        for key, data, members, batch_sigs in batches:
            keys.append(key)
            hashes.append(np.frombuffer(data, dtype=np.uint64))
            rows.append(band_rows(members, data))
            if batch_sigs is not None:
                sigs.append(np.frombuffer(batch_sigs, dtype=np.uint32).reshape(-1, cfg.num_perm))
        owners = np.repeat(np.arange(len(keys)), [len(h) for h in hashes])
        hashes, rows = np.concatenate(hashes), np.concatenate(rows).astype(np.uint32)
        sigs = np.concatenate(sigs) if sigs else None
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        starts, ends = np.r_[0, bounds], np.r_[bounds, len(ordered)]
        for start, stop in zip(starts[ends - starts >= 2], ends[ends - starts >= 2]):
            bucket = []
            for i in order[start:stop]:
                ref = keys[owners[i]] + int(rows[i]).to_bytes(4, "little")
                bucket.append((ref, ref, None if sigs is None else sigs[i]))
            self.counters.inc("candidate_buckets")
            for (u, _), (v, _) in bucket_edges(bucket, cfg.verify_threshold):
                self.counters.inc("candidate_edges")
                yield u + v


def _requests(edge: bytes):
    """An edge between references -> a lookup of each end in its batch: ``(batch key, (row, edge))``."""
    for ref in (edge[:_REF], edge[_REF:]):
        yield ref[:_KEY], (int.from_bytes(ref[_KEY:], "little"), edge)


class _ResolveDoFn(beam.DoFn):
    """A batch's id table and the lookups of its rows -> ``(edge, (reference, node))`` per lookup, the node a
    :func:`~textbooks.curate.union_find.node_key` of the ``keep`` policy's rank (0, or minus the length for
    ``'longest'``) and the id's UTF-8 as the table holds it (no id is decoded)."""

    def __init__(self, keep: str):
        self.keep = keep

    def process(self, item):
        key, grouped = item
        table = next(iter(grouped[IDS]), None)
        lookups = grouped["lookups"]
        if table is None:
            if next(iter(lookups), None) is not None:
                raise RuntimeError(f"near dedup: edges refer to batch {key.hex()}, whose id table is missing "
                                   "(the signature stage sends one per batch)")
            return
        blob, offsets, lengths = table
        offsets = np.frombuffer(offsets, dtype=np.uint32)
        lengths = None if lengths is None else np.frombuffer(lengths, dtype=np.int64)
        for row, edge in lookups:
            node = node_key(0 if lengths is None else -int(lengths[row]), blob[offsets[row]:offsets[row + 1]])
            yield edge, (key + row.to_bytes(4, "little"), node)


def _join_ends(item):
    """An edge and its two resolved ends -> the edge between their nodes, the smaller first (none when both
    references are one node: the same id and priority in two batches)."""
    edge, ends = item
    nodes = dict(ends)
    u, v = nodes[edge[:_REF]], nodes[edge[_REF:]]
    if u != v:
        yield (u, v) if u < v else (v, u)


class CandidateEdges(beam.PTransform):
    """Records -> the distinct candidate edges between :func:`~textbooks.curate.union_find.node_key` nodes
    (see the module docstring)."""

    def __init__(self, config: MinHashConfig, stage: str = "near_dedup"):
        super().__init__()
        self.config = config
        self.stage = stage

    def expand(self, records):
        sigs = records | "Signatures" >> beam.ParDo(_SignatureDoFn(self.config, self.stage)).with_outputs(
                IDS, main="bands")
        lookups = (sigs.bands
                   | "Buckets" >> beam.GroupByKey()
                   | "Edges" >> beam.ParDo(_BucketEdgesDoFn(self.config, self.stage))
                   | "DistinctRefs" >> beam.Distinct()
                   | "Lookups" >> beam.FlatMap(_requests))
        return ({IDS: sigs[IDS], "lookups": lookups}
                | "ByBatch" >> beam.CoGroupByKey()
                | "Resolve" >> beam.ParDo(_ResolveDoFn(self.config.keep))
                | "ByEdge" >> beam.GroupByKey()
                | "JoinEnds" >> beam.FlatMap(_join_ends)
                | "DistinctEdges" >> beam.Distinct())

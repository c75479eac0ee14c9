"""Deduplication: exact (normalized-text hash) and near-duplicate (MinHash LSH) as Beam transforms.

Exact: documents are keyed by a 16-byte digest of their normalized text (:func:`textnorm.exact_key`), grouped,
and the smallest id of each group is kept.

Near-duplicates (Broder's MinHash with LSH banding, as FineWeb): each document's word shingles (``shingle_size``
consecutive normalized word tokens) are hashed; ``num_bands × rows_per_band`` universal hash functions give
the signature, computed for a batch of documents at once with numpy (:mod:`textbooks.curate.minhash`, where
the configuration, the hashing and the in-memory algorithm live); each band of the signature gets a 64-bit band
hash (:meth:`MinHasher.band_hashes`). Then

1. Documents sharing a band hash are candidates (:mod:`textbooks.curate.lsh`). Workers send band hashes in
   batches of ``batch_size`` documents, one element per bucket shard (``band × bucket_shards + hash mod
   bucket_shards``) holding the hashes as bytes and their members as rows of the batch, and each batch's ids
   once, in an id table under the batch's key: the shuffle moves a few hundred elements per batch instead of
   ``num_bands`` per document, 12 bytes per document and band, no id. A ``GroupByKey`` on the shard sorts its
   hashes and each run of equal ones (an LSH bucket) emits star edges from one member to the others (with
   ``verify_threshold`` only pairs whose signatures agree on at least that fraction of positions, checked
   pairwise in buckets of up to 64 documents) between document references; only the ends of the distinct
   edges are looked up in their batches' id tables, which gives the edges between nodes that sort like
   ``(priority, id)``, each one bytes object (the rank and the id's UTF-8).
2. Connected components of the candidate graph (:mod:`textbooks.curate.components`): distributed
   large-star/small-star rounds (no worker holds more than its share of the edges), or, for a candidate graph
   of at most ``ComponentsConfig.union_find_max_edges`` distinct edges, a union-find on one worker; the choice
   is made at run time from the edge count (or forced by ``ComponentsConfig.method``) and the counters
   ``near_dedup/components_union_find`` / ``near_dedup/components_distributed`` say which ran. Both give the
   same clusters. On the local runners ``'auto'`` is the union-find, chosen when the graph is built, so the
   rounds' ~45 stages are not built: with a run-time choice those runners ran each of them on every worker
   with no input, and each left its descriptor and a cached bundle processor behind (about 0.4 MB), which
   raised the largest worker (2 workers, runs alternated on a busy machine, medians of 4 and 6 pairs: 250 MB
   (244-257) -> 221 (219-225) at 50k documents, 289 (274-296) -> 267 (255-276) at 100k, where more of the
   peak comes before those stages), in no more time (about 9% less at 50k, the same at 100k).
3. One document per component survives: the smallest by the ``keep`` policy (``'min_id'``: smallest id;
   ``'longest'``: most characters, then smallest id), a deterministic choice. The others are dropped with
   ``meta.curation = {reason: 'near_duplicate', duplicate_of, cluster_size}``. The decisions (one per dropped
   document: its id, the survivor's id and the cluster size) reach the records in one of three ways, chosen
   by ``decisions`` (``'auto'``, the default, chooses ``'reread'`` where it applies and else ``'side_input'``
   on the local runners, the DirectRunner and the FnApiRunner, and ``'join'`` on every other runner):

   * ``'join'``: records and decisions are keyed by id and joined with ``CoGroupByKey``; the
     shuffle spreads both over the workers, so no worker holds more than its share of either, on any runner
     and at any size (on the DirectRunner with several workers through bounded bundles,
     :mod:`textbooks.curate.local_runner`: Beam's own local runner would send each worker its whole share
     in one message).
   * ``'side_input'``: the decisions are a side input, one compact table (:mod:`textbooks.curate.decisions`),
     and the records stream past it without a shuffle, so only ids and band hashes are shuffled; every worker
     holds every decision (a 16-byte digest of the id and 8 bytes of size and survivor row per dropped
     document, and each survivor's id once): only for runs whose dropped ids fit in each worker's memory,
     never at web scale (hundreds of millions of dropped documents). On a local runner it is the cheaper path: that runner's
     driver holds every stage's input in memory whatever the path (a join adds a grouping of all records
     there), and the join costs an extra encoding and decoding of every record; measured with 2 workers,
     the side input took about 13% less CPU at 50k and 100k documents and its driver peaked about 25% lower.
   * ``'reread'``: as ``'side_input'``, but the records that the decisions are applied to are read again
     from the input files (:class:`textbooks.curate.io.Reread`: the same parsing, counting nothing, dropping
     what the first read rejected), datatrove's design: the records of the first read feed only the
     signatures, so no text goes through a shuffle or a runner's materialization, and a worker streams its
     files line by line. On the local runner with 2 workers and bounded bundles, the largest worker peaked
     at 215 MB at 50k documents and 224 MB at 100k (a quiet run; the history of this peak is in
     ``bench/NOTES.md``). What still grows there is the first stage (reading, signatures, band hashes: an
     input file is one element, so it is read in one bundle) and the one-worker union-find, which holds
     every edge by design; with the distributed components instead, 286 and 302 MB (a moderately busy
     machine). It needs the stage's input to be the records exactly as read, so the pipeline offers it
     (``NearDedup(reread=...)``) only to a near dedup that is the first stage, without the id check
     (:func:`textbooks.curate.pipeline.build_pipeline`); the input is read twice.

   All give the same kept and dropped records; the counter ``near_dedup/decisions_<path>`` (bundles applied)
   says which ran.

The probability that a pair with Jaccard similarity ``s`` becomes a candidate is ``1 - (1 - s**r)**b``; with the
FineWeb setting (5-grams, 14 bands × 8 rows) pairs above ~0.75 are found with high probability.

:func:`near_duplicate_clusters` runs the same algorithm in memory for use from Python without Beam.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import gin

from textbooks.curate import stages
from textbooks.curate.components import Components
from textbooks.curate.decisions import DropTable, DropTableFn
from textbooks.curate.local_workers import is_local_runner
from textbooks.curate.lsh import CandidateEdges
from textbooks.curate.minhash import DECISIONS, MinHashConfig, MinHasher, bucket_edges, near_duplicate_clusters
from textbooks.curate.textnorm import count_tokens, exact_key
from textbooks.curate.union_find import connected_components

CLUSTERS = "clusters"
__all__ = ["CLUSTERS", "DECISIONS", "ExactDedup", "ExactDedupConfig", "MinHashConfig", "MinHasher", "NearDedup",
           "bucket_edges", "connected_components", "decisions_path", "near_duplicate_clusters"]


@gin.configurable
@dataclasses.dataclass
class ExactDedupConfig:
    """Exact deduplication on normalized text (NFKC, whitespace collapsed, and the options below)."""

    lowercase: bool = True
    strip_punctuation: bool = False
    normalize_digits: bool = False


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


class _ApplyDecisionsDoFn(beam.DoFn):
    """Records -> kept, or dropped with their decision. With ``decisions='join'`` the elements are the
    ``CoGroupByKey`` groups ``(id, {'record': [(tokens, record)], 'decision': [...]})``; with ``'side_input'``
    and ``'reread'`` they are the records (read again from the input with ``'reread'``), and the decisions
    are a side input, one :class:`~textbooks.curate.decisions.DropTable`."""

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

    def process(self, item, decisions: DropTable | None = None):
        if decisions is not None:
            yield from self._apply(item, decisions.get(item["id"]))
            return
        _, joined = item
        found = list(joined["decision"])
        for tokens, record in joined["record"]:
            yield from self._apply(record, found[0] if found else None, tokens)

    def _apply(self, record: dict, decision: dict | None, tokens: int | None = None):
        tokens = self.counters.seen(record, tokens)
        if decision is not None:
            self.counters.dropped(record, self.reason, tokens)
            yield beam.pvalue.TaggedOutput(stages.DROPPED, stages.mark_dropped(
                    record, self.stage, self.reason, **decision))
        else:
            self.counters.kept(record, tokens)
            yield record


def decisions_path(config: MinHashConfig, pipeline: beam.Pipeline, reread: bool = False) -> str:
    """The way decisions reach the records in ``pipeline``: ``config.decisions``, or for ``'auto'``
    ``'reread'`` where the stage can read its input again (``reread``) and ``'side_input'`` on a local runner,
    ``'join'`` on any other (see the module docstring)."""
    path = config.decisions
    if path == "auto":
        local = is_local_runner(pipeline)
        path = ("reread" if reread else "side_input") if local else "join"
    if path == "reread" and not reread:
        raise ValueError("MinHashConfig.decisions = 'reread' needs near dedup to see the records exactly as read "
                         "(the first stage after reading, with ReadConfig.check_unique_ids = False); choose "
                         "'auto', 'side_input' or 'join' for this pipeline")
    return path


class NearDedup(beam.PTransform):
    """Beam stage: MinHash LSH near-deduplication (see the module docstring for the steps).

    Returns a dict of PCollections: ``kept``, ``dropped``, ``clusters`` (one summary per cluster).
    """

    def __init__(self, config: MinHashConfig | None = None, stage: str = "near_dedup",
                 reread: beam.PTransform | None = None):
        super().__init__()
        self.config = config or MinHashConfig()
        self.stage = stage
        self.reread = reread  # a transform of the pipeline's root that yields the input records again

    def expand(self, records):
        edges = records | "Candidates" >> CandidateEdges(self.config, self.stage)
        comps = edges | "Components" >> Components(self.config.components, self.stage, CLUSTERS)
        path = decisions_path(self.config, records.pipeline, self.reread is not None)
        apply = _ApplyDecisionsDoFn(self.stage, "near_duplicate", path)
        if path in ("side_input", "reread"):
            args = [beam.pvalue.AsSingleton(comps["decisions"] | "DropTable" >> beam.CombineGlobally(DropTableFn()))]
            # With 'reread' the texts are read again next to the decisions: `records` feeds only the signatures.
            items = records if path == "side_input" else records.pipeline | "Reread" >> self.reread
        else:
            # The token count travels with the record: here it is still the str the step before counted.
            keyed = records | "KeyById" >> beam.Map(lambda r: (r["id"], (count_tokens(r["text"]), r)))
            items, args = {"record": keyed, "decision": comps["decisions"]} | "Join" >> beam.CoGroupByKey(), []
        out = items | "Apply" >> beam.ParDo(apply, *args).with_outputs(stages.DROPPED, main="kept")
        return {"kept": out.kept, "dropped": out[stages.DROPPED], "clusters": comps[CLUSTERS]}

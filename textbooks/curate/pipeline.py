"""The curation pipeline as one Apache Beam pipeline, and its gin-configurable top-level :func:`curate`.

Stages, in order: read → heuristics → exact dedup → near dedup → decontamination → judge → classifier → write.

Every stage is optional (``None`` turns it off) and usable alone (see each module). The pipeline runs on the
DirectRunner (``direct_running_mode='multi_processing'`` with ``direct_num_workers`` processes; with more than
one worker, run as :class:`~textbooks.curate.local_runner.BoundedBundleRunner`, whose bundles hold at most
``local_max_bundle_bytes`` of input each) and unchanged on Dataflow, Flink or Spark (pass ``runner`` and
``pipeline_args``); all file access goes through Beam's filesystems, and the only driver-side work is listing
inputs, building the decontamination index, and writing the report from the pipeline's counters and side files
after it finished.

Output layout of ``output_dir``::

    <split>-SSSSS-of-NNNNN.jsonl.gz, manifest.json   kept documents in the shard format (role = ``role``)
    rejects/rejects-*.jsonl.gz                       unreadable input with reason, file and line
    dropped/dropped-*.jsonl.gz                       dropped documents with meta.curation {stage, reason, ...}
    dedup/clusters-*.jsonl.gz                        duplicate clusters (kept id, size, members)
    decontam/index.{npz,json}, decontam/matches-*    benchmark index and every removal with its item
    report/report.{md,json}, report/*.png            the curation report
    config.gin                                       the operative gin config (when gin was used)
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Sequence

import apache_beam as beam
import gin
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from textbooks.curate import report as report_lib
from textbooks.curate import stages, writers
from textbooks.curate.classifier import ClassifierFilter, ClassifierStageConfig, QualityClassifier, expand_path
from textbooks.curate.decontam import Decontaminate, DecontamConfig, build_index
from textbooks.curate.dedup import ExactDedup, ExactDedupConfig, MinHashConfig, NearDedup
from textbooks.curate.heuristics import HeuristicFilter, HeuristicsConfig
from textbooks.curate.input_specs import ReadConfig, parse_input
from textbooks.curate.local_runner import DEFAULT_MAX_BUNDLE_BYTES, BoundedBundleRunner
from textbooks.curate.io import ReadInputs
from textbooks.curate.judge import JudgeConfig, JudgeStage
from textbooks.curate.local_workers import worker_arenas
from textbooks.curate.textnorm import count_tokens
from textbooks.data import paths as data_paths
from textbooks.data import records as rec
from textbooks.data.manifest import MANIFEST_NAME, read_manifest

logger = logging.getLogger(__name__)
# The stages in pipeline order: each one's Beam label and how its transform is built from the plan and the
# transform that reads the stage's input again (None unless it can: see _reread_for); every transform returns
# stages.StageOutputs.
_STAGES = {
    "heuristics": ("Heuristics", lambda plan, reread: HeuristicFilter(plan.heuristics)),
    "exact_dedup": ("ExactDedup", lambda plan, reread: ExactDedup(plan.exact_dedup)),
    "near_dedup": ("NearDedup", lambda plan, reread: NearDedup(plan.near_dedup, reread=reread)),
    "decontam": ("Decontam", lambda plan, reread: Decontaminate(plan.decontam, plan.decontam_index_prefix)),
    "judge": ("Judge", lambda plan, reread: JudgeStage(plan.judge)),
    "classifier": ("Classifier", lambda plan, reread: ClassifierFilter(plan.classifier)),
}
STAGE_ORDER = tuple(_STAGES)
_OWNED = ("rejects", "dropped", "dedup", "decontam", "report")
BUILDER = "textbooks.curate"


@dataclasses.dataclass
class Plan:
    """Everything the pipeline needs, resolved on the driver."""

    inputs: list
    output_dir: str
    role: str
    splits: tuple[str, ...]
    num_shards: int | dict
    read: ReadConfig
    heuristics: HeuristicsConfig | None = None
    exact_dedup: ExactDedupConfig | None = None
    near_dedup: MinHashConfig | None = None
    decontam: DecontamConfig | None = None
    judge: JudgeConfig | None = None
    classifier: ClassifierStageConfig | None = None
    samples_per_group: int = 5
    write_dropped: bool = True
    description: str = ""
    decontam_index_prefix: str | None = None
    classifier_metadata: dict | None = None
    gzip_level: int = writers.DEFAULT_GZIP_LEVEL

    @property
    def stage_names(self) -> list[str]:
        return [name for name in STAGE_ORDER if getattr(self, name) is not None]

    def shards_for(self, split: str) -> int:
        return self.num_shards.get(split, 0) if isinstance(self.num_shards, dict) else int(self.num_shards)


class _ToOutputRole(beam.DoFn):
    """Sets the output role (keeping the input role in ``meta.curated_from``) and counts output per split."""

    def __init__(self, role: str):
        self.role = role

    def setup(self):
        self.counters = stages.StageCounters("output")

    def process(self, record: dict):
        if record.get("role") != self.role:
            record = stages.with_meta(record, curated_from=record.get("role"))
            record["role"] = self.role
        tokens = count_tokens(record["text"])
        for name in ("docs", f"docs/{record['split']}"):
            self.counters.inc(name)
        for name in ("tokens", f"tokens/{record['split']}"):
            self.counters.inc(name, tokens)
        yield record


def _reread_for(plan: Plan, reader: ReadInputs, index: int) -> beam.PTransform | None:
    """The transform that yields the input of the ``index``-th stage again from the input files, or None.

    Only the first stage sees the records exactly as read (a later one sees what earlier stages kept or
    rewrote: C4 line removal changes texts, exact dedup drops some), and only without the id check (it drops
    repeated ids, which a second read cannot tell); read again, the same files give the same records (parsing,
    ids and split assignment are deterministic), and the second read counts nothing and drops what the first
    rejected, so every unit is still counted once."""
    if index != 0 or plan.read.check_unique_ids:
        return None
    return reader.reread()


def build_pipeline(p: beam.Pipeline, plan: Plan) -> None:
    """Adds all stages of ``plan`` to ``p`` (the caller runs it)."""
    reader = ReadInputs(plan.inputs, plan.read, plan.splits)
    read = p | "Read" >> reader
    records, rejects = read["records"], read["rejects"]
    dropped: list[beam.PCollection] = []
    side: dict[str, list[beam.PCollection]] = collections.defaultdict(list)  # clusters, matches, scores
    for index, name in enumerate(plan.stage_names):
        label, make = _STAGES[name]
        out = records | label >> make(plan, _reread_for(plan, reader, index))
        records = out[stages.KEPT]
        dropped.append(out[stages.DROPPED])
        for key, pcoll in out.items():
            if key not in (stages.KEPT, stages.DROPPED):
                side[key].append(pcoll)
    clusters, matches, scores = side["clusters"], side["matches"], side["scores"]

    kept = records | "OutputRole" >> beam.ParDo(_ToOutputRole(plan.role))
    parts = kept | "BySplit" >> beam.Partition(lambda r, n, s=plan.splits: s.index(r["split"]), len(plan.splits))
    files = []
    for split, part in zip(plan.splits, parts):
        files.append(part | f"Write_{split}" >> writers.WriteShards(plan.output_dir, split, plan.shards_for(split),
                                                                            plan.gzip_level))
    stats = (kept
             | "KeyBySplit" >> beam.Map(lambda r: (r["split"], r))
             | "SplitStats" >> beam.CombinePerKey(writers.SplitStatsFn()))
    all_files = tuple(files) | "AllFiles" >> beam.Flatten()
    meta = {"stages": plan.stage_names, "builder": BUILDER}
    (p
     | "ManifestTrigger" >> beam.Create([None])
     | "Manifest" >> beam.Map(writers.write_manifest, output_dir=plan.output_dir, role=plan.role,
                              stats=beam.pvalue.AsDict(stats), files=beam.pvalue.AsList(all_files),
                              description=plan.description, meta=meta))

    level = plan.gzip_level
    rejects | "WriteRejects" >> writers.WriteJsonl(rec.join(plan.output_dir, "rejects", "rejects"), gzip_level=level)
    dropped_all = (tuple(dropped) | "AllDropped" >> beam.Flatten()) if dropped else \
        (p | "NoDropped" >> beam.Create([]))
    if plan.write_dropped:
        dropped_all | "WriteDropped" >> writers.WriteShards(rec.join(plan.output_dir, "dropped"), "dropped", 0,
                                                                  level)
    if clusters:
        (tuple(clusters) | "AllClusters" >> beam.Flatten()
         | "WriteClusters" >> writers.WriteJsonl(rec.join(plan.output_dir, "dedup", "clusters"), gzip_level=level))
    if matches:
        (tuple(matches) | "AllMatches" >> beam.Flatten()
         | "WriteMatches" >> writers.WriteJsonl(rec.join(plan.output_dir, "decontam", "matches"), gzip_level=level))
    report_dir = rec.join(plan.output_dir, "report")
    if scores:
        ranges = {}
        if plan.judge is not None:
            ranges[plan.judge.score_name] = (0.0, 5.0)
        if plan.classifier is not None:
            meta_c = plan.classifier_metadata or {}
            name = plan.classifier.score_name or meta_c.get("name", "quality")
            ranges[name] = (0.0, 5.0) if meta_c.get("model") == "ridge" else (0.0, 1.0)
        (tuple(scores) | "AllScores" >> beam.Flatten()
         | "Histograms" >> report_lib.ScoreHistograms(ranges)
         | "WriteHistograms" >> writers.WriteJsonl(rec.join(report_dir, "histograms"), gzip_level=level))
    kept_samples = kept | "SampleKept" >> report_lib.Samples("kept", plan.samples_per_group)
    dropped_samples = dropped_all | "SampleDropped" >> report_lib.Samples(None, plan.samples_per_group)
    ((kept_samples, dropped_samples) | "AllSamples" >> beam.Flatten()
     | "WriteSamples" >> writers.WriteJsonl(rec.join(report_dir, "samples"), gzip_level=level))


def _clean_outputs(output_dir: str, splits: Sequence[str], overwrite: bool | None) -> None:
    """Removes earlier curated output. ``overwrite=None`` replaces only output this module wrote (its manifest
    says ``builder: textbooks.curate``) and refuses to touch shards written by something else."""
    existing = [m.path for pattern in [rec.shard_pattern(output_dir, s) for s in splits]
                for m in FileSystems.match([pattern])[0].metadata_list]
    owned = [m.path for name in _OWNED for m in FileSystems.match([rec.join(output_dir, name, "*")])[0].metadata_list]
    manifest = rec.join(output_dir, MANIFEST_NAME)
    if not (existing or owned or FileSystems.exists(manifest)):
        return
    if overwrite is None:
        builder = None
        if FileSystems.exists(manifest):
            try:
                builder = read_manifest(output_dir).meta.get("builder")
            except (rec.RecordError, OSError):
                builder = None
        overwrite = builder == BUILDER or not existing
    if not overwrite:
        raise FileExistsError(f"{output_dir} already holds {len(existing)} shard files not written by curation; "
                              f"pass overwrite=True (gin: curate.overwrite = True) or choose another output_dir")
    FileSystems.delete(existing + owned + ([manifest] if FileSystems.exists(manifest) else []))


def run_plan(plan: Plan, *, runner: str = "DirectRunner", direct_num_workers: int = 2,
             direct_running_mode: str = "multi_processing", pipeline_args: Sequence[str] = (),
             local_max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES, overwrite: bool | None = None,
             config_for_report: dict | None = None) -> dict:
    """Prepares the driver-side inputs, runs the pipeline, writes and returns the report."""
    rec.makedirs(plan.output_dir)
    _clean_outputs(plan.output_dir, plan.splits, overwrite)
    decontam_summary = None
    if plan.decontam is not None:
        plan.decontam_index_prefix = rec.join(plan.output_dir, "decontam", "index")
        rec.makedirs(rec.join(plan.output_dir, "decontam"))
        index = build_index(plan.decontam)
        index.save(plan.decontam_index_prefix)
        decontam_summary = index.summary()
    if plan.classifier is not None:
        plan.classifier_metadata = QualityClassifier.load(plan.classifier.path).metadata
    options = {"runner": runner}
    if not any(a.startswith("--default_sdk_harness_log_level") for a in pipeline_args):
        # Workers log at the level the driver shows Beam's own logs (WARNING unless --verbose).
        options["default_sdk_harness_log_level"] = logging.getLevelName(
            max(logging.getLogger("apache_beam").getEffectiveLevel(), logging.DEBUG))
    runner_object = None
    if runner in ("DirectRunner", "direct"):
        options.update(direct_num_workers=direct_num_workers, direct_running_mode=direct_running_mode)
        if direct_num_workers != 1:  # the DirectRunner's batch runner, with each worker's input in bounded bundles
            runner_object = BoundedBundleRunner(local_max_bundle_bytes)
    p = beam.Pipeline(runner=runner_object, options=PipelineOptions(list(pipeline_args), **options))
    build_pipeline(p, plan)
    with worker_arenas(runner, direct_running_mode):  # local worker processes: fewer malloc arenas
        result = p.run()
        result.wait_until_finish()
    counters = report_lib.counters_from_result(result)
    report = report_lib.build_report(output_dir=plan.output_dir, role=plan.role, counters=counters,
                                     stage_names=plan.stage_names, splits=plan.splits,
                                     config=config_for_report or {}, classifier=plan.classifier_metadata,
                                     decontam_index=decontam_summary)
    try:
        text = gin.operative_config_str()
    except Exception:  # gin not in use.
        text = ""
    if text.strip():
        with FileSystems.create(rec.join(plan.output_dir, "config.gin")) as f:
            f.write(text.encode())
    logger.info("curation report written to %s", rec.join(plan.output_dir, "report", "report.md"))
    return report


def _describe(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return value


@gin.configurable
def curate(*, inputs: Sequence, role: str, output_dir: str | None = None,
           splits: Sequence[str] = ("train", "validation"), num_shards: int | dict = 0,
           read: ReadConfig | None = None, heuristics: HeuristicsConfig | None = None,
           exact_dedup: ExactDedupConfig | None = None, near_dedup: MinHashConfig | None = None,
           decontam: DecontamConfig | None = None, judge: JudgeConfig | None = None,
           classifier: ClassifierStageConfig | None = None, samples_per_group: int = 5, write_dropped: bool = True,
           description: str = "", gzip_level: int = writers.DEFAULT_GZIP_LEVEL, overwrite: bool | None = None,
           runner: str = "DirectRunner", direct_num_workers: int = 2, direct_running_mode: str = "multi_processing",
           local_max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES, pipeline_args: Sequence[str] = ()) -> dict:
    """Curates ``inputs`` into ``output_dir`` as one Beam pipeline; returns the report (also written to disk).

    Args:
        inputs: input specs: :class:`~textbooks.curate.input_specs.InputSpec`, dicts, or ``'<kind>:<path>'`` strings
            (``'role:web_raw'``, ``'jsonl:/data/*.jsonl.gz'``, ``'source:/usr/lib/python3.11'``...).
        role: the data role of the output (recorded on every kept record).
        output_dir: where the shards go (default: ``<data_root>/<role>``).
        splits: output splits; input records of other splits are rejected (``unknown_split``).
        num_shards: files per split (an int, or a dict split -> int); 0 lets the runner choose.
        read: reading limits (document size, empty documents, split assignment, id check).
        heuristics / exact_dedup / near_dedup / decontam / judge / classifier: the stages; None turns one off.
        samples_per_group: samples of kept documents and of each drop reason in the report.
        write_dropped: write dropped documents to ``dropped/``.
        description: the manifest's description.
        gzip_level: gzip level of every file written, 1 (fastest, the default: compression is the largest CPU
            item of a run that keeps most documents) to 9 (smallest; about 15% smaller files than 1 on text, at
            several times the CPU); see :mod:`textbooks.curate.writers`.
        overwrite: True replaces whatever shards ``output_dir`` holds; None (default) replaces only earlier
            curation output and fails on shards written by something else; False fails on any.
        runner / direct_num_workers / direct_running_mode / pipeline_args: how Beam runs (pipeline_args are
            passed to ``PipelineOptions``, e.g. ``['--project=...', '--region=...', '--temp_location=gs://...',
            '--extra_package=dist/textbooks-0.1.0.tar.gz']``; remote workers need this package and, for the
            MiniLM encoder or benchmarks, the data packages installed, e.g. in a custom container image).
        local_max_bundle_bytes: on the DirectRunner with several workers, the most encoded input one bundle
            gets (:mod:`textbooks.curate.local_runner`): a worker's memory then stays flat as the corpus grows,
            apart from single keys that hold more (the one-worker union-find); other runners bundle themselves.

    Returns:
        The report dict (see :mod:`textbooks.curate.report`); ``report['reconciliation']['balanced']`` says
        whether every input unit is accounted for.
    """
    if output_dir is None:
        output_dir = data_paths.role_dir(role)
    output_dir = expand_path(output_dir)
    splits = tuple(splits)
    for s in splits:
        rec.shard_name(s, 0, 1)
    plan = Plan(inputs=[parse_input(i) for i in inputs], output_dir=output_dir, role=role, splits=splits,
                num_shards=num_shards, read=read or ReadConfig(), heuristics=heuristics, exact_dedup=exact_dedup,
                near_dedup=near_dedup, decontam=decontam, judge=judge, classifier=classifier,
                samples_per_group=samples_per_group, write_dropped=write_dropped, description=description,
                gzip_level=writers.check_gzip_level(gzip_level))
    config = {k: _describe(getattr(plan, k))
              for k in ("inputs", "splits", "num_shards", "read", "gzip_level", *STAGE_ORDER)}
    config.update(runner=runner, direct_num_workers=direct_num_workers, direct_running_mode=direct_running_mode,
                  local_max_bundle_bytes=local_max_bundle_bytes)
    return run_plan(plan, runner=runner, direct_num_workers=direct_num_workers,
                    direct_running_mode=direct_running_mode, pipeline_args=pipeline_args,
                    local_max_bundle_bytes=local_max_bundle_bytes, overwrite=overwrite, config_for_report=config)


def output_files(output_dir: str, split: str) -> list[str]:
    """The shard files of ``split`` written by a curation run."""
    return sorted(m.path for m in FileSystems.match([rec.shard_pattern(output_dir, split)])[0].metadata_list)

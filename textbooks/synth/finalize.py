"""Turns a run's completions into shards: post-processing, train/validation split, one folder per data role.

Writes ``<shards_dir>/<role>/{train,validation}-*.jsonl.gz`` + ``manifest.json`` (the shard format of
:mod:`textbooks.data.records`), the rejected outputs with their reasons in ``<run_dir>/rejected/``, the
diversity report (``<run_dir>/diversity.{md,json,png}``) and ``<run_dir>/summary.json``. Finalizing is
deterministic and can be repeated (e.g. after a resumed run completed more prompts): the shards are rewritten.

Each record's ``meta`` holds the prompt id, template id and file, slot value ids, topic id and path or seed
extract id, the expansion seed, the sampling parameters (with the per-sample seed), the teacher model, the
finish reason and token usage.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
from typing import Any, Callable

from textbooks.data import records
from textbooks.data.manifest import Manifest, write_manifest
from textbooks.synth import completions, diversity, postprocess

logger = logging.getLogger(__name__)

DESCRIPTIONS = {
    "code_textbooks": "Synthetic Python textbooks (prose interleaved with code) written by a teacher model.",
    "code_exercises": "Synthetic Python exercises (signature, docstring, solution, tests) written by a teacher model.",
    "synthetic_textbooks": "Synthetic textbooks, lessons and stories for common sense and world knowledge written "
                           "by a teacher model.",
}


def _id_rank(record_id: str) -> str:
    """The order documents are held out in: a hash of the id, so the choice is deterministic and unrelated to
    the order of the prompts."""
    return hashlib.sha1(record_id.encode("utf-8")).hexdigest()


def validation_count(kept: int, validation_fraction: float, min_validation_docs: int = 0) -> int:
    """How many of ``kept`` documents of one role are held out: ``ceil(validation_fraction x kept)`` and at least
    ``min_validation_docs``, as long as one train document remains (a fraction of 1 or more holds out all).

    Raises:
        ValueError: a negative fraction or minimum.
    """
    if validation_fraction < 0 or min_validation_docs < 0:
        raise ValueError(f"validation_fraction={validation_fraction}, min_validation_docs={min_validation_docs}: "
                         f"both must be at least 0")
    if validation_fraction >= 1:
        return kept
    # Rounded first so that e.g. 0.2 x 15 = 3.0000000000000004 holds out 3, not 4.
    wanted = max(math.ceil(round(validation_fraction * kept, 9)), min_validation_docs)
    return max(0, min(wanted, kept - 1))


def assign_splits(recs: list[records.Record], validation_fraction: float, min_validation_docs: int = 0) -> None:
    """Sets ``split`` of one role's kept records: the :func:`validation_count` records ranked first by the hash
    of their id go to ``validation``, the others to ``train``."""
    k = validation_count(len(recs), validation_fraction, min_validation_docs)
    held = {r.id for r in sorted(recs, key=lambda r: _id_rank(r.id))[:k]}
    for r in recs:
        r.split = "validation" if r.id in held else "train"


def finalize(run_dir: str, *, shards_dir: str | None = None, source: str | None = None, license: str = "teacher-terms",
             stand_in: str | None = None, validation_fraction: float = 0.01, min_validation_docs: int = 0,
             docs_per_shard: int = 10_000,
             config: postprocess.PostprocessConfig | None = None,
             test_runner: Callable[[list[str]], list[Any]] | None = None, report: bool = True,
             near_dup_threshold_report: float = 0.8) -> dict:
    """Post-processes the completions of ``run_dir`` and writes shards per role.

    Args:
        run_dir: the run folder.
        shards_dir: where role folders go (default ``run_dir``); e.g. the data root.
        source: the records' ``source`` (default ``synth:<teacher model>``).
        license: the records' ``license`` (set it to the teacher's terms for its outputs).
        stand_in: when the teacher is not a real teacher LLM, what these outputs stand in for (recorded in
            every record's meta and in the manifest).
        validation_fraction: share of each role's kept records held out as its validation split: exactly
            ``ceil(validation_fraction x kept)`` of them, those first by a hash of the id (one train record
            always remains, unless the fraction is 1 or more).
        min_validation_docs: hold out at least this many records per role, as long as one train record
            remains; small runs need it.
        docs_per_shard: target documents per shard file.
        config: post-processing settings.
        test_runner: replaces the sandbox for executing exercises (tests).
        report: write the diversity report.
        near_dup_threshold_report: Jaccard threshold of the report's near-duplicate rate.

    Returns:
        The summary (also written to ``<run_dir>/summary.json``).
    """
    config = config or postprocess.PostprocessConfig()
    shards_dir = shards_dir or run_dir
    specs = completions.load_manifest(run_dir)
    part_stats: collections.Counter = collections.Counter()
    outputs = completions.collect_outputs(run_dir, part_stats)
    info_path = os.path.join(run_dir, completions.RUN_INFO)
    info = json.load(open(info_path, encoding="utf-8")) if os.path.exists(info_path) else {}
    samples = []
    for spec in specs:
        out = outputs.get(spec.id)
        if out is None:
            continue
        teacher = out.get("model") or info.get("model", "unknown")
        meta = {**spec.meta, "prompt_id": spec.id, "role": spec.role, "teacher": teacher,
                "finish_reason": out.get("finish_reason"), "usage": out.get("usage"), "sampling": spec.sampling}
        if stand_in:
            meta["stand_in"] = stand_in
        samples.append(postprocess.Sample(id=f"synth-{spec.id}", text=out["text"], role=spec.role, meta=meta,
                                          template_options=spec.postprocess,
                                          slot_values=spec.meta.get("slots") or {}))
    pp_summary = postprocess.process(samples, config, test_runner, cache_dir=os.path.join(run_dir, "cache"))

    by_role: dict[str, list[records.Record]] = collections.defaultdict(list)
    rejected = []
    for s in samples:
        teacher = s.meta["teacher"]
        rec = records.Record(id=s.id, text=s.text, role=s.role, source=source or f"synth:{teacher}", license=license,
                             split="train", meta=s.meta)
        if s.reject_reason is None:
            by_role[s.role].append(rec)
        else:
            rec.split = "rejected"
            rec.meta = {**rec.meta, "reject": {"reason": s.reject_reason, "detail": s.reject_detail}}
            rejected.append(rec)

    for recs in by_role.values():
        assign_splits(recs, validation_fraction, min_validation_docs)
    written = {}
    for role, recs in sorted(by_role.items()):
        role_dir = records.join(shards_dir, role)
        splits = {}
        for split in ("train", "validation"):
            part = [r for r in recs if r.split == split]
            n = max(1, math.ceil(len(part) / max(1, docs_per_shard)))
            with records.ShardWriter(role_dir, split, n) as w:
                for r in part:
                    w.write(r)
            splits[split] = w.stats
        manifest = Manifest(role=role, splits=splits, stand_in=stand_in,
                                    description=DESCRIPTIONS.get(role, "Synthetic documents written by a teacher model."),
                                    meta={"builder": "textbooks.synth", "run_dir": os.path.abspath(run_dir),
                                          "teacher": info.get("model"), "endpoint": info.get("endpoint"),
                                          "templates": info.get("templates"), "expansion_seed": info.get("seed"),
                                          "teacher_info": info.get("teacher_info"),
                                          "generation": {k: info.get(k) for k in ("num_samples", "sampling",
                                                                                  "template_weights",
                                                                                  "topics_file")},
                                          "decontamination": pp_summary["decontamination"]})
        write_manifest(role_dir, manifest)
        written[role] = {"dir": role_dir, "train": splits["train"].num_docs,
                         "validation": splits["validation"].num_docs}
    if rejected:
        records.write_shards(rejected, os.path.join(run_dir, "rejected"), "rejected")

    summary = {"prompts": len(specs), "completed": len(outputs), "missing": len(specs) - len(outputs),
               "part_files": dict(part_stats), "postprocess": pp_summary, "shards": written}
    if report:
        considered = [s for s in samples if s.reject_reason in (None, "near_duplicate", "contaminated")]
        docs = [{"text": s.text, "meta": s.meta} for s in considered]
        rep = diversity.diversity_report(docs, threshold=near_dup_threshold_report)
        rep["note"] = "computed on outputs that passed the per-sample filters, before near-dedup and decontamination"
        summary["diversity"] = diversity.write_report(rep, run_dir, title=f"Diversity report: {os.path.basename(os.path.abspath(run_dir))}",
                                                      lengths=[len(d["text"].split()) for d in docs])
    with open(os.path.join(run_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
        f.write("\n")
    return summary

"""A training run's summary: :class:`TrainResult`, its one-line form, and ``<model_dir>/summary.json``.

The summary is written once, by the run that trains to its end (or stops early). A later ``train`` on a model
dir whose newest checkpoint already reached ``train_steps`` trains nothing and writes nothing: it reads the
recorded summary back (:func:`finished_run`), so the finished run's loss, throughput and evaluation stay on
record, as do its metrics, TensorBoard events and operative config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time

from textbooks.data import files
from textbooks.progress import emit

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


@dataclasses.dataclass
class TrainResult:
    """What :func:`textbooks.train.trainer.train` returns (and writes to ``<model_dir>/summary.json``)."""

    model_dir: str
    start_step: int
    final_step: int
    final_loss: float | None
    tokens_per_second: float | None
    mfu: float | None
    wall_seconds: float
    stopped_by: str  # 'completed', 'signal', 'end_of_data' or 'nonfinite'
    skipped_steps: int
    last_checkpoint_step: int | None
    eval: dict[str, float] = dataclasses.field(default_factory=dict)
    # Loss-weighted tokens trained per data role over the whole run, resumed parts included (run_record.json).
    tokens_per_role: dict[str, float] = dataclasses.field(default_factory=dict)


def summary_line(r: TrainResult) -> str:
    """One line describing a finished run."""
    parts = [f"steps {r.start_step}->{r.final_step} ({r.stopped_by})"]
    if r.final_loss is not None:
        parts.append(f"final loss {r.final_loss:.4f}")
    if r.tokens_per_second:
        parts.append(f"{r.tokens_per_second:,.0f} tokens/s")
    if r.mfu is not None and math.isfinite(r.mfu):
        parts.append(f"MFU {100 * r.mfu:.1f}%")
    parts.append(f"{r.wall_seconds:.0f} s; last checkpoint: step {r.last_checkpoint_step}")
    return "; ".join(parts)


def write_summary(result: TrainResult) -> None:
    """Writes ``result`` to ``<result.model_dir>/summary.json`` (local files without TensorFlow; gs:// through
    tf.io.gfile)."""
    with files.open_file(files.join(result.model_dir, SUMMARY_FILE), "w") as f:
        json.dump(dataclasses.asdict(result), f, indent=2)


def read_summary(model_dir: str) -> TrainResult | None:
    """The summary recorded in ``model_dir``, or None when there is none (or it cannot be read)."""
    path = files.join(model_dir, SUMMARY_FILE)
    if not files.exists(path):
        return None
    try:
        with files.open_file(path, "r") as f:
            recorded = json.load(f)
    except ValueError as e:
        log.warning("%s is not valid JSON (%s); ignoring it", path, e)
        return None
    names = {f.name for f in dataclasses.fields(TrainResult)}
    required = {f.name for f in dataclasses.fields(TrainResult) if f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(recorded)) if isinstance(recorded, dict) else ["(not a JSON object)"]
    if missing:
        log.warning("%s is not a run summary (missing %s); ignoring it", path, ", ".join(missing))
        return None
    return TrainResult(**{k: recorded[k] for k in names if k in recorded})


def finished_run(model_dir: str, step: int, train_steps: int, last_checkpoint: int | None,
                 wall_start: float) -> TrainResult:
    """The result of ``train`` on a model dir whose newest checkpoint (``step``) reached ``train_steps``.

    Writes nothing. Returns the recorded summary when it describes that checkpoint; otherwise (the run was
    killed between its last checkpoint and its summary) a result with the step alone.
    """
    emit(f"{model_dir} already holds step {step} (train_steps {train_steps}): nothing to train; its "
         f"records are left as they are (raise TRAIN_STEPS to train on, or use another model dir)")
    recorded = read_summary(model_dir)
    if recorded is not None and recorded.final_step == step:
        return recorded
    return TrainResult(model_dir=model_dir, start_step=step, final_step=step, final_loss=None,
                       tokens_per_second=None, mfu=None, wall_seconds=time.time() - wall_start,
                       stopped_by="completed", skipped_steps=0, last_checkpoint_step=last_checkpoint)

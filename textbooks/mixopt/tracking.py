"""Experiment tracking of sweeps: TensorBoard always, Weights & Biases when installed and configured.

TensorBoard (written with the ``tensorboard`` package alone, no TensorFlow): one run per trial under
``<sweep_dir>/tensorboard/<trial_id>`` with the trial's hyperparameters (ratios, seed, point) for the HParams
dashboard and its final metrics as scalars, plus ``<sweep_dir>/tensorboard/_sweep`` with sweep-level progress
(trials done and failed) and, from ``textbooks mixopt``, the fit's cross-validated rank correlation. Point
TensorBoard at the sweep folder to see these next to each trial's own training curves (``trials/*/model``).

Weights & Biases: used when ``wandb`` is importable and configured (``WANDB_API_KEY`` or ``WANDB_MODE`` in
the environment, or ``TrackingSettings.wandb = True``). Each finished trial becomes one run, grouped per
sweep (``group=<sweep name>``), with the ratios, seed and base-config fingerprint as its config, its training
curve as history and its final metrics as summary. Without wandb, one info line says so and nothing else
changes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging
import math
import os
import socket
import time
from typing import Any, Mapping, Sequence

import gin

logger = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass
class TrackingSettings:
    """Where sweep results are logged besides the results table.

    Attributes:
        wandb: True to require W&B, False to never use it, None to use it when installed and configured.
        wandb_project: W&B project.
        wandb_entity: W&B entity (team or user); None for the default.
        wandb_tags: tags added to every run.
    """

    wandb: bool | None = None
    wandb_project: str = "textbooks-mixopt"
    wandb_entity: str | None = None
    wandb_tags: Sequence[str] = ()


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class TensorBoardWriter:
    """Writes scalars and HParams summaries to one TensorBoard run folder (an ``events.out.tfevents`` file).

    Events are framed by tensorboard's own ``RecordWriter`` into a plain local file, so neither TensorFlow nor
    its file system layer is loaded by the sweep driver.
    """

    _count = itertools.count()

    def __init__(self, logdir: str):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                f"{next(self._count)}")
        self._writer = RecordWriter(open(os.path.join(logdir, name), "wb"))
        self._writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())

    def _summary(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto import event_pb2

        self._writer.write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary).SerializeToString())

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        vals = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in sorted(_finite(values).items())]
        if vals:
            self._summary(summary_pb2.Summary(value=vals), step)

    def hparams(self, hparams: Mapping[str, Any], trial_id: str) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp

        self._summary(hp.hparams_pb(dict(hparams), trial_id=trial_id), 0)

    def hparams_config(self, hparam_names: Sequence[str], metric_names: Sequence[str]) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp

        hps = [hp.HParam(n, hp.RealInterval(0.0, 1.0)) if n.startswith("ratio/") else hp.HParam(n)
               for n in hparam_names]
        self._summary(hp.hparams_config_pb(hparams=hps, metrics=[hp.Metric(m) for m in metric_names]), 0)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def wandb_enabled(settings: TrackingSettings) -> bool:
    """Whether W&B will be used; logs one info line saying why not when it will not.

    Raises:
        RuntimeError: ``settings.wandb`` is True but wandb is not installed.
    """
    installed = importlib.util.find_spec("wandb") is not None
    if settings.wandb is False:
        return False
    if not installed:
        if settings.wandb:
            raise RuntimeError("TrackingSettings.wandb = True but wandb is not installed; `pip install wandb` or "
                               "set it to None")
        logger.info("wandb is not installed: sweep tracking goes to TensorBoard only")
        return False
    configured = bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))
    if settings.wandb or configured:
        return True
    logger.info("wandb is installed but not configured (no WANDB_API_KEY or WANDB_MODE): TensorBoard only")
    return False


class SweepTracker:
    """Logs each finished trial and the sweep's progress to TensorBoard and, when enabled, W&B."""

    def __init__(self, root: str, sweep_name: str, fingerprint: str, components: Sequence[str],
                 settings: TrackingSettings | None = None):
        self.root, self.sweep_name, self.fingerprint = root, sweep_name, fingerprint
        self.components = list(components)
        self.settings = settings or TrackingSettings()
        self.tb_root = os.path.join(root, "tensorboard")
        self._summary_tb = TensorBoardWriter(os.path.join(self.tb_root, "_sweep"))
        self._use_wandb = wandb_enabled(self.settings)
        self._metric_names: set[str] = set()
        self._step = 0

    def _hparams(self, row: Mapping[str, Any]) -> dict[str, Any]:
        hp = {f"ratio/{c}": float(row.get(f"ratio/{c}", 0.0)) for c in self.components}
        hp.update(seed=int(row.get("seed") or 0), point=int(row.get("point") or 0))
        return hp

    def trial_finished(self, row: Mapping[str, Any], curve: Sequence[Mapping[str, Any]] = ()) -> None:
        """Logs one finished trial (its results row and, if known, its per-step metrics)."""
        tid = str(row["trial_id"])
        metrics = {k: v for k, v in _finite(row).items()
                   if not k.startswith("ratio/") and k not in ("seed", "point", "wall_s")}
        step = max([int(r.get("step", 0)) for r in curve if isinstance(r.get("step"), (int, float))] or [0])
        tb = TensorBoardWriter(os.path.join(self.tb_root, tid))
        try:
            tb.hparams(self._hparams(row), trial_id=tid)
            tb.scalars({f"final/{k}": v for k, v in metrics.items()}, step)
            tb.scalars({"status_ok": 1.0 if row.get("status") == "done" else 0.0}, step)
        finally:
            tb.close()
        self._metric_names.update(f"final/{k}" for k in metrics)
        if self._use_wandb:
            self._wandb_trial(row, metrics, curve)

    def _wandb_trial(self, row: Mapping[str, Any], metrics: Mapping[str, float],
                     curve: Sequence[Mapping[str, Any]]) -> None:
        import wandb

        config = {**self._hparams(row), "fingerprint": self.fingerprint, "components": self.components,
                  "status": row.get("status"), "trial_id": row["trial_id"]}
        run = wandb.init(project=self.settings.wandb_project, entity=self.settings.wandb_entity,
                         group=self.sweep_name, name=str(row["trial_id"]), job_type="proxy-run", config=config,
                         tags=list(self.settings.wandb_tags), dir=os.path.join(self.root, "trials",
                                                                               str(row["trial_id"])))
        try:
            for rec in curve:
                vals = _finite(rec)
                step = vals.pop("step", None)
                vals.pop("time", None)  # wall-clock stamps of the metrics file, not a metric
                if vals:
                    run.log(vals, step=int(step) if step is not None else None)
            run.summary.update(dict(metrics))
        finally:
            run.finish()

    def progress(self, done: int, failed: int, total: int) -> None:
        """Logs sweep-level progress (one step per finished trial)."""
        self._step += 1
        self._summary_tb.scalars({"sweep/done": done, "sweep/failed": failed, "sweep/total": total}, self._step)

    def close(self, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        """Writes the HParams dashboard config and, with W&B, a summary run holding the results table."""
        names = [f"ratio/{c}" for c in self.components] + ["seed", "point"]
        cfg = TensorBoardWriter(self.tb_root)
        try:
            cfg.hparams_config(names, sorted(self._metric_names))
        finally:
            cfg.close()
        self._summary_tb.close()
        if self._use_wandb and rows:
            import wandb

            columns = sorted({k for r in rows for k in r})
            run = wandb.init(project=self.settings.wandb_project, entity=self.settings.wandb_entity,
                             group=self.sweep_name, name=f"{self.sweep_name}-summary", job_type="sweep-summary",
                             config={"fingerprint": self.fingerprint, "components": self.components},
                             tags=list(self.settings.wandb_tags), dir=self.root)
            try:
                run.log({"results": wandb.Table(columns=columns,
                                                data=[[r.get(c) for c in columns] for r in rows])})
            finally:
                run.finish()


def log_fit_summary(sweep_root: str, values: Mapping[str, float], step: int = 0) -> str:
    """Logs a fit's scalars (e.g. CV Spearman) to ``<sweep_dir>/tensorboard/_mixopt``; returns the folder."""
    logdir = os.path.join(sweep_root, "tensorboard", "_mixopt")
    tb = TensorBoardWriter(logdir)
    try:
        tb.scalars(values, step)
    finally:
        tb.close()
    return logdir

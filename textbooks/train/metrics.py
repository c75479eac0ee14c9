"""Training metrics: per-step summaries, TensorBoard events, JSON Lines and progress display.

Each logged step produces one record such as ``{"step": 100, "loss": 2.31, "loss/code_textbooks": 2.05,
"grad_norm": 0.8, "learning_rate": 2e-4, "tokens_per_second": 51234, "mfu": 0.41, ...}``. The first process
writes it to TensorBoard (``<model_dir>/tensorboard/{train,eval}``, via clu's ``tf.summary`` writer) and to
``<model_dir>/metrics/{train,eval}.jsonl``, and with gin ``WandbConfig.enabled = True`` to Weights & Biases
(:mod:`textbooks.train.wandb_writer`). Progress (a line redrawn on a terminal, log lines otherwise) goes
through the project's one reporter, :class:`textbooks.progress.Progress`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from textbooks.data import files
from textbooks.train.wandb_writer import WandbConfig, WandbWriter

log = logging.getLogger(__name__)


def summarize(raw: Mapping[str, Any], role_names: Sequence[str]) -> dict[str, float]:
    """Host-side scalars of one step's raw metrics: loss per role (from the summed role losses) and the real
    (loss-weighted) tokens per role, whose sums over steps give the realized mixture proportions.

    Roles without tokens in the step are left out.
    """
    out = {}
    for key in ("loss", "grad_norm", "learning_rate", "nonfinite", "weight_sum"):
        if key in raw:
            out[key] = float(np.asarray(raw[key]))
    if "weight_sum" in out:
        out["tokens"] = out.pop("weight_sum")
    role_loss = np.asarray(raw.get("role_loss_sum", []), np.float64)
    role_weight = np.asarray(raw.get("role_weight_sum", []), np.float64)
    for i, name in enumerate(role_names):
        if i < len(role_weight) and role_weight[i] > 0:
            out[f"loss/{name}"] = float(role_loss[i] / role_weight[i])
            out[f"tokens/{name}"] = float(role_weight[i])
    return out


class MetricsLogger:
    """Writes metric records to TensorBoard, JSON Lines and W&B (first process only) and logs them.

    Args:
        model_dir: the run's folder.
        enabled: write files (True on the first process).
        tensorboard: also write TensorBoard events.
        wandb: W&B settings; default the gin-bound :class:`~textbooks.train.wandb_writer.WandbConfig` (off
            unless ``WandbConfig.enabled = True``).
    """

    def __init__(self, model_dir: str, enabled: bool = True, tensorboard: bool = True,
                 wandb: WandbConfig | None = None):
        self.model_dir = model_dir
        self.enabled = enabled
        self._writers: dict[str, Any] = {}
        self._files: dict[str, Any] = {}
        self._tensorboard = tensorboard and enabled
        wandb = wandb if wandb is not None else WandbConfig()
        self._wandb = WandbWriter(wandb, model_dir) if enabled and wandb.enabled else None

    def _writer(self, split: str):
        if not self._tensorboard:
            return None
        if split not in self._writers:
            from clu.metric_writers import SummaryWriter

            self._writers[split] = SummaryWriter(os.path.join(self.model_dir, "tensorboard", split))
        return self._writers[split]

    def _file(self, split: str):
        if split not in self._files:
            directory = files.join(self.model_dir, "metrics")
            files.makedirs(directory)
            self._files[split] = files.open_file(files.join(directory, f"{split}.jsonl"), "a")
        return self._files[split]

    def write(self, step: int, record: Mapping[str, float], split: str = "train") -> None:
        """Writes one record (scalars only; non-finite values are written as null in JSON)."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in record.items() if isinstance(v, (int, float, np.floating, np.integer))}
        finite = {k: v for k, v in clean.items() if math.isfinite(v)}
        writer = self._writer(split)
        if writer is not None:
            writer.write_scalars(step, finite)
        if self._wandb is not None:
            self._wandb.write_scalars(step, finite, split)
        line = {"step": int(step), "time": round(time.time(), 3)}
        line.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
        f = self._file(split)
        f.write(json.dumps(line) + "\n")
        f.flush()

    def write_text(self, step: int, name: str, text: str) -> None:
        """Writes a text summary (e.g. the operative config) to TensorBoard and W&B."""
        writer = self._writer("train")
        if writer is not None:
            writer.write_texts(step, {name: text})
        if self._wandb is not None:
            self._wandb.write_text(step, name, text)

    def write_config(self, values: Mapping[str, Any]) -> None:
        """Records run settings (the run record, the operative config) in the W&B run's config."""
        if self._wandb is not None:
            self._wandb.write_config(values)

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        for f in self._files.values():
            f.close()
        if self._wandb is not None:
            self._wandb.close()
        self._writers, self._files, self._wandb = {}, {}, None


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads a metrics JSON Lines file; when a step appears several times (a resumed run) the last one wins."""
    by_step: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]

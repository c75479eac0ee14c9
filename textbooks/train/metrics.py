"""Training metrics: per-step summaries, TensorBoard events, JSON Lines and progress display.

Each logged step produces one record such as ``{"step": 100, "loss": 2.31, "loss/code_textbooks": 2.05,
"grad_norm": 0.8, "learning_rate": 2e-4, "tokens_per_second": 51234, "mfu": 0.41, ...}``. The first process
writes it to TensorBoard (``<model_dir>/tensorboard/{train,eval}``, via clu's ``tf.summary`` writer) and to
``<model_dir>/metrics/{train,eval}.jsonl``; every process shows progress: a tqdm bar with ETA on a terminal,
plain log lines otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

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
    """Writes metric records to TensorBoard and JSON Lines (first process only) and logs them.

    Args:
        model_dir: the run's folder.
        enabled: write files (True on the first process).
        tensorboard: also write TensorBoard events.
    """

    def __init__(self, model_dir: str, enabled: bool = True, tensorboard: bool = True):
        self.model_dir = model_dir
        self.enabled = enabled
        self._writers: dict[str, Any] = {}
        self._files: dict[str, Any] = {}
        self._tensorboard = tensorboard and enabled

    def _writer(self, split: str):
        if not self._tensorboard:
            return None
        if split not in self._writers:
            from clu.metric_writers import SummaryWriter

            self._writers[split] = SummaryWriter(os.path.join(self.model_dir, "tensorboard", split))
        return self._writers[split]

    def _file(self, split: str):
        if split not in self._files:
            from textbooks.data import files

            directory = files.join(self.model_dir, "metrics")
            files.makedirs(directory)
            self._files[split] = files.open_file(files.join(directory, f"{split}.jsonl"), "a")
        return self._files[split]

    def write(self, step: int, record: Mapping[str, float], split: str = "train") -> None:
        """Writes one record (scalars only; non-finite values are written as null in JSON)."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in record.items() if isinstance(v, (int, float, np.floating, np.integer))}
        writer = self._writer(split)
        if writer is not None:
            writer.write_scalars(step, {k: v for k, v in clean.items() if math.isfinite(v)})
        line = {"step": int(step), "time": round(time.time(), 3)}
        line.update({k: (v if math.isfinite(v) else None) for k, v in clean.items()})
        f = self._file(split)
        f.write(json.dumps(line) + "\n")
        f.flush()

    def write_text(self, step: int, name: str, text: str) -> None:
        """Writes a text summary (e.g. the operative config) to TensorBoard."""
        writer = self._writer("train")
        if writer is not None:
            writer.write_texts(step, {name: text})

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
        self._writers, self._files = {}, {}


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads a metrics JSON Lines file; when a step appears several times (a resumed run) the last one wins."""
    by_step: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def emit(message: str) -> None:
    """Logs ``message`` at INFO, or prints it to stderr when logging would not show it."""
    if logging.getLogger().hasHandlers() and log.isEnabledFor(logging.INFO):
        log.info(message)
    else:
        print(message, file=sys.stderr, flush=True)


class Progress:
    """Step progress: a tqdm bar on a terminal, otherwise one log line per logged step.

    Args:
        total: the last step of the run.
        initial: the step the run starts (or resumes) from.
        enabled: show anything (the first process only, usually).
        use_bar: force (True) or forbid (False) the bar; default: on a terminal or in a notebook.
    Plain lines go to the logger, or to stderr when logging is not configured (a script or notebook calling
    :func:`~textbooks.train.trainer.train` directly).
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, use_bar: bool | None = None):
        self.total, self.initial, self.enabled = total, initial, enabled
        self.start_time = time.time()
        self._bar = None
        if use_bar is None:
            use_bar = sys.stderr.isatty() or "ipykernel" in sys.modules
        if enabled and use_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        self._step = initial

    def update(self, step: int, record: Mapping[str, float] | None = None) -> None:
        """Moves to ``step``; with ``record``, shows its main numbers."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._step)
            if record:
                self._bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "tokens_per_second", "mfu")
                                       if k in record}, refresh=False)
        elif record is not None:
            if "step_seconds" in record:  # the recent rate, compilation and evaluation left out
                eta = record["step_seconds"] * (self.total - step)
            else:
                done = step - self.initial
                eta = (time.time() - self.start_time) / done * (self.total - step) if done > 0 else float("nan")
            parts = [f"step {step}/{self.total}"]
            parts += [f"{k} {record[k]:.4g}" for k in ("loss", "grad_norm", "learning_rate", "tokens_per_second",
                                                       "mfu") if k in record]
            parts.append(f"ETA {_format_eta(eta)}")
            emit(" | ".join(parts))
        self._step = step

    def write(self, message: str) -> None:
        """Prints a message without breaking the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            emit(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

"""Things the train loop does besides stepping: stop cleanly on a signal, and evaluate periodically.

* :class:`StopSignal` turns SIGTERM / SIGINT (preemption, Ctrl-C, a scheduler's kill) into a flag the loop
  checks after each step; the loop then saves a checkpoint and exits normally. With several processes the
  flag is agreed on with one small all-gather per step, so every process stops at the same step.
* :class:`EvalHook` computes the validation loss, overall and per mixture component, every ``eval_every``
  steps when validation data is configured (:class:`ValidationConfig`; benchmark suites are
  :mod:`textbooks.evaluate`'s, run after training).

gin names: ``ValidationConfig`` was called ``EvalConfig`` before; that name still works (an alias of the same
configurable), so ``EvalConfig.eval_every = 500`` and ``ValidationConfig.eval_every = 500`` set the same value.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

import gin
import jax
import numpy as np

from textbooks import gin_utils, partitioning

log = logging.getLogger(__name__)


class StopSignal:
    """Turns SIGTERM / SIGINT into "save and stop" for the loop (use as a context manager).

    One process: Python handlers set a flag; a second SIGINT while the first is pending raises
    KeyboardInterrupt (for an impatient Ctrl-C). Several processes: SIGTERM to any of them (a scheduler's
    preemption notice) goes through JAX's preemption service, which makes every process stop at the same
    step; if that service is off, a flag is all-gathered every step instead.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._preemption_service = False

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: will save a checkpoint and stop after the current step",
                    signal.Signals(signum).name)

    def __enter__(self) -> "StopSignal":
        if jax.process_count() > 1:
            from jax._src import distributed

            self._preemption_service = distributed.global_state.preemption_sync_manager is not None
        if self._preemption_service:
            return self  # JAX's preemption notifier owns SIGTERM.
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def should_stop(self, step: int) -> bool:
        """True when the run must stop after ``step`` (every process gets the same answer)."""
        if jax.process_count() == 1:
            return self.received is not None
        from jax.experimental import multihost_utils

        if self._preemption_service:
            if multihost_utils.reached_preemption_sync_point(step):
                log.warning("preemption notice: saving a checkpoint and stopping at step %d", step)
                return True
            return False
        flags = multihost_utils.process_allgather(np.array([int(self.received is not None)], np.int32))
        return bool(np.max(flags))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Validation loss during training (gin: ``ValidationConfig.*``, formerly ``EvalConfig.*``).

    Attributes:
        eval_every: evaluate every this many steps (0: never; the last step also evaluates when > 0).
        mixture_or_task_name: validation mixture/task (default: the training one).
        split: the validation split.
        num_batches: batches per evaluation and mixture component (the same ones every time).
        batch_size: global batch size of evaluation (default: the training batch size).
    """

    eval_every: int = 0
    mixture_or_task_name: str | None = None
    split: str = "validation"
    num_batches: int = 10
    batch_size: int | None = None


gin_utils.register_alias("EvalConfig", ValidationConfig)


class EvalHook:
    """Runs the compiled eval step over a fresh validation iterator and reduces per-role losses.

    Args:
        eval_step: compiled ``(params, global batch) -> loss sums``.
        make_batches: returns a fresh iterable of per-process numpy batches.
        to_global: turns a per-process numpy batch into global arrays.
        role_names: names of the role ids.
    """

    def __init__(self, eval_step: Callable, make_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]],
                 to_global: Callable[[Mapping[str, np.ndarray]], Any], role_names: Sequence[str]):
        self.eval_step, self.make_batches, self.to_global = eval_step, make_batches, to_global
        self.role_names = tuple(role_names)

    def __call__(self, params: Any, mesh: Any) -> dict[str, float]:
        totals: dict[str, np.ndarray] = {}
        count = 0
        with jax.set_mesh(mesh):
            for batch in self.make_batches():
                sums = self.eval_step(params, self.to_global(batch))
                sums = {k: np.asarray(jax.device_get(v), np.float64) for k, v in sums.items()}
                totals = sums if not totals else {k: totals[k] + sums[k] for k in totals}
                count += 1
        if not count:
            log.warning("the validation data yielded no batch; no eval metrics this time")
            return {}
        out = {"loss": float(totals["ce_sum"] / max(totals["weight_sum"], 1.0)), "tokens": float(totals["weight_sum"]),
               "batches": float(count)}
        for i, name in enumerate(self.role_names):
            if i < len(totals["role_weight_sum"]) and totals["role_weight_sum"][i] > 0:
                out[f"loss/{name}"] = float(totals["role_loss_sum"][i] / totals["role_weight_sum"][i])
        return out


def make_eval_hook(eval_step: Callable, make_batches: Callable[[], Iterable[Mapping[str, np.ndarray]]],
                   mesh: Any, rules: partitioning.LogicalRules, global_batch_size: int,
                   role_names: Sequence[str]) -> EvalHook:
    """An :class:`EvalHook` whose batches are assembled on ``mesh``."""

    def to_global(batch):
        return partitioning.make_global_batch(batch, mesh, rules, global_batch_size)

    return EvalHook(eval_step, make_batches, to_global, role_names)

"""The real proxy run of a sweep trial: a factory mixture, the trainer, then (optionally) ``textbooks eval``.

:class:`TrainingTrial` registers the trial's mixture through the mixture factory, parses the base training gin
with only the mixture name, the seed and the model dir changed, calls the trainer
(:func:`textbooks.train.trainer.train`) into ``<trial>/model``, then (optionally) runs ``textbooks eval`` into
``<trial>/eval``. Metrics: the last value of every key of the trainer's ``metrics/train.jsonl`` as
``train/<key>`` and ``metrics/eval.jsonl`` as ``valid/<key>`` (e.g. ``valid/loss/web_filtered``), the downstream
metrics of :class:`textbooks.evaluate.trial_bench.TrialBench` (``TrainingTrial.bench``: the same seeded benchmark
subset for every trial, scored in this process on the final checkpoint) as ``bench/<task>/<metric>`` with
``bench_items`` (the subset's fingerprint) and ``bench_s`` beside ``train_s``, and each metric of the optional
``textbooks eval`` step's ``results.json`` as ``bench/<task>/<metric>``. The fractions the run realized (its
mixture's repetition-capped ones, from the trainer's ``run_record.json``) are recorded as ``realized_ratio/<role>``,
and the mixture law is fitted on them. The other trial kinds and the resumable wrapper are in
:mod:`textbooks.mixopt.trial_kinds`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time
from typing import Any, Mapping, Sequence

import gin

from mixtures.factory import registered_mixture
from textbooks import gin_utils, logs
from textbooks.data.roles import check_role
from textbooks.evaluate.trial_bench import TrialBench
from textbooks.mixopt import results as results_lib
from textbooks.mixopt import trials as trials_lib
from textbooks.mixopt.trial_kinds import TrialError, TrialRunner, run_logged
from textbooks.train import run_record, trainer

logger = logging.getLogger(__name__)


def _gin_text(path: str, search_paths: Sequence[str], seen: set[str] | None = None) -> str:
    """The text of a gin file with its ``include`` lines replaced by the included files (recursively)."""
    seen = set() if seen is None else seen
    resolved = os.path.abspath(gin_utils.resolve_gin_file(path, search_paths))
    if resolved in seen:
        return ""
    seen.add(resolved)
    out = []
    with open(resolved) as f:
        for line in f:
            m = re.match(r"""^\s*include\s+['"](.+?)['"]\s*$""", line)
            if m:
                here = [os.path.dirname(resolved)] + list(search_paths)
                out.append(_gin_text(m.group(1), here, seen))
            else:
                out.append(line)
    return "".join(out)


def realized_ratio_metrics(model_dir: str) -> dict[str, float]:
    """``{'realized_ratio/<role>': fraction}`` of the capped fractions the trainer recorded (empty without)."""
    capped = ((run_record.read_run_record(model_dir) or {}).get("mixture") or {}).get("capped") or {}
    return {f"{results_lib.REALIZED_PREFIX}{role}": float(f) for role, f in capped.items()}


@gin.configurable
@dataclasses.dataclass
class TrainingTrial(TrialRunner):
    """One proxy training run per trial: factory mixture -> ``textbooks.train.train`` -> ``textbooks eval``.

    Attributes:
        gin_files: the base training gin files (same for every trial).
        gin_bindings: extra base bindings, e.g. ``'train.num_train_steps = 200'``.
        gin_search_paths: extra folders for relative gin paths and includes.
        mixture_macro: the gin macro (or parameter) that names the mixture the trainer reads.
        seed_binding: the gin parameter that takes the trial's seed (None: leave the seed alone).
        mixture_temperature: ``temperature`` passed to ``register_mixture`` (None: ratios are token fractions).
        mixture_max_epochs: ``max_epochs`` passed to ``register_mixture`` (repetition cap).
        mixture_vocabulary: ``vocabulary`` passed to ``register_mixture`` (None: the default).
        bench: the downstream subset scored after training (``@TrialBench()``; None: none).
        eval_tasks: tasks for ``textbooks eval --tasks`` after training (empty: no evaluation step).
        eval_args: extra arguments for ``textbooks eval``.
        eval_timeout_s: limit for the evaluation subprocess.
    """

    gin_files: Sequence[str] = ()
    gin_bindings: Sequence[str] = ()
    gin_search_paths: Sequence[str] = ()
    mixture_macro: str = "MIXTURE_OR_TASK_NAME"
    seed_binding: str | None = "train.seed"
    mixture_temperature: float | None = None
    mixture_max_epochs: float | None = None
    mixture_vocabulary: str | None = None
    bench: TrialBench | None = None
    eval_tasks: Sequence[str] = ()
    eval_args: Sequence[str] = ()
    eval_timeout_s: float = 6 * 3600.0

    kind = "training"

    def __post_init__(self):
        if isinstance(self.bench, Mapping):  # rebuilt from a sweep's runner.json
            self.bench = TrialBench(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.bench.items()})

    def fingerprint_payload(self) -> dict[str, Any]:
        bench = {"bench": self.bench.settings()} if self.bench is not None else {}
        return {**bench, "kind": self.kind,
                "gin": [_gin_text(f, self.gin_search_paths) for f in self.gin_files],
                "gin_bindings": list(self.gin_bindings), "mixture_macro": self.mixture_macro,
                "seed_binding": self.seed_binding, "mixture_temperature": self.mixture_temperature,
                "mixture_max_epochs": self.mixture_max_epochs, "mixture_vocabulary": self.mixture_vocabulary,
                "eval_tasks": list(self.eval_tasks),
                "eval_args": list(self.eval_args)}

    def check(self, components: Sequence[str]) -> None:
        if not self.gin_files:
            raise ValueError("TrainingTrial.gin_files is empty: name the base training gin file(s) of the sweep")
        for f in self.gin_files:
            gin_utils.resolve_gin_file(f, self.gin_search_paths)
        for c in components:
            check_role(c)

    def trainer_bindings(self, trial: trials_lib.Trial, mixture_name: str) -> list[str]:
        """The base bindings plus the two that change per trial (mixture name, seed)."""
        out = list(self.gin_bindings) + [f"{self.mixture_macro} = {mixture_name!r}"]
        if self.seed_binding:
            out.append(f"{self.seed_binding} = {int(trial.seed)}")
        return out

    def register(self, ratios: Mapping[str, float]) -> str:
        """Registers the mixture of ``ratios`` through the factory; returns its deterministic name."""
        return registered_mixture(ratios, temperature=self.mixture_temperature, max_epochs=self.mixture_max_epochs,
                                  vocabulary=self.mixture_vocabulary)

    def run(self, trial: trials_lib.Trial, run_dir: str, log_path: str) -> dict[str, Any]:
        for noisy in logs.NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
        name = self.register(trial.ratios)
        logger.info("trial %s: mixture %s", trial.trial_id, name)
        model_dir = os.path.join(run_dir, "model")
        gin.clear_config()
        bindings = self.trainer_bindings(trial, name) + [f"MODEL_DIR = {model_dir!r}"]
        gin_utils.parse_gin(self.gin_files, bindings, self.gin_search_paths, finalize=False)
        start = time.monotonic()
        result = trainer.train(model_dir=model_dir)
        train_s = round(time.monotonic() - start, 3)
        logger.info("trial %s: %s", trial.trial_id, trainer.summary_line(result))
        metrics: dict[str, Any] = {}
        for split, prefix in (("train", "train"), ("eval", "valid")):
            path = os.path.join(model_dir, "metrics", f"{split}.jsonl")
            if os.path.exists(path):
                metrics.update({f"{prefix}/{k}": v for k, v in
                                results_lib.last_values(results_lib.read_metrics_jsonl(path)).items()
                                if k != "time"})
        if not metrics:
            raise TrialError(f"training wrote no metrics under {os.path.join(model_dir, 'metrics')}; see {log_path}")
        metrics["train_s"] = train_s
        if self.bench is not None:
            bench = self.bench.score_checkpoint(model_dir)
            logger.info("trial %s: benchmark subset %s scored in %.1f s (training %.1f s)", trial.trial_id,
                        bench["bench_items"], bench["bench_s"], train_s)
            metrics.update(bench)
        if self.eval_tasks:
            metrics.update(self._evaluate(model_dir, os.path.join(run_dir, "eval"), log_path))
        metrics.update(realized_ratio_metrics(model_dir))
        metrics["mixture"] = name
        return metrics

    def _evaluate(self, model_dir: str, out_dir: str, log_path: str) -> dict[str, float]:
        cmd = [sys.executable, "-m", "textbooks.cli", "eval", "--checkpoint", model_dir,
               "--tasks", ",".join(self.eval_tasks), "--out", out_dir, *self.eval_args]
        run_logged(cmd, log_path, self.eval_timeout_s, what="evaluation")
        path = os.path.join(out_dir, "results.json")
        if not os.path.exists(path):
            raise TrialError(f"evaluation wrote no {path}; see {log_path}")
        with open(path) as f:
            results = json.load(f)
        out = {f"bench/{task}/{name}": float(m["value"])
               for task, entry in results.get("tasks", {}).items()
               for name, m in (entry.get("metrics") or {}).items()
               if isinstance(m, Mapping) and isinstance(m.get("value"), (int, float))}
        errors = {task: entry["error"] for task, entry in results.get("tasks", {}).items() if entry.get("error")}
        if errors:
            logger.warning("evaluation tasks failed: %s (see %s)", errors, log_path)
        if not out:
            raise TrialError(f"evaluation wrote no metric values in {path}; see {log_path}")
        return out

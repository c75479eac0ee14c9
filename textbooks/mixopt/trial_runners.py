"""What one trial runs, and the wrapper that makes it resumable.

:func:`execute_trial` is the function every executor runs (a submitit job, or ``textbooks sweep --run_trial``
from an emitted command): it takes the trial's lock, skips a trial that is already done, runs the runner and
writes the DONE marker with the metrics, or a FAILED marker with the error, traceback and log paths.

Runners (gin-configurable, picklable):

- :class:`TrainingTrial`: the real proxy run. Registers the trial's mixture through
  ``mixtures.factory.register_mixture``, parses the base training gin with only the mixture name, the seed
  and the model dir changed, calls the trainer (``textbooks.train.trainer.train``) into ``<trial>/model``,
  then (optionally) ``textbooks eval`` into ``<trial>/eval``. Metrics: the last value of every key of the
  trainer's ``metrics/train.jsonl`` as ``train/<key>`` and ``metrics/eval.jsonl`` as ``valid/<key>`` (e.g.
  ``valid/loss/web_filtered``), and each benchmark metric of ``results.json`` as ``bench/<task>/<metric>``.
- :class:`CommandTrial`: any shell command, with the ratios, seed and folders substituted; it writes a JSON
  object of metrics to ``{run_dir}/metrics.json`` (or prints it as its last stdout line).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import traceback
from typing import Any, Mapping, Sequence

import gin

from textbooks import logs
from textbooks.mixopt import results as results_lib
from textbooks.mixopt import trials as trials_lib

logger = logging.getLogger(__name__)


class TrialError(RuntimeError):
    """A trial failed in a way its runner understood (the message says why and where the log is)."""


class TrialRunner:
    """Interface of a trial runner: a fingerprint payload, an up-front check and ``run``."""

    kind = "base"

    def fingerprint_payload(self) -> dict[str, Any]:
        """Everything that determines a trial's result besides its ratios and seed."""
        raise NotImplementedError

    def check(self, components: Sequence[str]) -> None:
        """Raises a clear error before any trial is submitted when the configuration cannot work."""

    def run(self, trial: trials_lib.Trial, run_dir: str, log_path: str) -> dict[str, float]:
        """Runs the trial into ``run_dir`` and returns its metrics."""
        raise NotImplementedError


def _gin_text(path: str, search_paths: Sequence[str], seen: set[str] | None = None) -> str:
    """The text of a gin file with its ``include`` lines replaced by the included files (recursively)."""
    from textbooks import gin_utils

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
        mixture_max_epochs: ``max_epochs`` passed to ``register_mixture`` (repetition warning).
        mixture_vocabulary: ``vocabulary`` passed to ``register_mixture`` (None: the default).
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
    eval_tasks: Sequence[str] = ()
    eval_args: Sequence[str] = ()
    eval_timeout_s: float = 6 * 3600.0

    kind = "training"

    def fingerprint_payload(self) -> dict[str, Any]:
        return {"kind": self.kind,
                "gin": [_gin_text(f, self.gin_search_paths) for f in self.gin_files],
                "gin_bindings": list(self.gin_bindings), "mixture_macro": self.mixture_macro,
                "seed_binding": self.seed_binding, "mixture_temperature": self.mixture_temperature,
                "mixture_max_epochs": self.mixture_max_epochs, "mixture_vocabulary": self.mixture_vocabulary,
                "eval_tasks": list(self.eval_tasks),
                "eval_args": list(self.eval_args)}

    def check(self, components: Sequence[str]) -> None:
        from textbooks import gin_utils
        from textbooks.data.roles import check_role

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
        from textbooks.mixopt.propose import registered_mixture

        return registered_mixture(ratios, temperature=self.mixture_temperature, max_epochs=self.mixture_max_epochs,
                                  vocabulary=self.mixture_vocabulary)

    def run(self, trial: trials_lib.Trial, run_dir: str, log_path: str) -> dict[str, Any]:
        from textbooks import gin_utils
        from textbooks.train import trainer

        for noisy in logs.NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
        name = self.register(trial.ratios)
        logger.info("trial %s: mixture %s", trial.trial_id, name)
        model_dir = os.path.join(run_dir, "model")
        trainer.register_gin_names()
        gin.clear_config()
        bindings = self.trainer_bindings(trial, name) + [f"MODEL_DIR = {model_dir!r}"]
        gin_utils.parse_gin(self.gin_files, bindings, self.gin_search_paths, finalize=False)
        result = trainer.train(model_dir=model_dir)
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
        if self.eval_tasks:
            metrics.update(self._evaluate(model_dir, os.path.join(run_dir, "eval"), log_path))
        metrics["mixture"] = name
        return metrics

    def _evaluate(self, model_dir: str, out_dir: str, log_path: str) -> dict[str, float]:
        cmd = [sys.executable, "-m", "textbooks.cli", "eval", "--checkpoint", model_dir,
               "--tasks", ",".join(self.eval_tasks), "--out", out_dir, *self.eval_args]
        _run_logged(cmd, log_path, self.eval_timeout_s, what="evaluation")
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


def _run_logged(cmd: Sequence[str] | str, log_path: str, timeout_s: float | None, what: str,
                env: Mapping[str, str] | None = None, shell: bool = False) -> str:
    """Runs ``cmd`` appending its output to ``log_path``; returns the output.

    Raises:
        TrialError: non-zero exit or timeout (the message has the log path and the output's tail).
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "a") as log:
        log.write(f"$ {cmd if shell else shlex.join(cmd)}\n")
        log.flush()
        start = log.tell()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, env=full_env,
                                  shell=shell, executable="/bin/bash" if shell else None)
        except subprocess.TimeoutExpired:
            raise TrialError(f"{what} ran past {timeout_s} s; see {log_path}") from None
    with open(log_path) as log:
        log.seek(start)
        output = log.read()
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-8:])
        raise TrialError(f"{what} exited with status {proc.returncode}; log {log_path}; last lines:\n{tail}")
    return output


@gin.configurable
@dataclasses.dataclass
class CommandTrial(TrialRunner):
    """Runs a shell command per trial (any trainer, any language).

    The command is a Python format string; each substituted value is shell-quoted. Fields: ``{ratios_json}``
    (``{"web_filtered": 0.5, ...}``), ``{seed}``, ``{trial_id}``, ``{run_dir}`` (the trial's folder),
    ``{python}`` (this interpreter) and ``{ratio_<component>}`` for each component. The command writes a
    JSON object of metrics to ``{run_dir}/<metrics_file>``, or prints one as its last line of output.

    Attributes:
        command: the command template (run with bash).
        metrics_file: the metrics file name inside ``run_dir``.
        timeout_s: limit per trial (None: none).
        env: extra environment variables.
    """

    command: str = gin.REQUIRED
    metrics_file: str = "metrics.json"
    timeout_s: float | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    kind = "command"

    def fingerprint_payload(self) -> dict[str, Any]:
        return {"kind": self.kind, "command": self.command, "metrics_file": self.metrics_file,
                "env": dict(sorted(dict(self.env).items()))}

    def check(self, components: Sequence[str]) -> None:
        fields = {"ratios_json": "", "seed": "", "trial_id": "", "run_dir": "", "python": ""}
        fields.update({f"ratio_{c}": "" for c in components})
        try:
            self.command.format(**fields)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"CommandTrial.command {self.command!r} has an unknown or malformed field {e}; "
                             f"known fields: {sorted(fields)}") from None

    def run(self, trial: trials_lib.Trial, run_dir: str, log_path: str) -> dict[str, float]:
        q = shlex.quote
        fields = {"ratios_json": q(json.dumps(trial.ratios, sort_keys=True)), "seed": q(str(trial.seed)),
                  "trial_id": q(trial.trial_id), "run_dir": q(run_dir), "python": q(sys.executable)}
        fields.update({f"ratio_{c}": q(repr(float(v))) for c, v in trial.ratios.items()})
        output = _run_logged(self.command.format(**fields), log_path, self.timeout_s, what="trial command",
                             env=self.env, shell=True)
        path = os.path.join(run_dir, self.metrics_file)
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
        else:
            lines = [ln for ln in output.strip().splitlines() if ln.strip()]
            try:
                data = json.loads(lines[-1]) if lines else None
            except json.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                raise TrialError(f"the trial command wrote no {path} and its last output line is not a JSON "
                                 f"object; see {log_path}")
        metrics = results_lib.flatten_numeric(data)
        if not metrics:
            raise TrialError(f"the trial command's metrics {data!r} hold no numbers; see {log_path}")
        return metrics


def _submitit_logs() -> list[str]:
    """stdout/stderr paths of the current submitit job (empty outside one)."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return []
    try:
        import submitit

        paths = submitit.JobEnvironment().paths
        return [str(paths.stdout), str(paths.stderr)]
    except Exception:  # noqa: BLE001 - logs are a convenience; never fail a trial over them.
        return []


def execute_trial(sweep_root: str, trial_dict: Mapping[str, Any], runner: TrialRunner) -> dict[str, Any]:
    """Runs one trial with its lock held and writes DONE (metrics) or FAILED (error, traceback, logs).

    Returns:
        ``{"trial_id", "status"}`` with status ``done``, ``failed``, ``skipped`` (already done) or ``busy``
        (another process holds the trial's lock).
    """
    sweep = trials_lib.SweepDir(sweep_root)
    trial = trials_lib.Trial.from_dict(trial_dict)
    tid = trial.trial_id
    run_dir = sweep.trial_dir(tid)
    log_path = os.path.join(run_dir, "trial.log")
    try:
        with trials_lib.trial_lock(sweep.marker(tid, trials_lib.LOCK)):
            if os.path.exists(sweep.marker(tid, trials_lib.DONE)):
                return {"trial_id": tid, "status": "skipped"}
            sweep.write_trial(trial)
            failed_path = sweep.marker(tid, trials_lib.FAILED)
            if os.path.exists(failed_path):
                os.replace(failed_path, failed_path + ".previous")
            handler = logging.FileHandler(log_path)
            handler.setFormatter(logging.Formatter(logs.FORMAT))
            handler.addFilter(logs.drop_gin_path_probes)
            logging.getLogger().addHandler(handler)
            if logging.getLogger().level > logging.INFO:
                logging.getLogger().setLevel(logging.INFO)
            start, started = time.time(), trials_lib.now()
            base = {"trial_id": tid, "ratios": trial.ratios, "seed": trial.seed, "host": socket.gethostname(),
                    "pid": os.getpid(), "started": started, "run_dir": run_dir, "log": log_path}
            try:
                logger.info("trial %s: ratios %s seed %d (pid %d)", tid, trial.ratios, trial.seed, os.getpid())
                metrics = runner.run(trial, run_dir, log_path)
            except BaseException as e:  # noqa: BLE001 - every failure is recorded, then re-raised if fatal.
                trials_lib.write_json_atomic(failed_path, {
                        **base, "finished": trials_lib.now(), "wall_s": round(time.time() - start, 3),
                        "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                        "log_paths": [log_path] + _submitit_logs()})
                logger.error("trial %s failed: %s", tid, e)
                if not isinstance(e, Exception):
                    raise
                return {"trial_id": tid, "status": "failed"}
            finally:
                logging.getLogger().removeHandler(handler)
                handler.close()
            trials_lib.write_json_atomic(sweep.marker(tid, trials_lib.DONE), {
                    **base, "finished": trials_lib.now(), "wall_s": round(time.time() - start, 3),
                    "metrics": metrics})
            return {"trial_id": tid, "status": "done"}
    except trials_lib.TrialBusy:
        return {"trial_id": tid, "status": "busy"}

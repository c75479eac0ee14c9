"""The kinds of trial a sweep can run, and the wrapper that makes any of them resumable.

:func:`execute_trial` is the function every executor runs (a submitit job, or ``textbooks sweep --run_trial``
from an emitted command): it takes the trial's lock, skips a trial that is already done, runs the trial and
writes the DONE marker with the metrics, or a FAILED marker with the error, traceback and log paths.

Trial kinds (gin-configurable, picklable dataclasses implementing :class:`TrialRunner`):

- :class:`~textbooks.mixopt.training_trial.TrainingTrial`: the real proxy run (its own module, so that the
  processes of other kinds do not import the trainer).
- :class:`CommandTrial`: any shell command, with the ratios, seed and folders substituted; it writes a JSON
  object of metrics to ``{run_dir}/metrics.json`` (or prints it as its last stdout line).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
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
    """Interface of a trial kind: a fingerprint payload, an up-front check and ``run``."""

    kind = "base"

    def fingerprint_payload(self) -> dict[str, Any]:
        """Everything that determines a trial's result besides its ratios and seed."""
        raise NotImplementedError

    def check(self, components: Sequence[str]) -> None:
        """Raises a clear error before any trial is submitted when the configuration cannot work."""

    def run(self, trial: trials_lib.Trial, run_dir: str, log_path: str) -> dict[str, float]:
        """Runs the trial into ``run_dir`` and returns its metrics."""
        raise NotImplementedError


def run_logged(cmd: Sequence[str] | str, log_path: str, timeout_s: float | None, what: str,
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
        output = run_logged(self.command.format(**fields), log_path, self.timeout_s, what="trial command",
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

"""Dispatch of sweep trials on submitit, or as emitted shell commands.

Three executors, chosen with ``sweep.executor`` (or ``textbooks sweep --executor``):

- ``local``: submitit's ``LocalExecutor``: each trial is its own process on this machine, at most
  ``LocalSettings.max_parallel`` at once (new ones are submitted as earlier ones finish).
- ``slurm``: submitit's ``SlurmExecutor``: all pending trials go out as one Slurm job array whose
  ``--array=0-N%P`` bounds the parallelism; partition, time, GPUs or TPUs per node etc. come from gin
  (:class:`SlurmSettings`). :func:`slurm_script` renders the sbatch text submitit would submit, without
  submitting (``--dry_run``).
- ``emit``: writes ``<sweep_dir>/commands.sh``, one independent shell command per pending trial
  (``python -m textbooks.cli sweep --sweep_dir D --run_trial ID``), for any other scheduler.

Whatever the executor, a trial's outcome is read from its folder's markers (see :mod:`trials`), so a driver
that was killed can be restarted: finished trials are skipped, trials still running elsewhere (their lock is
held, or their local job's process is alive) are waited for, not resubmitted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import socket
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import gin

from textbooks.mixopt import results as results_lib
from textbooks.mixopt import trials as trials_lib
from textbooks.mixopt.trial_kinds import TrialRunner, execute_trial

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "emit")
_ACTIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


@gin.configurable
@dataclasses.dataclass
class LocalSettings:
    """Local processes through submitit's LocalExecutor.

    Attributes:
        max_parallel: trials running at once.
        timeout_min: per-trial time limit in minutes (submitit kills the process after it).
        poll_s: how often the driver checks for finished trials.
    """

    max_parallel: int = 2
    timeout_min: float = 24 * 60.0
    poll_s: float = 0.5


@gin.configurable
@dataclasses.dataclass
class SlurmSettings:
    """A Slurm job array through submitit's SlurmExecutor (one array task per trial).

    Attributes:
        partition: ``--partition``.
        time_min: ``--time`` in minutes per trial.
        nodes: nodes per trial (1: a proxy run is one JAX process using all of its node's accelerators).
        tasks_per_node: ``--ntasks-per-node`` (1, for the same reason).
        accelerator: ``'gpu'`` (``--gpus-per-node``) or ``'tpu'`` (``--gres=tpu:N``) or None.
        accelerators_per_node: GPUs or TPU chips per node.
        cpus_per_task: ``--cpus-per-task``.
        mem_gb: memory per node in GB.
        array_parallelism: array tasks running at once (``%P`` of ``--array``).
        account, qos, constraint, exclude: the sbatch options of those names.
        job_name: ``--job-name``.
        setup: shell lines run before the trial (module loads, venv activation).
        additional_parameters: any other sbatch option, e.g. ``{'reservation': 'x'}``.
        poll_s: how often the driver checks for finished trials.
    """

    partition: str | None = None
    time_min: int = 240
    nodes: int = 1
    tasks_per_node: int = 1
    accelerator: str | None = None
    accelerators_per_node: int = 0
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    job_name: str = "textbooks-sweep"
    setup: Sequence[str] = ()
    additional_parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    poll_s: float = 30.0

    def sbatch_parameters(self) -> dict[str, Any]:
        """Parameters in submitit's SlurmExecutor names (validated by submitit on ``update_parameters``).

        Raises:
            ValueError: unknown accelerator kind, or more than one task per trial.
        """
        if self.nodes * self.tasks_per_node != 1:
            raise ValueError(f"SlurmSettings: a proxy trial runs as one process (nodes=1, tasks_per_node=1) using "
                             f"all of its node's accelerators; got nodes={self.nodes}, "
                             f"tasks_per_node={self.tasks_per_node}")
        p: dict[str, Any] = {"job_name": self.job_name, "time": int(self.time_min), "nodes": int(self.nodes),
                             "ntasks_per_node": int(self.tasks_per_node),
                             "array_parallelism": int(self.array_parallelism)}
        for key in ("partition", "cpus_per_task", "account", "qos", "constraint", "exclude"):
            if getattr(self, key) is not None:
                p[key] = getattr(self, key)
        if self.mem_gb is not None:
            gb = float(self.mem_gb)
            p["mem"] = f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"
        if self.accelerators_per_node:
            if self.accelerator == "gpu":
                p["gpus_per_node"] = int(self.accelerators_per_node)
            elif self.accelerator == "tpu":
                p["gres"] = f"tpu:{int(self.accelerators_per_node)}"
            else:
                raise ValueError(f"SlurmSettings.accelerator must be 'gpu' or 'tpu' when accelerators_per_node is "
                                 f"set; got {self.accelerator!r}")
        if self.setup:
            p["setup"] = list(self.setup)
        if self.additional_parameters:
            p["additional_parameters"] = dict(self.additional_parameters)
        return p


@gin.configurable
@dataclasses.dataclass
class EmitSettings:
    """Emitted commands.

    Attributes:
        python: the interpreter the commands start (default: this one).
        path: where to write the commands (default ``<sweep_dir>/commands.sh``).
    """

    python: str | None = None
    path: str | None = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"submitit" in f.read()
    except OSError:
        return True


def in_flight(sweep: trials_lib.SweepDir, tid: str) -> bool:
    """True when a trial is running or queued elsewhere: its lock is held, or its last submission (a local
    process on this host or a Slurm job) is still alive."""
    if trials_lib.trial_is_locked(sweep.marker(tid, trials_lib.LOCK)):
        return True
    sub = trials_lib.read_json(sweep.marker(tid, trials_lib.SUBMITTED))
    if not sub:
        return False
    if sub.get("executor") == "local":
        return sub.get("host") == socket.gethostname() and _pid_alive(int(sub.get("job_id", 0) or 0))
    if sub.get("executor") == "slurm":
        try:
            import submitit

            state = submitit.SlurmJob(sub["folder"], str(sub["job_id"])).state
        except Exception:  # noqa: BLE001 - without sacct the state is unknown: resubmit (the lock guards).
            return False
        return state.split()[0].upper() in _ACTIVE_SLURM_STATES
    return False


def _job_folder(sweep: trials_lib.SweepDir) -> str:
    """submitit's folder pattern for the sweep's jobs (``%j`` becomes the job id)."""
    return os.path.join(sweep.submitit_dir, "%j")


def mark_submitted(sweep: trials_lib.SweepDir, tid: str, executor: str, job: Any) -> None:
    """Records a trial's submission (executor, job id, log paths) so a restarted driver can find it."""
    trials_lib.write_json_atomic(sweep.marker(tid, trials_lib.SUBMITTED), {
            "executor": executor, "job_id": str(job.job_id), "host": socket.gethostname(),
            "folder": _job_folder(sweep),
            "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "time": trials_lib.now()})


def _job_status(job: Any) -> str | None:
    """The status :func:`execute_trial` returned in a finished job, or None when it returned nothing."""
    try:
        result = job.result()
    except Exception:  # noqa: BLE001 - a crashed job has no result; the caller records the crash.
        return None
    return result.get("status") if isinstance(result, Mapping) else None


def record_crash(sweep: trials_lib.SweepDir, tid: str, job: Any) -> None:
    """Writes FAILED for a job that ended without writing DONE or FAILED (killed, out of memory, ...)."""
    err = None
    try:
        exc = job.exception()
        err = f"{type(exc).__name__}: {str(exc)[-2000:]}" if exc is not None else None
    except Exception as e:  # noqa: BLE001
        err = f"{type(e).__name__}: {e}"
    trials_lib.write_json_atomic(sweep.marker(tid, trials_lib.FAILED), {
            "trial_id": tid, "finished": trials_lib.now(),
            "error": "the trial's job ended without writing DONE or FAILED (killed, timed out or out of "
                     f"memory?); {err or 'no exception recorded'}",
            "log_paths": [str(job.paths.stdout), str(job.paths.stderr)]})


def run_local(sweep: trials_lib.SweepDir, pending: Sequence[trials_lib.Trial], running: Sequence[str],
              runner: TrialRunner, settings: LocalSettings,
              on_finish: Callable[[str, str], None]) -> None:
    """Runs ``pending`` trials as local submitit processes, ``settings.max_parallel`` at once, and waits for
    ``running`` ones (already running elsewhere) to finish; calls ``on_finish(trial_id, status)`` for each."""
    import submitit

    if settings.max_parallel < 1:
        raise ValueError(f"LocalSettings.max_parallel must be >= 1; got {settings.max_parallel}")
    executor = submitit.LocalExecutor(folder=_job_folder(sweep))
    executor.update_parameters(timeout_min=settings.timeout_min)
    queue = list(pending)
    jobs: dict[str, Any] = {}
    waiting = set(running)
    while queue or jobs or waiting:
        for tid in sorted(waiting):
            if in_flight(sweep, tid):
                continue
            waiting.discard(tid)
            status, _ = results_lib.trial_status(sweep, tid)
            if status in ("done", "failed"):
                on_finish(tid, status)
            else:  # the earlier process died without a marker: run it again.
                queue.append(sweep.read_trial(tid))
        while queue and len(jobs) + len(waiting) < settings.max_parallel:
            trial = queue.pop(0)
            job = executor.submit(execute_trial, sweep.root, trial.to_dict(), runner)
            mark_submitted(sweep, trial.trial_id, "local", job)
            jobs[trial.trial_id] = job
            logger.info("submitted trial %s (pid %s): %s seed %d", trial.trial_id, job.job_id, trial.ratios,
                        trial.seed)
        for tid, job in list(jobs.items()):
            if not job.done():  # count a trial finished once its process has exited.
                continue
            del jobs[tid]
            status, _ = results_lib.trial_status(sweep, tid)
            if status not in ("done", "failed"):
                if _job_status(job) == "busy":  # another process runs it: wait for that one instead.
                    waiting.add(tid)
                    continue
                record_crash(sweep, tid, job)
                status = "failed"
            on_finish(tid, status)
        if queue or jobs or waiting:
            time.sleep(settings.poll_s)


def _slurm_executor(sweep: trials_lib.SweepDir, settings: SlurmSettings):
    import submitit

    executor = submitit.SlurmExecutor(folder=_job_folder(sweep))
    executor.update_parameters(**settings.sbatch_parameters())
    return executor


def slurm_script(settings: SlurmSettings, folder: str, num_trials: int, python: str | None = None) -> str:
    """The sbatch script submitit's SlurmExecutor submits for an array of ``num_trials`` trials.

    Rendered by submitit's own template (``submitit.slurm.slurm._make_sbatch_string``, the function its
    executor calls), so it matches a real submission except for the job folder's ``%j`` placeholders.
    Nothing is submitted and no Slurm installation is needed.

    Raises:
        ValueError: a parameter submitit does not accept (the message lists the valid ones).
    """
    from submitit.slurm import slurm as submitit_slurm

    params = settings.sbatch_parameters()
    valid = set(submitit_slurm._get_default_parameters())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"unknown sbatch parameter(s) {unknown}; submitit accepts {sorted(valid)}")
    python = shlex.quote(sys.executable) if python is None else python
    job_folder = os.path.join(folder, "%j")
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(job_folder)])
    return submitit_slurm._make_sbatch_string(command=command, folder=job_folder,
                                              map_count=int(num_trials) if num_trials > 1 else None, **params)


def submit_slurm(sweep: trials_lib.SweepDir, pending: Sequence[trials_lib.Trial], runner: TrialRunner,
                 settings: SlurmSettings) -> list[Any]:
    """Submits ``pending`` as one Slurm job array (a single job for one trial); returns the jobs."""
    if not pending:
        return []
    executor = _slurm_executor(sweep, settings)
    with executor.batch():
        jobs = [executor.submit(execute_trial, sweep.root, t.to_dict(), runner) for t in pending]
    for trial, job in zip(pending, jobs):
        mark_submitted(sweep, trial.trial_id, "slurm", job)
    logger.info("submitted %d trial(s) as Slurm job %s", len(jobs), jobs[0].job_id.split("_")[0])
    return jobs


def wait_slurm(sweep: trials_lib.SweepDir, jobs: Mapping[str, Any], running: Sequence[str],
               settings: SlurmSettings, on_finish: Callable[[str, str], None]) -> None:
    """Waits for submitted Slurm trials (and ones found running) to finish, reporting each."""
    jobs = dict(jobs)
    waiting = set(running)
    while jobs or waiting:
        for tid in sorted(waiting):
            if not in_flight(sweep, tid):
                waiting.discard(tid)
                status, _ = results_lib.trial_status(sweep, tid)
                on_finish(tid, status if status in ("done", "failed") else "failed")
        for tid, job in list(jobs.items()):
            status, _ = results_lib.trial_status(sweep, tid)
            if status in ("done", "failed"):
                del jobs[tid]
                on_finish(tid, status)
            elif job.done():
                record_crash(sweep, tid, job)
                del jobs[tid]
                on_finish(tid, "failed")
        if jobs or waiting:
            time.sleep(settings.poll_s)


def trial_command(sweep: trials_lib.SweepDir, tid: str, python: str | None = None) -> str:
    """The shell command that runs one trial of the sweep anywhere the project is installed."""
    python = shlex.quote(sys.executable) if python is None else python
    return f"{python} -m textbooks.cli sweep --sweep_dir {shlex.quote(sweep.root)} --run_trial {shlex.quote(tid)}"


def emit_commands(sweep: trials_lib.SweepDir, pending: Sequence[trials_lib.Trial], settings: EmitSettings) -> str:
    """Writes one command per pending trial to ``commands.sh``; returns its path."""
    path = settings.path or sweep.commands_path
    lines = ["#!/usr/bin/env bash",
             f"# {len(pending)} independent trial command(s) of the sweep in {sweep.root}, one per line.",
             "# Run them in any order, anywhere that sees this folder, e.g.",
             "#   grep -v '^#' FILE | xargs -P 4 -I{} bash -c {}",
             "# or as an array job: `grep -v '^#' FILE | sed -n \"${TASK_ID}p\" | bash` (TASK_ID from 1). Each",
             "# writes its trial's DONE or FAILED marker; `textbooks sweep --sweep_dir D --status` gathers results."]
    lines += [trial_command(sweep, t.trial_id, settings.python) for t in pending]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path

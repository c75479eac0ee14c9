"""The sweep entry point: ``sweep(...)``, bound in gin (``sweep.*``) and run by ``textbooks sweep``.

One proxy run per (mixture point, seed), all with the same base config: only the mixture ratios and the seed
change. The sweep folder records the base config's fingerprint; running another config into it is refused.
Re-running the same sweep resumes it: finished trials are kept, trials still running are waited for, failed
ones are retried (``retry_failed``), and new design points are added. The results table is rewritten as each
trial finishes. Stopping the driver (Ctrl-C, a kill) leaves local trials that are already running to finish on
their own; the next run waits for them instead of starting them again.

The fingerprint covers the base config (the training gin files with their includes, the bindings, the
evaluation settings) and the components, not the contents of the data: rebuild the data into a new data root
and use a new sweep folder when the data changes.

A minimal gin file (see ``experiments/sweeps/`` for complete ones)::

    COMPONENTS = ['web_filtered', 'code_filtered', 'synthetic_textbooks']
    sweep.sweep_dir = '/tmp/sweeps/three_way'
    sweep.components = %COMPONENTS
    sweep.points = @dirichlet_design()
    dirichlet_design.components = %COMPONENTS
    dirichlet_design.num_points = 12
    sweep.seeds = [0, 1]
    sweep.runner = @TrainingTrial()
    TrainingTrial.gin_files = ['tiny/pretrain.gin']
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from typing import Any, Mapping, Sequence

import gin

from textbooks.mixopt import design as design_lib
from textbooks.mixopt import dispatch
from textbooks.mixopt import results as results_lib
from textbooks.mixopt import tracking
from textbooks.mixopt import training_trial  # noqa: F401  (registers TrainingTrial for the sweep gin files)
from textbooks.mixopt import trials as trials_lib
from textbooks.mixopt.trial_kinds import TrialRunner, execute_trial
from textbooks.progress import Progress

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
RUNNER_JSON = "runner.json"


@dataclasses.dataclass
class SweepOutcome:
    """What a call to :func:`sweep` did.

    Attributes:
        sweep_dir: the sweep folder.
        rows: the results table.
        counts: rows per status.
        failures: the failed rows (trial id, error, log).
        commands_path: the emitted commands file (executor ``emit``).
        sbatch_path: the rendered sbatch script (executor ``slurm`` with ``dry_run``).
    """

    sweep_dir: str
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    commands_path: str | None = None
    sbatch_path: str | None = None


def runner_spec(runner: TrialRunner) -> dict[str, Any]:
    """A JSON description of a runner (class path and fields) from which :func:`runner_from_spec` rebuilds it."""
    if not dataclasses.is_dataclass(runner):
        raise TypeError(f"trial runners must be dataclasses to be recorded; got {type(runner).__name__}")
    kwargs = {f.name: getattr(runner, f.name) for f in dataclasses.fields(runner)}
    kwargs = {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping)
                  else dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)  # settings such as TrialBench
              for k, v in kwargs.items()}
    return {"class": f"{type(runner).__module__}.{type(runner).__qualname__}", "kwargs": kwargs}


def runner_from_spec(spec: Mapping[str, Any]) -> TrialRunner:
    """Rebuilds the runner recorded by :func:`runner_spec`."""
    module, _, name = spec["class"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls(**spec["kwargs"])  # every field is given, so no gin binding is consulted


def _trial_row(rows: Sequence[Mapping[str, Any]], tid: str) -> dict[str, Any]:
    for r in rows:
        if r["trial_id"] == tid:
            return dict(r)
    return {"trial_id": tid, "status": "missing"}


def _curve(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    run_dir = row.get("run_dir")
    if not run_dir or not os.path.isdir(str(run_dir)):
        return []
    files = results_lib.find_metrics_files(str(run_dir), results_lib.CURVE_FILES)
    return results_lib.read_metrics_jsonl(files[0]) if files else []


@gin.configurable
def sweep(sweep_dir: str = gin.REQUIRED, components: Sequence[str] = gin.REQUIRED,
          points: Sequence[Mapping[str, float]] = gin.REQUIRED, runner: TrialRunner = gin.REQUIRED,
          seeds: Sequence[int] = (0,), bounds: Mapping[str, Sequence[float]] | None = None,
          prior: Mapping[str, float] | None = None, executor: str = "local",
          local: dispatch.LocalSettings | None = None, slurm: dispatch.SlurmSettings | None = None,
          emit: dispatch.EmitSettings | None = None, tracking_settings: tracking.TrackingSettings | None = None,
          name: str | None = None, wait: bool = True, retry_failed: bool = True,
          dry_run: bool = False) -> SweepOutcome:
    """Runs (or resumes) a mixture sweep.

    Args:
        sweep_dir: the sweep folder (local path shared with the workers).
        components: the data roles mixed (the factory's roles).
        points: the design: a list of ``{component: ratio}`` (e.g. ``@grid_design()``).
        runner: what each trial runs (``@TrainingTrial()`` or ``@CommandTrial()``).
        seeds: seeds per point.
        bounds: per-component ``(low, high)`` every point must satisfy.
        prior: the reference mixture (recorded for ``mixopt``'s distance bound; default uniform).
        executor: ``'local'``, ``'slurm'`` or ``'emit'``.
        local, slurm, emit: executor settings.
        tracking_settings: W&B settings (TensorBoard is always written).
        name: the sweep's name (W&B group); default: the folder's name.
        wait: wait for submitted trials (local always waits).
        retry_failed: run failed trials again.
        dry_run: write what would be submitted (commands, sbatch script) without running anything.

    Returns:
        A :class:`SweepOutcome`.

    Raises:
        DesignError: an invalid design (names the point and key).
        SweepConfigMismatch: ``sweep_dir`` holds another base config.
        ValueError: unknown executor or invalid settings.
    """
    if executor not in dispatch.EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(dispatch.EXECUTORS)}")
    comps = design_lib.check_components(components)
    pts = design_lib.validate_design(points, comps, bounds)
    prior_r = design_lib.validate_ratios(prior, comps, where="prior") if prior else \
        {c: 1.0 / len(comps) for c in comps}
    expanded = design_lib.expand_trials(pts, seeds)
    runner.check(comps)
    payload = {"format": FORMAT_VERSION, "components": list(comps), "runner": runner.fingerprint_payload()}
    fingerprint = trials_lib.config_fingerprint(payload)
    sw = trials_lib.SweepDir(sweep_dir)
    name = name or os.path.basename(sw.root.rstrip("/"))
    manifest = sw.init_or_check(fingerprint, payload, comps, extra={"name": name, "prior": prior_r,
                                                                     "bounds": dict(bounds or {})})
    trials = [trials_lib.Trial.create(i, r, s, fingerprint) for i, r, s in expanded]
    recorded = dict(manifest.get("trials", {}))
    for t in trials:
        recorded.setdefault(t.trial_id, {"point": t.point, "seed": t.seed, "ratios": t.ratios})
        sw.write_trial(t)
    manifest.update(trials=recorded, prior=prior_r, name=name)
    trials_lib.write_json_atomic(sw.sweep_json, manifest)
    trials_lib.write_json_atomic(os.path.join(sw.root, RUNNER_JSON), runner_spec(runner))
    with open(sw.config_gin, "w") as f:
        f.write(gin.config_str())

    pending, running, done = [], [], 0
    for t in trials:
        status, _ = results_lib.trial_status(sw, t.trial_id)
        if status == "done":
            done += 1
        elif dispatch.in_flight(sw, t.trial_id):
            running.append(t.trial_id)
        elif status == "failed" and not retry_failed:
            continue
        else:
            pending.append(t)
    logger.info("sweep %s (%s): %d trial(s) = %d point(s) x %d seed(s): %d done, %d running elsewhere, "
                "%d to run", name, fingerprint, len(trials), len(pts), len(list(seeds)), done, len(running),
                len(pending))
    outcome_paths: dict[str, str] = {}
    tracker = tracking.SweepTracker(sw.root, name, fingerprint, comps, tracking_settings)
    progress = Progress(len(trials), "sweep", unit="trial", already_done=done, interval=0.0, redraw=False)

    def on_finish(tid: str, status: str) -> None:
        rows = results_lib.refresh(sw)
        row = _trial_row(rows, tid)
        logger.info("trial %s %s", tid, status)
        progress.update(done=int(status == "done"), failed=int(status != "done"))
        try:
            tracker.trial_finished(row, _curve(row))
            tracker.progress(progress.done, progress.failed, progress.total)
        except Exception as e:  # noqa: BLE001 - tracking must never stop a sweep.
            logger.warning("tracking of trial %s failed: %s", tid, e)
        if status != "done":
            logger.error("trial %s failed: %s (log: %s)", tid, row.get("error"), row.get("log"))

    try:
        if executor == "emit" or (dry_run and executor == "local"):
            outcome_paths["commands"] = dispatch.emit_commands(sw, pending, emit or dispatch.EmitSettings())
            logger.info("wrote %d trial command(s) to %s", len(pending), outcome_paths["commands"])
        elif executor == "slurm":
            settings = slurm or dispatch.SlurmSettings()
            if dry_run:
                path = os.path.join(sw.root, "slurm_array.sbatch")
                with open(path, "w") as f:
                    f.write(dispatch.slurm_script(settings, sw.submitit_dir, len(pending)))
                outcome_paths["sbatch"] = path
                logger.info("dry run: the sbatch script for %d trial(s) is in %s", len(pending), path)
            else:
                jobs = dispatch.submit_slurm(sw, pending, runner, settings)
                if wait:
                    dispatch.wait_slurm(sw, {t.trial_id: j for t, j in zip(pending, jobs)}, running, settings,
                                      on_finish)
        else:
            dispatch.run_local(sw, pending, running, runner, local or dispatch.LocalSettings(), on_finish)
    finally:
        rows = results_lib.refresh(sw)
        try:
            tracker.close(rows)
        except Exception as e:  # noqa: BLE001
            logger.warning("closing the trackers failed: %s", e)
    counts = results_lib.summarize(rows)
    failures = [{"trial_id": r["trial_id"], "error": r.get("error"), "log": r.get("log")}
                for r in rows if r["status"] in ("failed", "missing")]
    for f in failures:
        logger.error("FAILED %s: %s (log: %s)", f["trial_id"], f["error"], f["log"])
    logger.info("sweep %s: %s; table: %s", name, ", ".join(f"{v} {k}" for k, v in counts.items() if v),
                sw.results_csv)
    return SweepOutcome(sw.root, rows, counts, failures, outcome_paths.get("commands"), outcome_paths.get("sbatch"))


def run_trial(sweep_dir: str, tid: str) -> dict[str, Any]:
    """Runs one recorded trial of a sweep in this process (what emitted commands call).

    Raises:
        FileNotFoundError: the sweep folder, its runner record or the trial folder is missing.
    """
    sw = trials_lib.SweepDir(sweep_dir)
    manifest = sw.manifest()
    spec = trials_lib.read_json(os.path.join(sw.root, RUNNER_JSON))
    if spec is None:
        raise FileNotFoundError(f"{os.path.join(sw.root, RUNNER_JSON)} is missing; start the sweep with "
                                "`textbooks sweep --gin_file ...` first")
    trial = sw.read_trial(tid)
    if trial.fingerprint != manifest["fingerprint"]:
        raise trials_lib.SweepConfigMismatch(f"trial {tid} has fingerprint {trial.fingerprint}, the sweep "
                                             f"{manifest['fingerprint']}; it belongs to another config")
    return execute_trial(sw.root, trial.to_dict(), runner_from_spec(spec))

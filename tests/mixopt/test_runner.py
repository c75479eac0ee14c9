"""The sweep runner: parallel submitit processes, failures, resuming after SIGKILL, config guard, Slurm, emit."""

import glob
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from mixopt_helpers import COMPONENTS, fake_command, fake_loss
from textbooks.mixopt import design, dispatch, results, sweep, trials
from textbooks.mixopt.trial_kinds import CommandTrial

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _exec_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def _sweep(tmp_path, points, seeds=(0,), max_parallel=2, **kw):
    return sweep.sweep(sweep_dir=str(tmp_path / "sweep"), components=COMPONENTS, points=points, seeds=seeds,
                       runner=kw.pop("trial_runner", CommandTrial(command=fake_command())),
                       local=dispatch.LocalSettings(max_parallel=max_parallel, poll_s=0.2), **kw)


def test_local_trials_run_in_parallel_processes_and_fill_the_table(tmp_path, monkeypatch):
    log = tmp_path / "exec.log"
    monkeypatch.setenv("FAKE_TRIAL_EXEC_LOG", str(log))
    monkeypatch.setenv("FAKE_TRIAL_SLEEP", "3.0")
    points = design.grid_design(COMPONENTS, divisions=1)  # the three vertices
    out = _sweep(tmp_path, points, max_parallel=3)
    assert out.counts["done"] == 3 and not out.failures
    runs = _exec_log(log)
    pids = {int(r[1]) for r in runs}
    assert len(runs) == 3 and len(pids) == 3 and os.getpid() not in pids
    intervals = [(float(r[2]), float(r[3])) for r in runs]
    most = max(sum(s <= t < e for s, e in intervals) for t, _ in intervals)
    assert most >= 2  # trials ran at the same time (all three, unless one process started late under load)
    with open(tmp_path / "sweep" / "results.json") as f:
        table = json.load(f)
    assert len(table["rows"]) == 3
    for row in table["rows"]:
        ratios = {c: row[f"ratio/{c}"] for c in COMPONENTS}
        assert row["loss"] == pytest.approx(fake_loss(ratios, row["seed"]))
        assert row["status"] == "done"
    with open(tmp_path / "sweep" / "results.csv") as f:
        assert len(f.read().strip().splitlines()) == 4


def test_a_failing_trial_is_reported_and_the_others_finish(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRIAL_FAIL_IF", "code_filtered")
    out = _sweep(tmp_path, design.grid_design(COMPONENTS, divisions=1), max_parallel=2)
    assert out.counts["done"] == 2 and out.counts["failed"] == 1
    (failure,) = out.failures
    assert "exited with status 3" in failure["error"] and "deliberate failure" in failure["error"]
    log_path = failure["log"].split(";")[0]
    with open(log_path) as f:
        assert "deliberate failure" in f.read()
    marker = trials.read_json(os.path.join(tmp_path, "sweep", "trials", failure["trial_id"], "FAILED"))
    assert "Traceback" in marker["traceback"]
    # Fixed, the rerun retries only the failed trial.
    monkeypatch.delenv("FAKE_TRIAL_FAIL_IF")
    monkeypatch.setenv("FAKE_TRIAL_EXEC_LOG", str(tmp_path / "exec.log"))
    out = _sweep(tmp_path, design.grid_design(COMPONENTS, divisions=1))
    assert out.counts["done"] == 3
    assert [r[0] for r in _exec_log(tmp_path / "exec.log")] == [failure["trial_id"]]


def test_sweep_killed_midway_resumes_without_redoing_or_duplicating(tmp_path):
    sweep_dir = tmp_path / "sweep"
    log = tmp_path / "exec.log"
    gin_file = tmp_path / "sweep.gin"
    gin_file.write_text(textwrap.dedent(f"""\
        COMPONENTS = {COMPONENTS!r}
        sweep.sweep_dir = {str(sweep_dir)!r}
        sweep.components = %COMPONENTS
        sweep.points = @grid_design()
        grid_design.components = %COMPONENTS
        grid_design.divisions = 2
        sweep.seeds = [0]
        sweep.runner = @CommandTrial()
        CommandTrial.command = {fake_command()!r}
        sweep.local = @LocalSettings()
        LocalSettings.max_parallel = 2
        LocalSettings.poll_s = 0.2
        """))
    # Trials started after the first two finished wait for `release` (orphans of the killed driver stay in flight
    # until the second driver has seen them, however long its start takes).
    release = tmp_path / "release"
    env = dict(os.environ, FAKE_TRIAL_EXEC_LOG=str(log), FAKE_TRIAL_SLEEP="1.5", FAKE_TRIAL_HOLD=str(release),
               FAKE_TRIAL_HOLD_AFTER="2")
    driver = subprocess.Popen([sys.executable, "-m", "textbooks.cli", "sweep", f"--gin_file={gin_file}"], env=env,
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300

    def submitted():
        return len(glob.glob(str(sweep_dir / "trials" / "*" / "SUBMITTED")))

    try:  # kill once two trials are done and a third one is under way
        while (len(_exec_log(log)) < 2 or submitted() < 3) and time.time() < deadline:
            time.sleep(0.05)
        assert len(_exec_log(log)) >= 2 and submitted() >= 3, "the driver did not get going in time"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    done_before = {r[0] for r in _exec_log(log)}
    assert len(done_before) < 6
    # Rerun: trials finished before the kill are kept; ones its orphaned processes still run are waited for.
    stderr_path = tmp_path / "rerun.err"
    with open(stderr_path, "w") as stderr:
        rerun = subprocess.Popen([sys.executable, "-m", "textbooks.cli", "sweep", f"--gin_file={gin_file}"],
                                 env=dict(os.environ, FAKE_TRIAL_EXEC_LOG=str(log), FAKE_TRIAL_SLEEP="0"), cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
        pattern = re.compile(r"(\d+) done, (\d+) running elsewhere, (\d+) to run")
        try:
            deadline = time.time() + 300
            while not pattern.search(stderr_path.read_text()) and rerun.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            release.touch()
            rerun.wait(timeout=180)
        finally:
            release.touch()
            if rerun.poll() is None:
                rerun.kill()
    err = stderr_path.read_text()
    assert rerun.returncode == 0, err[-3000:]
    m = pattern.search(err)
    assert m and sum(map(int, m.groups())) == 6 and int(m.group(1)) >= 2
    assert int(m.group(2)) >= 1  # the orphaned trial was waited for, not resubmitted
    ran = [r[0] for r in _exec_log(log)]
    assert len(ran) == 6 and len(set(ran)) == 6  # every trial ran exactly once, across both drivers
    rows = results.gather(trials.SweepDir(str(sweep_dir)))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert len({r["trial_id"] for r in rows}) == 6
    assert done_before <= {r["trial_id"] for r in rows}


def test_a_different_base_config_is_refused(tmp_path):
    pts = design.grid_design(COMPONENTS, divisions=1)[:1]
    _sweep(tmp_path, pts)
    other = CommandTrial(command=fake_command() + " --extra_flag", metrics_file="metrics.json")
    with pytest.raises(trials.SweepConfigMismatch, match=r"runner\.command.*use a new sweep_dir"):
        _sweep(tmp_path, pts, trial_runner=other)
    # The same config with a larger design is accepted (more points, same fingerprint).
    out = _sweep(tmp_path, design.grid_design(COMPONENTS, divisions=1)[:2])
    assert out.counts["done"] == 2


def test_emit_writes_one_command_per_pending_trial(tmp_path):
    pts = design.grid_design(COMPONENTS, divisions=1)
    out = _sweep(tmp_path, pts, seeds=(0, 1), executor="emit")
    with open(out.commands_path) as f:
        commands = [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]
    assert len(commands) == 6 and out.counts["pending"] == 6
    assert all("--run_trial t" in c and "textbooks.cli sweep --sweep_dir" in c for c in commands)
    done = subprocess.run(commands[0], shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ": done" in done.stdout
    again = _sweep(tmp_path, pts, seeds=(0, 1), executor="emit")
    with open(again.commands_path) as f:
        remaining = [ln for ln in f.read().splitlines() if ln and not ln.startswith("#")]
    assert len(remaining) == 5 and commands[0] not in remaining
    status = subprocess.run([sys.executable, "-m", "textbooks.cli", "sweep", "--sweep_dir", out.sweep_dir,
                             "--status"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "1 done, 5 pending" in status.stdout


def test_missing_trial_folder_is_reported(tmp_path):
    out = _sweep(tmp_path, design.grid_design(COMPONENTS, divisions=1)[:2])
    gone = out.rows[0]["trial_id"]
    sw = trials.SweepDir(out.sweep_dir)
    import shutil

    shutil.rmtree(sw.trial_dir(gone))
    rows = results.refresh(sw)
    (row,) = [r for r in rows if r["trial_id"] == gone]
    assert row["status"] == "missing" and sw.trial_dir(gone) in row["error"]
    with pytest.raises(FileNotFoundError, match=f"trial {gone}: .*does not exist"):
        sweep.run_trial(out.sweep_dir, gone)
    status = subprocess.run([sys.executable, "-m", "textbooks.cli", "sweep", "--sweep_dir", out.sweep_dir,
                             "--status"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "missing" in status.stdout and "is missing" in status.stdout


def _fake_slurm(bin_dir, capture):
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {capture}\necho 'Submitted batch job 4242'\n")
    for name in ("srun", "sbatch"):
        os.chmod(bin_dir / name, stat.S_IRWXU)


@pytest.mark.parametrize("accel,flag", [("tpu", "#SBATCH --gres=tpu:4"), ("gpu", "#SBATCH --gpus-per-node=4")])
def test_slurm_job_array_spec(tmp_path, monkeypatch, accel, flag):
    capture = tmp_path / "submitted.sbatch"
    _fake_slurm(tmp_path / "bin", capture)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    settings = dispatch.SlurmSettings(partition="debug", time_min=30, accelerator=accel, accelerators_per_node=4,
                                    cpus_per_task=8, mem_gb=64, array_parallelism=2,
                                    setup=["source /opt/venv/bin/activate"], job_name="mix")
    pts = design.grid_design(COMPONENTS, divisions=1)[:2]
    out = _sweep(tmp_path, pts, seeds=(0, 1), executor="slurm", slurm=settings, wait=False)
    text = capture.read_text()
    for line in ["#SBATCH --array=0-3%2", "#SBATCH --partition=debug", "#SBATCH --time=30", flag,
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --job-name=mix", "#SBATCH --nodes=1",
                 "source /opt/venv/bin/activate", "export SUBMITIT_EXECUTOR=slurm"]:
        assert line in text, line
    assert "srun --unbuffered" in text and "-m submitit.core._submit" in text
    # The dry-run rendering is exactly what submitit submitted.
    sw = trials.SweepDir(out.sweep_dir)
    assert dispatch.slurm_script(settings, sw.submitit_dir, 4) == text
    ids = sorted(trials.read_json(sw.marker(r["trial_id"], trials.SUBMITTED))["job_id"] for r in out.rows)
    assert ids == ["4242_0", "4242_1", "4242_2", "4242_3"]
    assert out.counts["submitted"] == 4


def test_slurm_dry_run_writes_the_script_without_a_cluster(tmp_path):
    settings = dispatch.SlurmSettings(partition="p", accelerator="gpu", accelerators_per_node=8, time_min=60)
    out = _sweep(tmp_path, design.grid_design(COMPONENTS, divisions=1), executor="slurm", slurm=settings,
                 dry_run=True)
    with open(out.sbatch_path) as f:
        text = f.read()
    assert "#SBATCH --array=0-2%3" in text and "#SBATCH --gpus-per-node=8" in text
    assert out.counts["pending"] == 3
    with pytest.raises(ValueError, match="accelerator must be 'gpu' or 'tpu'"):
        dispatch.SlurmSettings(accelerator="fpga", accelerators_per_node=1).sbatch_parameters()

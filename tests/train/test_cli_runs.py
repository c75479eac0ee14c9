"""End-to-end `textbooks train` runs in subprocesses: exact resume after SIGKILL, SIGTERM, corrupt-checkpoint
fallback, and 2 processes x 4 devices matching 1 process x 8 devices."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from train_support import REPO, cli_env, losses, run_cli, tiny_gin, train_cmd

pytestmark = pytest.mark.slow

STEPS = 40
SAVE_EVERY = 8


def _wait_for_step(model_dir, step, proc, timeout=240):
    """Waits until ``model_dir``'s metrics show ``step`` (or the process ends); returns the last step seen."""
    path = os.path.join(model_dir, "metrics", "train.jsonl")
    deadline = time.time() + timeout
    last = 0
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(line)["step"] for line in f if line.strip()]
            last = max(steps, default=0)
            if last >= step:
                return last
        if proc.poll() is not None:
            return last
        time.sleep(0.1)
    raise TimeoutError(f"step {step} not reached in {timeout} s (last {last})")


@pytest.fixture(scope="module")
def gin_file(tmp_path_factory):
    return tiny_gin(tmp_path_factory.mktemp("gin"), steps=STEPS, save_every=SAVE_EVERY)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, gin_file):
    """An uninterrupted run (1 process, 8 devices)."""
    model_dir = str(tmp_path_factory.mktemp("reference"))
    out = run_cli(train_cmd(gin_file, model_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    got = losses(model_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    return model_dir, got


def test_operative_config_and_summary_are_written(reference_run):
    model_dir, _ = reference_run
    config = open(os.path.join(model_dir, "config.gin")).read()
    assert "BATCH_SIZE = 8" in config and "train.batch_size = %BATCH_SIZE" in config
    assert "model_config.hidden_size = 32" in config and "OptimizerConfig.b2 = 0.98" in config
    summary = json.load(open(os.path.join(model_dir, "summary.json")))
    assert summary["final_step"] == STEPS and summary["stopped_by"] == "completed"
    meta = json.load(open(os.path.join(model_dir, "checkpoints", str(STEPS), "metadata", "metadata")))
    assert meta["vocabulary"] == "byte" and meta["model_config"]["hidden_size"] == 32
    assert "train.train_steps" in meta["operative_config"]


def test_sigkill_then_restart_reproduces_losses_bit_for_bit(tmp_path, gin_file, reference_run):
    _, expected = reference_run
    model_dir = str(tmp_path / "killed")
    proc = subprocess.Popen(train_cmd(gin_file, model_dir), cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        killed_after = _wait_for_step(model_dir, SAVE_EVERY + 3, proc)
        # Make sure a checkpoint was finalized, so the restart resumes rather than starts over.
        while not os.path.isdir(os.path.join(model_dir, "checkpoints", str(SAVE_EVERY))) and proc.poll() is None:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert SAVE_EVERY < killed_after < STEPS
    out = run_cli(train_cmd(gin_file, model_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step" in out.stderr
    got = losses(model_dir)
    assert got == expected  # float equality: bit for bit


def test_sigterm_saves_and_exits_zero_within_60s(tmp_path, gin_file):
    model_dir = str(tmp_path / "term")
    proc = subprocess.Popen(train_cmd(gin_file, model_dir, "TRAIN_STEPS=1000", "CheckpointConfig.save_every=1000"),
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(model_dir, 3, proc)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        elapsed = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert elapsed < 60
    summary = json.load(open(os.path.join(model_dir, "summary.json")))
    assert summary["stopped_by"] == "signal"
    stopped = summary["final_step"]
    assert 3 <= stopped < 1000 and summary["last_checkpoint_step"] == stopped
    assert os.path.isdir(os.path.join(model_dir, "checkpoints", str(stopped), "params"))


def test_corrupt_latest_checkpoint_restores_the_previous_one(tmp_path, gin_file, reference_run):
    ref_dir, expected = reference_run
    model_dir = str(tmp_path / "corrupt")
    shutil.copytree(ref_dir, model_dir)
    newest = os.path.join(model_dir, "checkpoints", str(STEPS), "opt_state")
    for root, _, files in os.walk(newest):
        for f in files:
            if f != "commit_success.txt":
                with open(os.path.join(root, f), "wb") as fh:
                    fh.write(b"garbage")
    out = run_cli(train_cmd(gin_file, model_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"checkpoint at step {STEPS}" in out.stderr and "cannot be restored" in out.stderr
    assert f"resumed from step {STEPS - SAVE_EVERY}" in out.stderr
    assert losses(model_dir) == expected  # the last steps recomputed identically from the previous checkpoint
    assert os.listdir(os.path.join(model_dir, "checkpoints_corrupt"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_and_stop_together_on_sigterm(tmp_path, gin_file, reference_run):
    """2 processes x 4 devices give the losses of 1 process x 8; SIGTERM to one process stops both at the same
    step with a checkpoint (JAX's preemption service)."""
    _, expected = reference_run
    model_dir = str(tmp_path / "multi")
    port = _free_port()
    procs = []
    for pid in range(2):
        cmd = train_cmd(gin_file, model_dir, "TRAIN_STEPS=1000") + [
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=cli_env(devices=4), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        _wait_for_step(model_dir, 12, procs[0], timeout=400)
        procs[1].send_signal(signal.SIGTERM)
        for p in procs:
            outs.append(p.communicate(timeout=120))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "2 process(es)" in outs[0][1]
    summary = json.load(open(os.path.join(model_dir, "summary.json")))
    stopped = summary["final_step"]
    assert summary["stopped_by"] == "signal" and 12 <= stopped < 1000
    got = losses(model_dir)
    assert sorted(got) == list(range(1, stopped + 1))
    compared = [s for s in got if s in expected]
    assert len(compared) >= 12
    for step in compared:  # the learning rate is constant, so the planned length does not matter
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step
    # Both processes saved their input-pipeline position at the step they stopped at.
    files = os.listdir(os.path.join(model_dir, "checkpoints", str(stopped), "data_iterator"))
    assert sorted(f for f in files if f.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]

"""Exact resume on a paper mixture: `textbooks train` on `phi15_web` (packed rows from role shards built from the
local corpora), interrupted by SIGKILL or SIGTERM at a seeded random step after the first checkpoint and
restarted, gives every later step's loss and the final parameters bit for bit as an uninterrupted run. The same
for a llama-family model (SIGKILL only: the signal handling does not depend on the model).

The killed and the terminated run start together once the uninterrupted one has compiled, then the two restarts
run together: each run is mostly process start-up, so this takes about the time of three runs rather than five."""

import json
import os
import random
import signal
import subprocess
import textwrap
import time

import jax
import numpy as np
import pytest

from mixtures import phi
from train_support import REPO, TINY, cli_env, losses, train_cmd
from textbooks.corpora import build
from textbooks.model.load import load_model, read_metadata

pytestmark = pytest.mark.slow

MIXTURE = "phi15_web"
STEPS = 32
SAVE_EVERY = 8
SEED = 20240611  # picks the interruption steps


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Shards of the mixture's roles built from the local corpora (a few dozen records each)."""
    root = str(tmp_path_factory.mktemp("data"))
    results = build.build_corpora(root, roles=sorted(phi.MIXTURES[MIXTURE]), max_docs=24, max_chars=2000,
                                  verbose=False)
    missing = [r.role for r in results if r.manifest is None]
    assert not missing, f"roles {missing} have no local source: run `python -m textbooks.corpora.assets install`"
    return root


def _write_gin(tmp_path_factory, model_gin=None):
    """experiments/tiny/phi15_web.gin at test size: the byte vocabulary, a 2-layer model, 32-token rows (of the
    family ``model_gin`` selects, if given)."""
    overrides = "\n".join(f"model_config.{k} = {v}" for k, v in TINY.items())
    text = textwrap.dedent(f"""\
        include 'tiny/phi15_web.gin'
        {f"include '{model_gin}'" if model_gin else ""}
        MIXTURE_OR_TASK_NAME = '{MIXTURE}_byte'
        TASK_FEATURE_LENGTHS = {{'targets': 32}}
        BATCH_SIZE = 8
        TRAIN_STEPS = {STEPS}
        train.vocabulary = 'byte'
        train.log_every = 1
        train.tensorboard = False
        train.progress_bar = False
        train.peak_flops_per_device = 1e10
        OptimizerConfig.learning_rate = 3e-3
        CheckpointConfig.save_every = {SAVE_EVERY}
        CheckpointConfig.keep = 3
        CheckpointConfig.async_save = True
        ValidationConfig.eval_every = 0
        """) + overrides + "\n"
    path = tmp_path_factory.mktemp("gin") / "phi15_web_test.gin"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def gin_file(tmp_path_factory):
    return _write_gin(tmp_path_factory)


@pytest.fixture(scope="module")
def llama_gin_file(tmp_path_factory):
    """The llama family at the same test size: 4 query heads sharing 2 KV heads (llama-cpu-1m's grouping)."""
    return _write_gin(tmp_path_factory, "models/llama_cpu_1m.gin")


def _env(data_root):
    return cli_env(TEXTBOOKS_DATA_DIR=data_root)


def _start(gin_file, model_dir, data_root, log_path):
    """Starts ``textbooks train`` in the background, its output going to ``log_path``."""
    with open(log_path, "w") as log:
        return subprocess.Popen(train_cmd(gin_file, model_dir), cwd=REPO, env=_env(data_root),
                                stdout=subprocess.DEVNULL, stderr=log, text=True)


def _step_reached(model_dir):
    path = os.path.join(model_dir, "metrics", "train.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max((json.loads(line)["step"] for line in f if line.strip()), default=0)


def _wait(procs, timeout=300):
    """Waits for every process of ``{name: process}``; returns ``{name: time it ended}``."""
    deadline, ended = time.time() + timeout, {}
    while len(ended) < len(procs):
        for name, proc in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.time()
        assert time.time() < deadline, f"runs {sorted(set(procs) - set(ended))} still running after {timeout} s"
        time.sleep(0.05)
    return ended


def _log(path):
    with open(path) as f:
        return f.read()


def _interrupt_and_resume(root, gin_file, data_root, signals):
    """An uninterrupted reference run and, for each ``{name: signal}``, a run sent that signal at a seeded random
    step after the first checkpoint; then those runs' restarts. Returns what the tests check."""
    names = ("reference", *signals)
    dirs = {n: str(root / n) for n in names}
    logs = {n: str(root / f"{n}.log") for n in names}
    rng = random.Random(SEED)
    # After the first checkpoint and at least one checkpoint interval before the end.
    at = {n: rng.randint(SAVE_EVERY + 1, STEPS - SAVE_EVERY) for n in signals}
    out, signalled = {"at": at}, {}
    procs = {"reference": _start(gin_file, dirs["reference"], data_root, logs["reference"])}
    try:
        # The others start once the reference has compiled its programs into the shared compilation cache.
        deadline = time.time() + 300
        while _step_reached(dirs["reference"]) < 1:
            assert procs["reference"].poll() is None, _log(logs["reference"])[-3000:]
            assert time.time() < deadline, "the reference run did not reach step 1 in 300 s"
            time.sleep(0.05)
        procs.update({n: _start(gin_file, dirs[n], data_root, logs[n]) for n in at})
        pending, deadline = set(at), time.time() + 300
        while pending:
            for n in sorted(pending):
                assert procs[n].poll() is None, f"the {n} run ended before step {at[n]}:\n{_log(logs[n])[-3000:]}"
                first_checkpoint = os.path.join(dirs[n], "checkpoints", str(SAVE_EVERY))
                if _step_reached(dirs[n]) >= at[n] and os.path.isdir(first_checkpoint):
                    procs[n].send_signal(signals[n])
                    signalled[n] = time.time()
                    pending.discard(n)
            assert time.time() < deadline, f"steps {at} not reached in time"
            time.sleep(0.01)
        ended = _wait(procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for n in names:
        out[f"{n}_returncode"] = procs[n].returncode
        out[f"{n}_log"] = _log(logs[n])
        out[f"{n}_reached"] = _step_reached(dirs[n])
    assert procs["reference"].returncode == 0, out["reference_log"][-3000:]
    for n in signals:
        out[f"{n}_stop_seconds"] = ended[n] - signalled[n]
        if procs[n].returncode == 0:
            with open(os.path.join(dirs[n], "summary.json")) as f:
                out[f"{n}_summary"] = json.load(f)
    # The restarts.
    procs = {n: _start(gin_file, dirs[n], data_root, logs[n] + ".resumed") for n in signals}
    try:
        _wait(procs)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for n in signals:
        out[f"{n}_resumed_returncode"] = procs[n].returncode
        out[f"{n}_resumed_log"] = _log(logs[n] + ".resumed")
    out["dirs"] = dirs
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, gin_file, data_root):
    """phi: the reference, a run killed (SIGKILL) and one terminated (SIGTERM), and the two restarts."""
    return _interrupt_and_resume(tmp_path_factory.mktemp("runs"), gin_file, data_root,
                                 {"killed": signal.SIGKILL, "terminated": signal.SIGTERM})


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory, llama_gin_file, data_root):
    """llama: the reference, a run killed (SIGKILL) and its restart."""
    return _interrupt_and_resume(tmp_path_factory.mktemp("llama_runs"), llama_gin_file, data_root,
                                 {"killed": signal.SIGKILL})


def _final_params(model_dir):
    return load_model(model_dir, step=STEPS).params


def _assert_same_tree(got, expected):
    """Identical structure, shapes and dtypes, then identical values, leaf by leaf."""
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    got_leaves = jax.tree_util.tree_leaves_with_path(got)
    expected_leaves = jax.tree_util.tree_leaves_with_path(expected)
    assert len(got_leaves) == len(expected_leaves) > 0
    for (path, a), (_, b) in zip(got_leaves, expected_leaves):
        a, b = np.asarray(a), np.asarray(b)
        name = jax.tree_util.keystr(path)
        assert (a.shape, a.dtype) == (b.shape, b.dtype), name
        np.testing.assert_array_equal(a, b, err_msg=name)


def _assert_resumed_like_reference(runs, name, latest_possible):
    assert runs[f"{name}_resumed_returncode"] == 0, runs[f"{name}_resumed_log"][-3000:]
    model_dir, reference_dir = runs["dirs"][name], runs["dirs"]["reference"]
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    resumed = summary["start_step"]
    assert f"resumed from step {resumed}" in runs[f"{name}_resumed_log"]
    assert SAVE_EVERY <= resumed <= latest_possible and summary["final_step"] == STEPS
    expected = losses(reference_dir)
    got = losses(model_dir)  # the last record of each step: the restart's from resumed + 1 on
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == expected[step], (step, got[step], expected[step])  # bit for bit
    _assert_same_tree(_final_params(model_dir), _final_params(reference_dir))


def test_the_reference_run_trains_on_every_role_of_the_mixture(runs):
    model_dir = runs["dirs"]["reference"]
    meta = read_metadata(os.path.join(model_dir, "checkpoints", str(STEPS)))
    assert meta["mixture_or_task_name"] == f"{MIXTURE}_byte"
    with open(os.path.join(model_dir, "metrics", "train.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    assert {k[len("tokens/"):] for r in records for k in r if k.startswith("tokens/")} == set(phi.MIXTURES[MIXTURE])


def _assert_killed_then_resumed_like_reference(runs):
    assert runs["killed_returncode"] == -signal.SIGKILL, runs["killed_log"][-3000:]
    reached = runs["killed_reached"]
    assert runs["at"]["killed"] <= reached < STEPS, f"killed after step {reached}: not before the end"
    # Metrics lag the dispatched step by one, so a checkpoint can be one step ahead of the metrics.
    _assert_resumed_like_reference(runs, "killed", reached + 1)


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(runs):
    _assert_killed_then_resumed_like_reference(runs)


def test_llama_sigkill_at_a_random_step_then_resume_is_bit_identical(llama_runs):
    meta = read_metadata(os.path.join(llama_runs["dirs"]["killed"], "checkpoints", str(STEPS)))
    assert meta["model_config"]["family"] == "llama" and meta["model_config"]["num_kv_heads"] == 2
    _assert_killed_then_resumed_like_reference(llama_runs)


def test_sigterm_at_a_random_step_saves_exits_zero_and_resumes_bit_identical(runs):
    assert runs["terminated_returncode"] == 0, runs["terminated_log"][-3000:]
    assert runs["terminated_stop_seconds"] < 60
    summary = runs["terminated_summary"]
    stopped = summary["final_step"]
    assert summary["stopped_by"] == "signal" and runs["at"]["terminated"] <= stopped < STEPS
    assert summary["last_checkpoint_step"] == stopped  # saved where it stopped
    assert os.path.isdir(os.path.join(runs["dirs"]["terminated"], "checkpoints", str(stopped), "params"))
    _assert_resumed_like_reference(runs, "terminated", stopped)

"""Relative paths work in every verb that takes a run's folder: train (--model_dir, MODEL_DIR and INIT_FROM from
flags or gin files), eval, serve and convert on an orbax checkpoint named relative to the working directory."""

import json
import os
import subprocess
import sys
import urllib.request

import gin
import jax
import numpy as np
import pytest

from train_support import REPO, cli_env, tiny_gin
from textbooks import cli
from textbooks.model.load import load_model
from textbooks.serve.process import ServerProcess

pytestmark = pytest.mark.slow

STEPS = 2
# What runs/finetune.gin adds for INIT_FROM (including that file would also bring phi-1.5's size back).
FINETUNE = """
    INIT_FROM = %gin.REQUIRED
    CheckpointConfig.init_from = %INIT_FROM
    """


def _train(cwd, *args, **env):
    """`textbooks train` run from ``cwd``; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "textbooks.cli", "train", *args]
    return subprocess.run(cmd, cwd=cwd, env=cli_env(PYTHONPATH=REPO, **env), capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished tiny run (orbax checkpoint of step 2, byte vocabulary) at ``<root>/base``, made with an
    absolute path; the tests name it relative to ``root``."""
    root = tmp_path_factory.mktemp("relative")
    gin_file = tiny_gin(root, steps=STEPS, save_every=STEPS)
    out = _train(root, f"--gin_file={gin_file}", f"--model_dir={root / 'base'}")
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def _unfinished_saves(model_dir):
    return [p for p in os.listdir(os.path.join(model_dir, "checkpoints")) if "tmp" in p]


def _params(path, **kwargs):
    return jax.tree_util.tree_map(np.asarray, load_model(str(path), **kwargs).params)


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for (key, x), y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(key))


def test_train_with_a_relative_model_dir_saves_and_records_the_absolute_path(tmp_path, monkeypatch):
    gin_file = tiny_gin(tmp_path, steps=STEPS, save_every=1)
    out = _train(tmp_path, f"--gin_file={gin_file}", "--model_dir=runs/rel")
    assert out.returncode == 0, out.stderr[-3000:]
    model_dir = tmp_path / "runs" / "rel"
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["1", "2"] and not _unfinished_saves(model_dir)
    assert f"'{model_dir}'" in (model_dir / "config.gin").read_text()  # MODEL_DIR, recorded absolute
    # The loader takes the relative path too.
    monkeypatch.chdir(tmp_path)
    assert load_model("runs/rel").step == STEPS


def test_train_init_from_and_model_dir_given_relative_through_gin_flags(base_run, tmp_path):
    """INIT_FROM='base' (relative) fills the run's parameters from the base run. The learning rate is so small
    that Adam (each step moves a parameter by at most ~lr: |m_hat| / sqrt(v_hat) stays near 1) cannot change
    a float32 parameter by more than its rounding, so the new run's parameters must equal the base's; without
    INIT_FROM they would be a fresh seed-1 initialization, O(0.02) away."""
    lr = 1e-9
    gin_file = tiny_gin(tmp_path, steps=STEPS, save_every=STEPS, extra=FINETUNE + f"""
        train.seed = 1
        OptimizerConfig.learning_rate = {lr}
        """)
    out = _train(base_run, f"--gin_file={gin_file}", "--gin.INIT_FROM='base'", "--gin.MODEL_DIR='ft'")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"initialized parameters from {base_run / 'base'}" in out.stderr
    tuned, base = _params(base_run / "ft"), _params(base_run / "base")
    for x, y in zip(jax.tree_util.tree_leaves(tuned), jax.tree_util.tree_leaves(base)):
        np.testing.assert_allclose(x, y, rtol=np.finfo(np.float32).eps, atol=2 * STEPS * lr)


def test_gin_file_bindings_of_model_dir_and_init_from_are_made_absolute(tmp_path, monkeypatch):
    """MODEL_DIR and INIT_FROM set in a gin file reach the trainer absolute; gs:// paths are left alone."""
    from textbooks.train import trainer

    gin_file = tiny_gin(tmp_path, extra=FINETUNE + """
        MODEL_DIR = 'runs/from_gin'
        INIT_FROM = 'gs://bucket/base'
        """)
    seen = {}

    def fake_train():
        seen["model_dir"] = gin.query_parameter("MODEL_DIR/gin.macro.value")
        seen["init_from"] = gin.query_parameter("INIT_FROM/gin.macro.value")
        raise ValueError("stopped before training")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer, "train", fake_train)
    assert cli.main(["train", f"--gin_file={gin_file}"]) == 2
    assert seen == {"model_dir": str(tmp_path / "runs" / "from_gin"), "init_from": "gs://bucket/base"}


def test_train_refuses_a_model_dir_inside_a_file_before_training(tmp_path, monkeypatch, capsys):
    from textbooks.train import trainer

    (tmp_path / "taken").write_text("a file, not a folder")
    gin_file = tiny_gin(tmp_path)

    def fake_train():
        raise AssertionError("training started although the model dir cannot be created")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer, "train", fake_train)
    assert cli.main(["train", f"--gin_file={gin_file}", "--model_dir=taken/run"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'taken' / 'run'} cannot be used: {tmp_path / 'taken'} is a file" in err


def test_eval_reads_a_relative_checkpoint_and_writes_a_relative_out(base_run, monkeypatch, capsys):
    monkeypatch.chdir(base_run)
    out = "eval_rel"
    assert cli.main(["eval", "--checkpoint", "base", "--tasks", "piqa", "--limit", "2", "--out", out,
                     "--log_level", "WARNING"]) == 0, capsys.readouterr().err[-3000:]
    results = json.loads((base_run / out / "results.json").read_text())
    assert results["checkpoint"] == str(base_run / "base") and results["step"] == STEPS
    assert results["model"] == json.loads((base_run / "base" / "model_config.json").read_text())
    assert results["tasks"]["piqa"]["metrics"]["acc"]["n"] == 2


def test_convert_to_hf_and_back_with_relative_paths(base_run, monkeypatch, capsys):
    monkeypatch.chdir(base_run)
    assert cli.main(["convert", "--to-hf", "--checkpoint", "base", "--out", "hf_rel"]) == 0, \
        capsys.readouterr().err
    base = load_model(str(base_run / "base"))
    layout = {"scan_layers": base.config.scan_layers}
    _assert_trees_equal(_params(base_run / "hf_rel", **layout), base.params)
    assert json.loads((base_run / "hf_rel" / "config.json").read_text())["textbooks_vocabulary"] == "byte"

    assert cli.main(["convert", "--from-hf", "hf_rel", "--out", "params_rel"]) == 0, capsys.readouterr().err
    back = load_model(str(base_run / "params_rel"), **layout)
    assert back.metadata == {"vocabulary": "byte"}
    _assert_trees_equal(jax.tree_util.tree_map(np.asarray, back.params), base.params)


def test_serve_a_relative_checkpoint(base_run):
    server = ServerProcess.start("base", "--no_warmup", "--kernels", "xla", timeout=300, cwd=str(base_run),
                                 env=cli_env(devices=1, PYTHONPATH=REPO))
    with server:
        url = server.url
        with urllib.request.urlopen(url + "/v1/models", timeout=60) as resp:
            model = json.loads(resp.read())["data"][0]
        max_len = json.loads((base_run / "base" / "model_config.json").read_text())["max_len"]
        assert model["id"] == "base" and model["max_model_len"] == max_len
        body = json.dumps({"model": "base", "prompt": "def f(x):", "max_tokens": 3, "temperature": 0}).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["usage"]["completion_tokens"] <= 3
    assert server.proc.returncode == 0

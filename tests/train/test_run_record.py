"""The run record of a tiny mixture run: the operative config written after the first step (with the data
pipeline's bindings), the code's commit, the package versions, the requested and capped mixture, and the tokens
per role trained (checked against the batches the input pipeline yields), across a resume."""

import importlib.metadata
import json
import subprocess

import gin
import jax
import pytest
import tensorflow as tf

from train_support import FAST_COMPILE, REPO
from textbooks.data.roles import role_name
from textbooks.inputs import pipeline
from textbooks.train import checkpoints as ck
from textbooks.train import hooks, run_record, trainer
from textbooks.train.metrics import read_jsonl

ROLES = ("code_exercises", "web_raw")
LENGTH, BATCH = 64, 4


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    from mixtures import factory, testing

    root = str(tmp_path_factory.mktemp("data"))
    testing.write_corpora(root, list(ROLES), num_docs={"train": 30, "validation": 8}, num_shards=1,
                          mean_chars={"code_exercises": 100, "web_raw": 600})
    # code_exercises (about 3k tokens) is capped at 0.1 epochs of a 5-step budget (1280 tokens).
    name = factory.register_mixture({"code_exercises": 0.5, "web_raw": 0.5}, name="run_record_test_byte",
                                    vocabulary="byte", max_epochs=0.1)
    return root, name


def _train(model_dir, config, mixture, steps):
    root, name = mixture
    gin.bind_parameter("textbooks.data.paths.data_root.path", root)
    gin.bind_parameter("make_eval_datasets.use_cached", False)  # read by the evaluation data pipeline only
    return trainer.train(
        model_dir=str(model_dir), model_config=config, mixture_or_task_name=name,
        task_feature_lengths={"targets": LENGTH}, batch_size=BATCH, train_steps=steps,
        checkpoint=ck.CheckpointConfig(save_every=2, async_save=False),
        evaluation=hooks.ValidationConfig(eval_every=1, num_batches=1), log_every=1, progress_bar=False,
        tensorboard=True, peak_flops_per_device=1e9, devices=jax.devices()[:1], compiler_options=FAST_COMPILE)


def _reference_tokens(name, steps, planned):
    """Loss-weighted tokens per role of the first ``steps`` batches of the pipeline the trainer reads."""
    it = pipeline.make_train_iterator(name, task_feature_lengths=LENGTH, batch_size=BATCH, seed=0,
                                      num_train_steps=planned)
    out = {}
    for _ in range(steps):
        batch = next(it)
        for rid, w in zip(batch["decoder_role_ids"].ravel(), batch["decoder_loss_weights"].ravel()):
            if w > 0:
                out[role_name(int(rid))] = out.get(role_name(int(rid)), 0.0) + float(w)
    return out, it.mixture.fraction_report


def _texts(model_dir):
    out = []
    for path in tf.io.gfile.glob(str(model_dir / "tensorboard" / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == "operative_config":
                    out.append(tf.make_ndarray(v.tensor).item().decode())
    return out


def test_run_record_and_post_step_operative_config(tmp_path, tiny_config, mixture):
    model_dir = tmp_path / "run"
    result = _train(model_dir, tiny_config, mixture, 3)
    assert result.final_step == 3

    config = (model_dir / "config.gin").read_text()
    assert "make_eval_datasets.use_cached = False" in config
    assert any("make_eval_datasets.use_cached = False" in t for t in _texts(model_dir))

    rec = json.loads((model_dir / run_record.RUN_RECORD_FILE).read_text())
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec["code"]["commit"] == head and isinstance(rec["code"]["dirty"], bool)
    for name in run_record.KEY_PACKAGES:
        assert rec["packages"][name] == importlib.metadata.version(name)
    assert rec["packages"]["jax"] == jax.__version__

    want, fractions = _reference_tokens(mixture[1], 3, planned=3)
    mix = rec["mixture"]
    assert mix["name"] == mixture[1] and mix["max_epochs"] == 0.1 and mix["token_budget"] == 3 * BATCH * LENGTH
    assert mix["requested"] == pytest.approx({"code_exercises": 0.5, "web_raw": 0.5})
    assert mix["capped"] == pytest.approx(fractions["capped"]) and mix["capped_roles"] == ["code_exercises"]
    assert mix["capped"]["code_exercises"] < 0.5
    # Token counts are sums of 0/1 weights below 2**24: exact in float32.
    assert rec["tokens_per_role"] == want and rec["step"] == 3 and rec["tokens_complete"] is True
    assert result.tokens_per_role == want
    assert json.loads((model_dir / "summary.json").read_text())["tokens_per_role"] == want
    want_two = _reference_tokens(mixture[1], 2, planned=3)[0]
    assert rec["tokens_at_checkpoint"]["2"] == want_two

    # Resumed from the checkpoint of step 2 towards step 5: the counts go on from that checkpoint's.
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(model_dir / "checkpoints" / "2", resumed / "checkpoints" / "2")
    shutil.copy(model_dir / run_record.RUN_RECORD_FILE, resumed / run_record.RUN_RECORD_FILE)
    again = _train(resumed, tiny_config, mixture, 5)
    rec = json.loads((resumed / run_record.RUN_RECORD_FILE).read_text())
    assert rec["start_step"] == 2 and rec["step"] == 5 and again.final_step == 5
    assert sorted(rec["tokens_at_checkpoint"]) == ["2", "4", "5"]
    expected = dict(rec["tokens_at_checkpoint"]["2"])
    assert expected == want_two
    for line in read_jsonl(str(resumed / "metrics" / "train.jsonl")):
        assert line["step"] in (3, 4, 5)
        for key, value in line.items():
            if key.startswith("tokens/"):
                expected[key[7:]] = expected.get(key[7:], 0.0) + value
    assert rec["tokens_per_role"] == expected == again.tokens_per_role
    assert sum(expected.values()) > sum(want_two.values())


def test_git_state_outside_a_checkout_is_none(tmp_path):
    assert run_record.git_state(str(tmp_path)) == {"commit": None, "dirty": None}
    assert run_record.package_versions(["no-such-distribution-xyz"]) == {"no-such-distribution-xyz": None}

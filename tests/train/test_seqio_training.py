"""train() on a registered seqio mixture through the input pipeline: per-component eval and exact data resume."""

import json

import jax
import pytest

from train_support import FAST_COMPILE
from textbooks import partitioning as part
from textbooks.model.load import read_metadata
from textbooks.train import checkpoints as ck
from textbooks.train import hooks
from textbooks.train import trainer

ROLES = ("code_exercises", "web_raw")


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    from mixtures import factory, testing
    from textbooks.data import paths

    root = str(tmp_path_factory.mktemp("data"))
    testing.write_corpora(root, list(ROLES), num_docs={"train": 60, "validation": 12}, num_shards=2,
                          mean_chars={"code_exercises": 200, "web_raw": 600})
    name = factory.register_mixture({r: 1.0 for r in ROLES}, name="train_test_two_roles_byte", vocabulary="byte")
    return root, name, paths


def _train(model_dir, config, mixture, steps):
    root, name, paths = mixture
    import gin

    gin.bind_parameter("textbooks.data.paths.data_root.path", root)
    return trainer.train(
        model_dir=str(model_dir), model_config=config, mixture_or_task_name=name,
        task_feature_lengths={"targets": 64}, batch_size=4, train_steps=steps,
        partitioning=part.PartitioningConfig(data=2),
        checkpoint=ck.CheckpointConfig(save_every=2, async_save=False),
        evaluation=hooks.ValidationConfig(eval_every=2, num_batches=2), log_every=1, progress_bar=False,
        tensorboard=False, peak_flops_per_device=1e9, devices=jax.devices()[:2], compiler_options=FAST_COMPILE)


def test_mixture_training_evaluates_per_component_and_resumes_the_pipeline(tmp_path, tiny_config, mixture):
    import shutil

    from textbooks.train.metrics import read_jsonl

    straight = tmp_path / "straight"
    result = _train(straight, tiny_config, mixture, 5)
    assert result.final_step == 5 and result.stopped_by == "completed"
    meta = read_metadata(str(straight / "checkpoints" / "4"))
    assert meta["vocabulary"] == "byte" and meta["mixture_or_task_name"] == mixture[1]
    evals = [json.loads(line) for line in open(straight / "metrics" / "eval.jsonl")]
    assert [e["step"] for e in evals] == [2, 4, 5]
    for role in ROLES:  # every component's validation loss, every time
        assert all(e[f"loss/{role}"] > 0 for e in evals)
    train_records = read_jsonl(str(straight / "metrics" / "train.jsonl"))
    assert any(f"loss/{r}" in rec for rec in train_records for r in ROLES)

    # Resume from step 2: the input pipeline's state (tf.data iterator checkpoint, bytes) is restored, so
    # steps 3-5 see the same batches and give the same losses.
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints" / "2", resumed / "checkpoints" / "2")
    again = _train(resumed, tiny_config, mixture, 5)
    assert again.start_step == 2 and again.final_step == 5
    expected = {r["step"]: r["loss"] for r in train_records}
    got = {r["step"]: r["loss"] for r in read_jsonl(str(resumed / "metrics" / "train.jsonl"))}
    assert got == {s: expected[s] for s in (3, 4, 5)}

"""seqio cache built with Beam (DirectRunner) reads back identically to on-the-fly preprocessing."""

import os

import gin
import numpy as np
import pytest
import seqio

from mixtures import testing
from textbooks.data.roles import ROLE_IDS
from textbooks.inputs import cache, pipeline


@pytest.fixture(autouse=True)
def _restore_seqio_cache_dirs():
    """The cache dirs and found caches are process-wide in seqio: undo this test's."""
    before = list(seqio.utils.get_global_cache_dirs())
    yield
    seqio.utils.set_global_cache_dirs(before)
    for name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.get(name)._cache_dir = None


@pytest.fixture()
def data_root(tmp_path, monkeypatch):
    root = testing.write_corpora(str(tmp_path / "roles"), roles=["code_exercises"],
                                 num_docs={"train": 40, "validation": 6}, num_shards=2)
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", root)
    return root


def pieces(task, split, use_cached):
    ds = task.get_dataset({"targets": 96}, split=split, use_cached=use_cached, shuffle=False)
    return sorted((ex["id"], tuple(ex["targets"]), int(ex["role_id"])) for ex in ds.as_numpy_iterator())


def test_cache_job_round_trip(data_root, tmp_path, monkeypatch):
    cache_dir = str(tmp_path / "cache")
    gin.bind_parameter("mixtures.roles.vocabulary_name.name", "byte")
    out = cache.cache_tasks(["code_exercises"], cache_dir)  # the alias expands to code_exercises_byte
    assert list(out) == ["code_exercises_byte"]
    folder = out["code_exercises_byte"]
    assert os.path.exists(os.path.join(folder, "COMPLETED"))
    task = seqio.TaskRegistry.get("code_exercises_byte")
    assert task.cache_dir == folder
    for split in ("train", "validation"):
        cached = pieces(task, split, use_cached=True)
        assert cached == pieces(task, split, use_cached=False)
        assert len({p[0] for p in cached}) == task.num_input_examples(split)
    # With the raw shards gone, the training pipeline still runs from the cache (use_cached=None: where
    # one exists) and fails without it.
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(tmp_path / "elsewhere"))
    batch = next(pipeline.make_train_iterator("code_exercises", task_feature_lengths=96, batch_size=2))
    assert batch["decoder_loss_weights"].sum() == 2 * 96
    assert set(np.unique(batch["decoder_role_ids"])) == {ROLE_IDS["code_exercises"]}
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        pipeline.make_train_iterator("code_exercises", task_feature_lengths=96, batch_size=2, use_cached=False)
    # Rerunning finds the finished cache and does nothing.
    stamp = os.path.getmtime(os.path.join(folder, "COMPLETED"))
    assert cache.cache_tasks(["code_exercises_byte"], cache_dir) == out
    assert os.path.getmtime(os.path.join(folder, "COMPLETED")) == stamp

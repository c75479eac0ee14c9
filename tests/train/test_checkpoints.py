"""Checkpoint save/restore, fallback past a corrupt newest step, and the loader on every kind of path a run gives."""

import json
import logging
import os

import jax
import numpy as np
import pytest

from train_support import FAST_COMPILE
from treecheck import assert_trees_equal
from textbooks import cli
from textbooks import partitioning as part
from textbooks.model.hf import save_hf_checkpoint
from textbooks.model.load import load_model
from textbooks.model.causal_lm import CausalLM
from textbooks.train import checkpoints as ck
from textbooks.train import optimizer as opt
from textbooks.train import state as st


def _state(config, mesh_cfg=None, seed=0):
    mesh_cfg = mesh_cfg or part.PartitioningConfig(data=2, fsdp=2, tensor=2)
    mesh = part.make_mesh(mesh_cfg)
    model = CausalLM(config)
    tx, _ = opt.make_optimizer(opt.OptimizerConfig(), 10)
    state = st.init_state(model, tx, mesh, mesh_cfg.logical_axis_rules, seed, compiler_options=FAST_COMPILE)
    target = st.sharded_abstract_state(model, tx, mesh, mesh_cfg.logical_axis_rules)
    return state, target


@pytest.fixture(scope="module")
def state_and_target(tiny_config):
    return _state(tiny_config)


def _meta(config, vocabulary="spm8k"):
    return {"model_config": config.to_dict(), "vocabulary": vocabulary}


def test_save_and_restore_roundtrip_with_shardings_and_data_state(tmp_path, tiny_config, state_and_target):
    state, target = state_and_target
    state = state.replace(step=state.step + 3)
    run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=3))
    assert run.save(3, state, {"step": 3, "seed": 0}, _meta(tiny_config))
    state = state.replace(step=state.step + 1)
    run.save(4, state, b"\x00binary state", _meta(tiny_config), force=True)
    run.close()
    assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [3, 4]

    run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=3))
    restored = run.restore_latest(target)
    run.close()
    assert restored.step == 4 and restored.data_iterator == b"\x00binary state"
    assert restored.metadata["vocabulary"] == "spm8k" and restored.metadata["step"] == 4
    assert_trees_equal(restored.params, state.params)
    assert_trees_equal(restored.opt_state, state.opt_state)
    np.testing.assert_array_equal(np.asarray(restored.progress["rng"]), np.asarray(state.rng))
    # Restored straight into the target's shards.
    kernel = restored.params["layers_0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding == target.params["layers_0"]["mlp"]["fc1"]["kernel"].sharding


def test_keep_last_k(tmp_path, tiny_config, state_and_target):
    state, _ = state_and_target
    run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=1, keep=2, async_save=False))
    for s in range(1, 5):
        run.save(s, state.replace(step=state.step + s), None, _meta(tiny_config))
    run.close()
    assert run.steps == [3, 4]


def _corrupt(step_dir):
    """Truncates every data file of the parameters item."""
    n = 0
    for root, _, files in os.walk(os.path.join(step_dir, "params")):
        for f in files:
            if f not in ("commit_success.txt",):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(7)
                n += 1
    assert n


def test_corrupt_latest_falls_back_to_previous_and_is_moved_aside(tmp_path, tiny_config, caplog, state_and_target):
    state, target = state_and_target
    run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=2))
    state = state.replace(step=state.step + 2)
    run.save(2, state, {"step": 2}, _meta(tiny_config))
    later = state.replace(step=state.step + 2, params=jax.tree_util.tree_map(lambda x: x + 1, state.params))
    run.save(4, later, {"step": 4}, _meta(tiny_config))
    run.close()
    _corrupt(tmp_path / "checkpoints" / "4")

    run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=2))
    with caplog.at_level(logging.WARNING, logger="textbooks.train.checkpoints"):
        restored = run.restore_latest(target)
    assert restored.step == 2 and restored.data_iterator == {"step": 2}
    assert_trees_equal(restored.params, state.params)
    assert any("step 4" in r.getMessage() and "cannot be restored" in r.getMessage() for r in caplog.records)
    assert run.steps == [2]
    assert len(os.listdir(tmp_path / ck.CORRUPT_SUBDIR)) == 1  # kept for inspection, out of the way
    run.close()


def test_unfinished_save_is_ignored(tmp_path, tiny_config, caplog, state_and_target):
    state, target = state_and_target
    run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=2))
    run.save(2, state.replace(step=state.step + 2), None, _meta(tiny_config))
    run.close()
    # What an interrupted save leaves behind: a temporary folder, never renamed.
    (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234").mkdir()
    with caplog.at_level(logging.WARNING, logger="textbooks.train.checkpoints"):
        run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=2))
    assert any("unfinished checkpoint" in r.getMessage() for r in caplog.records)
    assert run.restore_latest(target).step == 2
    run.close()


def test_load_model_from_model_dir_step_dir_and_hf_dir(tmp_path, tiny_config, state_and_target):
    state, _ = state_and_target
    run = ck.RunCheckpoints(str(tmp_path / "run"), ck.CheckpointConfig(save_every=5))
    run.save(5, state.replace(step=state.step + 5), None, _meta(tiny_config))
    run.close()
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "run" / "checkpoints" / "5"):
        loaded = load_model(str(path))
        assert loaded.config == tiny_config and loaded.step == 5
        assert loaded.vocabulary.vocab_size == 8192  # the recorded 'spm8k'
        assert_trees_equal(loaded.params, state.params)

    save_hf_checkpoint(jax.device_get(state.params), tiny_config, str(tmp_path / "hf"))
    loaded = load_model(str(tmp_path / "hf"))
    assert loaded.step is None and loaded.vocabulary.vocab_size >= 50295  # 'phi' when a folder records none
    assert_trees_equal(loaded.params, jax.device_get(state.params))  # a change of file format, not of values

    # Exported through the CLI, the folder carries the run's vocabulary and loads back with it (the tiny
    # model's 512 rows hold the byte vocabulary; a larger vocabulary than the embedding is refused).
    run = ck.RunCheckpoints(str(tmp_path / "byte_run"), ck.CheckpointConfig(save_every=5))
    run.save(5, state.replace(step=state.step + 5), None, _meta(tiny_config, "byte"))
    run.close()
    assert cli.main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "byte_run"), "--out",
                     str(tmp_path / "x")]) == 0
    exported = load_model(str(tmp_path / "x"))
    assert exported.metadata == {"vocabulary": "byte"} and exported.vocabulary.vocab_size == 259
    assert json.loads((tmp_path / "x" / "config.json").read_text())["eos_token_id"] == 1
    assert_trees_equal(exported.params, loaded.params)
    assert cli.main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "y")]) == 2

    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        load_model(str(tmp_path))


def test_changed_model_or_unreadable_only_checkpoint_is_an_error_not_corruption(tmp_path, tiny_config,
                                                                                 state_and_target):
    state, target = state_and_target
    run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=2))
    run.save(2, state.replace(step=state.step + 2), None, _meta(tiny_config))
    run.close()
    run = ck.RunCheckpoints(str(tmp_path), ck.CheckpointConfig(save_every=2))
    with pytest.raises(ValueError, match="another shape.*hidden_size 32 vs 64"):
        run.restore_latest(target, model_config=tiny_config.replace(hidden_size=64).to_dict())
    _corrupt(tmp_path / "checkpoints" / "2")
    with pytest.raises(RuntimeError, match="no checkpoint .* can be restored: step 2"):
        run.restore_latest(target, model_config=tiny_config.to_dict())
    assert run.steps == [2] and not os.path.exists(tmp_path / ck.CORRUPT_SUBDIR)  # nothing moved
    run.close()

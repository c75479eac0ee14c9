"""Every shipped run gin file composes with every hardware gin file at each host count the hardware file
declares: the batch splits into whole microbatches over the data-parallel devices, the mesh fills the devices,
and every parameter (and Adam moment) shards evenly - checked abstractly on a ``jax.sharding.AbstractMesh``,
nothing compiled or allocated."""

import functools
import glob
import os

import gin
import jax
import pytest
from jax.sharding import AbstractMesh

from textbooks import gin_utils
from textbooks import partitioning as part
from textbooks.model.causal_lm import CausalLM
from textbooks.train import optimizer as opt_lib
from textbooks.train import state as state_lib
from textbooks.train import step as step_lib
from textbooks.train import trainer  # registers what the run files bind

from train_support import REPO

EXPERIMENTS = os.path.join(REPO, "experiments")
RUN_FILES = sorted(os.path.relpath(p, EXPERIMENTS) for d in ("phi1", "phi15", "runs")
                   for p in glob.glob(os.path.join(EXPERIMENTS, d, "*.gin")))
HARDWARE_FILES = sorted(os.path.relpath(p, EXPERIMENTS) for d in ("gpu", "tpu")
                        for p in glob.glob(os.path.join(EXPERIMENTS, d, "*.gin")))


def _parse(files, bindings=()):
    gin.clear_config()
    gin_utils.parse_gin(files, bindings, finalize=False)


def _host_counts(hardware_file):
    _parse([hardware_file], ["BATCH_SIZE = 1"])
    return list(gin.query_parameter("%HOST_COUNTS"))


def _pairs():
    pairs = [(run, hw, hosts) for hw in HARDWARE_FILES for hosts in _host_counts(hw) for run in RUN_FILES]
    gin.clear_config()
    return pairs


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@functools.lru_cache(maxsize=None)
def _param_shardings(model_config, optimizer, mesh_sizes, rules):
    """Parameter and optimizer-state shardings on an abstract mesh (raises if an array does not split)."""
    tx, _ = opt_lib.make_optimizer(optimizer, 100_000)
    sizes = dict(mesh_sizes)
    mesh = AbstractMesh(tuple(sizes[a] for a in part.MESH_AXES), part.MESH_AXES)
    return state_lib.state_shardings(CausalLM(model_config), tx, mesh, rules)


def test_the_shipped_files_are_found():
    assert {"phi1/finetune.gin", "phi1/pretrain.gin", "phi15/phi15.gin", "runs/finetune.gin"} <= set(RUN_FILES)
    assert {"gpu/phi15_8xh100.gin", "gpu/phi15_8xa100_40gb.gin", "tpu/phi15_v5e256.gin",
            "tpu/phi15_v5p128.gin"} <= set(HARDWARE_FILES)


@pytest.mark.parametrize("run,hardware,hosts", _pairs())
def test_run_file_and_hardware_file_compose(run, hardware, hosts, clean_gin):
    _parse([run, hardware], [f"HOSTS = {hosts}"])
    layout = gin.get_bindings(step_lib.microbatches_for)
    devices = hosts * layout["devices_per_host"]
    b = gin.get_bindings(trainer.train)
    batch, microbatches, partitioning = b["batch_size"], b["microbatches"], b["partitioning"]
    assert layout["batch_size"] == batch
    mesh_sizes = partitioning.mesh_shape(devices)
    step_lib.check_batch_layout(batch, microbatches, mesh_sizes)
    rows = batch // (microbatches * (devices // mesh_sizes["tensor"]))
    assert 1 <= rows <= layout["rows_per_device"], (run, hardware, hosts, microbatches)
    shardings = _param_shardings(b["model_config"], b["optimizer"], tuple(mesh_sizes.items()),
                                 partitioning.logical_axis_rules)
    specs = [s.spec for s in jax.tree_util.tree_leaves(shardings.params)]
    assert any("fsdp" in jax.tree_util.tree_leaves(tuple(s)) for s in specs)  # parameters are split over fsdp


def test_a_bad_pair_is_refused_naming_the_keys_and_the_valid_values():
    # phi-1's fine-tuning batch (256) with a fixed 32 microbatches on two 8-GPU hosts: 16 rows per device.
    with pytest.raises(ValueError) as e:
        step_lib.check_batch_layout(256, 32, {"replica": 1, "data": 2, "fsdp": 8, "tensor": 1})
    msg = str(e.value)
    assert "train.batch_size (BATCH_SIZE = 256)" in msg and "train.microbatches = 32" in msg
    assert "data=2 x fsdp=8" in msg and "Valid train.microbatches: 1, 2, 4, 8, 16;" in msg
    with pytest.raises(ValueError, match="not divisible by the 512 data-parallel devices"):
        step_lib.check_batch_layout(256, 1, {"replica": 1, "data": 64, "fsdp": 8, "tensor": 1})


def test_microbatches_follow_the_per_device_rows():
    # 2048 rows on 8 devices: 256 per device, at most 8 at a time -> 32 microbatches; two hosts -> 16.
    assert step_lib.microbatches_for(2048, 8, 8, hosts=1) == 32
    assert step_lib.microbatches_for(2048, 8, 8, hosts=2) == 16
    # 256 rows on 64 devices: 4 per device, fewer than 8 -> one microbatch.
    assert step_lib.microbatches_for(256, 8, 8, hosts=8) == 1
    # 24 rows per device at most 5 at a time: ceil(24 / 5) = 5 does not divide 24, the next divisor is 6.
    assert step_lib.microbatches_for(24, 5, 1) == 6
    with pytest.raises(ValueError, match=r"BATCH_SIZE \(256\) is not divisible by the 512"):
        step_lib.microbatches_for(256, 8, 8, hosts=64)

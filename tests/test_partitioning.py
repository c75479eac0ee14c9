"""Mesh construction, logical-axis rules and batch assembly on 8 simulated CPU devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from textbooks import partitioning as part


def test_mesh_shape_fills_minus_one_and_rejects_bad_shapes():
    cfg = part.PartitioningConfig(data=-1, fsdp=2, tensor=2)
    assert cfg.mesh_shape(8) == {"replica": 1, "data": 2, "fsdp": 2, "tensor": 2}
    assert part.PartitioningConfig(data=1, fsdp=-1).mesh_shape(8)["fsdp"] == 8
    with pytest.raises(ValueError, match="not divisible"):
        part.PartitioningConfig(data=-1, fsdp=3).mesh_shape(8)
    with pytest.raises(ValueError, match="8 are available"):
        part.PartitioningConfig(data=2, fsdp=2).mesh_shape(8)
    with pytest.raises(ValueError, match="at most one"):
        part.PartitioningConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="mesh axis 'model'"):
        part.PartitioningConfig(logical_axis_rules=(("embed", "model"),))


def test_make_mesh_names_sizes_and_axis_types():
    mesh = part.make_mesh(part.PartitioningConfig(data=2, fsdp=2, tensor=2))
    assert mesh.axis_names == part.MESH_AXES
    assert dict(mesh.shape) == {"replica": 1, "data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    one = part.make_mesh(part.PartitioningConfig(), devices=jax.devices()[:1])
    assert one.size == 1


def test_rules_map_params_and_activations():
    rules = part.DEFAULT_LOGICAL_AXIS_RULES
    import flax.linen as nn

    to_mesh = lambda names: nn.logical_to_mesh_axes(names, list(rules))  # noqa: E731
    # Parameters: embed over fsdp, heads / mlp / vocab over tensor.
    assert to_mesh(("embed", "mlp")) == P("fsdp", "tensor")
    assert to_mesh(("embed", "heads", "kv")) == P("fsdp", "tensor", None)
    assert to_mesh(("vocab", "embed")) == P("tensor", "fsdp")
    # Activations: the batch takes every data axis, so embed (fsdp already used) stays whole.
    assert to_mesh(("batch", "length", "embed")) == P(("replica", "data", "fsdp"), None, None)
    assert to_mesh(("batch", "length", "heads", "kv")) == P(("replica", "data", "fsdp"), None, "tensor", None)


def test_rules_are_overridable_data():
    rules = (("batch", ("data",)), ("embed", "tensor"), ("mlp", None))
    cfg = part.PartitioningConfig(data=4, tensor=2, logical_axis_rules=rules)
    mesh = part.make_mesh(cfg)
    sh = part.logical_sharding(("embed", "mlp"), mesh, cfg.logical_axis_rules)
    assert sh.spec == P("tensor", None)


def test_data_shard_info_single_process_and_divisibility():
    mesh = part.make_mesh(part.PartitioningConfig(data=2, fsdp=2, tensor=2))
    info = part.data_shard_info(mesh, 16, part.DEFAULT_LOGICAL_AXIS_RULES)
    assert (info.index, info.num_shards, info.per_process_batch_size) == (0, 1, 16)
    with pytest.raises(ValueError, match="not divisible by the data-parallel mesh size 4"):
        part.data_shard_info(mesh, 6, part.DEFAULT_LOGICAL_AXIS_RULES)


def test_make_global_batch_splits_rows_over_data_axes():
    cfg = part.PartitioningConfig(data=2, fsdp=2, tensor=2)
    mesh = part.make_mesh(cfg)
    local = {"decoder_input_tokens": np.arange(8 * 4, dtype=np.int32).reshape(8, 4)}
    out = part.make_global_batch(local, mesh, cfg.logical_axis_rules, 8)
    arr = out["decoder_input_tokens"]
    assert arr.shape == (8, 4)
    assert arr.sharding.spec == P(("replica", "data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(arr), local["decoder_input_tokens"])
    # Each device holds 2 rows (4-way batch split), replicated over the 2 tensor devices.
    assert {s.data.shape for s in arr.addressable_shards} == {(2, 4)}


def test_initialize_distributed_needs_process_count_and_id(monkeypatch):
    for var in (part.ENV_COORDINATOR, part.ENV_NUM_PROCESSES, part.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert part.initialize_distributed() is False
    with pytest.raises(ValueError, match="--num_processes"):
        part.initialize_distributed("127.0.0.1:1234")


def test_arrays_that_do_not_split_evenly_are_named_before_anything_is_placed():
    """A Llama with 2 key/value heads cannot split them 4 ways over `tensor`: the error names the parameter,
    its shape and the mesh axis instead of a raw JAX error at placement."""
    import optax

    from textbooks.model.causal_lm import CausalLM
    from textbooks.model.config import get_preset
    from textbooks.train import state as st

    config = get_preset("llama-cpu-1m")  # 4 query heads sharing 2 key/value heads
    pc = part.PartitioningConfig(data=1, tensor=4)
    mesh = part.make_mesh(pc, jax.devices()[:4])
    with pytest.raises(ValueError, match=r"k_proj.*\(64, 2, 16\): dimension 1 \(2\) over mesh axes tensor "
                                         r"\(4 ways\).*tensor no larger than the model's key/value heads"):
        st.state_shardings(CausalLM(config), optax.adamw(1e-3), mesh, pc.logical_axis_rules)
    shardings = st.state_shardings(CausalLM(config.replace(num_kv_heads=4)), optax.adamw(1e-3), mesh,
                                   pc.logical_axis_rules)  # 4 key/value heads split 4 ways
    assert shardings.params["layers_0"]["self_attn"]["k_proj"]["kernel"].spec[1] == "tensor"

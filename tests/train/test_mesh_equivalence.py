"""The same 20 steps on 1 device and on four 8-device meshes give the same gradients and losses; state is split
as the rules say. For both model families (the llama one with grouped-query attention).

What differs between meshes is only the order of float32 sums (a sharded contraction adds partial sums across
devices), so the tolerances are ``n * eps`` bounds with ``n`` the batch's tokens (see tests/treecheck.py); XLA:CPU
may pick other kernels, and so other orders, on another CPU model, and these bounds still hold there.
"""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from train_support import FAST_COMPILE
from treecheck import assert_trees_close, gradient_recorder, reduction_tolerance
from textbooks import partitioning as part
from textbooks.model.causal_lm import CausalLM
from textbooks.train import optimizer as opt
from textbooks.train import state as st
from textbooks.train import step as stp
from textbooks.train.synthetic import SyntheticBatches

STEPS = 20
DATA = P(("replica", "data", "fsdp"))
BATCH, SEQ = 8, 32
TOKENS = BATCH * SEQ


def _data(config):
    return SyntheticBatches(global_batch_size=BATCH, seq_len=SEQ, vocab_size=config.vocab_size, mean_doc_len=12)


def _run(config, mesh_cfg, devices):
    """The losses of STEPS AdamW steps, the final state, and the first step's gradient (before the optimizer)."""
    mesh = part.make_mesh(mesh_cfg, devices)
    rules = mesh_cfg.logical_axis_rules
    model = CausalLM(config)
    tx, schedule = opt.make_optimizer(opt.OptimizerConfig(learning_rate=3e-3, warmup_steps=2, schedule="cosine"),
                                      STEPS)
    state = st.init_state(model, tx, mesh, rules, seed=0, compiler_options=FAST_COMPILE)
    step = stp.compile_train_step(stp.make_train_step(model, tx, schedule, num_roles=7, rules=rules),
                                  st.state_shardings(model, tx, mesh, rules), mesh, rules,
                                  compiler_options=FAST_COMPILE)
    record = gradient_recorder()
    grad_step = stp.compile_train_step(stp.make_train_step(model, record, schedule, num_roles=7, rules=rules),
                                       st.state_shardings(model, record, mesh, rules), mesh, rules, donate=False,
                                       compiler_options=FAST_COMPILE)
    data = _data(config)
    losses = []
    with jax.set_mesh(mesh):
        probe = st.init_state(model, record, mesh, rules, seed=0, compiler_options=FAST_COMPILE)
        first_grad = jax.device_get(grad_step(probe, part.make_global_batch(_data(config).batch(0), mesh, rules,
                                                                             BATCH))[0].opt_state)
        for _ in range(STEPS):
            state, metrics = step(state, part.make_global_batch(next(data), mesh, rules, BATCH))
            losses.append(float(metrics["loss"]))
    return np.array(losses), state, first_grad


def _config(family):
    from textbooks.model.config import get_preset

    if family == "phi":
        # 8 heads of 4 and MLP 64, so that every axis splits 8 ways.
        return get_preset("phi-cpu-1m").replace(hidden_size=32, num_layers=2, num_heads=8, intermediate_size=64,
                                                vocab_size=256, max_len=64)
    # llama-cpu-1m's architecture with grouped-query attention (16 query heads of 4 sharing 8 KV heads) and
    # SwiGLU 64, so that every axis, the KV heads' included, splits 8 ways.
    return get_preset("llama-cpu-1m").replace(hidden_size=64, num_layers=2, num_heads=16, num_kv_heads=8,
                                              intermediate_size=64, vocab_size=256, max_len=64)


@pytest.fixture(scope="module")
def reference():
    """The one-device run of a family (computed once per family): its losses and first gradient."""
    cache = {}

    def get(family):
        if family not in cache:
            losses, _, grad = _run(_config(family), part.PartitioningConfig(data=1), jax.devices()[:1])
            assert losses[-1] < losses[0] - 0.05, losses  # it learns, so the comparison means something
            cache[family] = losses, grad
        return cache[family]

    return get


def _spec(x):
    return x.sharding.spec


def _shard_shape(x):
    return x.addressable_shards[0].data.shape


SHAPES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]
# The llama family on the meshes that split all three axes and the KV heads (the data-only and fsdp-only
# meshes shard nothing family-specific).
CASES = [("phi", shape) for shape in SHAPES] + [pytest.param("llama", shape, marks=pytest.mark.slow)
                                                for shape in ((2, 2, 2), (1, 1, 8))]


@pytest.mark.parametrize("family,shape", CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_losses_match_one_device_and_state_is_split_by_the_rules(reference, family, shape):
    config = _config(family)
    data, fsdp, tensor = shape
    losses, state, grad = _run(config, part.PartitioningConfig(data=data, fsdp=fsdp, tensor=tensor), jax.devices())
    ref_losses, ref_grad = reference(family)
    # The first step's gradient, before AdamW: sums over the batch's tokens, in another order (and the backward
    # pass chains one such sum per layer through the residual stream, hence the slack).
    assert_trees_close(grad, ref_grad, reduction_length=TOKENS, slack=config.num_layers + 1)
    # Step k's loss sums over the tokens once more at parameters that carry k earlier steps' rounding: allow one
    # n * eps per step taken. (A sharding bug moves the loss by far more: whole shards of a sum go missing.)
    bound = reduction_tolerance(TOKENS) * np.arange(1, STEPS + 1)
    np.testing.assert_array_less(np.abs(losses - ref_losses), bound * np.abs(ref_losses))

    def expect(spec):
        # Mesh axes of size 1 still appear in the spec; the shard shapes below show the real split.
        return P(*spec)

    d, f, v, h, kv, dh = (config.hidden_size, config.intermediate_size, config.vocab_size, config.num_heads,
                          config.kv_heads, config.head_dim)
    up, final_norm = ("fc1", "final_layernorm") if family == "phi" else ("gate_proj", "norm")
    params, mu = state.params, state.opt_state[1][0].mu
    mlp, mu_mlp = params["layers_0"]["mlp"][up]["kernel"], mu["layers_0"]["mlp"][up]["kernel"]
    q, mu_q = params["layers_1"]["self_attn"]["q_proj"]["kernel"], mu["layers_1"]["self_attn"]["q_proj"]["kernel"]
    k, mu_k = params["layers_1"]["self_attn"]["k_proj"]["kernel"], mu["layers_1"]["self_attn"]["k_proj"]["kernel"]
    emb = params["embed_tokens"]["embedding"]
    ln = params[final_norm]["scale"]
    for a, b in ((mlp, mu_mlp), (q, mu_q), (k, mu_k)):
        assert _spec(a) == _spec(b) and _shard_shape(a) == _shard_shape(b)  # optimizer state mirrors params
    assert _spec(mlp) == expect(("fsdp", "tensor"))
    assert _shard_shape(mlp) == (d // fsdp, f // tensor)
    assert _spec(q) == _spec(k) == expect(("fsdp", "tensor", None))
    assert _shard_shape(q) == (d // fsdp, h // tensor, dh)
    assert _shard_shape(k) == (d // fsdp, kv // tensor, dh)
    assert _spec(emb) == expect(("tensor", "fsdp"))
    assert _shard_shape(emb) == (v // tensor, d // fsdp)
    assert _shard_shape(ln) == (d // fsdp,)
    # Scalars (step, Adam's count) are replicated.
    assert _spec(state.step) == P() and _spec(state.opt_state[1][0].count) == P()

"""The loss against a numpy reference, gradient accumulation, and the non-finite guard of the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train_support import FAST_COMPILE
from textbooks import partitioning as part
from textbooks.model.phi import PhiForCausalLM
from textbooks.train import optimizer as opt
from textbooks.train import state as st
from textbooks.train import step as stp
from textbooks.train.synthetic import SyntheticBatches

NUM_ROLES = 7


def _batch(batch=8, seq=32, vocab=256, seed=0):
    return SyntheticBatches(global_batch_size=batch, seq_len=seq, vocab_size=vocab, seed=seed,
                            mean_doc_len=12).batch(0)


def test_loss_sums_match_numpy_reference():
    rng = np.random.default_rng(0)
    b = _batch()
    logits = rng.normal(size=b["decoder_target_tokens"].shape + (256,)).astype(np.float32) * 3
    out = stp.loss_sums(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in b.items()}, NUM_ROLES)
    # Independent reference: log-softmax by numpy in float64.
    x = logits.astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, b["decoder_target_tokens"][..., None], -1)[..., 0]
    w = b["decoder_loss_weights"]
    assert (w == (b["decoder_segment_ids"] > 0)).all() and 0 < w.sum() < w.size  # some padding present
    np.testing.assert_allclose(float(out["ce_sum"]), (nll * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(out["weight_sum"]), w.sum())
    for r in range(NUM_ROLES):
        sel = (b["decoder_role_ids"] == r) * w
        np.testing.assert_allclose(float(out["role_loss_sum"][r]), (nll * sel).sum(), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(float(out["role_weight_sum"][r]), sel.sum())
    assert float(out["role_weight_sum"][0]) == 0  # role 0 is padding: never weighted


def _setup(config, mesh_cfg, microbatches=(1,), lr=1e-3, devices=None):
    """The initial state and one compiled step per microbatch count."""
    mesh = part.make_mesh(mesh_cfg, devices)
    rules = mesh_cfg.logical_axis_rules
    model = PhiForCausalLM(config)
    tx, schedule = opt.make_optimizer(opt.OptimizerConfig(learning_rate=lr), 10)
    state = st.init_state(model, tx, mesh, rules, seed=0, compiler_options=FAST_COMPILE)
    shardings = st.state_shardings(model, tx, mesh, rules)
    steps = [stp.compile_train_step(stp.make_train_step(model, tx, schedule, num_roles=NUM_ROLES, microbatches=k,
                                                        rules=rules), shardings, mesh, rules, donate=False,
                                    compiler_options=FAST_COMPILE)
             for k in microbatches]
    return mesh, rules, state, steps


def test_gradient_accumulation_equals_the_large_batch(tiny_config):
    cfg = part.PartitioningConfig(data=2)
    b = _batch(batch=16)
    mesh, rules, state0, steps = _setup(tiny_config, cfg, microbatches=(1, 4), devices=jax.devices()[:2])
    results = []
    with jax.set_mesh(mesh):
        for step in steps:
            new_state, metrics = step(state0, part.make_global_batch(b, mesh, rules, 16))
            results.append((jax.device_get(new_state.params), jax.device_get(metrics)))
    (p1, m1), (p4, m4) = results
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(m4["role_loss_sum"], m1["role_loss_sum"], rtol=1e-5)
    # Adam's first step moves every weight by about +-lr whatever its gradient's size, so entries with a
    # near-zero gradient amplify float rounding; 0.2% of the learning rate bounds that.
    for a, c in zip(jax.tree_util.tree_leaves(p4), jax.tree_util.tree_leaves(p1)):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=2e-6)
    # The update was real: parameters moved.
    moved = [np.abs(a - np.asarray(c)).max() for a, c in zip(jax.tree_util.tree_leaves(p1),
                                                              jax.tree_util.tree_leaves(state0.params))]
    assert max(moved) > 1e-4


def test_nonfinite_step_leaves_state_unchanged(tiny_config):
    cfg = part.PartitioningConfig(data=1)
    mesh, rules, state, (step,) = _setup(tiny_config, cfg, devices=jax.devices()[:1])
    bad = state.replace(params=jax.tree_util.tree_map(lambda x: x, state.params))
    bad.params["lm_head"]["bias"] = bad.params["lm_head"]["bias"].at[0].set(jnp.nan)
    with jax.set_mesh(mesh):
        new_state, metrics = step(bad, part.make_global_batch(_batch(), mesh, rules, 8))
    assert float(metrics["nonfinite"]) == 1.0
    assert int(new_state.step) == int(bad.step) + 1
    for a, c in zip(jax.tree_util.tree_leaves(new_state.opt_state), jax.tree_util.tree_leaves(bad.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    np.testing.assert_array_equal(np.asarray(new_state.params["lm_head"]["kernel"]),
                                  np.asarray(bad.params["lm_head"]["kernel"]))


def test_microbatches_must_divide_evenly(tiny_config):
    cfg = part.PartitioningConfig(data=2)
    mesh, rules, state, (step,) = _setup(tiny_config, cfg, microbatches=(3,), devices=jax.devices()[:2])
    with pytest.raises(ValueError, match="microbatches"):
        with jax.set_mesh(mesh):
            step(state, part.make_global_batch(_batch(batch=8), mesh, rules, 8))

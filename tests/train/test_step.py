"""The loss against a numpy reference, gradient accumulation, and the non-finite guard of the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train_support import FAST_COMPILE
from treecheck import assert_trees_close, assert_trees_equal, gradient_recorder, reduction_tolerance
from textbooks import partitioning as part
from textbooks.model.causal_lm import CausalLM
from textbooks.train import optimizer as opt
from textbooks.train import state as st
from textbooks.train import step as stp
from textbooks.train.head_loss import head_loss_sums
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


@pytest.mark.parametrize("z_loss,with_bias,chunk", [(0.0, True, None), (1e-3, True, 4), (1e-3, False, 32)])
def test_fused_head_loss_matches_autodiff_of_loss_sums(z_loss, with_bias, chunk):
    """The chunked head + loss with its hand-written gradient against jax.grad of logits -> loss_sums."""
    rng = np.random.default_rng(1)
    b = {k: jnp.asarray(v) for k, v in _batch().items()}
    batch, length = b["decoder_target_tokens"].shape
    width, vocab = 16, 256
    hidden = jnp.asarray(rng.normal(size=(batch, length, width)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(width, vocab)) * 0.5, jnp.float32)
    bias = jnp.asarray(rng.normal(size=(vocab,)), jnp.float32) if with_bias else None

    def reference(h, k, bb):
        logits = jnp.dot(h, k) + (bb if bb is not None else 0.0)
        sums = stp.loss_sums(logits, b, NUM_ROLES, z_loss)
        return sums["loss_sum"], sums

    def fused(h, k, bb):
        loss_sum, token_loss, _ = head_loss_sums(h, k, bb, b["decoder_target_tokens"], b["decoder_loss_weights"],
                                                 z_loss, chunk)
        return 3.0 * loss_sum, stp._sums(loss_sum, token_loss, b["decoder_loss_weights"], b, NUM_ROLES)

    argnums = (0, 1, 2) if with_bias else (0, 1)
    args = (hidden, kernel, bias)
    ref_grads, ref_sums = jax.grad(reference, argnums=argnums, has_aux=True)(*args)
    grads, sums = jax.jit(jax.grad(fused, argnums=argnums, has_aux=True))(*args)
    # Sums over the vocabulary (log Z, the head's products) and over every token (the loss, dW, db).
    n = vocab + batch * length
    assert_trees_close(sums, ref_sums, reduction_length=n)
    assert_trees_close(grads, jax.tree_util.tree_map(lambda g: 3.0 * g, ref_grads), reduction_length=n)
    with pytest.raises(ValueError, match="does not divide"):
        head_loss_sums(hidden, kernel, bias, b["decoder_target_tokens"], b["decoder_loss_weights"], chunk=5)


def _setup(config, mesh_cfg, microbatches=(1,), lr=1e-3, devices=None, tx=None):
    """The initial state and one compiled step per microbatch count (AdamW unless ``tx`` is given)."""
    mesh = part.make_mesh(mesh_cfg, devices)
    rules = mesh_cfg.logical_axis_rules
    model = CausalLM(config)
    adamw, schedule = opt.make_optimizer(opt.OptimizerConfig(learning_rate=lr), 10)
    tx = tx or adamw
    state = st.init_state(model, tx, mesh, rules, seed=0, compiler_options=FAST_COMPILE)
    shardings = st.state_shardings(model, tx, mesh, rules)
    steps = [stp.compile_train_step(stp.make_train_step(model, tx, schedule, num_roles=NUM_ROLES, microbatches=k,
                                                        rules=rules), shardings, mesh, rules, donate=False,
                                    compiler_options=FAST_COMPILE)
             for k in microbatches]
    return mesh, rules, state, steps


def test_gradient_accumulation_equals_the_large_batch(tiny_config):
    """Four microbatches give the one-batch loss and gradient up to the order of the sums over tokens.

    The gradient is compared as the step hands it to the optimizer (recorded in the optimizer state), where the
    two computations differ only in summation order: one sum over all 16 x 32 tokens against four sums of 128
    tokens added up, so ``n * eps`` with ``n`` the batch's tokens bounds the difference, on any CPU. (After an
    Adam step the comparison would not be bounded: Adam moves near-zero-gradient weights by about the learning
    rate whatever their sign, so their rounding decides the direction.)
    """
    cfg = part.PartitioningConfig(data=2)
    b = _batch(batch=16)
    tokens = b["decoder_target_tokens"].size
    mesh, rules, state0, steps = _setup(tiny_config, cfg, microbatches=(1, 4), devices=jax.devices()[:2],
                                        tx=gradient_recorder())
    results = []
    with jax.set_mesh(mesh):
        for step in steps:
            new_state, metrics = step(state0, part.make_global_batch(b, mesh, rules, 16))
            results.append((jax.device_get(new_state.opt_state), jax.device_get(metrics)))
    (g1, m1), (g4, m4) = results
    rel = reduction_tolerance(tokens)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=rel)
    np.testing.assert_allclose(m4["role_loss_sum"], m1["role_loss_sum"], rtol=rel,
                               atol=rel * float(np.abs(m1["role_loss_sum"]).max()))
    np.testing.assert_array_equal(m4["weight_sum"], m1["weight_sum"])  # integer counts: exact
    # The gradient's norm sums the squares of every entry once more: n grows by the parameter count.
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(g1))
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=reduction_tolerance(tokens + n_params))
    # The backward pass chains one more sum per layer (the residual stream) on top of the sum over tokens.
    assert_trees_close(g4, g1, reduction_length=tokens, slack=tiny_config.num_layers + 1)
    # The comparison means something: the gradient is not zero, and it is what the large batch's step saw.
    assert float(m1["grad_norm"]) > 1e-3
    assert max(float(np.abs(x).max()) for x in jax.tree_util.tree_leaves(g1)) > 1e-4


def test_nonfinite_step_leaves_state_unchanged(tiny_config):
    cfg = part.PartitioningConfig(data=1)
    mesh, rules, state, (step,) = _setup(tiny_config, cfg, devices=jax.devices()[:1])
    bad = state.replace(params=jax.tree_util.tree_map(lambda x: x, state.params))
    bad.params["lm_head"]["bias"] = bad.params["lm_head"]["bias"].at[0].set(jnp.nan)
    with jax.set_mesh(mesh):
        new_state, metrics = step(bad, part.make_global_batch(_batch(), mesh, rules, 8))
    assert float(metrics["nonfinite"]) == 1.0
    assert int(new_state.step) == int(bad.step) + 1
    assert_trees_equal(jax.device_get(new_state.opt_state), jax.device_get(bad.opt_state))
    np.testing.assert_array_equal(np.asarray(new_state.params["lm_head"]["kernel"]),
                                  np.asarray(bad.params["lm_head"]["kernel"]))


def test_microbatches_must_divide_evenly(tiny_config):
    cfg = part.PartitioningConfig(data=2)
    mesh, rules, state, (step,) = _setup(tiny_config, cfg, microbatches=(3,), devices=jax.devices()[:2])
    with pytest.raises(ValueError, match="microbatches"):
        with jax.set_mesh(mesh):
            step(state, part.make_global_batch(_batch(batch=8), mesh, rules, 8))


def test_donated_state_is_updated_in_place(tiny_config):
    """With the state donated, the compiled step copies none of its buffers: the non-finite guard (a ``cond``
    around the update, not a select between new and old values) leaves XLA no reason to keep an old optimizer
    moment alive while its new value is written over it."""
    import re

    cfg = part.PartitioningConfig(data=1)
    mesh = part.make_mesh(cfg, jax.devices()[:1])
    rules = cfg.logical_axis_rules
    model = CausalLM(tiny_config)
    tx, schedule = opt.make_optimizer(opt.OptimizerConfig(), 10)
    state = st.init_state(model, tx, mesh, rules, seed=0)
    step = stp.compile_train_step(stp.make_train_step(model, tx, schedule, num_roles=NUM_ROLES, rules=rules),
                                  st.state_shardings(model, tx, mesh, rules), mesh, rules)
    with jax.set_mesh(mesh):
        text = step.lower(state, part.make_global_batch(_batch(), mesh, rules, 8)).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    assert "input_output_alias" in text  # the state is donated
    state_params = set(re.findall(r"(%state_\S+) = \S+ parameter\(", entry))
    assert len(state_params) >= len(jax.tree_util.tree_leaves(state.opt_state))
    copied = [p for p in re.findall(r"= \S+ copy\((%state_\S+?)\)", entry) if p in state_params]
    assert not copied, f"{len(copied)} state buffers copied at entry, e.g. {copied[:3]}"

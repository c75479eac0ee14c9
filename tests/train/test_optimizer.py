"""AdamW against torch.optim.AdamW, the schedules, clipping and the weight-decay mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from textbooks.train import optimizer as opt


def test_adamw_matches_torch_adamw_over_several_steps():
    import torch
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    b0 = rng.normal(size=(3,)).astype(np.float32)
    grads = [(rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32))
             for _ in range(4)]
    cfg = opt.OptimizerConfig(learning_rate=1e-2, weight_decay=0.1, max_grad_norm=None,
                              no_decay_patterns=(r"(^|/)bias$",))
    tx, _ = opt.make_optimizer(cfg, 10)
    params = {"dense": {"kernel": jnp.asarray(w0), "bias": jnp.asarray(b0)}}
    state = tx.init(params)
    for gw, gb in grads:
        updates, state = tx.update({"dense": {"kernel": jnp.asarray(gw), "bias": jnp.asarray(gb)}}, state, params)
        params = optax.apply_updates(params, updates)

    tw = torch.nn.Parameter(torch.tensor(w0))
    tb = torch.nn.Parameter(torch.tensor(b0))
    torch_opt = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}],
                                  lr=1e-2, betas=(0.9, 0.98), eps=1e-7)
    for gw, gb in grads:
        tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
        torch_opt.step()
    np.testing.assert_allclose(np.asarray(params["dense"]["kernel"]), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(params["dense"]["bias"]), tb.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_phi15_defaults():
    cfg = opt.OptimizerConfig()
    assert (cfg.learning_rate, cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, cfg.schedule) == \
        (2e-4, 0.9, 0.98, 1e-7, 0.1, "constant")


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "wsd"])
def test_schedules_warm_up_and_end_where_they_should(schedule):
    cfg = opt.OptimizerConfig(learning_rate=1.0, schedule=schedule, warmup_steps=10, decay_fraction=0.2)
    f = opt.make_schedule(cfg, 100)
    assert float(f(0)) == pytest.approx(0.0)
    assert float(f(5)) == pytest.approx(0.5)
    assert float(f(10)) == pytest.approx(1.0)
    end = float(f(100))
    if schedule == "constant":
        assert end == pytest.approx(1.0)
    else:
        assert end == pytest.approx(0.0, abs=1e-6)
    if schedule == "linear":
        assert float(f(55)) == pytest.approx(0.5)
    if schedule == "cosine":
        assert float(f(55)) == pytest.approx(0.5, abs=1e-6)
    if schedule == "wsd":
        assert float(f(79)) == pytest.approx(1.0)  # stable until the last 20% of the steps
        assert float(f(90)) == pytest.approx(0.5)


def test_schedule_rejects_warmup_longer_than_run():
    with pytest.raises(ValueError, match="warmup_steps"):
        opt.make_schedule(opt.OptimizerConfig(schedule="cosine", warmup_steps=100), 50)
    with pytest.raises(ValueError, match="schedule must be one of"):
        opt.OptimizerConfig(schedule="step")


def test_clipping_by_global_norm():
    tx, _ = opt.make_optimizer(opt.OptimizerConfig(max_grad_norm=1.0, learning_rate=1.0, weight_decay=0.0), 10)
    params = {"a": jnp.zeros((4,))}
    state = tx.init(params)
    _, state = tx.update({"a": jnp.full((4,), 10.0)}, state, params)  # global norm 20 -> clipped to 1
    adam_state = state[1][0]
    mu = adam_state.mu["a"]  # (1 - b1) * clipped gradient
    assert float(opt.global_norm(mu)) == pytest.approx(0.1, rel=1e-5)


def test_decay_mask_spares_biases_and_layernorms(tiny_config):
    from textbooks.model.causal_lm import param_shapes

    mask = opt.decay_mask(param_shapes(tiny_config), opt.OptimizerConfig().no_decay_patterns)
    flat = {opt.param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    decayed = sorted(k for k, v in flat.items() if v)
    spared = sorted(k for k, v in flat.items() if not v)
    assert all(k.endswith(("kernel", "embedding")) for k in decayed)
    assert all(k.endswith(("bias", "scale")) for k in spared)
    assert "embed_tokens/embedding" in decayed and "lm_head/kernel" in decayed
    assert "final_layernorm/scale" in spared and "layers_0/input_layernorm/bias" in spared
    assert "layers_0/self_attn/q_proj/bias" in spared and "layers_1/mlp/fc1/kernel" in decayed

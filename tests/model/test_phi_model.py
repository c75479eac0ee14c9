"""The Flax module: packing, padding, logical axes, sharding on simulated devices, remat, dropout, the cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from phi_testing import our_logits, random_params

from textbooks.model import CausalLM, get_preset, init_params, param_logical_specs
from textbooks.model.params_io import flatten

CONFIG = get_preset("phi-cpu-1m").replace(vocab_size=64, max_len=64)


def test_packed_documents_match_separate_runs():
    params = random_params(CONFIG, seed=0)
    rng = np.random.RandomState(0)
    doc_a, doc_b = rng.randint(0, 64, 7), rng.randint(0, 64, 9)
    packed = np.zeros((1, 20), np.int32)
    packed[0, :7], packed[0, 7:16] = doc_a, doc_b
    segments = np.array([[1] * 7 + [2] * 9 + [0] * 4])
    positions = np.array([list(range(7)) + list(range(9)) + [0] * 4])

    logits = our_logits(CONFIG, params, packed, segment_ids=segments, positions=positions)
    alone_a = our_logits(CONFIG, params, doc_a[None])
    alone_b = our_logits(CONFIG, params, doc_b[None])
    np.testing.assert_allclose(logits[0, :7], alone_a[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits[0, 7:16], alone_b[0], atol=1e-5, rtol=0)
    assert np.isfinite(logits).all()  # padding rows attend to nothing but stay finite

    # Without segment ids the second document would see the first: the mask is what makes them equal.
    unmasked = our_logits(CONFIG, params, packed, positions=positions)
    assert np.abs(unmasked[0, 7:16] - alone_b[0]).max() > 1e-3


def test_right_padding_does_not_change_real_tokens():
    params = random_params(CONFIG, seed=1)
    ids = np.random.RandomState(1).randint(0, 64, (2, 20))
    segments = np.ones((2, 20), np.int32)
    segments[1, 12:] = 0
    padded = our_logits(CONFIG, params, ids, segment_ids=segments)
    np.testing.assert_allclose(padded[1, :12], our_logits(CONFIG, params, ids[1:, :12])[0], atol=1e-5, rtol=0)


EXPECTED_AXES = {
    "embed_tokens/embedding": ("vocab", "embed"),
    "input_layernorm/scale": ("embed",), "input_layernorm/bias": ("embed",),
    "self_attn/q_proj/kernel": ("embed", "heads", "kv"), "self_attn/q_proj/bias": ("heads", "kv"),
    "self_attn/k_proj/kernel": ("embed", "heads", "kv"), "self_attn/k_proj/bias": ("heads", "kv"),
    "self_attn/v_proj/kernel": ("embed", "heads", "kv"), "self_attn/v_proj/bias": ("heads", "kv"),
    "self_attn/dense/kernel": ("heads", "kv", "embed"), "self_attn/dense/bias": ("embed",),
    "mlp/fc1/kernel": ("embed", "mlp"), "mlp/fc1/bias": ("mlp",),
    "mlp/fc2/kernel": ("mlp", "embed"), "mlp/fc2/bias": ("embed",),
    "final_layernorm/scale": ("embed",), "final_layernorm/bias": ("embed",),
    "lm_head/kernel": ("embed", "vocab"), "lm_head/bias": ("vocab",),
}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_parameter_has_logical_axis_names(scan_layers):
    config = CONFIG.replace(scan_layers=scan_layers)
    specs = flatten(param_logical_specs(config))
    seen = set()
    for path, spec in specs.items():
        parts = path.split("/")
        if parts[0].startswith("layers"):
            key = "/".join(parts[1:])
            expected = (("layers",) if scan_layers else ()) + EXPECTED_AXES[key]
        else:
            key = path
            expected = EXPECTED_AXES[key]
        assert tuple(spec) == expected, path
        seen.add(key)
    assert seen == set(EXPECTED_AXES)


def test_init_params_matches_the_config_and_is_deterministic():
    a, b, c = init_params(CONFIG, 0), init_params(CONFIG, 0), init_params(CONFIG, 1)
    assert sum(x.size for x in jax.tree.leaves(a)) == CONFIG.num_params()
    fa, fb, fc = flatten(a), flatten(b), flatten(c)
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key])
    assert not np.array_equal(fa["lm_head/kernel"], fc["lm_head/kernel"])
    np.testing.assert_array_equal(fa["layers_0/input_layernorm/scale"], 1.0)
    np.testing.assert_array_equal(fa["layers_1/mlp/fc1/bias"], 0.0)
    assert abs(float(np.std(fa["embed_tokens/embedding"])) - CONFIG.initializer_range) < 0.002


def test_sharded_forward_on_a_device_mesh_matches_single_device():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    config = CONFIG.replace(scan_layers=True)
    params = random_params(config, seed=2)
    ids = np.random.RandomState(2).randint(0, 64, (4, 16))
    expected = our_logits(config, params, ids)

    # data x fsdp x tensor: batch over data and fsdp, weights over fsdp (embed) and tensor (heads, mlp, vocab).
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rules = (("batch", ("data", "fsdp")), ("length", None), ("vocab", "tensor"), ("heads", "tensor"),
             ("mlp", "tensor"), ("kv", None), ("embed", "fsdp"), ("layers", None))
    shardings = nn.logical_to_mesh_sharding(param_logical_specs(config), mesh, rules)
    sharded = jax.device_put(params, shardings)
    spec = jax.sharding.PartitionSpec
    assert sharded["layers"]["mlp"]["fc1"]["kernel"].sharding.spec == spec(None, "fsdp", "tensor")
    assert sharded["layers"]["self_attn"]["q_proj"]["kernel"].sharding.spec == spec(None, "fsdp", "tensor", None)
    assert sharded["embed_tokens"]["embedding"].sharding.spec == spec("tensor", "fsdp")
    model = CausalLM(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        batch_sharding = jax.sharding.NamedSharding(mesh, spec(("data", "fsdp"), None))
        forward = jax.jit(lambda p, x: model.apply({"params": p}, x), in_shardings=(shardings, batch_sharding))
        logits = forward(sharded, jax.device_put(ids, batch_sharding))
    assert logits.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)


def test_remat_policies_give_the_same_gradients():
    ids = np.random.RandomState(3).randint(0, 64, (2, 12))
    grads = {}
    for policy in ("none", "full", "dots_with_no_batch_dims"):
        config = CONFIG.replace(remat_policy=policy, scan_layers=True)
        params = random_params(config, seed=3)
        model = CausalLM(config)

        def loss(p):
            logits = model.apply({"params": p}, ids[:, :-1])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], axis=-1))

        grads[policy] = flatten(jax.jit(jax.grad(loss))(params))
    for policy in ("full", "dots_with_no_batch_dims"):
        for key, g in grads["none"].items():
            np.testing.assert_allclose(grads[policy][key], g, atol=1e-6, rtol=1e-5, err_msg=f"{policy} {key}")


def test_dropout_only_when_not_deterministic():
    config = CONFIG.replace(embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
    params = random_params(config, seed=4)
    ids = np.random.RandomState(4).randint(0, 64, (2, 10))
    model = CausalLM(config)
    train = jax.jit(lambda p, x, rng: model.apply({"params": p}, x, deterministic=False, rngs={"dropout": rng}))
    plain = our_logits(config, params, ids)  # deterministic by default
    np.testing.assert_allclose(plain, our_logits(CONFIG, params, ids), atol=1e-5)
    first, again, other = (train(params, ids, jax.random.PRNGKey(seed)) for seed in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - plain).max() > 1e-3 and np.abs(first - other).max() > 1e-3


def test_hidden_states_are_the_final_layernorm_output():
    params = random_params(CONFIG, seed=5)
    ids = np.random.RandomState(5).randint(0, 64, (2, 10))
    model = CausalLM(CONFIG)
    logits, hidden = jax.jit(lambda p, x: model.apply({"params": p}, x, output_hidden_states=True))(params, ids)
    assert hidden.shape == (2, 10, CONFIG.hidden_size) and logits.dtype == jnp.float32
    head = params["lm_head"]
    np.testing.assert_allclose(logits, hidden @ head["kernel"] + head["bias"], atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decoding_reproduces_the_full_forward(scan_layers):
    """Prefill of ragged prompts, then one token per step: each step's logits equal the full forward's."""
    from textbooks.model import init_cache

    config = CONFIG.replace(scan_layers=scan_layers)
    params = random_params(config, seed=6)
    ids = np.random.RandomState(6).randint(0, 64, (2, 14))
    full = our_logits(config, params, ids)
    lengths = np.array([3, 8])  # row 0 prefills 3 tokens, row 1 prefills 8 (right-padded to 8)
    prefill = np.where(np.arange(8)[None] < lengths[:, None], ids[:, :8], 0)
    segments = (np.arange(8)[None] < lengths[:, None]).astype(np.int32)
    model = CausalLM(config)
    step = jax.jit(lambda p, c, x, s: model.apply({"params": p, "cache": c}, x, segment_ids=s, decode=True,
                                                  mutable=["cache"]))
    logits, variables = step(params, init_cache(config, 2, 32), prefill, segments)
    np.testing.assert_allclose(logits[0, :3], full[0, :3], atol=1e-5)
    np.testing.assert_allclose(logits[1, :8], full[1, :8], atol=1e-5)
    cache = variables["cache"]
    for t in range(5):
        tokens = ids[np.arange(2), lengths + t][:, None]
        logits, variables = step(params, cache, tokens, np.ones((2, 1), np.int32))
        cache = variables["cache"]
        np.testing.assert_allclose(logits[:, 0], full[np.arange(2), lengths + t], atol=1e-5, err_msg=f"step {t}")
    np.testing.assert_array_equal(cache["cache_index"], lengths + 5)

"""Rotary embeddings: the per-call cos/sin tables, their application, and one table for every layer.

The tables are checked against the formula in float64, the rotation against a numpy rotate-half of the whole
head (the dims past ``rotary_dim`` passing through), and the stacks that receive the tables (unrolled and
``nn.scan``) against each other. The compiled CPU program must compute the tables a fixed number of times,
however many layers read them.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from textbooks.model.causal_lm import CausalLM, init_params
from textbooks.model.config import get_preset
from textbooks.model.layers import apply_rotary, rotary_inv_freq, rotary_tables
from textbooks.model.params_io import to_layout

EPS32 = float(np.finfo(np.float32).eps)

CONFIGS = {
    "llama": get_preset("llama-cpu-1m"),
    "llama3-scaling": get_preset("llama-cpu-1m").replace(rope_scaling_type="llama3", rope_scaling_factor=8.0,
                                                         rope_original_max_len=64),
    "phi-partial": get_preset("phi-cpu-1m"),  # rotary on half of each head
    "smollm2": get_preset("smollm2-135m"),
}


def _positions(batch=3, length=17, high=8192, seed=0):
    rng = np.random.default_rng(seed)
    positions = rng.integers(0, high, (batch, length)).astype(np.int32)
    positions[0] = np.arange(length)  # a row from 0, as a prefill's
    return positions


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("jit", [False, True])
def test_tables_match_the_formula_in_float64(name, jit):
    inv_freq = rotary_inv_freq(CONFIGS[name])
    positions = _positions()
    fn = jax.jit(rotary_tables) if jit else rotary_tables
    cos, sin = (np.asarray(t) for t in fn(jnp.asarray(positions), inv_freq))
    assert cos.shape == sin.shape == positions.shape + (len(inv_freq),)
    assert cos.dtype == sin.dtype == np.float32
    angles = positions.astype(np.float64)[..., None] * inv_freq.astype(np.float64)
    # The float32 angle is rounded to eps * |angle| (which moves cos/sin by as much), sin/cos then add a few
    # ulps of their result.
    tolerance = EPS32 * (np.abs(angles) + 4.0)
    np.testing.assert_array_less(np.abs(cos - np.cos(angles)), tolerance)
    np.testing.assert_array_less(np.abs(sin - np.sin(angles)), tolerance)


def _reference_rotation(x, positions, inv_freq):
    """Rotate-half of the first 2 * len(inv_freq) dims of each head, float64, the rest passing through."""
    x = x.astype(np.float64)
    dim = 2 * len(inv_freq)
    angles = positions.astype(np.float64)[..., None] * inv_freq.astype(np.float64)
    angles = np.concatenate([angles, angles], axis=-1)[:, :, None, :]
    rot = x[..., :dim]
    rotated_half = np.concatenate([-rot[..., dim // 2:], rot[..., :dim // 2]], axis=-1)
    return np.concatenate([rot * np.cos(angles) + rotated_half * np.sin(angles), x[..., dim:]], axis=-1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_apply_rotary_matches_rotate_half_of_the_formula(name):
    config = CONFIGS[name]
    inv_freq = rotary_inv_freq(config)
    positions = _positions(high=512)
    x = np.random.default_rng(1).normal(size=positions.shape + (3, config.head_dim)).astype(np.float32)
    ours = np.asarray(apply_rotary(jnp.asarray(x), *rotary_tables(jnp.asarray(positions), inv_freq)))
    expected = _reference_rotation(x, positions, inv_freq)
    # Each output is a sum of two products of |x| with a table entry off by eps * (|angle| + 4) (see above).
    angle = positions.max() * float(inv_freq.max())
    tolerance = 2 * EPS32 * (angle + 4.0) * np.abs(x).max() * 2
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance)
    dim = config.rotary_dim
    np.testing.assert_array_equal(ours[..., dim:], x[..., dim:])  # the dims past rotary_dim are untouched


def test_apply_rotary_rejects_tables_of_other_positions():
    inv_freq = rotary_inv_freq(CONFIGS["llama"])
    tables = rotary_tables(jnp.zeros((2, 5), jnp.int32), inv_freq)
    with pytest.raises(ValueError, match="rotary_tables"):
        apply_rotary(jnp.zeros((2, 6, 4, 16)), *tables)


@pytest.mark.parametrize("family", ["llama", "phi"])
def test_scanned_and_unrolled_stacks_give_the_same_logits(family):
    config = (CONFIGS["llama"] if family == "llama" else CONFIGS["phi-partial"]).replace(num_layers=3)
    params = init_params(config, 0)
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(0, config.vocab_size, (2, 24)), jnp.int32)
    positions = jnp.asarray(np.concatenate([np.arange(10), np.arange(14)])[None].repeat(2, 0), jnp.int32)
    unrolled = CausalLM(config).apply({"params": params}, ids, positions=positions)
    scanned = CausalLM(config.replace(scan_layers=True)).apply({"params": to_layout(params, scan_layers=True)},
                                                               ids, positions=positions)
    # The same float32 ops on the same values; the loop may only reorder a reduction (matmul blocking):
    # eps x the widest reduction x the logits' magnitude, per layer.
    width = max(config.hidden_size, config.intermediate_size)
    tolerance = EPS32 * width * config.num_layers * float(jnp.abs(unrolled).max())
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(unrolled), rtol=0, atol=tolerance)


def _sine_ops(config):
    model = CausalLM(config)
    params = init_params(config, 0)
    ids = jnp.zeros((1, 32), jnp.int32)
    text = jax.jit(lambda p, i: model.apply({"params": p}, i)).lower(params, ids).compile().as_text()
    return len(re.findall(r" sine\(", text)), len(re.findall(r" cosine\(", text))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the XLA:CPU program")
def test_cpu_program_computes_the_tables_once_for_all_layers():
    config = CONFIGS["llama"]
    few, many = _sine_ops(config.replace(num_layers=1)), _sine_ops(config.replace(num_layers=4))
    # Fused into each layer's q and k, the count would grow with the layers.
    assert few == many, (few, many)

"""The compiled CPU decode-attention kernel against the XLA formulation and in the decoder."""

import dataclasses

import jax
import numpy as np
import pytest
from phi_testing import greedy_by_recomputing

from textbooks.model import cpu_attention
from textbooks.model import decode as decode_lib
from textbooks.model.slots import SlotDecoder


@pytest.fixture(scope="module")
def kernel():
    status = cpu_attention.status()
    if not status.ok:
        pytest.skip(f"decode attention kernel unavailable: {status.reason}")
    return status


@pytest.mark.parametrize("queries", [1, 5])
def test_kernel_equals_the_masked_softmax(kernel, queries):
    rng = np.random.default_rng(queries)
    batch, heads, slots, dim = 6, 3, 40, 16
    q = rng.standard_normal((batch, queries, heads, dim), np.float32)
    k = rng.standard_normal((batch, heads, slots, dim), np.float32)
    v = rng.standard_normal((batch, heads, slots, dim), np.float32)
    # Rows at the first slot, in the middle, at the end, and past it (writes were dropped: all slots visible).
    start = np.array([0, 3, 17, slots - queries, slots - 1, slots + 4], np.int32)
    got = jax.jit(cpu_attention.decode_attention, static_argnums=4)(q, k, v, start, dim ** -0.5)
    want = cpu_attention.xla_decode_attention(q, k, v, start, dim ** -0.5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    # A row reads nothing past its own slots: changing them changes nothing.
    k2, v2 = k.copy(), v.copy()
    k2[1, :, 3 + queries:] = 1e4
    v2[1, :, 3 + queries:] = np.nan
    again = jax.jit(cpu_attention.decode_attention, static_argnums=4)(q, k2, v2, start, dim ** -0.5)
    np.testing.assert_array_equal(np.asarray(again)[1], np.asarray(got)[1])


def test_decoder_uses_the_kernel_and_decodes_the_same_tokens(kernel, tiny_model):
    config, params = tiny_model
    fast = decode_lib.Decoder(params, config, attention="auto")
    plain = decode_lib.Decoder(params, config, attention="xla")
    assert fast.attention == "cpu_kernel" and plain.attention == "xla"
    rng = np.random.default_rng(0)
    requests = [decode_lib.GenerationRequest(prompt=rng.integers(1, config.vocab_size, n).tolist(), max_new_tokens=m)
                for n, m in [(3, 20), (11, 7), (1, 30), (25, 12)]]
    got = fast.generate(requests)
    assert got == plain.generate(requests)
    for r, out in zip(requests, got):
        assert out.tokens == greedy_by_recomputing(config, params, [r.prompt], r.max_new_tokens)[0]


def test_continuous_batching_with_the_kernel_stops_when_a_slot_frees(kernel, tiny_model):
    config, params = tiny_model
    slots = SlotDecoder(params, config, num_slots=4, attention="cpu_kernel")
    requests = [decode_lib.GenerationRequest(prompt=[5, 9, 2][:n], max_new_tokens=m) for n, m in [(1, 3), (2, 20), (3, 9)]]
    slots.admit(requests)
    first = slots.step(16, until_free=True)  # ends when the 3-token request ends, not after 16 tokens
    assert [len(first[s][0] if isinstance(first[s], tuple) else first[s].tokens) for s in sorted(first)] == [3, 3, 3]
    assert isinstance(first[0], decode_lib.GenerationOutput) and slots.active_slots == [1, 2]
    got = {0: first[0].tokens, 1: list(first[1][0]), 2: list(first[2][0])}
    while slots.active_slots:
        for s, out in slots.step(16).items():
            got[s] += out.tokens if isinstance(out, decode_lib.GenerationOutput) else out[0]
    for s, r in enumerate(requests):
        assert got[s] == greedy_by_recomputing(config, params, [r.prompt], r.max_new_tokens)[0]


def test_unavailable_kernel_is_reported_not_used(tiny_model, monkeypatch):
    config, params = tiny_model
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    assert decode_lib.choose_attention(bf16, params)[0] == "xla"
    with pytest.raises(ValueError, match="cpu_kernel.*unavailable.*float32"):
        decode_lib.Decoder(params, bf16, attention="cpu_kernel")
    with pytest.raises(ValueError, match="attention must be"):
        decode_lib.Decoder(params, config, attention="flash")
    monkeypatch.setenv("TEXTBOOKS_CPU_KERNELS", "0")
    cpu_attention.status.cache_clear()
    try:
        name, reason = decode_lib.choose_attention(config, params)
        assert name == "xla" and "TEXTBOOKS_CPU_KERNELS=0" in reason
    finally:
        monkeypatch.delenv("TEXTBOOKS_CPU_KERNELS")
        cpu_attention.status.cache_clear()

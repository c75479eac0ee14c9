"""Decoding shapes that keep a step cheap: power-of-two buckets, single-query attention and the cache windows of
the token loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from phi_testing import our_logits, random_params
from treecheck import assert_same_structure

from textbooks.model import Decoder, GenerationRequest, get_preset, init_cache
from textbooks.model.buckets import bucket, fine_bucket
from textbooks.model.kv_cache import attention_windows, resize_cache


def test_buckets_are_the_smallest_power_of_two_that_fits_within_the_limits():
    for n in range(0, 300):
        for minimum, maximum in ((1, None), (16, None), (8, 200), (1, 64)):
            power = next(2 ** k for k in range(12) if 2 ** k >= n)
            want = min(max(power, minimum), maximum) if maximum is not None else max(power, minimum)
            assert bucket(n, minimum, maximum) == want, (n, minimum, maximum)


def test_fine_buckets_are_the_smallest_quarter_octave_size_that_fits_within_the_limits():
    # The sizes k * 2**e / 4 (4 <= k <= 8) that are whole numbers: 1, 2, ..., 8, 10, 12, 14, 16, 20, 24, ...
    sizes = sorted({k * 2 ** e // 4 for k in range(4, 9) for e in range(14) if k * 2 ** e % 4 == 0})
    for n in range(0, 3000):
        for minimum, maximum in ((1, None), (16, None), (16, 2048), (100, 1000)):
            smallest = next(s for s in sizes if s >= max(n, 1))
            want = max(smallest, minimum) if maximum is None else min(max(smallest, minimum), maximum)
            got = fine_bucket(n, minimum, maximum)
            assert got == want, (n, minimum, maximum)
            assert got <= bucket(n, minimum, maximum)  # never more padding than the power-of-two bucket
            if n > minimum and (maximum is None or n <= maximum):
                assert got - n < n / 4  # pads by less than a quarter
    # Four programs per octave: 16 and four sizes in each of (16, 32], ..., (1024, 2048].
    assert len({fine_bucket(n, 16, 2048) for n in range(1, 2049)}) == 1 + 4 * 7
    assert [fine_bucket(n, 1, steps=2) for n in (5, 7, 9, 13)] == [6, 8, 12, 16]
    with pytest.raises(ValueError, match="power of two"):
        fine_bucket(10, 1, steps=3)


def test_attention_windows_grow_to_the_cache_length():
    assert attention_windows(32) == [32]
    assert attention_windows(64) == [64]
    assert attention_windows(256) == [64, 128, 192, 256]
    assert attention_windows(2048) == [512, 1024, 1536, 2048]


def test_resize_cache_cuts_and_zero_pads_the_slot_axis():
    for scan_layers in (False, True):
        config = get_preset("phi-cpu-1m").replace(vocab_size=64, max_len=64, scan_layers=scan_layers)
        cache = jax.tree.map(lambda x: x + 1, init_cache(config, 3, 32))
        small = resize_cache(cache, 16)
        grown = resize_cache(small, 32)
        assert_same_structure(grown, cache)
        assert jax.tree.structure(small) == jax.tree.structure(cache)
        for before, cut, after in zip(jax.tree.leaves(cache), jax.tree.leaves(small), jax.tree.leaves(grown)):
            if before.ndim < 4:  # the per-row write indices
                np.testing.assert_array_equal(before, after)
                continue
            axis = list(before.shape).index(32)  # the slot axis (batch 3, 4 heads x 16 dims)
            assert cut.shape[axis] == 16 and after.shape == before.shape
            np.testing.assert_array_equal(jax.lax.slice_in_dim(after, 0, 16, axis=axis), cut)
            assert not np.any(np.asarray(jax.lax.slice_in_dim(after, 16, 32, axis=axis)))


def test_windowed_greedy_decoding_equals_recomputing_across_window_boundaries():
    """Ragged prompts whose generations cross the 64- and 128-slot windows of a 256-slot cache."""
    config = get_preset("phi-cpu-1m").replace(vocab_size=64, max_len=256)
    params = random_params(config, seed=4, scale=0.3)
    rng = np.random.RandomState(4)
    prompts = [rng.randint(0, 64, n).tolist() for n in (3, 60, 100)]
    new = 40  # cache bucket 256: windows 64, 128, 192, 256
    outputs = Decoder(params, config, max_batch_size=4).generate([GenerationRequest(p, new) for p in prompts])

    width = max(map(len, prompts)) + new
    sequences = [list(p) for p in prompts]
    for _ in range(new):
        ids = np.zeros((len(prompts), width), np.int32)
        for i, s in enumerate(sequences):
            ids[i, :len(s)] = s
        logits = our_logits(config, params, ids)
        for i, s in enumerate(sequences):
            s.append(int(np.argmax(logits[i, len(s) - 1])))
    expected = [s[len(p):] for s, p in zip(sequences, prompts)]
    assert [o.tokens for o in outputs] == expected
    assert len({tuple(e) for e in expected}) == len(expected)


def test_single_query_step_equals_the_full_forward_in_both_dtypes():
    """A one-token decode step (the fused path) matches the full forward at that position."""
    for dtype, atol in (("float32", 1e-5), ("bfloat16", 0.1)):
        config = get_preset("phi-cpu-1m").replace(vocab_size=64, max_len=64, dtype=dtype)
        params = random_params(config, seed=2)
        ids = np.random.RandomState(2).randint(0, 64, (2, 9))
        full = our_logits(config, params, ids)
        from textbooks.model.causal_lm import CausalLM

        model = CausalLM(config)
        step = jax.jit(lambda p, c, x: model.apply({"params": p, "cache": c}, x, decode=True, mutable=["cache"]))
        _, variables = step(params, init_cache(config, 2, 16), jnp.asarray(ids[:, :8]))
        logits, _ = step(params, variables["cache"], jnp.asarray(ids[:, 8:9]))
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, 8], atol=atol)

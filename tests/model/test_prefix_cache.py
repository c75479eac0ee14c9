"""Prefix caching: a prompt beginning like a kept one prefills only its rest, into the cache a plain prefill of the
whole prompt makes (up to float summation order), and continuous batching with it decodes exactly as
recomputing the full forward; what is kept stays bounded; bad settings fail clearly."""

import jax
import numpy as np
import pytest
from phi_testing import greedy_by_recomputing

from textbooks.model import GenerationRequest
from textbooks.model.decode import Decoder
from textbooks.model.prefix_cache import PrefixCache, common_length
from textbooks.model.slots import SlotDecoder


def _prompts(vocab):
    rng = np.random.RandomState(5)
    base = rng.randint(1, vocab, 19).tolist()
    other = [t % (vocab - 1) + 1 for t in base]  # differs from base at every position
    return [
        base + [0, 3, 4, 5, 6],      # kept first: no hit
        base + [2, 7, 8, 9, 1, 2, 3, 4],  # shares 19 tokens: reuses 16 (blocks of 8)
        base[:12] + other[12:19],    # shares 12: reuses 8
        other[:22],                  # shares nothing
        base + [0, 3, 4, 5, 6],      # the first again: body of 23 shared, a token left to feed: reuses 16
    ]


def test_prompts_sharing_beginnings_decode_as_recomputing_and_reuse_the_blocks(tiny_model):
    config, params = tiny_model
    prompts = _prompts(config.vocab_size)
    lengths = [6, 9, 5, 7, 6]
    decoder = SlotDecoder(params, config, num_slots=2, min_length_bucket=8)
    got = []
    for prompt, n in zip(prompts, lengths):  # one at a time: each sees the beginnings of the earlier ones
        slot = decoder.admit([GenerationRequest(prompt=prompt, max_new_tokens=n)])[0]
        out = []
        while decoder.active_slots:
            step = decoder.step(4)[slot]
            out += step[0] if isinstance(step, tuple) else step.tokens
        got.append(out)
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        assert got[i] == greedy_by_recomputing(config, params, [prompt], n)[0], f"request {i}"
    stats = decoder.stats
    assert (stats["prefix_hits"], stats["prefix_reused_tokens"]) == (3, 16 + 8 + 16)
    assert stats["prefill_tokens"] == sum(len(p) - 1 for p in prompts) - 40
    assert decoder.prefix_shapes == {(16, 26), (8, 18), (16, 24)}  # (reused, padded prompt) of the hits


def test_prefill_after_a_kept_beginning_matches_a_plain_prefill(tiny_model):
    config, params = tiny_model
    first, second = _prompts(config.vocab_size)[:2]
    decoder = Decoder(params, config, min_length_bucket=8)
    kept = PrefixCache(rows=2, tokens=16, block=8)
    kept.keep(first[:-1], decoder.prefill([GenerationRequest(prompt=first, max_new_tokens=1)])[0])
    length, row = kept.lookup(second[:-1])
    assert length == 16
    body = second[:-1]
    cache_len = decoder.prompt_bucket(len(body))
    got = kept.prefill(decoder._config, decoder.prefill_kernels, decoder.params, row, length, body, cache_len)
    want = decoder.prefill([GenerationRequest(prompt=second, max_new_tokens=1)])[0]
    # Keys/values of a layer sum hidden_size products per projection over a residual stream that grows per
    # layer; attention sums over the slots: float32 rounding of that many terms, relative to their magnitude.
    tolerance = np.finfo(np.float32).eps * (config.hidden_size + cache_len) * config.num_layers
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.ndim < 4:
            np.testing.assert_array_equal(g, w, err_msg=str(path))  # write index: the body's length
            assert int(g.reshape(-1)[0]) == len(body)
            continue
        g, w = g[..., :len(body), :], w[..., :len(body), :]  # later slots are padding
        np.testing.assert_allclose(g, w, rtol=0, atol=tolerance * np.abs(w).max(), err_msg=str(path))


def test_kept_prompts_are_bounded_least_recently_used_out():
    cache = PrefixCache(rows=2, tokens=8, block=4)
    part = {"cached_key": np.zeros((1, 1, 8, 2), np.float32), "cache_index": np.zeros((1,), np.int32)}
    a, b, c = [1] * 9, [2] * 9, [3] * 9
    cache.keep(a, part)
    cache.keep(b, part)
    assert cache.lookup([1] * 6)[0] == 4  # min(6 shared, 5 leaving one) rounded down to 4; a is now the newest
    cache.keep(c, part)  # b goes
    assert cache.lookup([2] * 9) == (0, None)
    assert cache.lookup([1] * 9)[0] == 8 and cache.lookup([3] * 9)[0] == 8
    assert cache.lookup([1, 1, 1]) == (0, None)  # under a block
    assert common_length([1, 2, 3], [1, 2, 4, 5]) == 2 and common_length([1, 2], [1, 2, 3]) == 2


def test_bad_settings_and_prefills_fail_clearly(tiny_model):
    with pytest.raises(ValueError, match="multiple of block"):
        PrefixCache(rows=2, tokens=12, block=8)
    config, params = tiny_model
    decoder = Decoder(params, config, min_length_bucket=8)
    cache = PrefixCache(rows=1, tokens=8, block=8)
    with pytest.raises(ValueError, match="do not fit"):
        cache.prefill(decoder._config, decoder.prefill_kernels, decoder.params, None, 8, [1] * 20, 16)
    off = SlotDecoder(params, config, num_slots=2, min_length_bucket=8, prefix_rows=0)
    assert off.prefix is None and off.prefix_shapes == set()

"""Prompt beginnings prefilled once: a rest prefilled after the first L tokens of a cached row, for every L, holds
the keys and values a whole prefill writes (one program for every L), and prompts starting with a given prefix
decode as a whole prefill does (checked against the full forward); a prompt that leaves it early prefills whole."""

import jax
import numpy as np
import pytest
from phi_testing import greedy_by_recomputing, random_params

from textbooks.model import GenerationRequest
from textbooks.model import decode as decode_lib
from textbooks.model.decode import Decoder
from textbooks.model.kv_cache import cache_length
from textbooks.model.prefix_cache import PromptPrefixes
from textbooks.model.slots import SlotDecoder

PREFIX_LEN = 12
SLOTS = 16  # P of these tests (the default 64 is the tiny models' whole length)


def _prefix(config):
    return np.random.RandomState(21).randint(1, config.vocab_size, PREFIX_LEN).tolist()


def _drain(decoder, slots, chunk):
    got = {s: [] for s in slots}
    while decoder.active_slots:
        for slot, out in decoder.step(chunk).items():
            got[slot] += out[0] if isinstance(out, tuple) else out.tokens
    return [got[s] for s in slots]


def _leaves(cache):
    return [(jax.tree_util.keystr(path), np.asarray(x)) for path, x in jax.tree_util.tree_leaves_with_path(cache)]


@pytest.fixture(scope="module")
def models(tiny_model):
    """Phi and a llama-family model with grouped KV heads (as SmolLM2), small, random, 128 positions long."""
    from textbooks.model import get_preset

    llama = get_preset("llama-cpu-1m").replace(vocab_size=64, max_len=128)
    phi_config, phi_params = tiny_model
    return {"phi": (phi_config.replace(max_len=128), phi_params), "llama": (llama, random_params(llama, 2, 0.3))}


@pytest.mark.parametrize("family", ["phi", "llama"])
def test_a_rest_after_a_reused_beginning_of_any_length_holds_what_a_whole_prefill_writes(family, models):
    config, params = models[family]
    decoder = Decoder(params, config, min_length_bucket=8)
    rng = np.random.RandomState(4)
    source = rng.randint(0, config.vocab_size, 40).tolist()  # the earlier prompt whose row's start is reused
    part, _ = decoder.prefill([GenerationRequest(prompt=source, max_new_tokens=1)])
    entry = PromptPrefixes(decoder, slots=SLOTS).head(part)
    assert cache_length(entry) == SLOTS
    tail = rng.randint(0, config.vocab_size, 11).tolist()  # every prompt's rest: 11 tokens, one bucket
    programs = decode_lib._prefill_after._cache_size()
    for reused in range(1, SLOTS + 1):
        prompt = source[:reused] + tail
        body = len(prompt) - 1
        request = GenerationRequest(prompt=prompt, max_new_tokens=1)
        whole, last = decoder.prefill([request])
        after, last_after = decoder.prefill_after(entry, request, reused)
        assert cache_length(after) == SLOTS + decoder.prompt_bucket(len(tail) - 1)
        assert int(last_after[0]) == int(last[0]) == tail[-1]
        # Every layer's keys and values of the prompt's slots (slots past them are never read), and the write
        # index. float32 rounding of a different summation order: each layer's outputs reduce over at most
        # hidden + mlp + keys products, so they differ by at most eps x that x their magnitude, per layer.
        flat_whole, flat_after = dict(_leaves(whole)), dict(_leaves(after))
        assert flat_whole.keys() == flat_after.keys()
        reduction = config.hidden_size + config.intermediate_size + cache_length(after)
        for name, ref in flat_whole.items():
            got = flat_after[name]
            if ref.ndim < 4:
                np.testing.assert_array_equal(got, np.full_like(ref, body), err_msg=name)
                continue
            ref, got = ref[..., :body, :], got[..., :body, :]
            tol = np.finfo(np.float32).eps * reduction * config.num_layers * float(np.abs(ref).max())
            np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=f"{name} reusing {reused}")
        # The entry's slots from `reused` on (another prompt's tokens, then zeros past P) are masked out: filled
        # with large values instead, they change nothing a real token wrote.
        junk = jax.tree.map(lambda x: x.at[..., reused:, :].set(1e3) if x.ndim >= 4 else x, entry)
        for (name, got), (_, ref) in zip(_leaves(decoder.prefill_after(junk, request, reused)[0]), _leaves(after)):
            np.testing.assert_array_equal(got[..., :body, :] if got.ndim >= 4 else got,
                                          ref[..., :body, :] if ref.ndim >= 4 else ref, err_msg=name)
    # The reused length is traced: one program (and one shape) served every one of them.
    assert decode_lib._prefill_after._cache_size() - programs <= 1
    assert decoder.prefix_shapes == {(SLOTS, decoder.prompt_bucket(len(tail) - 1))}


@pytest.mark.parametrize("family", ["phi", "llama"])
def test_prompts_starting_with_a_given_prefix_decode_as_a_whole_prefill(family, models):
    config, params = models[family]
    prefix = _prefix(config)
    rng = np.random.RandomState(9)
    tails = [rng.randint(0, config.vocab_size, n).tolist() for n in (3, 10, 20, 30)]
    diverging = prefix[:5] + [(prefix[5] + 1) % config.vocab_size] + prefix[6:] + tails[1]  # leaves it at token 5
    just_prefix = prefix + [7]  # no token after the prefix but the last: it reuses all but the prefix's last
    prompts = [prefix + t for t in tails] + [diverging, just_prefix]
    new = [6, 9, 4, 7, 5, 8]
    requests = [GenerationRequest(prompt=p, max_new_tokens=n) for p, n in zip(prompts, new)]
    texts, stats = {}, {}
    for name, prefixes in (("with", [prefix]), ("without", [])):
        decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8, prefixes=prefixes,
                              prefix_slots=SLOTS)
        texts[name] = _drain(decoder, decoder.admit(requests[:4]), 4) + _drain(decoder, decoder.admit(requests[4:]), 4)
        stats[name] = decoder.stats
    reference = [greedy_by_recomputing(config, params, [p], n)[0] for p, n in zip(prompts, new)]
    assert texts["with"] == texts["without"] == reference
    # The four prompts on the prefix reused its tokens, the one with no token after it but its last all but the
    # prefix's last (one token is prefilled); the one leaving it at token 5 prefilled whole. Nothing was learned
    # (prefix_entries defaults to 0).
    with_, without = stats["with"], stats["without"]
    reused = 4 * PREFIX_LEN + PREFIX_LEN - 1
    assert (with_["prefix_hits"], with_["prefix_reused_tokens"], with_["prefix_learned_hits"]) == (5, reused, 0)
    assert (without["prefix_hits"], without["prefix_reused_tokens"]) == (0, 0)
    assert with_["prefill_tokens"] == without["prefill_tokens"] - with_["prefix_reused_tokens"]
    assert with_["prefill_padded_tokens"] < without["prefill_padded_tokens"]
    # Of several prefixes, a prompt takes the one it shares most tokens with (at least min_reuse of them).
    prefixes = SlotDecoder(params, config, min_length_bucket=8, prefixes=[prefix[:9], prefix],
                           prefix_slots=SLOTS).prefixes
    found = [prefixes.match(p) for p in prompts]
    assert [(m.key, m.reused) if m else None for m in found] == \
        [(tuple(prefix), PREFIX_LEN)] * 4 + [None, (tuple(prefix), PREFIX_LEN - 1)]
    assert prefixes.match(prefix[:10] + [(prefix[10] + 1) % config.vocab_size] + tails[2]).reused == 10


def test_the_slots_hold_the_longest_given_prefix(models):
    config, params = models["phi"]
    decoder = Decoder(params, config, min_length_bucket=8)
    assert PromptPrefixes(decoder, [[1] * 70], slots=SLOTS).slots == 80  # raised, a multiple of 16
    assert PromptPrefixes(decoder, [[1] * 5]).slots == 64
    # One entry: every layer's keys and values of 64 slots, float32.
    assert PromptPrefixes(decoder).entry_bytes >= 2 * config.num_layers * config.kv_heads * 64 * config.head_dim * 4


def test_bad_prefix_calls_fail_clearly(tiny_model):
    config, params = tiny_model
    decoder = Decoder(params, config, min_length_bucket=8)
    with pytest.raises(ValueError, match="empty prefix"):
        decoder.prefill_prefix([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decoder.prefill_prefix([1, config.vocab_size])
    cached = decoder.prefill_prefix([1, 2, 3])
    with pytest.raises(ValueError, match="leaves 1 after the 3-token prefix"):
        decoder.prefill_after(cached, GenerationRequest(prompt=[1, 2, 3, 4], max_new_tokens=1))
    with pytest.raises(ValueError, match="reused=4 tokens but the prefix cache holds 3 slots"):
        decoder.prefill_after(cached, GenerationRequest(prompt=[1, 2, 3, 4, 5, 6], max_new_tokens=1), 4)
    with pytest.raises(ValueError, match="prompt length"):
        SlotDecoder(params, config, prefixes=[[1] * config.max_len])
    with pytest.raises(ValueError, match="entries must be >= 0"):
        SlotDecoder(params, config, prefix_entries=-1)

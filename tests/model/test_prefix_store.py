"""Learned prompt beginnings: the start of every prefilled row is kept (least recently used out first, at most
``entries``) and later prompts that start alike prefill only their rest; their greedy text is the full forward's,
and after the warm-up, serving prompts in any order compiles no program."""

import numpy as np
import pytest
from phi_testing import greedy_by_recomputing, random_params

from textbooks.model import GenerationRequest
from textbooks.model import decode as decode_lib
from textbooks.model import prefix_cache, slots as slots_lib
from textbooks.model.decode import Decoder
from textbooks.model.prefix_cache import DEFAULT_STORE_BYTES, PromptPrefixes
from textbooks.model.slots import SlotDecoder

SLOTS = 16  # P of these tests (the default 64 is the tiny models' whole length)


@pytest.fixture(scope="module")
def models(tiny_model):
    """Phi and a llama-family model with grouped KV heads (as SmolLM2), small, random, 128 positions long."""
    from textbooks.model import get_preset

    llama = get_preset("llama-cpu-1m").replace(vocab_size=64, max_len=128)
    phi_config, phi_params = tiny_model
    return {"phi": (phi_config.replace(max_len=128), phi_params), "llama": (llama, random_params(llama, 2, 0.3))}


def _branch(base, shared, tail_len, rng, vocab):
    """``base``'s first ``shared`` tokens, then ``tail_len`` tokens, the first of them not ``base``'s next."""
    first = (base[shared] + 1 + rng.randint(vocab - 1)) % vocab if shared < len(base) else rng.randint(vocab)
    return base[:shared] + [int(first)] + rng.randint(0, vocab, tail_len - 1).tolist()


def _prompts(config, seed=3):
    rng = np.random.RandomState(seed)
    base = rng.randint(0, config.vocab_size, 30).tolist()
    shares = (24, 20, 12, 9, 16, 4, 30, 14)
    tails = (5, 12, 18, 9, 3, 20, 4, 7)
    return [_branch(base, s, t, rng, config.vocab_size) for s, t in zip(shares, tails)]


def _serve(decoder, prompts, new, group):
    """Admits ``prompts`` ``group`` at a time, each group decoded to its end; returns their greedy tokens."""
    got = []
    for start in range(0, len(prompts), group):
        requests = [GenerationRequest(prompt=p, max_new_tokens=n)
                    for p, n in zip(prompts[start:start + group], new[start:start + group])]
        out = {s: [] for s in decoder.admit(requests)}
        while decoder.active_slots:
            for slot, o in decoder.step(4).items():
                out[slot] += o[0] if isinstance(o, tuple) else o.tokens
        got += list(out.values())
    return got


@pytest.mark.parametrize("family", ["phi", "llama"])
def test_prompts_reusing_earlier_beginnings_decode_as_the_full_forward(family, models):
    config, params = models[family]
    prompts = _prompts(config)
    new = [5, 3, 6, 4, 7, 3, 5, 4]
    texts, stats = {}, {}
    for entries in (None, 0):
        decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8, prefix_slots=SLOTS,
                              prefix_entries=entries)
        texts[entries] = _serve(decoder, prompts, new, 1) + _serve(decoder, prompts[::-1], new[::-1], 4)
        stats[entries] = decoder.stats
    reference = [greedy_by_recomputing(config, params, [p], n)[0] for p, n in zip(prompts, new)]
    assert texts[None] == texts[0] == reference + reference[::-1]
    learned, off = stats[None], stats[0]
    assert off["prefix_hits"] == off["prefix_reused_tokens"] == 0
    # One at a time: the first prefills whole and leaves its first 16 tokens; the next ones share 16, 12, 9, 16,
    # (4: too few), 16 and 14 tokens with what is held; all of them again (in a group) at least as many.
    once = 16 + 12 + 9 + 16 + 16 + 14
    assert learned["prefix_learned_hits"] == learned["prefix_hits"] >= 6 + 6
    assert learned["prefix_learned_tokens"] == learned["prefix_reused_tokens"] >= 2 * once
    assert learned["prefill_tokens"] == off["prefill_tokens"] - learned["prefix_reused_tokens"]


def test_after_prewarm_serving_in_any_order_compiles_nothing(models):
    config, params = models["llama"]
    seeded = _prompts(config)[0][:10]
    decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8, prefixes=[seeded], prefix_slots=SLOTS,
                          prefix_entries=3)
    decoder.prewarm(52, [32, 64], 4)  # a group of these prompts needs 32 or 64 slots
    jitted = (decode_lib._prefill, decode_lib._prefill_after, prefix_cache._head, slots_lib._insert_row)
    warmed = [f._cache_size() for f in jitted]
    shapes = [set(s) for s in (decoder.prefill_shapes, decoder.prefix_shapes, decoder.head_shapes,
                               decoder.decode_shapes)]
    prompts = _prompts(config) + _prompts(config, seed=8)
    new = [4] * len(prompts)  # every group fits the 64-slot cache warmed
    reference = [greedy_by_recomputing(config, params, [p], n)[0] for p, n in zip(prompts, new)]
    rng = np.random.RandomState(0)
    for _ in range(3):
        order = rng.permutation(len(prompts))
        got = _serve(decoder, [prompts[i] for i in order], [new[i] for i in order], 4)
        assert got == [reference[i] for i in order]
        assert len(decoder.prefixes) <= 3
    assert decoder.stats["prefix_learned_hits"] > 0 and decoder.stats["prefix_hits"] > decoder.stats[
        "prefix_learned_hits"]
    assert [f._cache_size() for f in jitted] == warmed
    assert [set(s) for s in (decoder.prefill_shapes, decoder.prefix_shapes, decoder.head_shapes,
                             decoder.decode_shapes)] == shapes


def test_the_store_keeps_its_bound_least_recently_used_out_first(models):
    config, params = models["phi"]
    decoder = Decoder(params, config, min_length_bucket=8)
    rng = np.random.RandomState(1)
    seed = rng.randint(0, config.vocab_size, 12).tolist()
    store = PromptPrefixes(decoder, [seed], slots=SLOTS, entries=3)
    assert store.max_entries == 3 and PromptPrefixes(decoder).max_entries == DEFAULT_STORE_BYTES // \
        PromptPrefixes(decoder).entry_bytes

    def learn(prompt):
        store.remember(prompt, decoder.prefill([GenerationRequest(prompt=prompt, max_new_tokens=1)])[0])

    prompts = [[i] + rng.randint(0, config.vocab_size, 25).tolist() for i in range(5)]  # differ at token 0
    for p in prompts[:3]:
        learn(p)
    assert len(store) == 3
    assert store.match(prompts[0]).key == tuple(prompts[0][:SLOTS])  # now the most recently used
    learn(prompts[3])  # the bound holds: the least recently used (prompts[1]) goes
    assert len(store) == 3 and store.match(prompts[1]) is None
    assert [store.match(p).reused for p in (prompts[0], prompts[2], prompts[3])] == [SLOTS] * 3
    # A beginning another entry starts with is not kept; one that extends a shorter entry replaces it.
    learn(prompts[0][:10])
    other = (prompts[0][9] + 1) % config.vocab_size
    assert len(store) == 3 and store.match(prompts[0][:9] + [other] * 3).key == tuple(prompts[0][:SLOTS])
    short = [4] + rng.randint(0, config.vocab_size, 11).tolist()
    learn(short)  # its first 11 tokens: prompts[2] goes
    learn(short + [1] * 10)  # the same 11 and 5 more: replaces it, nothing else goes
    assert len(store) == 3 and store.match(short + [2] * 8) == prefix_cache.Match(tuple(short + [1] * 4), 12, True)
    assert store.match(prompts[3]) is not None and store.match(prompts[2]) is None
    # The seeded beginning is never evicted; without entries nothing is learned.
    assert store.match(seed + [5] * 6) == prefix_cache.Match(tuple(seed), len(seed), False)
    off = PromptPrefixes(decoder, slots=SLOTS, entries=0)
    off.remember(prompts[0], decoder.prefill([GenerationRequest(prompt=prompts[0], max_new_tokens=1)])[0])
    assert len(off) == 0 and not off and off.match(prompts[0]) is None

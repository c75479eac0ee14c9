"""Fixed prompt prefixes prefilled once: a prompt starting with one prefills only its rest, and its cache row, its
greedy text and the compiled programs are those a whole prefill gives (checked against the full forward); a
prompt that leaves the prefix anywhere prefills whole."""

import jax
import numpy as np
import pytest
from phi_testing import greedy_by_recomputing, random_params

from textbooks.model import GenerationRequest
from textbooks.model.decode import Decoder
from textbooks.model.kv_cache import cache_length
from textbooks.model.slots import SlotDecoder

PREFIX_LEN = 12


def _prefix(config):
    return np.random.RandomState(21).randint(1, config.vocab_size, PREFIX_LEN).tolist()


def _drain(decoder, slots, chunk):
    got = {s: [] for s in slots}
    while decoder.active_slots:
        for slot, out in decoder.step(chunk).items():
            got[slot] += out[0] if isinstance(out, tuple) else out.tokens
    return [got[s] for s in slots]


@pytest.fixture(scope="module")
def tiny_llama():
    """A llama-family model with grouped KV heads (as SmolLM2), small and random."""
    from textbooks.model import get_preset

    config = get_preset("llama-cpu-1m").replace(vocab_size=64, max_len=64)
    return config, random_params(config, seed=2, scale=0.3)


@pytest.mark.parametrize("family", ["phi", "llama"])
def test_a_row_prefilled_after_the_prefix_holds_what_a_whole_prefill_writes(family, tiny_model, tiny_llama):
    config, params = tiny_model if family == "phi" else tiny_llama
    decoder = Decoder(params, config, min_length_bucket=8)
    prefix = _prefix(config)
    tail = np.random.RandomState(4).randint(0, config.vocab_size, 19).tolist()
    request = GenerationRequest(prompt=prefix + tail, max_new_tokens=1)
    body = len(request.prompt) - 1
    whole, last = decoder.prefill([request])
    part, last_after = decoder.prefill_after(decoder.prefill_prefix(prefix), request)
    rest = decoder.prompt_bucket(body - PREFIX_LEN)
    assert cache_length(part) == PREFIX_LEN + rest and rest < decoder.prompt_bucket(body)
    assert int(last_after[0]) == int(last[0]) == tail[-1]
    assert decoder.prefix_shapes == {(PREFIX_LEN, 0), (PREFIX_LEN, rest)}
    # Every layer's keys and values of the prompt's slots (padding slots past them are never read), and the write
    # index. float32 rounding of a different summation order: each layer's outputs reduce over at most
    # hidden + mlp + keys products, so they differ by at most eps x that x their magnitude, per layer.
    flat_whole, flat_part = (dict(_leaves(c)) for c in (whole, part))
    assert flat_whole.keys() == flat_part.keys()
    reduction = config.hidden_size + config.intermediate_size + cache_length(whole)
    for name, ref in flat_whole.items():
        got = flat_part[name]
        if ref.ndim < 4:
            np.testing.assert_array_equal(got, ref, err_msg=name)  # the write index: the prompt's length - 1
            assert int(np.ravel(ref)[0]) == body
            continue
        ref, got = ref[..., :body, :], got[..., :body, :]
        tol = np.finfo(np.float32).eps * reduction * config.num_layers * float(np.abs(ref).max())
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=name)


def _leaves(cache):
    return [(jax.tree_util.keystr(path), np.asarray(x)) for path, x in jax.tree_util.tree_leaves_with_path(cache)]


def test_prompts_starting_with_the_prefix_decode_as_a_whole_prefill(tiny_model):
    config, params = tiny_model
    prefix = _prefix(config)
    rng = np.random.RandomState(9)
    tails = [rng.randint(0, config.vocab_size, n).tolist() for n in (3, 10, 20, 30)]
    diverging = prefix[:5] + [(prefix[5] + 1) % config.vocab_size] + prefix[6:] + tails[1]  # leaves it at token 5
    just_prefix = prefix + [7]  # no token after the prefix but the last: a whole prefill
    prompts = [prefix + t for t in tails] + [diverging, just_prefix]
    new = [6, 9, 4, 7, 5, 8]
    requests = [GenerationRequest(prompt=p, max_new_tokens=n) for p, n in zip(prompts, new)]
    texts, stats = {}, {}
    for name, prefixes in (("with", [prefix]), ("without", [])):
        decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8, prefixes=prefixes)
        texts[name] = _drain(decoder, decoder.admit(requests[:4]), 4) + _drain(decoder, decoder.admit(requests[4:]), 4)
        stats[name] = decoder.stats
    reference = [greedy_by_recomputing(config, params, [p], n)[0] for p, n in zip(prompts, new)]
    assert texts["with"] == texts["without"] == reference
    # The four prompts on the prefix reused its tokens; the one leaving it at token 5 and the one with no token
    # after it but its last prefilled whole.
    with_, without = stats["with"], stats["without"]
    assert (with_["prefix_hits"], with_["prefix_reused_tokens"]) == (4, 4 * PREFIX_LEN)
    assert (without["prefix_hits"], without["prefix_reused_tokens"]) == (0, 0)
    assert with_["prefill_tokens"] == without["prefill_tokens"] - with_["prefix_reused_tokens"]
    assert with_["prefill_padded_tokens"] < without["prefill_padded_tokens"]
    # Of several prefixes, a prompt takes the longest it starts with.
    prefixes = SlotDecoder(params, config, min_length_bucket=8, prefixes=[prefix[:3], prefix]).prefixes
    assert [prefixes.match(p) for p in prompts] == [tuple(prefix)] * 4 + [tuple(prefix[:3])] * 2


def test_prewarm_compiles_the_prefix_and_every_rest_then_serving_compiles_nothing(tiny_model):
    config, params = tiny_model
    prefix = _prefix(config)
    decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8, prefixes=[prefix])
    runs = decoder.prewarm(40, [64], 4)
    rests = (8, 10, 12, 14, 16, 20, 24, 28)  # the buckets of rests of 1 to 40 - 1 - 12 tokens
    assert decoder.prefix_shapes == {(PREFIX_LEN, 0)} | {(PREFIX_LEN, n) for n in rests}
    prefills, decodes = set(decoder.prefill_shapes), set(decoder.decode_shapes)
    copies = len({n for _, n, _ in prefills} | {PREFIX_LEN + n for n in rests})  # row lengths, each copied once
    assert runs == len(prefills) + len(decoder.prefix_shapes) + copies + 2 + len(decodes)
    rng = np.random.RandomState(5)
    prompts = ([prefix + rng.randint(0, config.vocab_size, n).tolist() for n in (2, 9, 17, 27)]
               + [rng.randint(0, config.vocab_size, n).tolist() for n in (3, 22, 39)])
    new = [3, 24, 5, 7, 2, 6, 4]  # each group needs a 64-slot cache: the one warmed
    got = []
    for start in (0, 4):
        group = [GenerationRequest(prompt=p, max_new_tokens=n) for p, n in zip(prompts[start:], new[start:])][:4]
        got += _drain(decoder, decoder.admit(group), 4)
    assert decoder.stats["prefix_hits"] == 4
    assert (set(decoder.prefill_shapes), set(decoder.decode_shapes)) == (prefills, decodes)
    assert decoder.prefix_shapes == {(PREFIX_LEN, 0)} | {(PREFIX_LEN, n) for n in rests}
    assert got == [greedy_by_recomputing(config, params, [p], n)[0] for p, n in zip(prompts, new)]


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
    with pytest.raises(ValueError, match="prompt length"):
        SlotDecoder(params, config, prefixes=[[1] * config.max_len])

"""Continuous batching on a persistent KV cache: requests joining and leaving between chunks decode exactly as
they would alone (greedy: as recomputing the full forward), sampling does not depend on company, slots are
freed and reused, the cache grows for longer requests, each prompt prefills on its own in a fine length bucket,
bad calls fail clearly."""

import numpy as np
import pytest
from phi_testing import greedy_by_recomputing

from textbooks.model import GenerationRequest
from textbooks.model.decode import Decoder
from textbooks.model.slots import SlotDecoder


def _collect(step_outputs, outputs, reasons):
    for slot, out in step_outputs.items():
        if isinstance(out, tuple):
            outputs[slot] += out[0]
        else:
            outputs[slot] += out.tokens
            reasons[slot] = out.finish_reason


def _drain(decoder, outputs, chunk, reasons=None):
    """Steps until every slot is free; appends each slot's tokens to ``outputs[slot]``; returns finish reasons."""
    reasons = {} if reasons is None else reasons
    while decoder.active_slots:
        _collect(decoder.step(chunk), outputs, reasons)
    return reasons


def test_requests_joining_midway_decode_as_recomputing_the_forward(tiny_model):
    config, params = tiny_model
    rng = np.random.RandomState(3)
    prompts = [rng.randint(0, config.vocab_size, n).tolist() for n in (2, 7, 12, 5, 20)]
    lengths = [9, 14, 5, 11, 8]
    decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8)
    first = decoder.admit([GenerationRequest(prompt=p, max_new_tokens=n) for p, n in zip(prompts[:3], lengths[:3])])
    assert first == [0, 1, 2] and decoder.free_slots == [3]
    got = {s: [] for s in range(4)}
    by_request = {}
    _collect(decoder.step(4), got, {})
    # Two more arrive while three run; only one slot is free, so the second waits for the short one to end.
    by_request[3] = decoder.admit([GenerationRequest(prompt=prompts[3], max_new_tokens=lengths[3])])[0]
    _collect(decoder.step(4), got, {})
    assert 2 in decoder.free_slots  # request 2 (5 tokens) has ended after 8
    finished_2 = list(got[2])
    got[2] = []
    by_request[4] = decoder.admit([GenerationRequest(prompt=prompts[4], max_new_tokens=lengths[4])])[0]
    assert by_request[4] == 2  # the freed slot is reused
    _drain(decoder, got, 4)
    outputs = {0: got[0], 1: got[1], 2: finished_2, 3: got[by_request[3]], 4: got[by_request[4]]}
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        assert outputs[i] == greedy_by_recomputing(config, params, [prompt], n)[0], f"request {i}"
    assert decoder.cache is None and decoder.cache_len == 0  # all free: back to the smallest cache


def test_sampling_does_not_depend_on_company_or_chunking(tiny_model):
    config, params = tiny_model
    request = GenerationRequest(prompt=[5, 9, 3], max_new_tokens=12, temperature=1.0, top_k=20, seed=11)
    alone = SlotDecoder(params, config, num_slots=2)
    got_alone = {0: [], 1: []}
    alone.admit([request])
    _drain(alone, got_alone, 4)
    crowded = SlotDecoder(params, config, num_slots=4)
    others = [GenerationRequest(prompt=[1, 2, 3, 4, 5, 6], max_new_tokens=20, temperature=0.7, seed=s)
              for s in range(3)]
    got = {s: [] for s in range(4)}
    crowded.admit(others[:2])
    _collect(crowded.step(4), got, {})  # the request joins a chunk later, in slot 2
    slot = crowded.admit([request])[0]
    crowded.admit(others[2:])
    _drain(crowded, got, 4)
    assert got[slot] == got_alone[0] and len(got[slot]) == 12
    # Sampled streams differ from greedy (the seed is used) and between seeds.
    assert got_alone[0] != greedy_by_recomputing(config, params, [request.prompt], 12)[0]


def test_eos_frees_the_slot_and_the_cache_grows_for_a_longer_request(tiny_model):
    config, params = tiny_model
    prompt = [3, 1, 4, 1, 5]
    reference = greedy_by_recomputing(config, params, [prompt], 6)[0]
    eos = reference[2]
    decoder = SlotDecoder(params, config, num_slots=2, min_length_bucket=8)
    decoder.admit([GenerationRequest(prompt=prompt, max_new_tokens=6, eos_id=eos)])
    short_len = decoder.cache_len
    got, reasons = {0: [], 1: []}, {}
    _collect(decoder.step(2), got, reasons)
    long_prompt = list(range(1, 40))
    slot = decoder.admit([GenerationRequest(prompt=long_prompt, max_new_tokens=20)])[0]
    assert decoder.cache_len > short_len
    _drain(decoder, got, 2, reasons)
    assert reasons[0] == "eos" and got[0] == reference[:reference.index(eos)]
    got[1] = got[slot]
    assert got[1] == greedy_by_recomputing(config, params, [long_prompt], 20)[0] and reasons[1] == "length"


def test_static_and_continuous_batching_agree(tiny_model):
    config, params = tiny_model
    rng = np.random.RandomState(5)
    requests = [GenerationRequest(prompt=rng.randint(0, config.vocab_size, n).tolist(), max_new_tokens=m,
                                  temperature=t, seed=i)
                for i, (n, m, t) in enumerate([(3, 10, 0.0), (8, 4, 0.0), (1, 7, 0.0), (15, 12, 0.0)])]
    static = Decoder(params, config, max_batch_size=4).generate(requests)
    decoder = SlotDecoder(params, config, num_slots=4)
    slots = decoder.admit(requests)
    got = {s: [] for s in slots}
    _drain(decoder, got, 16)  # one chunk covers every request: as one static batch
    assert [got[s] for s in slots] == [o.tokens for o in static]


def test_release_and_bad_calls(tiny_model):
    config, params = tiny_model
    decoder = SlotDecoder(params, config, num_slots=2)
    slots = decoder.admit([GenerationRequest(prompt=[1, 2], max_new_tokens=30)] * 2)
    with pytest.raises(ValueError, match="only 0 free slots of 2"):
        decoder.admit([GenerationRequest(prompt=[1], max_new_tokens=3)])
    decoder.release(slots[0])
    assert decoder.free_slots == [0]
    with pytest.raises(ValueError, match="stop sequences"):
        decoder.admit([GenerationRequest(prompt=[1], max_new_tokens=3, stop_sequences=[[2]])])
    with pytest.raises(ValueError, match="request 0: max_new_tokens"):
        decoder.admit([GenerationRequest(prompt=[1], max_new_tokens=0)])
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        decoder.step(0)
    assert decoder.step(5)[slots[1]][1] is None  # still running: (tokens, None)


def test_each_prompt_prefills_alone_in_a_fine_length_bucket(tiny_model):
    config, params = tiny_model
    rng = np.random.RandomState(7)
    prompts = [rng.randint(0, config.vocab_size, n).tolist() for n in range(1, 41)]
    decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8)
    got = {}
    for start in range(0, len(prompts), 4):  # four prompts of different lengths per admission
        group = prompts[start:start + 4]
        slots = decoder.admit([GenerationRequest(prompt=p, max_new_tokens=2) for p in group])
        outputs = {s: [] for s in slots}
        _drain(decoder, outputs, 2)
        got.update({start + i: outputs[s] for i, s in enumerate(slots)})
    # One row per prefill, its cache as long as its padded prompt; 40 prompt lengths (bodies 0..39) ran on 10
    # programs: 8 (the minimum), then a quarter of each octave: no prompt padded by more than a quarter.
    buckets = (8, 10, 12, 14, 16, 20, 24, 28, 32, 40)
    assert decoder.prefill_shapes == {(1, n, n) for n in buckets}
    # The stats count every prompt's tokens but the last, as prefilled and as padded; the token loops' steps.
    padded = [min(b for b in buckets if b >= len(p) - 1) for p in prompts]
    stats = decoder.stats
    assert (stats["prefill_calls"], stats["prefill_tokens"]) == (40, sum(len(p) - 1 for p in prompts))
    assert stats["prefill_padded_tokens"] == sum(padded)
    assert stats["prefill_attention_pairs"] == sum(b * b for b in padded)
    assert stats["decode_steps"] == 10 * 2  # each admission's chunk: 2 tokens for every row
    assert stats["decode_row_steps"] == 10 * 2 * 4 and stats["prefill_s"] > 0 and stats["decode_s"] > 0
    reference = [greedy_by_recomputing(config, params, [p], 2)[0] for p in prompts]
    assert [got[i] for i in range(len(prompts))] == reference


def test_rows_shrink_to_the_live_requests_and_keep_decoding_exactly(tiny_model):
    config, params = tiny_model
    rng = np.random.RandomState(11)
    prompts = [rng.randint(0, config.vocab_size, n).tolist() for n in (4, 9, 2, 13)]
    lengths = [3, 5, 9, 14]
    decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8)
    slots = decoder.admit([GenerationRequest(prompt=p, max_new_tokens=n) for p, n in zip(prompts, lengths)])
    got = {s: [] for s in slots}
    rows = []
    while decoder.active_slots:
        rows.append(decoder.rows)
        _collect(decoder.step(4), got, {})
    # 4 live: 4 rows; once one ends, the chunk stops at the next end (2 live: 2 rows), then 1 row for the last.
    assert rows[0] == 4 and rows[-1] == 1 and 2 in rows and rows == sorted(rows, reverse=True)
    assert {shape[0] for shape in decoder.decode_shapes} == {4, 2, 1}
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        assert got[slots[i]] == greedy_by_recomputing(config, params, [prompt], n)[0], f"request {i}"
    # A newcomer after the shrink grows the rows again and keeps the running request's row intact.
    first = decoder.admit([GenerationRequest(prompt=prompts[3], max_new_tokens=14)])[0]
    more = {first: []}
    _collect(decoder.step(4), more, {})
    second = decoder.admit([GenerationRequest(prompt=prompts[0], max_new_tokens=3)])[0]
    assert decoder.rows == 2
    more[second] = []
    _drain(decoder, more, 4)
    assert more[first] == greedy_by_recomputing(config, params, [prompts[3]], 14)[0]
    assert more[second] == greedy_by_recomputing(config, params, [prompts[0]], 3)[0]


def test_prewarm_compiles_every_shape_serving_then_runs(tiny_model):
    config, params = tiny_model
    decoder = SlotDecoder(params, config, num_slots=4, min_length_bucket=8)
    runs = decoder.prewarm(20, [32], 4)
    prefills, decodes = set(decoder.prefill_shapes), set(decoder.decode_shapes)
    assert prefills == {(1, n, n) for n in (8, 10, 12, 14, 16, 20)}
    assert decodes == {(rows, 32, 8) for rows in (4, 2, 1)}  # until_free or not: one program
    assert runs == len(prefills) + len(prefills) + 2 + len(decodes)  # prefills, row copies, shrinks, loops
    rng = np.random.RandomState(2)
    prompts = [rng.randint(0, config.vocab_size, n).tolist() for n in (3, 17, 9, 21)]
    slots = decoder.admit([GenerationRequest(prompt=p, max_new_tokens=n) for p, n in zip(prompts, (2, 5, 7, 11))])
    got = {s: [] for s in slots}
    _drain(decoder, got, 4)
    assert decoder.prefill_shapes == prefills and decoder.decode_shapes == decodes
    for slot, prompt, n in zip(slots, prompts, (2, 5, 7, 11)):
        assert got[slot] == greedy_by_recomputing(config, params, [prompt], n)[0]

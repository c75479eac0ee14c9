"""The serving engine in process: how continuous batching cuts decoding into calls, and that the cut never
changes the text."""

import asyncio

import pytest

from textbooks.serve.engine import Job, WarmupConfig, load_engine

PROMPTS = ["def add(a, b):\n", "class Stack:\n    \"\"\"A stack.\"\"\"\n"]


async def _run(engine, jobs):
    await engine.start()
    try:
        futures = [engine.submit(job) for job in jobs]
        return await asyncio.gather(*futures)
    finally:
        await engine.stop()


def _jobs(engine, lengths, *, stream=False, stop=()):
    queue = asyncio.Queue() if stream else None
    return [Job(prompt_ids=engine.encode(p), max_tokens=n, temperature=0.0, stop=stop, stream=queue, index=i)
            for i, (p, n) in enumerate(zip(PROMPTS, lengths))]


@pytest.fixture(scope="module")
def make_engine(tiny_checkpoint):
    def make():
        return load_engine(tiny_checkpoint["dir"], vocabulary=tiny_checkpoint["vocabulary"], max_batch_size=2,
                           chunk_tokens=8, batch_wait_ms=200, min_length_bucket=64)
    return make


def _texts_and_calls(make_engine, lengths, **job_kwargs):
    engine = make_engine()

    async def main():
        return await _run(engine, _jobs(engine, lengths, **job_kwargs))

    done = asyncio.run(main())
    return [(j.text, j.finish_reason, len(j.generated)) for j in done], engine.stats["decode_calls"]


def test_full_quiet_batch_runs_until_a_request_ends(make_engine):
    # Both rows taken, no streaming, no stop strings: one call until the 24-token request ends, then the
    # 40-token one goes on alone in 8-token chunks (a newcomer could take the free row between them).
    quiet, quiet_calls = _texts_and_calls(make_engine, (24, 40))
    assert [(reason, n) for _, reason, n in quiet] == [("length", 24), ("length", 40)]
    assert quiet_calls == 1 + (40 - 24) // 8
    # Streaming clients get text every chunk: 40 tokens in 8-token chunks.
    streamed, streamed_calls = _texts_and_calls(make_engine, (24, 40), stream=True)
    assert streamed_calls == 40 // 8
    assert streamed == quiet


def test_stop_strings_keep_the_chunks_and_cut_the_text(make_engine):
    quiet, _ = _texts_and_calls(make_engine, (24, 40))
    stop = quiet[1][0][5:8]  # a string the second completion contains
    cut, calls = _texts_and_calls(make_engine, (24, 40), stop=(stop,))
    assert cut[1][0] == quiet[1][0][:quiet[1][0].find(stop)] and cut[1][1] == "stop"
    assert calls > 1  # checked between chunks, so it did not run to the first request's end in one call


def test_warmup_compiles_what_a_burst_runs(make_engine):
    # The programs a burst of requests runs (prefill buckets, the token loops of the full and the shrunken
    # batches) are all compiled by the warm-up: serving adds no shape; the text is the cold engine's.
    cold, _ = _texts_and_calls(make_engine, (24, 40))
    engine = make_engine()
    engine.warmup(WarmupConfig(prompt_tokens=64, cache_lengths=(64,)))
    warmed = engine.programs()
    assert {shape[0] for shape in engine.slots.decode_shapes} == {1, 2}
    done = asyncio.run(_run(engine, _jobs(engine, (24, 40))))
    assert [(j.text, j.finish_reason, len(j.generated)) for j in done] == cold
    assert engine.programs() == warmed and engine.stats["programs"] == warmed


def test_unpacked_weights_give_the_same_text(tiny_checkpoint, make_engine):
    # pack_weights=False (serve --no_pack_weights): one copy of the weights, and the packed engine's text.
    packed, _ = _texts_and_calls(make_engine, (24, 40))

    def make_unpacked():
        return load_engine(tiny_checkpoint["dir"], vocabulary=tiny_checkpoint["vocabulary"], max_batch_size=2,
                           chunk_tokens=8, batch_wait_ms=200, min_length_bucket=64, pack_weights=False)

    unpacked, _ = _texts_and_calls(make_unpacked, (24, 40))
    assert unpacked == packed
    engine = make_unpacked()
    assert engine.decoder.packed == {} and engine.slots._decoder.packed == {}
    default = make_engine()
    if default.decoder.model_kernels.projections == "cpu_kernel":  # the packed copy exists only for the kernel
        assert default.decoder.packed and default.slots._decoder.packed


PREFIX_TEXT = "You are a careful Python programmer. Complete the code that follows in the same style, with short lines"


def test_a_prompt_prefix_is_prefilled_once_and_the_warmup_compiles_every_rest(tiny_checkpoint):
    # Prompts starting with the prefix's tokens prefill only their rest (programs the warm-up compiled: serving
    # adds none); the others prefill whole. No chat template here: the prefix is given, and only it (no beginnings
    # of earlier prompts are kept: tests/serve/test_prefix_reuse.py).
    def make(prefixes):
        return load_engine(tiny_checkpoint["dir"], vocabulary=tiny_checkpoint["vocabulary"], max_batch_size=2,
                           chunk_tokens=8, batch_wait_ms=200, min_length_bucket=16, prompt_prefixes=prefixes,
                           prefix_cache_entries=0)

    engine, plain = make([PREFIX_TEXT]), make(None)
    assert not plain.slots.prefixes  # no template, no prefix given: none
    prefix = engine.encode(PREFIX_TEXT)
    texts = [f"{PREFIX_TEXT} {p}" for p in PROMPTS] + PROMPTS
    prompts = [engine.encode(t) for t in texts]
    assert [p[:len(prefix)] == prefix for p in prompts] == [True, True, False, False]
    assert engine.slots.prefixes.prefixes == [tuple(prefix)]
    engine.warmup(WarmupConfig(prompt_tokens=96, cache_lengths=(128,)))
    warmed = engine.programs()
    assert (len(prefix), 0) in engine.slots.prefix_shapes
    # Every request needs a 128-slot cache (its prompt and 80 tokens), the length warmed.
    jobs = [Job(prompt_ids=p, max_tokens=80, temperature=0.0, index=i) for i, p in enumerate(prompts)]
    before = dict(engine.stats)
    done = asyncio.run(_run(engine, jobs))
    assert all(j.error is None and j.finish_reason in ("length", "stop") for j in done)
    assert engine.programs() == warmed and engine.stats["programs"] == warmed
    stats = {k: engine.stats[k] - before[k] for k in ("prefix_hits", "prefix_reused_tokens", "prefill_tokens")}
    assert stats == {"prefix_hits": 2, "prefix_reused_tokens": 2 * len(prefix),
                     "prefill_tokens": sum(len(p) - 1 for p in prompts) - 2 * len(prefix)}

"""The serving engine keeps the beginnings of earlier prompts (by default): prompts that start alike prefill only
their rest, whatever order they arrive in, with the programs the warm-up compiled and the text of an engine that
reuses nothing; ``serve --prefix_cache_entries`` and ``--no_prompt_prefix`` size it or turn it off."""

import argparse
import asyncio

import numpy as np

from textbooks.commands import serve as serve_command
from textbooks.serve.engine import Job, WarmupConfig, load_engine

HEADS = ["You are a careful Python programmer. Complete the code that follows in the same style.\n",
         "Summarize the following text in one short sentence, for a reader in a hurry.\n"]
BODIES = ["def add(a, b):\n", "class Stack:\n", "import os\nimport sys\n", "The cat sat on the mat.",
          "for i in range(10):\n"]


def _texts(engine, rounds):
    """Each round's prompts submitted together, the rounds one after another (an engine runs once)."""

    async def run():
        await engine.start()
        try:
            done = []
            for prompts in rounds:
                done.append(await asyncio.gather(*[engine.submit(Job(
                    prompt_ids=engine.encode(p), max_tokens=24, temperature=0.0, index=i))
                    for i, p in enumerate(prompts)]))
            return done
        finally:
            await engine.stop()

    done = asyncio.run(run())
    assert all(j.error is None for jobs in done for j in jobs)
    return [[(j.text, j.finish_reason) for j in jobs] for jobs in done]


def _shapes(engine):
    slots = engine.slots
    return [set(s) for s in (slots.prefill_shapes, slots.prefix_shapes, slots.head_shapes, slots.decode_shapes)]


def test_prompts_starting_alike_reuse_earlier_beginnings_in_any_order_compiling_nothing(tiny_checkpoint):
    def make(**kwargs):
        return load_engine(tiny_checkpoint["dir"], vocabulary=tiny_checkpoint["vocabulary"], max_batch_size=2,
                           chunk_tokens=8, batch_wait_ms=50, min_length_bucket=16, **kwargs)

    engine, plain = make(), make(prompt_prefixes=[], prefix_cache_entries=0)
    assert engine.slots.prefixes and engine.slots.prefixes.max_entries > 0 and not plain.slots.prefixes
    prompts = [head + body for head in HEADS for body in BODIES]
    assert max(len(engine.encode(p)) for p in prompts) + 24 <= 64  # every request fits the caches warmed
    engine.warmup(WarmupConfig(prompt_tokens=96, cache_lengths=(32, 64)))
    warmed = engine.programs()
    shapes = _shapes(engine)
    rng = np.random.RandomState(0)
    rounds = [[prompts[i] for i in rng.permutation(len(prompts))] for _ in range(3)]
    assert _texts(engine, rounds) == _texts(plain, rounds)
    assert _shapes(engine) == shapes
    assert engine.programs() == warmed and engine.stats["programs"] == warmed
    # Each head's prompts after its first share at least the head's tokens with one held.
    stats, off = engine.stats, plain.stats
    head_tokens = min(len(engine.encode(h)) for h in HEADS) - 1
    assert stats["prefix_learned_hits"] >= 3 * (len(prompts) - len(HEADS)) - 2
    assert stats["prefix_learned_tokens"] >= stats["prefix_learned_hits"] * head_tokens
    assert off["prefix_hits"] == 0
    assert stats["prefill_tokens"] == off["prefill_tokens"] - stats["prefix_reused_tokens"]


def test_the_serve_flags_size_the_store_or_turn_reuse_off():
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    args = parser.parse_args(["--checkpoint", "x", "--prefix_cache_entries", "5"])
    assert args.prefix_cache_entries == 5 and not args.no_prompt_prefix
    assert parser.parse_args(["--checkpoint", "x"]).prefix_cache_entries is None


def test_reset_prefix_cache_drops_what_earlier_prompts_left(tiny_checkpoint):
    engine = load_engine(tiny_checkpoint["dir"], vocabulary=tiny_checkpoint["vocabulary"], max_batch_size=2,
                         chunk_tokens=8, batch_wait_ms=10, min_length_bucket=16)
    prompt = engine.encode(HEADS[0] + BODIES[0])

    async def run():
        await engine.start()
        try:
            def hits():
                return engine.stats["prefix_learned_hits"]

            async def once():
                start = hits()
                await engine.submit(Job(prompt_ids=prompt, max_tokens=4, temperature=0.0))
                return hits() - start

            first, again = await once(), await once()
            held = len(engine.slots.prefixes)
            dropped = await engine.reset_prefix_cache()
            left = len(engine.slots.prefixes)
            return first, again, held, dropped, left, await once(), await engine.reset_prefix_cache()
        finally:
            await engine.stop()

    first, again, held, dropped, left, after_reset, dropped_again = asyncio.run(run())
    assert (first, again) == (0, 1)  # the second identical prompt reused the first one's beginning
    assert held == dropped == dropped_again == 1 and left == 0
    assert after_reset == 0  # nothing learned before the reset is reused after it

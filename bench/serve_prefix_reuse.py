"""What reusing prompt beginnings saves the smollm2 serve workload's prefills, measured on the SlotDecoder alone.

The chats of :func:`bench.serve_smollm2.make_chats` (the serve benchmark's defaults: 32 chats, 5 task lines,
every other one under a system message) are rendered and tokenized as ``textbooks serve`` does and admitted
``--batch`` at a time into an engine's SlotDecoder (released at once: no decoding), in the same order every
round, under four settings, alternating round by round in one process:

* ``none``: every prompt prefilled whole (``serve --no_prompt_prefix``);
* ``template``: only the chat template's fixed beginning reused (``--prefix_cache_entries 0``);
* ``learned_cold``: beginnings of earlier prompts kept too (the default), the store emptied before each round:
  what one round's chats share (template, system message, task lines);
* ``learned_warm``: the store kept from the round before (the same chats again: each finds its own beginning).

Prints, per setting, the median round's prefill seconds and its tokens prefilled and reused (learned and given),
with the load average. A first untimed round of each setting compiles what it runs.

  JAX_PLATFORMS=cpu .venv/bin/python bench/serve_prefix_reuse.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from serve_smollm2 import SMOLLM2, make_chats  # noqa: E402

from textbooks.data_packages import resolve_checkpoint  # noqa: E402
from textbooks.model.decode import GenerationRequest  # noqa: E402
from textbooks.serve.engine import load_engine  # noqa: E402

SETTINGS = {"none": {"prompt_prefixes": [], "prefix_cache_entries": 0},
            "template": {"prefix_cache_entries": 0},
            "learned_cold": {},
            "learned_warm": {}}
COUNTS = ("prefill_s", "prefill_tokens", "prefill_padded_tokens", "prefix_hits", "prefix_reused_tokens",
          "prefix_learned_hits", "prefix_learned_tokens")


def prefill_round(engine, prompts: list[list[int]], batch: int, cold: bool) -> dict:
    """One round's admissions (``batch`` at a time, released at once): the SlotDecoder's counts of it."""
    slots = engine.slots
    if cold:
        slots.prefixes.clear()
    before = dict(slots.stats)
    for start in range(0, len(prompts), batch):
        for slot in slots.admit([GenerationRequest(prompt=p, max_new_tokens=1) for p in prompts[start:start + batch]]):
            slots.release(slot)
    return {k: slots.stats[k] - before[k] for k in COUNTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per setting (alternating)")
    parser.add_argument("--batch", type=int, default=16, help="slots: chats admitted together")
    parser.add_argument("--chat_requests", type=int, default=32)
    parser.add_argument("--chat_prompt_chars", type=int, nargs=2, default=[40, 800])
    parser.add_argument("--chat_new_tokens", type=int, nargs=2, default=[16, 128])
    args = parser.parse_args()
    checkpoint = resolve_checkpoint(SMOLLM2)
    engines = {name: load_engine(checkpoint, max_batch_size=args.batch, **kw) for name, kw in SETTINGS.items()}
    any_engine = engines["none"]
    prompts = [any_engine.encode(any_engine.vocabulary.render_chat(messages, add_generation_prompt=True))
               for messages, _ in make_chats(args)]
    print(f"{len(prompts)} prompts, {sum(len(p) - 1 for p in prompts)} tokens to prefill whole; "
          f"P = {engines['learned_cold'].slots.prefixes.slots} slots, "
          f"{engines['learned_cold'].slots.prefixes.max_entries} entries of "
          f"{engines['learned_cold'].slots.prefixes.entry_bytes / 1e6:.1f} MB", flush=True)
    results = {name: [] for name in SETTINGS}
    # Round 0 compiles what each setting runs (twice for learned_warm: its first round finds an empty store).
    prefill_round(engines["learned_warm"], prompts, args.batch, cold=False)
    for r in range(args.rounds + 1):
        for name, engine in engines.items():
            counts = prefill_round(engine, prompts, args.batch, cold=name != "learned_warm")
            if r:
                results[name].append(counts)
    print(f"load average {open('/proc/loadavg').read().split()[:3]}")
    base = statistics.median(c["prefill_s"] for c in results["none"])
    for name, rounds in results.items():
        median = sorted(rounds, key=lambda c: c["prefill_s"])[len(rounds) // 2]
        print(f"{name:13s} prefill {median['prefill_s']:.2f} s (x{base / median['prefill_s']:.2f} of none; "
              f"rounds {[round(c['prefill_s'], 2) for c in rounds]}): {median['prefill_tokens']} tokens "
              f"prefilled ({median['prefill_padded_tokens']} padded), {median['prefix_hits']} hits reusing "
              f"{median['prefix_reused_tokens']} tokens, of them learned {median['prefix_learned_hits']} hits "
              f"/ {median['prefix_learned_tokens']} tokens", flush=True)


if __name__ == "__main__":
    main()

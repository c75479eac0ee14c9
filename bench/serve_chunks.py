"""Where a serve round's decode time goes, chunk by chunk: the smollm2 workload in one process, no HTTP.

:mod:`bench.serve_throughput` measures the server against transformers (a quarter of an hour a run); this drives an
:class:`textbooks.serve.engine.Engine` directly with the same chats (:func:`bench.serve_smollm2.make_chats`,
rendered and tokenized as the chat route does, greedy, every request sent at once) and logs each chunk: the rows
it ran on, the running requests and their mean cache position, the tokens asked, whether it stopped at the first
request's end, its steps, the token loop's wall time and the gap before it; each admission (requests, seconds)
and each change of the cache's shape (``--sync``: the compaction waited for apart, else it runs inside the next
token loop's time as serving does). The summary per round is its split (prefill / decode / other, as the
server's stats give it) and the chunks grouped by rows; with ``--measure_steps``, the step time of full and half
rows at two contexts is measured after the rounds (a cache of 512 slots), and each chunk's steps are modelled at
its rows' mean context (``model_s``): decode time beyond it is per-chunk cost.

Usage:
    python bench/serve_chunks.py [--rounds 2] [--sync] [--measure_steps] [--events] [--out serve_chunks.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.serve_smollm2 import SMOLLM2, make_chats  # noqa: E402


class ChunkLog:
    """Wraps an engine's SlotDecoder so that every admission and chunk is timed and logged (``events``)."""

    def __init__(self, slots: Any, sync: bool = False):
        import jax

        self.events: list[dict] = []
        self.slots, self.sync = slots, sync
        admit, step, ensure = slots.admit, slots.step, slots._ensure_shape  # noqa: SLF001
        self._last_end = None

        def timed_admit(requests):
            start = time.perf_counter()
            out = admit(requests)
            if requests:
                self.events.append({"kind": "admit", "n": len(requests), "s": time.perf_counter() - start,
                                    "gap_s": self._gap(start)})
            return out

        def timed_ensure(rows, length):
            before = (slots.rows, slots.cache_len)
            start = time.perf_counter()
            ensure(rows, length)
            if self.sync and slots.cache is not None:
                jax.block_until_ready(slots.cache)
            if before != (slots.rows, slots.cache_len):
                self.events.append({"kind": "reshape", "from": before, "to": (slots.rows, slots.cache_len),
                                    "s": time.perf_counter() - start})

        def timed_step(max_tokens, *, until_free=False):
            active = len(slots.active_slots)
            positions = [s.position for s in slots._slots if s is not None]  # noqa: SLF001
            gap = self._gap(time.perf_counter())
            decode_before, steps_before = slots.stats["decode_s"], slots.stats["decode_steps"]
            start = time.perf_counter()
            out = step(max_tokens, until_free=until_free)
            end = time.perf_counter()
            self._last_end = end
            self.events.append({"kind": "chunk", "active": active, "rows": slots.row_bucket(active),
                                "tokens": max_tokens, "until_free": until_free,
                                "mean_position": sum(positions) / max(1, len(positions)),
                                "steps": slots.stats["decode_steps"] - steps_before,
                                "decode_s": slots.stats["decode_s"] - decode_before, "step_call_s": end - start,
                                "ended": sum(1 for o in out.values() if not isinstance(o, tuple)), "gap_s": gap})
            return out

        slots.admit, slots.step, slots._ensure_shape = timed_admit, timed_step, timed_ensure  # noqa: SLF001

    def _gap(self, now: float) -> float | None:
        return None if self._last_end is None else now - self._last_end

    def start_round(self) -> None:
        self.events, self._last_end = [], None


def chat_jobs(engine: Any, chats: list) -> list:
    """The engine's jobs for ``chats``: rendered and tokenized as ``/v1/chat/completions`` does, greedy."""
    import random

    from textbooks.serve.engine import Job
    from textbooks.serve.server import render_chat

    return [Job(prompt_ids=engine.encode(render_chat(m, engine.vocabulary)), max_tokens=n, temperature=0.0,
                seed=random.getrandbits(31)) for m, n in chats]


async def run_round(engine: Any, chats: list) -> tuple[float, list[list[int]]]:
    """Submits every chat at once; returns (seconds until the last ends, generated ids per chat)."""
    jobs = chat_jobs(engine, chats)
    start = time.perf_counter()
    await asyncio.gather(*[engine.submit(j) for j in jobs])
    return time.perf_counter() - start, [j.generated for j in jobs]


def summarize(events: list[dict], wall: float, stats: dict, step_ms: dict | None) -> dict:
    """The round's split and its chunks grouped by rows: chunks, steps, decode seconds, their per-step mean."""
    chunks = [e for e in events if e["kind"] == "chunk"]
    by_rows: dict[int, dict] = {}
    for c in chunks:
        g = by_rows.setdefault(c["rows"] or 0, {"chunks": 0, "steps": 0, "decode_s": 0.0})
        g["chunks"] += 1
        g["steps"] += c["steps"]
        g["decode_s"] += c["decode_s"]
    for rows, g in by_rows.items():
        g["ms_per_step"] = round(1000 * g["decode_s"] / max(1, g["steps"]), 1)
        modelled = [model_seconds(c, step_ms) for c in chunks if (c["rows"] or 0) == rows] if step_ms else []
        if modelled and None not in modelled:
            g["model_s"] = round(sum(modelled), 2)
        g["decode_s"] = round(g["decode_s"], 2)
    admits = [e for e in events if e["kind"] == "admit"]
    reshapes = [e for e in events if e["kind"] == "reshape"]
    gaps = [c["gap_s"] for c in chunks + admits if c["gap_s"] is not None]
    return {"round_s": round(wall, 2), "prefill_s": round(stats["prefill_s"], 2),
            "decode_s": round(stats["decode_s"], 2),
            "other_s": round(wall - stats["prefill_s"] - stats["decode_s"], 2),
            "decode_steps": stats["decode_steps"], "decode_row_steps": stats["decode_row_steps"],
            "chunks": len(chunks), "admissions": len(admits), "admitted": sum(a["n"] for a in admits),
            "reshapes": len(reshapes), "reshape_s": round(sum(r["s"] for r in reshapes), 3),
            "gaps_s": round(sum(gaps), 3), "by_rows": dict(sorted(by_rows.items(), reverse=True))}


def measure_steps(engine: Any, rows_list: list[int], contexts: list[int], prompt: list[int],
                  cache_len: int = 512) -> dict[tuple[int, int], float]:
    """Milliseconds per token-loop step of ``rows`` full rows whose prompts hold ``context`` tokens (``prompt``
    repeated; a cache of ``cache_len`` slots): (33-token chunk - 1-token chunk) / 32, best of 3 each."""
    from textbooks.model.decode import GenerationRequest

    slots = engine.slots
    out = {}
    for rows in rows_list:
        for context in contexts:
            ids = (prompt * (context // len(prompt) + 1))[:context]
            times = {}
            for new in (1, 33):
                best = []
                for _ in range(3):
                    slots._ensure_shape(rows, cache_len)  # noqa: SLF001 - every run on the warmed cache length
                    slots.admit([GenerationRequest(prompt=ids, max_new_tokens=new)] * rows)
                    start = time.perf_counter()
                    slots.step(new)
                    best.append(time.perf_counter() - start)
                    for s in slots.active_slots:
                        slots.release(s)
                times[new] = min(best)
            out[(rows, context)] = (times[33] - times[1]) / 32 * 1000
            print(f"rows {rows}, context {context}: step(1) {times[1] * 1000:.1f} ms, step(33) "
                  f"{times[33] * 1000:.1f} ms, {out[(rows, context)]:.1f} ms per step", flush=True)
    return out


def model_seconds(chunk: dict, step_ms: dict[tuple[int, int], float]) -> float | None:
    """A chunk's steps at the measured step time of its rows, interpolated at its rows' mean context over it."""
    points = sorted((c, ms) for (r, c), ms in step_ms.items() if r == chunk["rows"])
    if not points:
        return None
    context = chunk["mean_position"] + chunk["steps"] / 2 - 16  # a measured context: its 33 steps' mean, less 16
    (c0, m0), (c1, m1) = (points[0], points[-1]) if len(points) > 1 else (points[0], points[0])
    ms = m0 if c1 == c0 else m0 + (m1 - m0) * (context - c0) / (c1 - c0)
    return chunk["steps"] * ms / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (after one warm-up round)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chunk_tokens", type=int, default=32)
    parser.add_argument("--batch_wait_ms", type=float, default=20.0)
    parser.add_argument("--chat_requests", type=int, default=32)
    parser.add_argument("--chat_prompt_chars", type=int, nargs=2, default=[40, 800])
    parser.add_argument("--chat_new_tokens", type=int, nargs=2, default=[16, 128])
    parser.add_argument("--sync", action="store_true", help="wait for each compaction apart (attribution)")
    parser.add_argument("--measure_steps", action="store_true",
                        help="measure the step time of full and half rows at two contexts; model each chunk by it")
    parser.add_argument("--events", action="store_true", help="print every event")
    parser.add_argument("--out", default="serve_chunks.json")
    args = parser.parse_args()

    from textbooks.serve.engine import load_engine

    engine = load_engine(SMOLLM2, max_batch_size=args.batch, chunk_tokens=args.chunk_tokens,
                         batch_wait_ms=args.batch_wait_ms)
    print(f"warm-up {engine.warmup():.1f} s", flush=True)
    chats = make_chats(args)
    log = ChunkLog(engine.slots, sync=args.sync)
    result: dict[str, Any] = {"load": os.getloadavg(), "rounds": []}

    async def rounds() -> list:
        await engine.start()
        outs = []
        try:
            for r in range(args.rounds + 1):
                engine.slots.prefixes.clear()
                before = dict(engine.slots.stats)
                log.start_round()
                wall, texts = await run_round(engine, chats)
                stats = {k: engine.slots.stats[k] - before[k] for k in before}
                outs.append((r, wall, stats, list(log.events), texts))
        finally:
            await engine.stop()
        return outs

    outs = asyncio.run(rounds())
    step_ms = measure_steps(engine, [args.batch, args.batch // 2], [64, 320],
                            chat_jobs(engine, chats[:1])[0].prompt_ids) if args.measure_steps else None
    for r, wall, stats, events, texts in outs:
        summary = summarize(events, wall, stats, step_ms)
        print(("warm-up " if r == 0 else "") + json.dumps(summary), flush=True)
        if args.events and r == len(outs) - 1:
            for e in events:
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()}))
        if r:
            result["rounds"].append({"summary": summary, "events": events})
    result["same_outputs"] = all(o[4] == outs[0][4] for o in outs)
    result["step_ms"] = {f"{r}x{c}": v for (r, c), v in step_ms.items()} if step_ms else None
    result["load_after"] = os.getloadavg()
    print(f"same outputs every round: {result['same_outputs']}; load {result['load']} -> {result['load_after']}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()

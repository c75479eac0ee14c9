"""Decode attention: the compiled XLA:CPU kernel vs the same computation as XLA ops, per decoding step.

One step of cached attention for a batch: each row's query attends over its own cache prefix. The XLA
formulation (the model's ``DecodeKernels(attention='xla')`` path) multiplies over the whole cache window and masks;
the kernel (:mod:`textbooks.model.cpu_attention`) reads each row's prefix only. Both run inside a compiled
loop of steps (as in decoding); results are checked equal to float rounding. Cases: rows of one length
(static batches) and rows of lengths spread over the cache (continuous batching). The decoder's XLA path
attends over windows (steps of a quarter of the cache) that hold the longest row, so in decoding XLA's cost
lies between the exact-fit case and the whole-cache case.

Each case (XLA ops, then the kernel) is one round of :mod:`bench.machine`, which records the date, the CPU
model, the load average before and after (``--wait_quiet``, ``--settle``) and the cores other processes kept
busy during each case. The last lines are one headline per case, XLA ops / kernel time per step, marked
``NOT A HEADLINE`` when the machine was busy.

``--smollm2_cold`` times the kernel alone as SmolLM2-135M serves: 30 layers, each with its own cache buffer (so the
cache comes from memory, not the last level cache), 9 query heads over 3 KV heads of size 64, a batch of 16
rows whose lengths are spread over 64-320 of 512 slots (seeded); one step is the 30 layers' calls in one compiled
function. It prints ms per step and the cache bytes read per second; to compare two versions of the kernel, run it
from two checkouts in alternating processes.

Usage:
    python bench/decode_attention.py [--batch 16] [--heads 4] [--head_dim 64] [--wait_quiet 0] [--settle 150]
                                     [--out decode_attention.json]
    python bench/decode_attention.py --smollm2_cold [--steps 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

try:
    from bench import machine
except ImportError:  # run as a script: python bench/decode_attention.py
    import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time_steps(fn, q, k, v, start, scale: float, steps: int, rounds: int) -> list[float]:
    """Milliseconds per step of ``steps`` dependent attention calls in one compiled loop, per round."""
    import jax

    @jax.jit
    def loop(q, k, v, start):
        return jax.lax.fori_loop(0, steps, lambda i, q: q + 1e-3 * fn(q, k, v, start, scale), q)

    jax.block_until_ready(loop(q, k, v, start))
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        jax.block_until_ready(loop(q, k, v, start))
        times.append((time.perf_counter() - t) / steps * 1000)
    return times


def smollm2_cold(steps: int, rounds: int, cond) -> dict:
    """Kernel ms per step of SmolLM2-135M's 30 attention layers over distinct (cold) caches; see the module doc."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from textbooks.model import cpu_attention

    layers, batch, kv_heads, slots, dim, heads = 30, 16, 3, 512, 64, 9
    rng = np.random.default_rng(0)
    start = rng.integers(64, 320, batch).astype(np.int32)  # the row's query at slot start: start + 1 slots
    ks = [jnp.asarray(rng.standard_normal((batch, kv_heads, slots, dim), np.float32)) for _ in range(layers)]
    vs = [jnp.asarray(rng.standard_normal((batch, kv_heads, slots, dim), np.float32)) for _ in range(layers)]
    q = jnp.asarray(rng.standard_normal((batch, 1, heads, dim), np.float32))
    scale = dim ** -0.5

    @jax.jit
    def step(q, ks, vs, start):
        for k, v in zip(ks, vs):  # each layer's output feeds the next query: the calls run in order
            q = q + 1e-3 * cpu_attention.decode_attention(q, k, v, start, scale)
        return q

    got = np.asarray(cpu_attention.decode_attention(q, ks[0], vs[0], start, scale))
    want = np.asarray(cpu_attention.xla_decode_attention(q, ks[0], vs[0], start, scale))
    q = jax.block_until_ready(step(q, ks, vs, start))
    times = []
    with cond.round():
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(steps):
                q = step(q, ks, vs, start)
            jax.block_until_ready(q)
            times.append((time.perf_counter() - t) / steps * 1000)
    read = layers * 2 * kv_heads * dim * 4 * int((start + 1).sum())  # keys and values of every row's slots
    ms = statistics.median(times)
    print(f"SmolLM2 cold: kernel {ms:.3f} ms per step (rounds: {' '.join(f'{t:.3f}' for t in times)}), "
          f"{read / 1e6:.0f} MB of cache read per step, {read / ms / 1e6:.1f} GB/s "
          f"(max |difference| from XLA ops {np.abs(got - want).max():.1e})", flush=True)
    return {"benchmark": "decode_attention_smollm2_cold", "kernel_ms": round(ms, 4),
            "rounds_ms": [round(t, 4) for t in times], "cache_mb_per_step": round(read / 1e6, 1),
            "max_abs_difference": float(np.abs(got - want).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="decode_attention.json")
    parser.add_argument("--smollm2_cold", action="store_true",
                        help="time SmolLM2-135M's 30 attention layers over distinct caches (kernel only)")
    machine.add_arguments(parser)
    args = parser.parse_args(argv)
    cond = machine.Conditions(args.wait_quiet)  # before this process loads the machine itself
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numpy as np

    from textbooks.model import cpu_attention

    status = cpu_attention.status()
    if not status.ok:
        print(f"kernel unavailable: {status.reason}", file=sys.stderr)
        return 1
    if args.smollm2_cold:
        result = smollm2_cold(args.steps, args.rounds, cond)
        result["machine"] = cond.finish(args.settle)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(cond.headline("decode attention kernel ms/step, SmolLM2 cold caches", result["kernel_ms"], " ms"))
        return 0
    rng = np.random.default_rng(0)
    b, h, d = args.batch, args.heads, args.head_dim
    scale = d ** -0.5
    cases = {  # name: (cache slots, per-row start slots)
        "same length 128, cache of 128 (XLA's best case)": (128, np.full(b, 127)),
        "same length 128 of 256": (256, np.full(b, 128)),
        "same length 448 of 512": (512, np.full(b, 448)),
        "lengths 16-480 of 512": (512, rng.integers(16, 480, b)),
    }
    result = {"benchmark": "decode_attention", "batch": b, "heads": h, "head_dim": d, "steps": args.steps,
              "cases": {}}
    ratios: dict[str, float] = {}
    for name, (slots, start) in cases.items():
        q = rng.standard_normal((b, 1, h, d), np.float32)
        k = rng.standard_normal((b, h, slots, d), np.float32)
        v = rng.standard_normal((b, h, slots, d), np.float32)
        start = start.astype(np.int32)
        got = np.asarray(cpu_attention.decode_attention(q, k, v, start, scale))
        want = np.asarray(cpu_attention.xla_decode_attention(q, k, v, start, scale))
        error = float(np.max(np.abs(got - want)))
        with cond.round():
            xla = _time_steps(cpu_attention.xla_decode_attention, q, k, v, start, scale, args.steps, args.rounds)
            kernel = _time_steps(cpu_attention.decode_attention, q, k, v, start, scale, args.steps, args.rounds)
        row = {"xla_ms": round(statistics.median(xla), 4), "kernel_ms": round(statistics.median(kernel), 4),
               "max_abs_difference": error}
        ratios[name] = statistics.median(xla) / statistics.median(kernel)  # unrounded: tiny cases take microseconds
        row["speedup"] = round(ratios[name], 2)
        result["cases"][name] = row
        print(f"{name}: XLA ops {row['xla_ms']:.3f} ms, kernel {row['kernel_ms']:.3f} ms per step: "
              f"{row['speedup']}x (max |difference| {error:.1e})", flush=True)
    result["machine"] = cond.finish(args.settle)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    for name, ratio in ratios.items():
        print(cond.headline(f"decode attention ms/step, XLA ops / kernel, {name}", ratio))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())

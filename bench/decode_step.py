"""Decode steps of a whole model: XLA ops vs the compiled CPU kernels, one kernel at a time.

Greedy decoding of a batch through :class:`textbooks.model.decode.Decoder` (prefill, then a compiled token
loop), timed per generated token step, with the model's decode-step kernels (:class:`DecodeKernels`) set four
ways: all XLA ops (``attention='xla'``, ``projections='xla'``), the attention kernel only, both kernels on the
weights as stored (``Decoder(pack_weights=False)``), and both kernels on the packed weights (what
``Decoder(kernels='auto')`` does on XLA:CPU). Rounds of the variants are interleaved (load changes hit all
alike) and the median is reported; every variant must produce the same tokens as the XLA one. The bytes a step
must read (weights but the embedding table, plus the cached keys and values so far) give the memory bandwidth
each variant reaches.

Each round (every variant once) is one round of :mod:`bench.machine`, which records the date, the CPU model, the
load average before and after (``--wait_quiet``, ``--settle``) and the cores other processes kept busy during
each round. The last line is the headline, ms per step with XLA ops / with both kernels, marked
``NOT A HEADLINE`` when the machine was busy.

Usage:
    python bench/decode_step.py [--preset phi-cpu-7m] [--batch 16] [--prompt 64] [--new 128] [--rounds 8]
                                [--wait_quiet 0] [--settle 150] [--out decode_step.json]
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
except ImportError:  # run as a script: python bench/decode_step.py
    import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (DecodeKernels.attention, DecodeKernels.projections, Decoder's pack_weights)
VARIANTS = {"xla": ("xla", "xla", True), "attention kernel": ("cpu_kernel", "xla", True),
            "both, unpacked": ("cpu_kernel", "cpu_kernel", False), "both kernels": ("cpu_kernel", "cpu_kernel", True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="phi-cpu-7m")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", default="decode_step.json")
    machine.add_arguments(parser)
    args = parser.parse_args(argv)
    cond = machine.Conditions(args.wait_quiet)  # before this process loads the machine itself
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numpy as np

    from bench.serve_throughput import bytes_per_step
    from textbooks.model import cpu_kernels
    from textbooks.model import decode as decode_lib
    from textbooks.model.config import get_preset
    from textbooks.model.causal_lm import init_params
    from textbooks.model.layers import DecodeKernels

    status = cpu_kernels.status()
    if not status.ok:
        print(f"CPU kernels unavailable: {status.reason}", file=sys.stderr)
        return 1
    config = get_preset(args.preset).replace(vocab_size=args.vocab_size)
    params = init_params(config, 0)
    rng = np.random.default_rng(0)
    requests = [decode_lib.GenerationRequest(prompt=rng.integers(3, args.vocab_size, args.prompt).tolist(),
                                             max_new_tokens=args.new) for _ in range(args.batch)]
    decoders, tokens = {}, {}
    for name, (attention, projections, pack) in VARIANTS.items():
        decoder = decode_lib.Decoder(params, config, max_batch_size=args.batch, pack_weights=pack,
                                     kernels=DecodeKernels(attention=attention, projections=projections))
        tokens[name] = [o.tokens for o in decoder.generate(requests)]  # compiles
        decoders[name] = decoder
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        with cond.round():
            for name, decoder in decoders.items():
                start = time.perf_counter()
                decoder.generate(requests)
                times[name].append((time.perf_counter() - start) / args.new * 1000)
    per_step = bytes_per_step(config, [(r.prompt, r.max_new_tokens) for r in requests])
    base = statistics.median(times["xla"])
    result = {"benchmark": "decode_step", "preset": args.preset, "batch": args.batch, "prompt": args.prompt,
              "new": args.new, "rounds": args.rounds, "read_per_step_mb": round(per_step / 2**20, 1),
              "kernel_library": status.library, "variants": {}}
    for name in VARIANTS:
        ms = statistics.median(times[name])
        result["variants"][name] = {
            "ms_per_step": round(ms, 3), "ms_per_step_rounds": [round(t, 3) for t in times[name]],
            "speedup_vs_xla": round(base / ms, 2), "read_gb_per_s": round(per_step / ms / 1e6, 1),
            "same_tokens_as_xla": f"{sum(a == b for a, b in zip(tokens[name], tokens['xla']))}/{args.batch}"}
        v = result["variants"][name]
        print(f"{name:16s} {v['ms_per_step']:.3f} ms/step ({v['speedup_vs_xla']}x, {v['read_gb_per_s']} GB/s), "
              f"same tokens {v['same_tokens_as_xla']}")
    result["machine"] = cond.finish(args.settle)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(cond.headline(f"{args.preset} decode ms/step, XLA ops / both kernels",
                        base / statistics.median(times["both kernels"])))
    return 0 if all(v["same_tokens_as_xla"] == f"{args.batch}/{args.batch}" for v in result["variants"].values()) \
        else 1


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())

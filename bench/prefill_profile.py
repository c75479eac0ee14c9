"""Where a serving prefill's time goes: one prompt's compiled prefill, traced and its ops grouped by what they compute.

    python bench/prefill_profile.py [--preset smollm2-135m] [--buckets 160 320] [--calls 5]
                                    [--out prefill_profile.json] [--hlo prefill] [--top 0]

It builds a :class:`textbooks.model.decode.Decoder` of the preset (freshly initialized weights: the ops and their
shapes are the checkpoint's), prefills one prompt padded to each bucket the way ``textbooks serve`` does (one
row, a cache as long as the padded prompt, :attr:`~textbooks.model.decode.Decoder.prefill_kernels`), traces
``--calls`` calls with ``jax.profiler`` and joins the events with the compiled HLO (``bench/train_profile.py``'s
machinery): an op is a *matmul* when its fused computation holds a ``dot``, *layout* when it is a copy or
transpose; the rest are grouped by the JAX source of their HLO metadata:

* attention dots: the products of queries and cached keys, and of probabilities and cached values (the weight
  products are *matmul*);
* attention: rotary, the scores' scale and mask, softmax (everything else under ``self_attn``);
* rmsnorm, silu (the MLP's elementwise gate), embedding (the token gather);
* cache write: the scatter / dynamic-update-slice ops that write the keys and values into the cache;
* other: the rest (the residual adds among them).

Printed per bucket: milliseconds per call of each group and its share of the summed op time (independent ops
run side by side on the cores, so the sum can exceed the call's wall time and each overlapped op looks slower),
the call's median wall time untraced, the weight products' rate (``2 x non-embedding params x padded tokens``
FLOPs over their op time), the attention products' rate (the FLOPs of the whole ``queries x slots`` square, so
that forms computing less of it compare by their time) and the weight products' FLOPs over the wall time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Any

try:
    from bench import machine
    from bench.train_profile import classify, parse_hlo, trace_events
except ImportError:  # run as a script: python bench/prefill_profile.py
    import machine
    from train_profile import classify, parse_hlo, trace_events

os.environ.setdefault("JAX_PLATFORMS", "cpu")

GROUPS = ("matmul", "attention dots", "attention", "rmsnorm", "silu", "cache write", "layout", "embedding", "other")


def group_of(name: str, instructions: dict[str, dict], has_dot: set[str]) -> str:
    """The :data:`GROUPS` entry of the compiled prefill's HLO instruction ``name``."""
    group, _ = classify(name, instructions, has_dot)
    inst = instructions.get(name, {"opcode": "", "op_name": ""})
    op_name = inst["op_name"]
    if group == "matmul" and "_proj/" not in op_name:  # XLA:CPU leaves the attention products' metadata empty
        return "attention dots"
    if group in ("matmul", "layout"):
        return group
    if (inst["opcode"] in ("scatter", "dynamic-update-slice") or "scatter" in name or "dynamic-update-slice" in name
            or "dynamic_update_slice" in name or op_name.endswith(("/scatter", "/dynamic_update_slice"))):
        return "cache write"
    if "layernorm" in op_name or op_name.endswith("/norm") or "/norm/" in op_name or "RMSNorm" in op_name:
        return "rmsnorm"
    if "/mlp/" in op_name:
        return "silu"
    if "self_attn" in op_name:
        return "attention"
    if "embed_tokens" in op_name:
        return "embedding"
    return "other"


def prefill_flops(config: Any, tokens: int) -> tuple[float, float]:
    """``(weight-product FLOPs, attention-product FLOPs)`` of a prefill of ``tokens`` padded positions into a cache
    of as many slots (the attention products cover every slot: scores and weighted values)."""
    d, v = config.hidden_size, config.vocab_size
    weights = 2.0 * (config.num_params() - v * d) * tokens
    attention = 2.0 * 2.0 * config.num_layers * config.num_heads * config.head_dim * tokens * tokens
    return weights, attention


def profile_bucket(decoder: Any, config: Any, bucket: int, calls: int, top: int, hlo_prefix: str) -> dict:
    """Traces ``calls`` prefills of one prompt padded to ``bucket``; returns the per-group milliseconds per call."""
    import jax
    import numpy as np

    from textbooks.model import decode
    from textbooks.model.token_loop import GenerationRequest

    rng = np.random.default_rng(bucket)
    prompt = [int(t) for t in rng.integers(1, config.vocab_size, bucket + 1)]  # prefill feeds all but the last
    requests = [GenerationRequest(prompt=prompt, max_new_tokens=1)]
    if decoder.prompt_bucket(bucket) != bucket:
        raise ValueError(f"--buckets: {bucket} is not a prompt bucket; pass {decoder.prompt_bucket(bucket)} instead")
    tokens, segments, _, _ = decode.batch_arrays(requests, 1, bucket)
    text = decode._prefill.lower(decoder._config, decoder.prefill_kernels, decoder.params, tokens, segments,
                                 bucket).compile().as_text()
    if hlo_prefix:
        with open(f"{hlo_prefix}_{bucket}.hlo", "w") as f:
            f.write(text)
    instructions, has_dot = parse_hlo(text)

    def run_once() -> float:
        start = time.perf_counter()
        jax.block_until_ready(decoder.prefill(requests)[0])
        return time.perf_counter() - start

    for _ in range(2):
        run_once()  # compile and warm up
    untraced = [run_once() for _ in range(calls)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(calls):
            run_once()
        jax.profiler.stop_trace()
        events = trace_events(trace_dir)

    ms: dict[str, float] = collections.defaultdict(float)
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e["name"] in instructions:
            ms[group_of(e["name"], instructions, has_dot)] += e.get("dur", 0.0) / 1e3 / calls
            per_op[e["name"]] += e.get("dur", 0.0) / 1e3 / calls
    total = sum(ms.values())
    wall_ms = 1e3 * statistics.median(untraced)
    weight_flops, attention_flops = prefill_flops(config, bucket)
    weight_ms, attention_ms = ms.get("matmul", 0.0), ms.get("attention dots", 0.0)
    print(f"bucket {bucket}: prefill {wall_ms:.1f} ms wall (median of {calls}), ops {total:.1f} ms; "
          f"load {load_before:.2f}")
    print(f"  {'group':<15}{'ms':>8}{'share':>8}")
    for g in GROUPS:
        if ms.get(g):
            print(f"  {g:<15}{ms[g]:>8.1f}{100 * ms[g] / total:>7.1f}%")
    by_source: dict[tuple[str, str], float] = collections.defaultdict(float)  # the same op of every layer summed
    for name, t in per_op.items():
        source = re.sub(r"layers_\d+/", "layers_*/", instructions[name]["op_name"].removeprefix("jit(_prefill)/"))
        by_source[group_of(name, instructions, has_dot), source] += t
    for (group, source), t in sorted(by_source.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {t:7.2f} ms  {group:<15} {source[-90:]}")
    weight_rate = weight_flops / (weight_ms / 1e3) if weight_ms else 0.0
    attention_rate = attention_flops / (attention_ms / 1e3) if attention_ms else 0.0
    call_rate = weight_flops / (wall_ms / 1e3)
    print(f"  weight products: {weight_rate / 1e9:.0f} GFLOP/s ({weight_flops / 1e9:.2f} GFLOP); attention products: "
          f"{attention_rate / 1e9:.0f} GFLOP/s ({attention_flops / 1e9:.2f} GFLOP); weight products over the call: "
          f"{call_rate / 1e9:.0f} GFLOP/s")
    return {"bucket": bucket, "wall_ms": wall_ms, "op_ms": total, "groups_ms": dict(ms),
            "matmul_gflops": weight_rate / 1e9, "attention_dot_gflops": attention_rate / 1e9,
            "weight_gflops_per_call": call_rate / 1e9, "load_before": load_before, "load_after": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smollm2-135m")
    parser.add_argument("--buckets", type=int, nargs="+", default=[160, 320], help="padded prompt lengths")
    parser.add_argument("--calls", type=int, default=5, help="traced prefill calls per bucket")
    parser.add_argument("--out", default="prefill_profile.json")
    parser.add_argument("--hlo", default="", help="also write each bucket's compiled HLO to <HLO>_<bucket>.hlo")
    parser.add_argument("--top", type=int, default=0, help="also print the N slowest ops (ms per call, source)")
    args = parser.parse_args(argv)

    from textbooks.model.causal_lm import init_params
    from textbooks.model.config import get_preset
    from textbooks.model.decode import Decoder

    config = get_preset(args.preset).replace(dtype="float32", param_dtype="float32")
    decoder = Decoder(init_params(config), config)
    print(f"{args.preset}: prefill kernels {decoder.prefill_kernels}, decode kernels {decoder.kernels}")
    results = [profile_bucket(decoder, config, b, args.calls, args.top, args.hlo) for b in args.buckets]
    with open(args.out, "w") as f:
        json.dump({"preset": args.preset, "buckets": results, "cpu": machine.cpu_model(),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

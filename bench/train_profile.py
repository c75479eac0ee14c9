"""Where the CPU training step's time goes: the compiled step's ops, traced and grouped by what they compute.

    python bench/train_profile.py [--preset phi-cpu-30m] [--batch 8] [--seq_len 256] [--steps 3]
                                  [--out train_profile.json] [--hlo step.hlo]

It compiles the same step as ``bench/train_throughput.py`` (``textbooks.train``'s jitted step, one CPU device),
traces ``--steps`` steps with ``jax.profiler`` (XLA:CPU records one event per executed op, named after its
HLO instruction), and joins the events with the compiled HLO: an op is a *matmul* when its fused computation
holds a ``dot``; the other ops are grouped by the JAX source of their HLO metadata (``op_name``):

* layer norm, gelu (the MLP's elementwise ops), attention (rotary, mask, softmax, the probabilities'
  elementwise backward), embedding (gather and its scatter-add), loss (head softmax/log-sum-exp and the
  per-role sums);
* optimizer: everything outside the forward and backward passes (gradient scaling, the global norm and
  clipping, AdamW's moments and update, the finiteness guard);
* layout: ``copy``/``transpose`` ops and fusions named after them (what XLA:CPU inserts to change layouts);
* other: the rest.

Printed: milliseconds per step of each group (forward and backward apart), its share of the summed op time,
the step's wall time, and the matmuls' achieved rate (the model's matmul FLOPs per step over the matmul time)
next to the machine's float32 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

try:
    from bench import machine, train_throughput
except ImportError:  # run as a script: python bench/train_profile.py
    import machine
    import train_throughput

os.environ.setdefault("JAX_PLATFORMS", "cpu")

_COMPUTATION = re.compile(r"^%?(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?(\S+) = \S+(?: \S+)* ([a-z][a-z0-9-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')

GROUPS = ("matmul", "layout", "layer norm", "gelu", "attention", "embedding", "loss", "optimizer", "other")


def parse_hlo(text: str) -> tuple[dict[str, dict], set[str]]:
    """The instructions of compiled HLO text (``name -> {opcode, calls, op_name}``) and the computations that
    hold a ``dot`` (directly or through the computations they call)."""
    instructions: dict[str, dict] = {}
    calls_of: dict[str, list[str]] = collections.defaultdict(list)
    has_dot: set[str] = set()
    current = None
    for line in text.splitlines():
        if not line.startswith(" ") and line.rstrip().endswith("{"):
            m = _COMPUTATION.match(line.replace("ENTRY ", ""))
            current = m.group(1) if m else None
            continue
        m = _INSTRUCTION.match(line)
        if not m or current is None:
            continue
        name, opcode = m.group(1), m.group(2)
        calls = _CALLS.findall(line)
        op_name = _OP_NAME.search(line)
        instructions[name] = {"opcode": opcode, "calls": calls, "op_name": op_name.group(1) if op_name else ""}
        calls_of[current].extend(calls)
        if opcode in ("dot", "convolution"):
            has_dot.add(current)
    changed = True
    while changed:  # a computation that calls one with a dot holds a dot
        changed = False
        for comp, called in calls_of.items():
            if comp not in has_dot and any(c in has_dot for c in called):
                has_dot.add(comp)
                changed = True
    return instructions, has_dot


def classify(name: str, instructions: dict[str, dict], has_dot: set[str]) -> tuple[str, str]:
    """``(group, pass)`` of the HLO instruction ``name``; pass is 'forward', 'backward' or 'update'."""
    inst = instructions.get(name, {"opcode": "", "calls": [], "op_name": ""})
    op_name = inst["op_name"]
    if "transpose(jvp(" in op_name:
        phase = "backward"
    elif "jvp(" in op_name:
        phase = "forward"
    else:
        phase = "update"
    if inst["opcode"] in ("dot", "convolution") or any(c in has_dot for c in inst["calls"]):
        return "matmul", phase
    if inst["opcode"] in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        return "layout", phase
    if phase == "update":
        return "optimizer", phase
    if "layernorm" in op_name:
        return "layer norm", phase
    if "/mlp/" in op_name:
        return "gelu", phase
    if "self_attn" in op_name:
        return "attention", phase
    if "embed_tokens" in op_name:
        return "embedding", phase
    if "CausalLM" not in op_name:
        return "loss", phase
    return "other", phase


def trace_events(trace_dir: str) -> list[dict]:
    """Complete events (``ph == 'X'``) of the Perfetto trace ``jax.profiler`` wrote under ``trace_dir``."""
    paths = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise RuntimeError(f"no perfetto_trace.json.gz under {trace_dir}: the profiler wrote no trace")
    with gzip.open(paths[0], "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="phi-cpu-30m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="traced steps")
    parser.add_argument("--out", default="train_profile.json")
    parser.add_argument("--hlo", default="", help="also write the compiled step's HLO text here")
    parser.add_argument("--top", type=int, default=0, help="also print the N slowest ops (ms per step, source)")
    args = parser.parse_args(argv)

    import jax

    from textbooks.model.config import get_preset
    from textbooks.train import flops

    config = get_preset(args.preset).replace(dtype="float32", embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
    ours = train_throughput.Ours(config, args.batch, args.seq_len)
    raw = train_throughput.make_batches(2 + args.steps, args.batch, args.seq_len, config.vocab_size)
    batches = [ours.to_device(b) for b in raw]
    with jax.set_mesh(ours.mesh):
        text = ours.step_fn.lower(ours.state, batches[0]).compile().as_text()
    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(text)
    instructions, has_dot = parse_hlo(text)
    ours.run(batches[:2])  # warm-up
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        wall = ours.run(batches[2:])
        jax.profiler.stop_trace()
        events = trace_events(trace_dir)
    peak = flops.measure_cpu_peak_flops.__wrapped__(repeats=3)

    ms: dict[tuple[str, str], float] = collections.defaultdict(float)
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e["name"] in instructions:
            ms[classify(e["name"], instructions, has_dot)] += e.get("dur", 0.0) / 1e3 / args.steps
            per_op[e["name"]] += e.get("dur", 0.0) / 1e3 / args.steps
    total = sum(ms.values())
    step_ms = 1e3 * wall / args.steps
    tokens = args.batch * args.seq_len
    matmul_ms = sum(v for (g, _), v in ms.items() if g == "matmul")
    model_flops = flops.flops_per_token(config, args.seq_len) * tokens
    print(f"{args.preset}, batch {args.batch} x {args.seq_len}: step {step_ms:.0f} ms wall "
          f"({tokens / wall * args.steps:,.0f} tokens/s), ops {total:.0f} ms; load {load_before:.2f}")
    print(f"{'group':<12}{'forward':>10}{'backward':>10}{'update':>10}{'total':>10}{'share':>8}")
    rows = {}
    for g in GROUPS:
        parts = [ms.get((g, p), 0.0) for p in ("forward", "backward", "update")]
        if sum(parts) == 0:
            continue
        rows[g] = dict(zip(("forward", "backward", "update"), parts))
        print(f"{g:<12}" + "".join(f"{v:>10.1f}" for v in parts) + f"{sum(parts):>10.1f}"
              f"{100 * sum(parts) / total:>7.1f}%")
    for name, t in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        group, phase = classify(name, instructions, has_dot)
        print(f"  {t:8.1f} ms  {group:<10} {phase:<8} {name:<28} {instructions[name]['op_name'][-90:]}")
    rate = model_flops / (matmul_ms / 1e3) if matmul_ms else 0.0
    print(f"matmuls: {rate / 1e9:.0f} GFLOP/s on the model's {model_flops / 1e9:.1f} GFLOP per step; "
          f"measured peak {peak / 1e9:.0f} GFLOP/s ({100 * rate / peak:.0f}%); step MFU "
          f"{100 * model_flops / (step_ms / 1e3) / peak:.1f}%")
    result = {"preset": args.preset, "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
              "step_ms": step_ms, "op_ms": total, "groups_ms": rows, "matmul_gflops": rate / 1e9,
              "peak_gflops": peak / 1e9, "load_before": load_before, "load_after": os.getloadavg()[0],
              "cpu": machine.cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

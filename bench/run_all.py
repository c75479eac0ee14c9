"""Runs every benchmark of this folder one after another and collects their JSON results in one folder.

Each benchmark runs in its own process with its defaults (the figures of the README's benchmark table), so one
does not warm caches or load the machine for the next; a failing benchmark is reported and the rest still run.
``tpu_aot`` needs the ``tpu`` extra (libtpu) and is skipped without it.

The timed benchmarks get ``--wait_quiet`` and ``--settle`` (:mod:`bench.machine`): the last one settles for
``--settle`` seconds, the others for ``--settle_between`` (default: the same). The load average counts the
benchmark's own processes, so a settle shorter than its decay (about 85 s after two busy cores on an idle
machine) leaves the benchmark's own load in its "after" reading and marks it busy; the wait ends as soon as the
load is under the quiet threshold, so a long settle costs time only on a busy machine. ``summary.json`` holds
each benchmark's status, time, result path and ``quiet`` verdict (``null`` where it has none: a failed run, or
``tpu_aot``, which measures bytes); the last line names the benchmarks whose headlines are busy.

Usage:
    python -m bench.run_all [--out_dir bench_results] [--only serve_throughput train_throughput ...]
                            [--wait_quiet 0] [--settle 150] [--settle_between SECONDS]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

try:
    from bench import machine
except ImportError:  # run as a script: python bench/run_all.py
    import machine

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCHMARKS = ("train_throughput", "input_pipeline", "dedup_vs_datatrove", "decode_attention", "decode_step",
              "serve_throughput", "tpu_aot")
UNTIMED = ("tpu_aot",)  # no speed, no --wait_quiet/--settle


def _skip_reason(name: str) -> str | None:
    if name == "tpu_aot" and importlib.util.find_spec("libtpu") is None:
        return "libtpu is not installed (pip install -e .[tpu])"
    return None


def _quiet(path: str) -> bool | None:
    """The ``machine.quiet`` verdict a benchmark wrote into its JSON, or None where there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    verdict = result.get("machine", {}).get("quiet") if isinstance(result, dict) else None
    return verdict if isinstance(verdict, bool) else None


def busy_line(summary: dict[str, dict[str, Any]]) -> str:
    """The closing line: which benchmarks' headlines come from a busy machine, and which have no verdict."""
    busy = [n for n, s in summary.items() if s.get("quiet") is False]
    unknown = [n for n, s in summary.items()
               if s.get("status") != "skipped" and n not in UNTIMED and s.get("quiet") is None]
    line = f"headlines from a busy machine (NOT A HEADLINE): {', '.join(busy) if busy else 'none'}"
    return line + (f"; no machine verdict: {', '.join(unknown)}" if unknown else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="bench_results")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    machine.add_arguments(parser)
    parser.add_argument("--settle_between", type=float, default=None,
                        help="--settle for every timed benchmark but the last (default: --settle); shorter than "
                             "the load average's decay marks those benchmarks busy")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    timed = [n for n in args.only if n not in UNTIMED and _skip_reason(n) is None]
    between = args.settle if args.settle_between is None else args.settle_between
    summary: dict[str, dict] = {}
    for name in args.only:
        reason = _skip_reason(name)
        if reason:
            print(f"[{name}] skipped: {reason}", flush=True)
            summary[name] = {"status": "skipped", "reason": reason, "quiet": None}
            continue
        out = os.path.abspath(os.path.join(args.out_dir, f"{name}.json"))
        if os.path.exists(out):
            os.remove(out)  # a result left by an earlier run must not pass for this one's
        cmd = [sys.executable, "-m", f"bench.{name}", "--out", out]
        if name in timed:
            settle = args.settle if name == timed[-1] else between
            cmd += ["--wait_quiet", str(args.wait_quiet), "--settle", str(settle)]
        print(f"[{name}] running ...", flush=True)
        start = time.monotonic()
        done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, check=False)
        seconds = round(time.monotonic() - start, 1)
        status = "ok" if done.returncode == 0 and os.path.exists(out) else f"failed (exit {done.returncode})"
        print(f"[{name}] {status} in {seconds} s -> {out}", flush=True)
        summary[name] = {"status": status, "seconds": seconds, "result": out,
                         "quiet": _quiet(out)}
    with open(os.path.join(args.out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    failed = [n for n, s in summary.items() if s["status"].startswith("failed")]
    print(f"{len(summary) - len(failed)} of {len(summary)} benchmarks ran without error"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    print(busy_line(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

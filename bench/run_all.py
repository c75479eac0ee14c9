"""Runs every benchmark of this folder one after another and collects their JSON results in one folder.

Each benchmark runs in its own process with its defaults (the figures of the README's benchmark table), so one
does not warm caches or load the machine for the next; a failing benchmark is reported and the rest still run.
``tpu_aot`` needs the ``tpu`` extra (libtpu) and is skipped without it.

Usage:
    python -m bench.run_all [--out_dir bench_results] [--only serve_throughput train_throughput ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCHMARKS = ("train_throughput", "input_pipeline", "dedup_vs_datatrove", "decode_attention", "decode_step",
              "serve_throughput", "tpu_aot")


def _skip_reason(name: str) -> str | None:
    if name == "tpu_aot" and importlib.util.find_spec("libtpu") is None:
        return "libtpu is not installed (pip install -e .[tpu])"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="bench_results")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    summary: dict[str, dict] = {}
    for name in args.only:
        reason = _skip_reason(name)
        if reason:
            print(f"[{name}] skipped: {reason}", flush=True)
            summary[name] = {"status": "skipped", "reason": reason}
            continue
        out = os.path.abspath(os.path.join(args.out_dir, f"{name}.json"))
        print(f"[{name}] running ...", flush=True)
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", f"bench.{name}", "--out", out], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": REPO}, check=False)
        seconds = round(time.monotonic() - start, 1)
        status = "ok" if done.returncode == 0 and os.path.exists(out) else f"failed (exit {done.returncode})"
        print(f"[{name}] {status} in {seconds} s -> {out}", flush=True)
        summary[name] = {"status": status, "seconds": seconds, "result": out}
    with open(os.path.join(args.out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    failed = [n for n, s in summary.items() if s["status"].startswith("failed")]
    print(f"{len(summary) - len(failed)} of {len(summary)} benchmarks ran without error"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

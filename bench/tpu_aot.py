"""Does phi-1.5 pretraining fit? Compile the full train step ahead of time for TPU v5e-256 and v5p-128.

    python bench/tpu_aot.py [--config phi15/phi15.gin+tpu/phi15_v5e256.gin=v5e:16x16 ...] [--out tpu_aot.json]

Each configuration is a run's gin files of ``experiments/`` joined by ``+`` (the ones a real run uses: the
paper run, then the hardware file) and a TPU topology. The train step of that run (phi-1.5, 1.4B parameters,
global batch 2048 x 2048 tokens, with the hardware file's mesh, remat and microbatches) is lowered and compiled by libtpu for the topology's chips on this machine, with no TPU, and
XLA's memory analysis gives the bytes per chip: arguments (the sharded train state and batch), outputs less
what donation aliases, temporaries (activations, gradients) and code. The goal is to fit each chip's HBM (16
GiB on v5e, 95 GiB on v5p) with headroom (< 90%).

Needs the ``libtpu`` package (the ``tpu`` extra). Each configuration compiles in its own subprocess (several
minutes on a laptop CPU); ``JAX_PLATFORMS`` is cleared for it so that JAX loads the TPU plugin.

The JSON holds ``configs`` (one result per configuration) and ``machine``: the date, CPU model, core count and
platform of the compiling machine. The figures are bytes, not speeds, so the machine's load does not change
them and no quiet/busy verdict is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

try:
    from bench import machine
except ImportError:  # run as a script: python bench/tpu_aot.py
    import machine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = ("phi15/phi15.gin+tpu/phi15_v5e256.gin=v5e:16x16", "phi15/phi15.gin+tpu/phi15_v5p128.gin=v5p:4x4x4")
HEADROOM = 0.90


def compile_one(gin_files: str, topology: str, timeout: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="", TPU_WORKER_HOSTNAMES="localhost", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "textbooks.train.aot", f"--topology={topology}", "--json"]
    cmd += [f"--gin_file={f}" for f in gin_files.split("+")]
    t = time.time()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{gin_files} on {topology} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    result = json.loads(lines[-1])
    result.update(gin_file=gin_files, wall_seconds=time.time() - t)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[],
                        help="GIN_FILE[+GIN_FILE...]=TOPOLOGY (repeatable); default: " + ", ".join(DEFAULT_CONFIGS))
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per compilation")
    parser.add_argument("--out", default="tpu_aot.json")
    args = parser.parse_args(argv)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        print("needs the libtpu package: pip install -c constraints.txt -e '.[tpu]'", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results, ok = [], True
    for spec in args.config or DEFAULT_CONFIGS:
        gin_file, topology = spec.rsplit("=", 1)
        r = compile_one(gin_file, topology, args.timeout)
        gib = 1 << 30
        share = r["total_bytes"] / r["hbm_bytes"]
        r["headroom_ok"] = share < HEADROOM
        ok &= r["headroom_ok"]
        results.append(r)
        print(f"{gin_file} on {topology} ({r['num_chips']} chips, mesh {r['mesh']}, microbatches "
              f"{r['microbatches']}, remat {r['remat_policy']!r}): {r['total_bytes'] / gib:.2f} GiB per chip of "
              f"{r['hbm_bytes'] / gib:.0f} GiB ({100 * share:.0f}%): arguments {r['argument_bytes'] / gib:.2f}, "
              f"outputs {r['output_bytes'] / gib:.2f} (donated {r['alias_bytes'] / gib:.2f}), temporaries "
              f"{r['temp_bytes'] / gib:.2f} GiB; compiled in {r['compile_seconds']:.0f} s", flush=True)
    record = {"date": started, "cpu_model": machine.cpu_model(), "cpus": os.cpu_count(),
              "platform": platform.platform()}
    with open(args.out, "w") as f:
        json.dump({"configs": results, "machine": record}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

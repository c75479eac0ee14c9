"""bench/train_throughput.py reads the machine's start-of-run load before it imports JAX or torch: a reading
taken after them would count the benchmark's own start-up as another job's load and mark the run busy."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PROBE = """
import sys
sys.path.insert(0, {repo!r})
from bench import machine, train_throughput

class Stop(Exception):
    pass

def conditions(wait_quiet=0.0):
    heavy = sorted(m for m in ("jax", "torch", "transformers", "textbooks") if m in sys.modules)
    print("HEAVY=" + ",".join(heavy))
    raise Stop

machine.Conditions = conditions
try:
    train_throughput.main(["--preset", "phi-cpu-1m"])
except Stop:
    pass
"""


def test_start_load_is_read_before_the_heavy_imports():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the bench wants one CPU device
    run = subprocess.run([sys.executable, "-c", _PROBE.format(repo=REPO)], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("HEAVY=")]
    assert lines == ["HEAVY="], run.stdout

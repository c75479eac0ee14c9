"""TrialBench.compilation_cache_dir: the sweep trials' scoring keeps every compiled program in that folder, even
one that compiles in well under a second, and the folder replaces a cache the user set."""

import os
import subprocess
import sys

PROGRAM = """
import sys
import jax, jax.numpy as jnp
from textbooks.compilation_cache import use_compilation_cache
print(use_compilation_cache(sys.argv[1], replace=True, keep_all=True))
jax.jit(lambda x: jnp.tanh(x) * 2)(jnp.ones(3)).block_until_ready()
"""


def _run(folder, user_cache):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(user_cache))
    proc = subprocess.run([sys.executable, "-c", PROGRAM, folder], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_the_trial_bench_cache_replaces_the_users_and_keeps_quick_programs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    user = tmp_path / "user_cache"
    os.makedirs(user)
    assert _run("~/bench_cache", user) == str(tmp_path / "bench_cache")
    assert os.listdir(tmp_path / "bench_cache"), "the quick program was not kept"
    assert not os.listdir(user)


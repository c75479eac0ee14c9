"""The demo keeps XLA's compiled programs in its output folder (the three variants share them, and the teacher's
server gets the same cache), unless the user points JAX's persistent compilation cache elsewhere."""

import os
import subprocess
import sys

PROGRAM = """
import sys
import jax, jax.numpy as jnp
from textbooks import demo_teacher
from textbooks.compilation_cache import use_compilation_cache
use_compilation_cache(sys.argv[1])
print(demo_teacher._server_env()["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.jit(lambda x: jnp.tanh(x) * 2)(jnp.ones(3)).block_until_ready()
"""


def _run(cache_dir, user_cache=None):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PLATFORMS"] = "cpu"
    if user_cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(user_cache)
    proc = subprocess.run([sys.executable, "-c", PROGRAM, str(cache_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_compiled_programs_land_in_the_demo_cache_unless_the_user_set_one(tmp_path):
    ours, theirs = tmp_path / "demo_cache", tmp_path / "user_cache"
    assert _run(ours) == str(ours)
    assert os.listdir(ours), "nothing was written to the demo's compilation cache"
    os.makedirs(theirs)
    other = tmp_path / "unused"
    assert _run(other, user_cache=theirs) == str(theirs)
    assert os.listdir(theirs) and not other.exists()

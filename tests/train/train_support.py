"""Shared pieces of the trainer tests: a very small model, fast-compile options, gin files and a CLI runner."""

import os
import subprocess
import sys
import textwrap
import time

# Compile quickly: these tests run many tiny programs whose CPU compile time dwarfs their run time. In this
# process the options go to the tests' own jax.jit calls; subprocesses get them as XLA_FLAGS.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# Set by conftest: one persistent JAX compilation cache shared by a test run's subprocesses.
COMPILE_CACHE: dict = {}

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A model small enough to compile in a few seconds: 2 layers, width 32, 4 heads of 8, vocab 512 (room for
# seqio's 259-id byte vocabulary).
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=512, max_len=64)


def tiny_gin(tmp_path, *, steps=12, save_every=4, batch=8, seq=32, extra=""):
    """Writes a gin file for a tiny synthetic run and returns its path."""
    overrides = "\n".join(f"model_config.{k} = {v}" for k, v in TINY.items())
    text = textwrap.dedent(f"""\
        include 'runs/pretrain.gin'
        include 'tiny/synthetic.gin'
        include 'models/phi_cpu_1m.gin'
        TASK_FEATURE_LENGTHS = {{'targets': {seq}}}
        BATCH_SIZE = {batch}
        TRAIN_STEPS = {steps}
        train.log_every = 1
        train.tensorboard = False
        train.vocabulary = 'byte'
        train.progress_bar = False
        train.peak_flops_per_device = 1e10
        OptimizerConfig.learning_rate = 3e-3
        CheckpointConfig.save_every = {save_every}
        CheckpointConfig.keep = 3
        ValidationConfig.eval_every = 0
        """) + overrides + "\n" + textwrap.dedent(extra)
    path = tmp_path / f"tiny_{time.monotonic_ns()}.gin"
    path.write_text(text)
    return str(path)


def cli_env(devices=8, **extra):
    """Environment for a `textbooks` subprocess with ``devices`` simulated CPU devices."""
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAGS}")
    if COMPILE_CACHE.get("dir"):
        env.update(JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE["dir"], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def train_cmd(gin_file, model_dir, *bindings):
    return [sys.executable, "-m", "textbooks.cli", "train", f"--gin_file={gin_file}", f"--model_dir={model_dir}",
            *[f"--gin.{b}" for b in bindings]]


def run_cli(cmd, env=None, timeout=240):
    """Runs ``cmd`` from the repository root; returns the CompletedProcess (stdout and stderr as text)."""
    return subprocess.run(cmd, cwd=REPO, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def losses(model_dir):
    """{step: loss} from a run's metrics file (the last record of a step wins)."""
    from textbooks.train.metrics import read_jsonl

    return {r["step"]: r["loss"] for r in read_jsonl(os.path.join(model_dir, "metrics", "train.jsonl"))}

"""A tiny `textbooks train` shows this project's progress only; `--verbose` brings the libraries' logs back.

Run as a user would: the console script in a fresh process, with neither JAX_PLATFORMS nor
TF_CPP_MIN_LOG_LEVEL set (the Makefile and the test set-up set both, a user's shell does not).
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest

# What a line of ours looks like: the one logging format, from our loggers, or a verb's closing line.
OURS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR) (textbooks|mixtures)[\w.]*: "
                  r"|^textbooks train: ")
NOISE = re.compile(r"cuInit|cudart|CUDA|oneDNN|precompiled_charsmap|absl::InitializeLog|InitGoogle|libtpu|TPU|"
                   r"^[IWE]\d{4} ")


def _train(tmp_path, *extra):
    gin_file = tmp_path / "tiny.gin"
    gin_file.write_text(textwrap.dedent("""\
        include 'runs/pretrain.gin'
        include 'tiny/synthetic.gin'
        include 'models/phi_cpu_1m.gin'
        TASK_FEATURE_LENGTHS = {'targets': 32}
        BATCH_SIZE = 8
        TRAIN_STEPS = 2
        train.vocabulary = 'byte'
        train.progress_bar = False
        model_config.vocab_size = 512
        model_config.num_layers = 1
        """))
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
    run = tmp_path / ("run_verbose" if extra else "run")
    proc = subprocess.run([sys.executable, "-m", "textbooks.cli", "train", f"--gin_file={gin_file}",
                           f"--model_dir={run}", *extra], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


@pytest.mark.slow
def test_a_tiny_train_prints_only_our_lines_and_verbose_brings_back_the_rest(tmp_path):
    quiet = _train(tmp_path)
    foreign = [line for line in quiet if not OURS.search(line)]
    assert not foreign, "\n".join(foreign)
    assert any("steps 0->2 (completed)" in line for line in quiet)
    # The noise is real on this machine (TensorFlow's native logs at least), so the filter is what hid it.
    loud = _train(tmp_path, "--verbose")
    assert any(NOISE.search(line) for line in loud), "\n".join(loud)
    assert len(loud) > len(quiet)

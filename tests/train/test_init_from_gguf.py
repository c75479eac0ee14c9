"""Training starts from the shipped SmolLM2-135M-Instruct GGUF (INIT_FROM names it) with its own tokenizer.

The first loss tells a pretrained start from a fresh one: a freshly initialized model predicts near-uniformly
over its 49,152 tokens, a loss of ln 49152 = 10.8 nats, while a pretrained 135M model reads this English and
Python text at about 2-4 nats; the bound of 6 lies between the two.
"""

import json
import math
import os

import pytest
from train_support import cli_env, losses, run_cli, train_cmd

from mixtures import phi
from textbooks.corpora import build

MIXTURE = "phi15_web"


@pytest.mark.slow
def test_a_run_starts_from_the_registered_gguf(tmp_path):
    root = str(tmp_path / "data")
    results = build.build_corpora(root, roles=sorted(phi.MIXTURES[MIXTURE]), max_docs=12, max_chars=2000,
                                  verbose=False)
    assert all(r.manifest is not None for r in results)
    model_dir = str(tmp_path / "run")
    cmd = train_cmd("runs/finetune.gin", model_dir, f"MIXTURE_OR_TASK_NAME='{MIXTURE}'", "TRAIN_STEPS=1", "OptimizerConfig.warmup_steps=0",
                    "ValidationConfig.eval_every=0", "CheckpointConfig.save_every=1", "train.tensorboard=False")
    cmd.insert(cmd.index("--gin_file=runs/finetune.gin") + 1, "--gin_file=tiny/smollm2_finetune.gin")
    done = run_cli(cmd, env=cli_env(devices=1, TEXTBOOKS_DATA_DIR=root), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    first = losses(model_dir)[1]
    assert first < 6.0 < math.log(49152), first
    metadata = json.loads(open(os.path.join(model_dir, "checkpoints", "1", "metadata", "metadata")).read())
    assert metadata["model_config"]["family"] == "llama"
    assert metadata["vocabulary"] == "gguf:smollm2-135m-instruct"
    assert "initialized parameters from" in done.stderr and "SmolLM2-135M-Instruct.Q4_1.gguf" in done.stderr

"""Mixture ratios are validated once, by the mixture factory, on every path into it: a proposal.gin with a
negative ratio stops `textbooks train` with an error instead of training on the remaining components."""

import math
import os
import subprocess
import sys

import pytest

from mixtures import factory
from textbooks.mixopt import optimize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = {"class": "textbooks.mixopt.training_trial.TrainingTrial", "kwargs": {"mixture_vocabulary": "byte"}}
BAD = {"web_filtered": -0.2, "code_filtered": 1.2}


@pytest.mark.parametrize("ratios, needle", [
    (BAD, r"ratio of 'web_filtered' is negative \(-0.2\)"),
    ({"web_filtered": math.nan, "code_filtered": 1.0}, "'web_filtered' is nan"),
    ({"web_filtered": "0.5", "code_filtered": 0.5}, "'web_filtered' must be a real number"),
    ({"web_filterd": 0.5, "code_filtered": 0.5}, "unknown role 'web_filterd'"),
])
def test_registered_mixture_refuses_what_the_factory_refuses(ratios, needle):
    with pytest.raises((TypeError, ValueError), match=needle):
        factory.validate_ratios(ratios)
    with pytest.raises((TypeError, ValueError), match=needle):
        factory.registered_mixture(ratios, vocabulary="byte")


def test_zero_ratios_still_drop_their_role():
    name = factory.registered_mixture({"web_filtered": 0.0, "code_filtered": 2.0}, vocabulary="byte")
    assert name == factory.mixture_name({"code_filtered": 1.0}, vocabulary="byte") == "mix_cf100_byte"


def test_the_proposal_writer_keeps_every_ratio():
    text = optimize.proposal_gin({**BAD, "synthetic_textbooks": 0.0}, SPEC, "header")
    assert "registered_mixture.ratios = {'web_filtered': -0.2, 'code_filtered': 1.2, " \
           "'synthetic_textbooks': 0.0}" in text


@pytest.mark.slow
def test_training_a_proposal_gin_with_a_negative_ratio_fails(tmp_path):
    data = tmp_path / "data"
    from mixtures import testing

    # Data for both roles: before the fix the run trained on code_filtered alone and exited 0.
    testing.write_corpora(str(data), ["web_filtered", "code_filtered"], num_docs={"train": 20, "validation": 4},
                          num_shards=1)
    gin_path = tmp_path / "proposal.gin"
    gin_path.write_text(optimize.proposal_gin(BAD, SPEC, "a proposal with a negative ratio"))
    model_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "textbooks.cli", "train", "--gin_file=runs/pretrain.gin",
           "--gin_file=tiny/pretrain_tiny.gin", f"--gin_file={gin_path}", "--gin.TRAIN_STEPS=2",
           "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.OptimizerConfig.warmup_steps=1",
           "--gin.ValidationConfig.eval_every=0",
           "--gin_bindings=train.vocabulary = 'byte'", f"--model_dir={model_dir}"]
    env = {**os.environ, "TEXTBOOKS_DATA_DIR": str(data), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "ratio of 'web_filtered' is negative (-0.2)" in out.stderr
    assert not os.path.exists(model_dir / "checkpoints") and not os.path.exists(model_dir / "summary.json")

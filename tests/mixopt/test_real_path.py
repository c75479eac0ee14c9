"""The real path: a 2-mixture sweep of the trainer through the mixture factory, and a proposal trained from its
gin file, on small synthetic role corpora (byte vocabulary)."""

import os
import subprocess
import sys

import pytest

from mixopt_helpers import write_role_corpora
from textbooks import gin_utils
from textbooks.mixopt import optimize, sweep, trials
from textbooks.mixopt.training_trial import TrainingTrial

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = ["web_filtered", "code_filtered", "synthetic_textbooks"]


@pytest.mark.slow
def test_tiny_sweep_trains_and_the_proposal_gin_trains(tmp_path, monkeypatch):
    write_role_corpora(tmp_path / "data", monkeypatch)
    sweep_dir = tmp_path / "sweep"
    gin_utils.parse_gin(["sweeps/tiny_three_way.gin"], [f"sweep.sweep_dir = {str(sweep_dir)!r}"], finalize=False)
    spec = sweep.runner_spec(TrainingTrial())

    # The proposal's gin file, trained for a few steps while the sweep runs.
    gin_path = tmp_path / "proposal.gin"
    ratios = {"web_filtered": 0.25, "code_filtered": 0.35, "synthetic_textbooks": 0.4}
    gin_path.write_text(optimize.proposal_gin(ratios, spec, "test proposal"))
    command = optimize.train_command(spec, str(gin_path), str(tmp_path / "proposal_run"))
    assert command.startswith("textbooks train --gin_file=runs/pretrain.gin --gin_file=tiny/pretrain_tiny.gin")
    command = command.replace("textbooks train", f"{sys.executable} -m textbooks.cli train", 1)
    proposal = subprocess.Popen(command, shell=True, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        out = sweep.sweep()
    finally:
        log, _ = proposal.communicate(timeout=600)
    assert proposal.returncode == 0, log[-3000:]
    assert "mixture mix_st40_cf35_wf25_byte" in log  # registered by the gin file, under the factory's name
    assert os.path.exists(tmp_path / "proposal_run" / "metrics" / "train.jsonl")

    assert out.counts["done"] == 2, out.failures
    for row in out.rows:
        assert row["mixture"].startswith("mix_") and row["mixture"].endswith("_byte")
        for key in ("train/loss", "valid/loss", *(f"valid/loss/{r}" for r in ROLES)):
            assert 0 < row[key] < 20, key
        model_dir = os.path.join(row["run_dir"], "model")
        assert os.path.exists(os.path.join(model_dir, "metrics", "train.jsonl"))
        assert os.path.isdir(os.path.join(model_dir, "tensorboard"))
    names = {r["mixture"] for r in out.rows}
    assert names == {"mix_st40_cf20_wf40_byte", "mix_st30_cf60_wf10_byte"}
    # Same base config for both runs: only the mixture and the seed differ in their operative configs.
    configs = []
    for row in out.rows:
        with open(os.path.join(row["run_dir"], "model", "config.gin")) as f:
            configs.append(f.read().replace(row["run_dir"], "RUN").replace(row["mixture"], "MIX"))
    assert configs[0] == configs[1]
    # A rerun finds both trials done and runs nothing.
    manifest = trials.SweepDir(str(sweep_dir)).manifest()
    again = sweep.sweep()
    assert again.counts["done"] == 2 and trials.SweepDir(str(sweep_dir)).manifest()["fingerprint"] == \
        manifest["fingerprint"]

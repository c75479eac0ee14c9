"""`textbooks mixopt` end to end on a sweep whose runs follow a known law (tests/mixopt/fake_trial.py)."""

import csv
import json
import math
import os

import numpy as np
import pytest

from mixopt_helpers import COMPONENTS, FAKE_T, fake_command
from textbooks import cli
from textbooks.data import records
from textbooks.data.manifest import Manifest, write_manifest
from textbooks.mixopt import design, dispatch, optimize, sweep
from textbooks.mixopt.trial_kinds import CommandTrial


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixopt") / "sweep"
    out = sweep.sweep(sweep_dir=str(root), components=COMPONENTS, points=design.grid_design(COMPONENTS, 3),
                      seeds=(0,), runner=CommandTrial(command=fake_command()),
                      local=dispatch.LocalSettings(max_parallel=4, poll_s=0.2))
    assert out.counts["done"] == 10
    return str(root)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def test_cli_fits_cross_validates_and_proposes_the_known_optimum(sweep_dir, capsys):
    rc = cli.main(["mixopt", "--sweep_dir", sweep_dir, "--target", "loss", "--model", "loglinear",
                   "--max_l1", "0.6", "--no_register"])
    assert rc == 0
    out_dir = os.path.join(sweep_dir, "mixopt", "loss-loglinear")
    with open(os.path.join(out_dir, "fit.json")) as f:
        fitted = json.load(f)
    assert fitted["cv"]["spearman"] > 0.95 and fitted["num_runs"] == 10
    t = dict(zip(COMPONENTS, fitted["params"]["t"]))
    for c in COMPONENTS:  # the Olmix law is the generating law here: exponents and floor come back
        assert t[c] == pytest.approx(FAKE_T[c], abs=0.05)
    assert fitted["params"]["c"] == pytest.approx(2.0, abs=0.02)
    with open(os.path.join(out_dir, "proposal.json")) as f:
        prop = json.load(f)
    # Linear exponent, uniform prior, L1 <= 0.6: move 0.3 from the worst (synthetic) to the best (code).
    r = prop["ratios"]
    assert r["code_filtered"] == pytest.approx(1 / 3 + 0.3, abs=2e-3)
    assert r["synthetic_textbooks"] == pytest.approx(1 / 3 - 0.3, abs=2e-3)
    assert r["web_filtered"] == pytest.approx(1 / 3, abs=2e-3)
    assert sum(abs(r[c] - 1 / 3) for c in COMPONENTS) <= 0.6 + 1e-6
    with open(os.path.join(out_dir, "cv_predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and all(math.isfinite(float(x["predicted_heldout"])) for x in rows)
    with open(os.path.join(out_dir, "report.md")) as f:
        report = f.read()
    for needle in ("## Proposal", "## Fitted law", "Spearman rho of held-out predictions", "## Runs",
                   "ternary.png", "predicted_vs_actual.png", "loss_curves.png"):
        assert needle in report
    for png in ("ternary.png", "predicted_vs_actual.png", "loss_curves.png", "metric_vs_ratio.png",
                "proposal.png"):
        assert _is_png(os.path.join(out_dir, png)), png
    with open(os.path.join(out_dir, "proposal.gin")) as f:
        gin_text = f.read()
    assert "MIXTURE_OR_TASK_NAME = @registered_mixture()" in gin_text
    assert "registered_mixture.ratios = {" in gin_text
    assert "CV Spearman" in capsys.readouterr().out


def test_repetition_caps_from_flags_bind(sweep_dir):
    rc = cli.main(["mixopt", "--sweep_dir", sweep_dir, "--target", "loss", "--model", "mixing_law",
                   "--max_epochs", "1", "--token_budget", "1e9", "--no_register",
                   "--component_tokens", "web_filtered=1e9,code_filtered=4e8,synthetic_textbooks=1e9"])
    assert rc == 0
    with open(os.path.join(sweep_dir, "mixopt", "loss-mixing_law", "proposal.json")) as f:
        prop = json.load(f)
    assert prop["caps"]["code_filtered"] == pytest.approx(0.4)
    r = prop["ratios"]
    assert r["code_filtered"] == pytest.approx(0.4, abs=1e-4)  # the best component sits on its cap
    assert r["web_filtered"] == pytest.approx(0.6, abs=1e-3)   # the rest goes to the second best


def test_unknown_target_lists_the_metrics(sweep_dir, capsys):
    assert cli.main(["mixopt", "--sweep_dir", sweep_dir, "--target", "valid/nope", "--no_register"]) == 2
    err = capsys.readouterr().err
    assert "not a metric of this sweep" in err and "eval/acc" in err and "loss" in err


def test_maximize_an_accuracy_with_a_trust_region(sweep_dir):
    res = optimize.mixopt(sweep_dir=sweep_dir, target="eval/acc", model="linear", maximize=True, register=False,
                          constraints=optimize.propose_lib.ProposalConstraints(distance="kl", max_distance=0.2))
    p = res.proposal
    assert p.predicted > p.predicted_at_prior
    r = np.array([p.ratios[c] for c in COMPONENTS])
    q = np.full(3, 1 / 3)
    assert np.sum(r[r > 0] * np.log(r[r > 0] / q[r > 0])) <= 0.2 + 1e-6
    assert p.ratios["code_filtered"] > 1 / 3 > p.ratios["synthetic_textbooks"]


def test_token_counts_from_the_data_manifests(tmp_path):
    for role, n in (("web_filtered", 10), ("code_filtered", 20)):
        recs = [records.Record(id=f"{role}-{i}", text="x" * 100, role=role, source="s", license="l",
                               split="train", meta={}) for i in range(n)]
        with records.ShardWriter(str(tmp_path / role), "train", 1) as w:
            for rec in recs:
                w.write(rec)
        write_manifest(str(tmp_path / role), Manifest(role=role, splits={"train": w.stats}))
    tokens = optimize.data_token_counts(["web_filtered", "code_filtered"], bytes_per_token=4.0,
                                        root=str(tmp_path))
    assert tokens == {"web_filtered": 250.0, "code_filtered": 500.0}
    with pytest.raises(FileNotFoundError, match="synthetic_textbooks"):
        optimize.data_token_counts(["synthetic_textbooks"], root=str(tmp_path))


def test_missing_sweep_dir_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["mixopt", "--sweep_dir", str(tmp_path / "nope"), "--target", "loss"]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err

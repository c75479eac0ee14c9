"""Downstream targets: a planted law in fake trial results is recovered through a composite target, with its
signal-to-noise and held-out Spearman reported, and a pure-noise target is flagged and not fitted."""

import json
import math
import os

import numpy as np
import pytest

from mixopt_helpers import COMPONENTS
from textbooks import cli
from textbooks.mixopt import design, dispatch, optimize, sweep, targets
from textbooks.mixopt.trial_kinds import CommandTrial

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_bench_trial.py")
PLANTED_T = {"web_filtered": -0.5, "code_filtered": 1.0, "synthetic_textbooks": -1.5}  # fake_bench_trial.py's T


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets") / "sweep"
    command = f"{{python}} {FAKE} --ratios {{ratios_json}} --seed {{seed}} --run_dir {{run_dir}}"
    out = sweep.sweep(sweep_dir=str(root), components=COMPONENTS, points=design.grid_design(COMPONENTS, 4),
                      seeds=(0, 1), runner=CommandTrial(command=command),
                      local=dispatch.LocalSettings(max_parallel=2, poll_s=0.2))
    assert out.counts["done"] == 30, out.failures
    return str(root)


def test_rankability_by_hand():
    # Two mixtures, two seeds each: within-pair deviations 0.1 and 0.3 -> pooled variance (0.02 + 0.18) / 2.
    y = [1.0, 1.2, 2.0, 2.6]
    r = targets.rankability(y, [0, 0, 1, 1])
    noise = math.sqrt((0.1 ** 2 * 2 + 0.3 ** 2 * 2) / 2)
    spread = float(np.std([1.1, 2.3], ddof=1))
    assert r["noise"] == pytest.approx(noise) and r["spread"] == pytest.approx(spread)
    assert r["snr"] == pytest.approx(math.sqrt(spread ** 2 - noise ** 2 / 2) / noise)
    assert targets.rankability([1.0, 2.0, 3.0], [0, 1, 2])["num_repeated"] == 0
    X = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    flat = targets.assess("flat", X, [0.5] * 6, [0, 0, 1, 1, 2, 2])
    assert flat["rankable"] is False and "the same value in every run" in flat["verdict"]
    # The same accuracy in every run of 12 mixtures (np.std of 12 equal means is not exactly 0).
    same = targets.rankability([5 / 24] * 24, [i // 2 for i in range(24)])
    assert same["spread"] == 0.0 and math.isnan(same["snr"])
    # Means of the same scores summed in another order differ in the last bits: still one value.
    scores = np.random.default_rng(0).random(24)
    orders = [float(np.mean(scores[np.random.default_rng(s).permutation(24)])) for s in range(6)]
    assert len(set(orders)) > 1  # the premise: summation order alone changed the value
    rounded = targets.assess("rounded", X, orders, [0, 0, 1, 1, 2, 2])
    assert rounded["rankable"] is False and "the same value in every run" in rounded["verdict"]
    assert math.isnan(rounded["cv_spearman"])
    # A real difference far below the values' scale but far above rounding stays a difference.
    tiny = targets.rankability([1.0, 1.0, 1.0 + 1e-9, 1.0 + 1e-9], [0, 0, 1, 1])
    assert tiny["spread"] > 0 and tiny["snr"] == math.inf
    single = targets.assess("one seed", X[::2], [1.0, 2.0, 3.0], [0, 1, 2])
    assert single["rankable"] is None and "noise not measured" in single["verdict"]


def test_composites_are_weighted_means_and_refuse_bad_weights():
    rows = [{"bench/a/bpb": 1.0, "bench/b/bpb": 3.0}, {"bench/a/bpb": 2.0}]
    comps = targets.check_composites({"mix": {"bench/a/bpb": 1, "bench/b/bpb": 3}})
    v = targets.values(rows, "mix", comps)
    assert v[0] == pytest.approx(2.5) and math.isnan(v[1])
    with pytest.raises(targets.TargetError, match=r"composites\['mix'\]\['bench/b/bpb'\]"):
        targets.check_composites({"mix": {"bench/a/bpb": 1, "bench/b/bpb": -1}})
    nested = {**comps, "blend": {"mix": 1.0, "bench/a/bpb": 1.0}}
    assert targets.values(rows[:1], "blend", nested)[0] == pytest.approx((2.5 + 1.0) / 2)
    with pytest.raises(targets.TargetError, match="names itself"):
        targets.values(rows, "loop", {"loop": {"loop2": 1.0}, "loop2": {"loop": 1.0}})
    groups = targets.group_composites(["bench/piqa/bpb", "bench/arc_easy/acc", "bench/mbpp/bpb"])
    assert groups == {"bench/language/bpb": {"bench/piqa/bpb": 1.0}, "bench/common_sense/acc":
                      {"bench/arc_easy/acc": 1.0}, "bench/reasoning/bpb": {"bench/mbpp/bpb": 1.0},
                      "bench/code/bpb": {"bench/mbpp/bpb": 1.0}}
    assert targets.higher_is_better("bench/common_sense/p_correct") and not targets.higher_is_better("x/bpb")


def test_planted_law_is_recovered_through_the_group_composite(sweep_dir, capsys):
    rc = cli.main(["mixopt", "--sweep_dir", sweep_dir, "--target", "bench/common_sense/bpb", "--no_register"])
    assert rc == 0
    out_dir = os.path.join(sweep_dir, "mixopt", "bench_common_sense_bpb-loglinear")
    with open(os.path.join(out_dir, "fit.json")) as f:
        fitted = json.load(f)
    # Winogrande, ARC-Easy and SIQA were recorded: mean offset (1.0 + 1.2 + 0.8) / 3 = 1.0 is the law's floor.
    assert fitted["target_formula"].startswith("bench/common_sense/bpb = 0.333*bench/winogrande/bpb")
    assert fitted["params"]["c"] == pytest.approx(1.0, abs=0.02)
    for c, t in zip(COMPONENTS, fitted["params"]["t"]):
        assert t == pytest.approx(PLANTED_T[c], abs=0.05), c
    a = fitted["assessment"]
    assert a["rankable"] is True and a["snr"] > 50 and a["cv_spearman"] > 0.95
    assert fitted["cv"]["spearman"] > 0.95 and fitted["maximize"] is False
    with open(os.path.join(out_dir, "targets.json")) as f:
        table = {c["target"]: c for c in json.load(f)["candidates"]}
    noise = table["bench/noise/bpb"]
    assert noise["rankable"] is False and targets.NOT_RANKABLE in noise["verdict"]
    assert table["bench/piqa/bpb"]["rankable"] is True and table["bench/language/bpb"]["rankable"] is True
    with open(os.path.join(out_dir, "report.md")) as f:
        report = f.read()
    assert "## Target" in report and "signal-to-noise" in report
    with open(os.path.join(out_dir, "targets.md")) as f:
        assert "| **bench/common_sense/bpb** |" in f.read()
    assert "signal-to-noise" in capsys.readouterr().out


def test_gin_composite_weights_set_the_floor(sweep_dir):
    result = optimize.mixopt(sweep_dir=sweep_dir, target="cs", register=False,
                             composites={"cs": {"bench/winogrande/bpb": 1.0, "bench/arc_easy/bpb": 3.0}})
    assert result.params["c"] == pytest.approx((1.0 + 3 * 1.2) / 4, abs=0.02)
    assert result.target_formula == "cs = 0.25*bench/winogrande/bpb + 0.75*bench/arc_easy/bpb"


def test_pure_noise_target_is_flagged_and_not_fitted(sweep_dir, capsys):
    rc = cli.main(["mixopt", "--sweep_dir", sweep_dir, "--target", "bench/noise/bpb", "--no_register"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not rankable at this scale" in err and "allow_unrankable" in err
    out_dir = os.path.join(sweep_dir, "mixopt", "bench_noise_bpb-loglinear")
    assert os.path.exists(os.path.join(out_dir, "targets.md"))
    assert not os.path.exists(os.path.join(out_dir, "fit.json"))
    forced = optimize.mixopt(sweep_dir=sweep_dir, target="bench/noise/bpb", register=False, model="linear",
                             allow_unrankable=True)
    assert forced.assessment["rankable"] is False


def _planted(ratios):
    return 1.0 + math.exp(sum(PLANTED_T[c] * ratios[c] for c in COMPONENTS))


def test_validation_trains_proposal_best_and_median_with_fresh_seeds(sweep_dir, capsys):
    rc = cli.main(["mixopt", "--sweep_dir", sweep_dir, "--target", "bench/common_sense/bpb", "--no_register",
                   "--max_l1", "0.4", "--validation_seeds", "11,12,13", "--out",
                   os.path.join(sweep_dir, "validated")])
    assert rc == 0, capsys.readouterr().err
    with open(os.path.join(sweep_dir, "validated", "validation.json")) as f:
        v = json.load(f)
    assert v["seeds"] == [11, 12, 13] and not v["failures"]
    mix = v["mixtures"]
    assert set(mix) == {"proposal", "sweep best", "sweep median"}
    # The grid's best point under the planted law is all synthetic; its median is the 8th of 15 by mean.
    assert mix["sweep best"]["ratios"]["synthetic_textbooks"] == pytest.approx(1.0)
    for label, m in mix.items():
        assert m["n"] == 3
        truth = _planted(m["ratios"])  # mean offset 1.0; fresh-seed noise averages out within the interval
        assert m["low"] <= m["mean"] <= m["high"]
        assert abs(m["mean"] - truth) < 0.01, label
    assert mix["sweep median"]["mean"] > mix["sweep best"]["mean"]
    runs = os.listdir(os.path.join(sweep_dir, "validated", "validation", "trials"))
    assert len(runs) == 9  # 3 mixtures x 3 fresh seeds
    with open(os.path.join(sweep_dir, "validated", "validation.md")) as f:
        text = f.read()
    assert "Welch interval" in text and "| sweep median |" in text
    assert "validation with fresh seeds [11, 12, 13]" in capsys.readouterr().out


def test_validation_refuses_seeds_the_sweep_used(sweep_dir, capsys):
    rc = cli.main(["mixopt", "--sweep_dir", sweep_dir, "--target", "bench/piqa/bpb", "--no_register",
                   "--validation_seeds", "1,2", "--out", os.path.join(sweep_dir, "reused")])
    assert rc == 2 and "must be non-empty and fresh; the sweep used [0, 1]" in capsys.readouterr().err

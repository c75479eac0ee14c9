"""A tiny real sweep whose trials score the downstream benchmark subset: every row of results.csv holds the
bench/<task>/<metric> columns, computed on the same items, and they match an independent evaluation of the
trial's checkpoint through the evaluation suite."""

import csv
import math
import os

import numpy as np
import pytest

from mixopt_helpers import write_role_corpora
from textbooks import gin_utils
from textbooks.evaluate import suite
from textbooks.evaluate.trial_bench import TrialBench
from textbooks.mixopt import sweep

TASKS = ["piqa", "arc_easy", "humaneval"]
ITEMS, SEED = 3, 7


@pytest.mark.slow
def test_tiny_sweep_records_bench_columns_on_identical_items(tmp_path, monkeypatch):
    write_role_corpora(tmp_path / "data", monkeypatch)
    sweep_dir = tmp_path / "sweep"
    gin_utils.parse_gin(["sweeps/tiny_three_way.gin"],
                        [f"sweep.sweep_dir = {str(sweep_dir)!r}", "TrainingTrial.bench = @TrialBench()",
                         f"TrialBench.tasks = {TASKS!r}", f"TrialBench.items_per_task = {ITEMS}",
                         f"TrialBench.seed = {SEED}",
                         f"TrialBench.compilation_cache_dir = {str(tmp_path / 'jax_cache')!r}"], finalize=False)
    out = sweep.sweep()
    assert out.counts["done"] == 2, out.failures

    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    expected = [f"bench/{t}/{m}" for t in ("piqa", "arc_easy") for m in ("bpb", "p_correct", "acc")]
    expected.append("bench/humaneval/bpb")
    bench = TrialBench(tasks=tuple(TASKS), items_per_task=ITEMS, seed=SEED)
    assert [len(v) for v in bench.items().values()] == [ITEMS] * len(TASKS)
    for row in rows:
        for col in expected:
            assert math.isfinite(float(row[col])), (col, row[col])
        assert 0 < float(row["bench/piqa/p_correct"]) < 1
        assert row["bench_items"] == bench.fingerprint()  # identical items in every trial
        assert int(row["bench_requests"]) == 2 * ITEMS + 4 * ITEMS + ITEMS  # PIQA 2 choices, ARC-Easy 4
        assert float(row["bench_s"]) > 0 and float(row["train_s"]) > 0
    assert not {c for r in rows for c in r if c.startswith("bench/")} - set(expected)
    assert os.listdir(tmp_path / "jax_cache")  # the scoring shapes were kept for the next trial
    # Different mixtures, different models: the values differ between the two trials.
    assert rows[0]["bench/humaneval/bpb"] != rows[1]["bench/humaneval/bpb"]

    # Independent check: the suite evaluates the first trial's checkpoint on the same subset.
    model, _ = suite.load_eval_model(os.path.join(rows[0]["run_dir"], "model"),
                                     suite.SuiteSettings(tokens_per_batch=bench.tokens_per_batch,
                                                         min_length_bucket=bench.min_length_bucket))
    results, _ = suite.evaluate_model(model, ["piqa", "arc_easy"],
                                      suite.SuiteSettings(limit=ITEMS, seed=SEED))
    got = suite.flatten_metrics(results)
    # Each bpb is a sum over at most max_len float32 log-probabilities: eps * max_len relative tolerance.
    rtol = float(np.finfo(np.float32).eps) * model.config.max_len
    for col in expected[:-1]:
        assert float(rows[0][col]) == pytest.approx(got[col], rel=rtol, abs=rtol), col


def test_trial_bench_settings_round_trip_through_the_runner_record():
    import json

    from textbooks.mixopt.training_trial import TrainingTrial

    runner = TrainingTrial(gin_files=("runs/pretrain.gin",), bench=TrialBench(tasks=("piqa",), items_per_task=5))
    rebuilt = sweep.runner_from_spec(json.loads(json.dumps(sweep.runner_spec(runner))))
    assert rebuilt.bench == runner.bench
    assert rebuilt.fingerprint_payload() == runner.fingerprint_payload()
    # The subset is part of the sweep's identity; a sweep without it keeps its old fingerprint payload.
    assert runner.fingerprint_payload()["bench"] == {"tasks": ["piqa"], "items_per_task": 5, "seed": 1234}
    assert "bench" not in TrainingTrial(gin_files=("runs/pretrain.gin",)).fingerprint_payload()


def test_trial_bench_subset_is_seeded_and_checked():
    a = TrialBench(tasks=("piqa", "mbpp"), items_per_task=4, seed=1)
    assert a.fingerprint() == TrialBench(tasks=("piqa", "mbpp"), items_per_task=4, seed=1).fingerprint()
    assert a.fingerprint() != TrialBench(tasks=("piqa", "mbpp"), items_per_task=4, seed=2).fingerprint()
    assert [i["id"] for i in a.items()["piqa"]] == [i["id"] for i in a.items()["piqa"]]
    with pytest.raises(ValueError, match="unknown benchmark 'piqaa'"):
        TrialBench(tasks=("piqaa",))
    with pytest.raises(ValueError, match="items_per_task must be a positive"):
        TrialBench(items_per_task=0)

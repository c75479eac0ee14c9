"""The whole phi-1.5 suite end to end on a tiny random checkpoint, the CLI's errors, and the training hook."""

import json
import os

import gin
import numpy as np
import pytest

from textbooks import cli
from textbooks.evaluate import benchmarks, suite

SMALL_BUDGETS = ["--gin.SuiteSettings.code_max_new_tokens=16", "--gin.SuiteSettings.gsm8k_max_new_tokens=16",
                 "--gin.SuiteSettings.squad_max_new_tokens=6", "--gin.SuiteSettings.tokens_per_batch=256",
                 "--gin.SuiteSettings.decode_min_length_bucket=256",
                 "--gin.SuiteSettings.sandbox_timeout_s=10.0"]


def test_phi15_suite_runs_on_a_tiny_checkpoint_near_chance(tiny_hf_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "eval")
    rc = cli.main(["eval", "--checkpoint", tiny_hf_checkpoint, "--tasks=phi15", "--limit", "4", "--out", out]
                  + SMALL_BUDGETS)
    assert rc == 0, capsys.readouterr().err[-2000:]
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    tasks = results["tasks"]
    assert list(tasks) == list(suite.PHI15_SUITE)
    for name, entry in tasks.items():
        assert "error" not in entry, (name, entry.get("error"))
        primary = entry["metrics"][entry["primary"]]
        assert primary["n"] == 4
        assert primary["ci_low"] <= primary["value"] <= primary["ci_high"], name
        assert primary["ci_method"] in ("wilson", "bootstrap")
        assert entry["metrics"]["bpb"]["value"] > 0  # every task reports the gold answer's bits per byte
    mc = [t for t in tasks if benchmarks.benchmark_kind(t) == "multiple_choice"]
    accuracy = np.mean([tasks[t]["metrics"]["acc"]["value"] for t in mc])
    chance = np.mean([tasks[t]["chance"] for t in mc])
    assert abs(accuracy - chance) < 0.2, (accuracy, chance)
    for t in ("humaneval", "mbpp", "gsm8k"):  # random text never solves these; the failures are recorded
        assert tasks[t]["metrics"][tasks[t]["primary"]]["value"] == 0.0
        assert sum(tasks[t]["errors"].values()) == 4
    assert tasks["mmlu"]["num_fewshot"] == 2
    assert results["sandbox"]["mode"] in ("namespaces", "rlimits")
    with open(os.path.join(out, "results.md")) as f:
        md = f.read()
    for header in ("## Common sense reasoning", "## Language understanding and knowledge", "## Multi-step reasoning"):
        assert header in md
    assert os.path.getsize(os.path.join(out, "results.png")) > 1000
    with open(os.path.join(out, "items", "humaneval.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 4 and all(r["runs"][0]["status"] != "passed" for r in rows)
    printed = capsys.readouterr().out
    assert "winogrande" in printed and "report:" in printed


def test_unknown_task_is_an_error_listing_the_names(capsys):
    assert cli.main(["eval", "--checkpoint", "/nonexistent", "--tasks=piqa,hellaswagg"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'hellaswagg'" in err and "hellaswag" in err and "phi15" in err
    with pytest.raises(suite.EvalError, match="unknown task 'nope'"):
        suite.resolve_tasks("nope")
    assert suite.resolve_tasks("code,humaneval,piqa") == ["humaneval", "mbpp", "piqa"]


def test_checkpoint_that_does_not_load_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    (bad / "model.safetensors").write_bytes(b"garbage")
    assert cli.main(["eval", "--checkpoint", str(bad), "--tasks=piqa"]) == 3
    err = capsys.readouterr().err
    assert "does not load" in err and str(bad) in err
    gin.clear_config()  # each CLI call is normally its own process; gin locks its config after parsing
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "missing"), "--tasks=piqa"]) == 3
    gin.clear_config()
    assert cli.main(["eval", "--tasks=piqa"]) == 2
    assert "no checkpoint given" in capsys.readouterr().err


def test_list_prints_tasks_and_suites(capsys):
    assert cli.main(["eval", "--list"]) == 0
    out = capsys.readouterr().out
    assert "humaneval (code)" in out and "suite phi15:" in out


def test_a_failing_task_is_recorded_and_the_others_still_run(tiny_model, monkeypatch, tmp_path):
    def missing(split):
        raise benchmarks.BenchmarkError("benchmark file /x/piqa.arrow is missing from the installed package")

    loader, *rest = benchmarks._REGISTRY["piqa"]
    monkeypatch.setitem(benchmarks._REGISTRY, "piqa", (missing, *rest))
    benchmarks._cached.cache_clear()
    try:
        results = suite.evaluate(model=tiny_model, tasks="piqa,arc_easy", out_dir=str(tmp_path),
                                 settings=suite.SuiteSettings(limit=5))
    finally:
        benchmarks._cached.cache_clear()
    assert "piqa.arrow is missing" in results["tasks"]["piqa"]["error"]
    assert results["tasks"]["arc_easy"]["metrics"]["acc"]["n"] == 5
    with open(tmp_path / "results.md") as f:
        assert "failed: BenchmarkError" in f.read()


def test_training_hook_reuses_the_compiled_model(tiny_config, tiny_params, tmp_path):
    import jax

    from textbooks.vocab.registry import get_vocabulary

    hook = suite.BenchmarkEvalHook(tiny_config, get_vocabulary("spm8k"), tasks=("piqa", "winogrande"),
                                   settings=suite.SuiteSettings(limit=6), every=100, out_dir=str(tmp_path))
    first = hook(tiny_params, None, step=100)
    assert {"bench/piqa/acc", "bench/piqa/acc_norm", "bench/piqa/bpb", "bench/winogrande/acc",
            "bench/winogrande/p_correct"} <= set(first)
    shapes = set(hook._model.compiled_shapes)
    scaled = jax.tree_util.tree_map(lambda x: x * 0.5, tiny_params)
    second = hook(scaled, None, step=200)
    assert second["bench/piqa/bpb"] != first["bench/piqa/bpb"]
    assert hook._model.compiled_shapes == shapes
    assert hook.should_run(200) and not hook.should_run(150)
    assert os.path.isfile(tmp_path / "step_00000200" / "results.json")
    assert [s for s, _ in hook.history] == [100, 200]

"""`textbooks eval` exit statuses: 2 for a limit that is not a positive number (flag or gin), 1 when a task fails
while the other tasks are still run and reported."""

import json
import os

import pytest

from textbooks import cli
from textbooks.evaluate import benchmarks


@pytest.mark.parametrize("limit", ["-3", "0"])
def test_a_limit_that_is_not_a_positive_number_is_a_usage_error(limit, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--checkpoint", str(tmp_path / "missing"), "--tasks", "piqa", "--limit", limit])
    assert exit_info.value.code == 2
    assert "argument --limit" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["SuiteSettings", "EvalSettings"])  # EvalSettings: the old name, an alias
def test_a_gin_bound_limit_below_one_is_a_configuration_error(name, tmp_path, capsys):
    rc = cli.main(["eval", "--checkpoint", str(tmp_path / "missing"), "--tasks", "piqa", f"--gin.{name}.limit=0"])
    assert rc == 2
    assert "SuiteSettings.limit must be a positive number" in capsys.readouterr().err


def test_a_failing_task_makes_the_exit_status_1_and_the_others_are_reported(tiny_hf_checkpoint, monkeypatch,
                                                                            tmp_path, capsys):
    def missing(split):
        raise benchmarks.BenchmarkError("benchmark file /x/piqa.arrow is missing from the installed package")

    loader, *rest = benchmarks._REGISTRY["piqa"]
    monkeypatch.setitem(benchmarks._REGISTRY, "piqa", (missing, *rest))
    benchmarks._cached.cache_clear()
    out = str(tmp_path / "eval")
    try:
        rc = cli.main(["eval", "--checkpoint", tiny_hf_checkpoint, "--tasks", "piqa,arc_easy", "--limit", "3",
                       "--out", out, "--log_level", "CRITICAL"])
    finally:
        benchmarks._cached.cache_clear()
    captured = capsys.readouterr()
    assert rc == 1, captured.err[-2000:]
    assert "1 of 2 tasks failed: piqa" in captured.err
    printed = {line.split()[0]: line for line in captured.out.splitlines() if line.strip()}
    assert "ERROR BenchmarkError" in printed["piqa"] and "n=3" in printed["arc_easy"]
    with open(os.path.join(out, "results.json")) as f:
        tasks = json.load(f)["tasks"]
    assert "piqa.arrow is missing" in tasks["piqa"]["error"]
    assert tasks["arc_easy"]["metrics"]["acc"]["n"] == 3

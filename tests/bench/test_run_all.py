"""bench.run_all runs benchmarks in their own processes, passes the machine flags on, and reports each one's
outcome and whether its headline came from a busy machine."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from bench import run_all  # noqa: E402


def test_run_all_collects_results_and_reports_failures(tmp_path, monkeypatch, capsys):
    from textbooks.model import cpu_attention

    if not cpu_attention.status().ok:
        pytest.skip(f"decode attention kernel unavailable: {cpu_attention.status().reason}")
    out = tmp_path / "results"
    assert run_all.main(["--out_dir", str(out), "--only", "decode_attention", "--settle", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decode_attention"]["status"] == "ok"
    result = json.loads((out / "decode_attention.json").read_text())
    assert result["cases"] and all(c["max_abs_difference"] < 1e-4 for c in result["cases"].values())
    # The benchmark's own verdict on the machine reaches the summary and the closing line.
    assert summary["decode_attention"]["quiet"] is result["machine"]["quiet"]
    assert len(result["machine"]["rounds"]) == len(result["cases"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == ("headlines from a busy machine (NOT A HEADLINE): "
                    + ("none" if result["machine"]["quiet"] else "decode_attention"))

    # A benchmark that exits non-zero is reported as failed, and the exit status says so.
    monkeypatch.setenv("TEXTBOOKS_CPU_KERNELS", "0")  # decode_attention then has no kernel to measure
    assert run_all.main(["--out_dir", str(out), "--only", "decode_attention", "--settle", "0"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decode_attention"]["status"] == "failed (exit 1)"
    assert summary["decode_attention"]["quiet"] is None  # the earlier run's JSON was removed, not read


def test_settle_is_passed_on_and_busy_headlines_are_listed(tmp_path, monkeypatch, capsys):
    """With the benchmarks replaced by a stub that records its command line and writes a verdict."""
    verdicts = {"input_pipeline": False, "decode_attention": True, "decode_step": False}
    commands = {}

    def fake_run(cmd, **kwargs):
        name = cmd[cmd.index("-m") + 1].split(".", 1)[1]
        commands[name] = cmd
        out = cmd[cmd.index("--out") + 1]
        if name == "tpu_aot":  # its machine record has no verdict
            result = {"configs": [{"total_bytes": 1}], "machine": {"date": "2026-01-01T00:00:00+00:00"}}
        else:
            result = {"machine": {"quiet": verdicts[name]}}
        with open(out, "w") as f:
            json.dump(result, f)
        return run_all.subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(run_all.subprocess, "run", fake_run)
    monkeypatch.setattr(run_all, "_skip_reason", lambda name: None)
    out = tmp_path / "results"
    only = ["input_pipeline", "decode_attention", "decode_step", "tpu_aot"]
    assert run_all.main(["--out_dir", str(out), "--only", *only, "--wait_quiet", "7", "--settle", "120",
                         "--settle_between", "20"]) == 0

    def flag(name, option):
        cmd = commands[name]
        return cmd[cmd.index(option) + 1] if option in cmd else None

    # The last timed benchmark settles fully, the others for --settle_between; tpu_aot measures bytes, not time.
    assert [flag(n, "--settle") for n in only] == ["20.0", "20.0", "120.0", None]
    assert [flag(n, "--wait_quiet") for n in only] == ["7.0", "7.0", "7.0", None]
    summary = json.loads((out / "summary.json").read_text())
    assert {n: s["quiet"] for n, s in summary.items()} == {**verdicts, "tpu_aot": None}
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "4 of 4 benchmarks ran without error"
    assert lines[-1] == "headlines from a busy machine (NOT A HEADLINE): input_pipeline, decode_step"

    # Without --settle_between every timed benchmark gets --settle.
    assert run_all.main(["--out_dir", str(out), "--only", *only, "--settle", "45"]) == 0
    assert [flag(n, "--settle") for n in only] == ["45.0", "45.0", "45.0", None]


def test_busy_line_names_benchmarks_without_a_verdict():
    summary = {"train_throughput": {"status": "ok", "quiet": True},
               "serve_throughput": {"status": "failed (exit 1)", "quiet": None},
               "dedup_vs_datatrove": {"status": "ok", "quiet": False},
               "tpu_aot": {"status": "ok", "quiet": None},
               "decode_step": {"status": "skipped", "quiet": None}}
    assert run_all.busy_line(summary) == ("headlines from a busy machine (NOT A HEADLINE): dedup_vs_datatrove; "
                                          "no machine verdict: serve_throughput")
    assert run_all.busy_line({"decode_step": {"status": "ok", "quiet": True}}) == \
        "headlines from a busy machine (NOT A HEADLINE): none"

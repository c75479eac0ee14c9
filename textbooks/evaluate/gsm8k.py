"""GSM8K: final-answer extraction, and solving "via coding" as the phi-1.5 report did.

Two modes:

* ``code`` (phi-1.5's protocol): the model completes ``def solution():`` under a docstring holding the
  question; the program runs in the sandbox and prints ``solution()``'s return value after a marker line; the
  printed value is compared numerically with the gold answer. Programs that do not parse, raise, time out or
  return nothing count as wrong, with the reason kept per item.
* ``cot``: the model writes a worked answer after ``Question: ...\\nAnswer:``; the final number is extracted
  (``#### 42``, ``The answer is 42``, else the last number) and compared.

Numbers are compared after removing thousands separators, currency and percent signs and trailing units or
periods (``$1,234.50`` -> 1234.5) with a tolerance of 1e-6 relative.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Mapping, Sequence

from textbooks.evaluate import sandbox as sandbox_lib

RESULT_MARKER = "__TEXTBOOKS_GSM8K_RESULT__"
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n\n\n", '\n"""')
COT_STOPS = ("\n\nQuestion:", "\nQuestion:", "\n\n\n")

# A number as people write it: optional sign and currency, thousands groups or plain digits, decimals, a fraction.
_NUM = r"-?\s*[$€£]?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\s*[$€£]?\s*\.\d+"
_NUMBER = re.compile(_NUM)


def normalize_number(text: str | None) -> float | None:
    """Parses a number written with commas, currency, percent or units (``"$1,234.50"`` -> 1234.5)."""
    if text is None:
        return None
    s = str(text).strip()
    m = _NUMBER.search(s)
    if not m:
        return None
    token = re.sub(r"[\s$€£,]", "", m.group(0))
    try:
        if "/" in token:
            num, den = token.split("/", 1)
            return float(num) / float(den) if float(den) else None
        return float(token)
    except ValueError:
        return None


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a worked solution, as written (None if there is no number)."""
    if not text:
        return None
    m = re.search(r"####\s*(.+)", text)
    if m and normalize_number(m.group(1)) is not None:
        return m.group(1).strip()
    m = list(re.finditer(r"answer is[:\s]*(.+?)(?:\n|$)", text, re.I))
    if m and normalize_number(m[-1].group(1)) is not None:
        return m[-1].group(1).strip().rstrip(".")
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def answers_match(predicted: str | float | None, gold: str | float) -> bool:
    """True when ``predicted`` parses to the same number as ``gold`` (relative tolerance 1e-6)."""
    p = predicted if isinstance(predicted, (int, float)) else normalize_number(predicted)
    g = gold if isinstance(gold, (int, float)) else normalize_number(gold)
    if p is None or g is None or not math.isfinite(p):
        return False
    return math.isclose(float(p), float(g), rel_tol=1e-6, abs_tol=1e-6)


def coding_prompt(question: str) -> str:
    """The code-mode prompt: a function whose docstring is the question."""
    q = question.strip().replace('"""', "'''")
    return f'def solution():\n    """{q}\n    """\n'


def coding_program(question: str, completion: str) -> str:
    """The program run for a code-mode completion: prints the marker, then ``solution()``'s value."""
    return (coding_prompt(question) + completion + "\n\n"
            f"_value = solution()\nprint({RESULT_MARKER!r})\nprint(_value)\n")


def parse_program_output(stdout: str) -> str | None:
    """The value printed after the marker line, if any."""
    if RESULT_MARKER not in stdout:
        return None
    after = stdout.rsplit(RESULT_MARKER, 1)[1].strip()
    return after.splitlines()[0].strip() if after else None


@dataclasses.dataclass
class GSM8KResult:
    """Accuracy of one GSM8K run with the per-item record (id, gold, predicted, correct, status, error_type)."""

    mode: str
    items: list[dict]

    @property
    def accuracy(self) -> float:
        return sum(r["correct"] for r in self.items) / max(1, len(self.items))


def score_code_completions(items: Sequence[Mapping], completions: Sequence[str],
                           sandbox: sandbox_lib.Sandbox | None = None,
                           progress: Callable[[int, int], None] | None = None) -> GSM8KResult:
    """Runs each completion of ``def solution():`` and compares the returned value with the gold answer."""
    sandbox = sandbox or sandbox_lib.Sandbox()
    programs = [coding_program(item["question"], c) for item, c in zip(items, completions)]
    runs = sandbox.run_many(programs, progress=progress)
    records = []
    for item, completion, run in zip(items, completions, runs):
        value = parse_program_output(run.stdout) if run.passed else None
        correct = answers_match(value, item["answer"])
        error = None if correct else (run.error_type if not run.passed else
                                      ("NoResult" if value is None else "WrongAnswer"))
        records.append({"id": item["id"], "gold": item["answer"], "predicted": value, "correct": correct,
                        "status": run.status, "error_type": error, "duration_s": round(run.duration_s, 4),
                        "completion": completion[:1000]})
    return GSM8KResult(mode="code", items=records)


def score_cot_completions(items: Sequence[Mapping], completions: Sequence[str]) -> GSM8KResult:
    """Extracts the final number of each worked answer and compares it with the gold answer."""
    records = []
    for item, completion in zip(items, completions):
        predicted = extract_answer(completion)
        correct = answers_match(predicted, item["answer"])
        records.append({"id": item["id"], "gold": item["answer"], "predicted": predicted, "correct": correct,
                        "status": "scored", "error_type": None if correct else
                        ("NoNumber" if predicted is None else "WrongAnswer"), "completion": completion[:1000]})
    return GSM8KResult(mode="cot", items=records)


def evaluate_gsm8k(model, items: Sequence[Mapping], *, mode: str = "code", max_new_tokens: int = 256,
                   sandbox: sandbox_lib.Sandbox | None = None,
                   progress: Callable[[int, int], None] | None = None) -> GSM8KResult:
    """Greedy-decodes an answer per item with ``model`` (an EvalModel) and scores it in ``mode``."""
    if mode == "code":
        prompts = [coding_prompt(item["question"]) for item in items]
        outs = model.generate(prompts, max_new_tokens=max_new_tokens, stop=CODE_STOPS)
        return score_code_completions(items, [o[0] for o in outs], sandbox=sandbox, progress=progress)
    if mode == "cot":
        prompts = [f"Question: {item['question']}\nAnswer:" for item in items]
        outs = model.generate(prompts, max_new_tokens=max_new_tokens, stop=COT_STOPS)
        return score_cot_completions(items, [o[0] for o in outs])
    raise ValueError(f"GSM8K mode must be 'code' or 'cot', got {mode!r}")

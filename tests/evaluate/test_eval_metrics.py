"""Metric definitions against hand-computed values and independent implementations."""

import math

import numpy as np
import pytest

from textbooks.evaluate import continuous, gsm8k, multiple_choice, prompts, report, squad


def test_acc_and_acc_norm_by_hand():
    # Choices "a" (1 char), "bbbb" (4), "cc" (2); log-likelihoods -2, -4, -3.
    # acc: argmax(-2, -4, -3) = 0. acc_norm: argmax(-2/1, -4/4, -3/2) = argmax(-2, -1, -1.5) = 1.
    d = multiple_choice.mc_decisions([-2.0, -4.0, -3.0], gold=1, norm_lengths=[1, 4, 2])
    assert (d["pred"], d["acc"], d["pred_norm"], d["acc_norm"]) == (0, 0.0, 1, 1.0)
    # Ties go to the first maximum, as numpy's argmax (lm-eval's rule).
    tie = multiple_choice.mc_decisions([-1.0, -1.0], gold=1, norm_lengths=[3, 3])
    assert (tie["pred"], tie["acc"], tie["acc_norm"]) == (0, 0.0, 0.0)
    assert multiple_choice.mc_decisions([-1.0, -5.0], 0, None)["acc_norm"] is None


def test_acc_norm_divides_by_the_choice_text_not_the_continuation():
    item = {"id": "x", "task": "arc_easy", "question": "q", "choices": ["yes", "no way"], "gold": 0}
    assert prompts.norm_texts(item) == ["yes", "no way"]
    assert [c for _, c in prompts.choice_requests(item)] == [" yes", " no way"]
    mmlu = {"id": "m", "task": "mmlu", "subject": "anatomy", "question": "q?", "choices": ["a", "b", "c", "d"],
            "gold": 2, "fewshot": []}
    assert prompts.norm_texts(mmlu) == ["A", "B", "C", "D"]
    assert prompts.norm_texts({"task": "winogrande"}) is None


def test_prompt_formats():
    piqa = {"id": "p", "task": "piqa", "question": "Open a jar", "choices": ["twist", "smash"], "gold": 0}
    assert prompts.choice_requests(piqa) == [("Question: Open a jar\nAnswer:", " twist"),
                                             ("Question: Open a jar\nAnswer:", " smash")]
    boolq = {"id": "b", "task": "boolq", "passage": "P.", "question": "is it", "choices": ["no", "yes"], "gold": 1}
    assert prompts.choice_requests(boolq)[1] == ("P.\nQuestion: is it?\nAnswer:", " yes")
    wino = {"id": "w", "task": "winogrande", "question": "Ann gave Bo a gift because _ was kind.",
            "choices": ["Ann", "Bo"], "gold": 0}
    assert prompts.choice_requests(wino) == [("Ann gave Bo a gift because Ann", " was kind."),
                                             ("Ann gave Bo a gift because Bo", " was kind.")]
    dev = [{"question": f"dev {i}?", "choices": ["w", "x", "y", "z"], "gold": i % 4} for i in range(5)]
    mmlu = {"id": "m", "task": "mmlu", "subject": "high_school_physics", "question": " What? ",
            "choices": ["1", "2", "3", "4"], "gold": 3, "fewshot": dev}
    context, cont = prompts.choice_requests(mmlu)[3]
    assert context == ("The following are multiple choice questions (with answers) about high school physics.\n\n"
                       "dev 0?\nA. w\nB. x\nC. y\nD. z\nAnswer: A\n\n"
                       "dev 1?\nA. w\nB. x\nC. y\nD. z\nAnswer: B\n\n"
                       "What?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    assert cont == " D"
    with pytest.raises(prompts.PromptError, match="zero-shot"):
        prompts.choice_requests(piqa, num_fewshot=3)


def test_bits_per_byte_and_p_correct():
    # p = 1/16 for a 2-byte continuation: 4 bits over 2 bytes.
    assert continuous.bits_per_byte(math.log(1 / 16), "ab") == pytest.approx(2.0)
    assert continuous.bits_per_byte(math.log(0.5), " é") == pytest.approx(1 / 3)  # 3 UTF-8 bytes
    assert continuous.p_correct([math.log(0.2), math.log(0.6), math.log(0.2)], 1) == pytest.approx(0.6)
    assert continuous.p_correct([-1000.0, -1001.0], 0) == pytest.approx(1 / (1 + math.exp(-1)))
    with pytest.raises(ValueError):
        continuous.bits_per_byte(-1.0, "")


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (8, 10), (10, 10), (57, 200), (1000, 1838)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = report.wilson_interval(k, n)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9), (k, n)


def test_bootstrap_interval_covers_the_mean_sensibly():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 1.0, size=400)
    lo, hi = report.bootstrap_interval(x)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert lo < x.mean() < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert report.bootstrap_interval(x) == (lo, hi)  # seeded


def test_metric_entry_and_markdown_layout():
    entry = report.metric_entry([1, 0, 1, 1], "wilson")
    assert entry["value"] == 0.75 and entry["n"] == 4 and entry["ci_method"] == "wilson"
    results = {"checkpoint": "ck", "tasks": {
        "piqa": {"primary": "acc", "metrics": {"acc": entry, "bpb": report.metric_entry([1.0, 2.0], "bootstrap")},
                 "chance": 0.5, "n": 4, "num_fewshot": 0},
        "winogrande": {"error": "BenchmarkError: files missing", "metrics": {}, "n": 0},
        "gsm8k": {"primary": "accuracy", "metrics": {"accuracy": report.metric_entry([0, 0], "wilson")}, "n": 2},
    }}
    md = report.markdown_table(results)
    common = md.index("## Common sense reasoning")
    language = md.index("## Language understanding and knowledge")
    reasoning = md.index("## Multi-step reasoning")
    assert common < language < reasoning
    assert "| WinoGrande | - | - | - | - | - | - | failed: BenchmarkError: files missing |" in md
    assert "| PIQA | acc | 75.0 |" in md
    assert "Wilson" in md and "bootstrap" in md


@pytest.mark.parametrize("text,expected", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("The answer is $1,234.50.", "$1,234.50"),
    ("so in total 3 + 4 = 7 apples", "7"),
    ("It costs 1,000,000 dollars in all.", "1,000,000"),
    ("no digits here", None),
])
def test_gsm8k_answer_extraction(text, expected):
    assert gsm8k.extract_answer(text) == expected


def test_gsm8k_number_matching():
    assert gsm8k.answers_match("$1,234.50", "1234.5")
    assert gsm8k.answers_match("18.00", "18")
    assert gsm8k.answers_match("-5", "-5")
    assert gsm8k.answers_match(18, "18")
    assert not gsm8k.answers_match("17", "18")
    assert not gsm8k.answers_match(None, "18")
    assert not gsm8k.answers_match("inf", "18")


def test_gsm8k_via_coding_runs_programs_in_the_sandbox(sandbox):
    items = [{"id": "g/0", "question": "Janet has 16 eggs, eats 3, bakes with 4 and sells the rest at $2. Money?",
              "answer": "18"},
             {"id": "g/1", "question": "2 + 2?", "answer": "4"},
             {"id": "g/2", "question": "3 * 3?", "answer": "9"},
             {"id": "g/3", "question": "1 + 1?", "answer": "2"}]
    completions = ["    eggs = 16 - 3 - 4\n    return eggs * 2\n",
                   "    return 5\n",
                   "    return (3 *\n",  # does not parse
                   "    print('thinking')\n"]  # returns None
    result = gsm8k.score_code_completions(items, completions, sandbox=sandbox)
    by_id = {r["id"]: r for r in result.items}
    assert by_id["g/0"]["correct"] and by_id["g/0"]["predicted"] == "18"
    assert by_id["g/1"]["error_type"] == "WrongAnswer"
    assert by_id["g/2"]["error_type"] == "SyntaxError"
    assert by_id["g/3"]["predicted"] == "None" and not by_id["g/3"]["correct"]
    assert result.accuracy == 0.25


def test_squad_exact_match_and_f1():
    assert squad.exact_match("The Denver Broncos!", ["Denver Broncos"]) == 1.0
    assert squad.exact_match("Broncos", ["Denver Broncos"]) == 0.0
    # prediction tokens {denver, broncos, team}, gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert squad.f1("Denver Broncos team", ["Denver Broncos"]) == pytest.approx(0.8)
    assert squad.f1("", ["x"]) == 0.0

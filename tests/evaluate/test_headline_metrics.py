"""The headline metric of each task is the phi-1.5 report's, the other metric is shown beside it, and acc /
acc_norm follow lm-eval's definitions on an item where they disagree."""

import numpy as np

from textbooks.evaluate import benchmarks, multiple_choice, prompts, report, squad, suite

# The phi-1.5 report (arXiv:2309.05463, Section 3) reports zero-shot accuracy for every multiple-choice task
# (MMLU 2-shot), SQuAD exact match, GSM8K accuracy and HumanEval/MBPP pass@1.
REPORT_METRIC = {"winogrande": "acc", "arc_easy": "acc", "arc_challenge": "acc", "boolq": "acc", "siqa": "acc",
                 "piqa": "acc", "hellaswag": "acc", "mmlu": "acc", "openbookqa": "acc"}


def test_headline_is_the_reports_accuracy_for_every_multiple_choice_task():
    mc_tasks = [t for t in suite.PHI15_SUITE if benchmarks.benchmark_kind(t) == "multiple_choice"]
    assert sorted(mc_tasks) == sorted(REPORT_METRIC)
    assert multiple_choice.PRIMARY_METRIC == REPORT_METRIC
    assert multiple_choice.SECONDARY_METRIC["winogrande"] is None
    assert {t for t, m in multiple_choice.SECONDARY_METRIC.items() if m == "acc_norm"} == set(REPORT_METRIC) - {
        "winogrande"}


def _lm_eval_acc(lls, gold):
    """lm-eval's acc: the argmax of the summed log-likelihoods."""
    return float(int(np.argmax(lls)) == gold)


def _lm_eval_acc_norm(lls, choices, gold):
    """lm-eval's acc_norm: the argmax of log-likelihood / length of the choice string."""
    return float(int(np.argmax([ll / len(c) for ll, c in zip(lls, choices)])) == gold)


def test_acc_and_acc_norm_disagree_on_a_hand_made_item():
    # A short wrong answer with a higher total log-likelihood, a long right one with a higher per-character one:
    # acc picks "no" (-3 > -9); acc_norm picks the long answer (-9/27 = -0.33 > -3/2 = -1.5).
    item = {"id": "hellaswag/x", "task": "hellaswag", "gold": 1,
            "choices": ["no", "a considerably longer answer"]}
    lls = [-3.0, -9.0]
    norm = prompts.norm_texts(item)
    assert norm == item["choices"]  # lm-eval divides by the choice string, without the leading space
    got = multiple_choice.mc_decisions(lls, item["gold"], [len(t) for t in norm])
    assert got["acc"] == _lm_eval_acc(lls, 1) == 0.0
    assert got["acc_norm"] == _lm_eval_acc_norm(lls, item["choices"], 1) == 1.0
    assert (got["pred"], got["pred_norm"]) == (0, 1)


def _mc_entry(acc, acc_norm):
    return {"kind": "multiple_choice", "primary": multiple_choice.PRIMARY_METRIC["hellaswag"],
            "secondary": multiple_choice.SECONDARY_METRIC["hellaswag"], "n": len(acc), "num_fewshot": 0,
            "chance": 0.25, "metrics": {"acc": report.metric_entry(acc, "wilson"),
                                        "acc_norm": report.metric_entry(acc_norm, "wilson")}}


def test_the_tables_show_the_headline_and_the_other_metric_in_its_own_column():
    results = {"checkpoint": "ck", "tasks": {
        "hellaswag": _mc_entry([1, 0, 0, 0], [1, 1, 1, 0]),
        "squad": {"kind": "generation", "primary": "exact_match", "secondary": "f1", "n": 2, "num_fewshot": 0,
                  "subset": squad.SUBSET_NOTE,
                  "metrics": {"exact_match": report.metric_entry([1, 0], "wilson"),
                              "f1": report.metric_entry([1.0, 0.5], "bootstrap")}},
    }}
    md = report.markdown_table(results)
    assert "| Second metric [95% CI] |" in md
    row = next(line for line in md.splitlines() if line.startswith("| HellaSwag |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["acc", "25.0"] and cells[4].startswith("acc_norm 75.0 [")
    squad_row = next(line for line in md.splitlines() if line.startswith("| SQuAD"))
    assert "subset of 1,000" in squad_row and "f1 75.0" in squad_row
    lines = suite.summarize(results).splitlines()
    assert lines[0].startswith("hellaswag") and "acc         0.2500" in lines[0] and "acc_norm 0.7500" in lines[0]


def test_squad_subset_size_is_what_the_package_holds():
    items = benchmarks.load_benchmark("squad")
    assert len(items) == squad.SUBSET_SIZE

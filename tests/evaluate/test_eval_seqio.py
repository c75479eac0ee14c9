"""The multiple-choice suites as seqio Tasks: seqio.Evaluator with rank classification gives our numbers."""

import pytest

from textbooks.evaluate import benchmarks, multiple_choice, seqio_tasks


@pytest.mark.parametrize("task", ["piqa", "winogrande"])
def test_seqio_evaluator_reproduces_score_items(tiny_model, task):
    import seqio

    from textbooks.vocab.registry import get_vocabulary

    names = seqio_tasks.register_eval_tasks(get_vocabulary("spm8k"), limit=10)
    assert f"textbooks_eval.{task}" in names and len(names) == len(seqio_tasks.MC_TASKS)
    evaluator = seqio.Evaluator(mixture_or_task_name=f"textbooks_eval.{task}",
                                feature_converter=seqio_tasks.TextFeatureConverter(),
                                eval_split=benchmarks.default_split(task))
    metrics, _ = evaluator.evaluate(compute_metrics=True, score_fn=seqio_tasks.make_score_fn(tiny_model))
    got = {k: v.value for k, v in metrics.result()[f"textbooks_eval.{task}"].items()}
    ours = multiple_choice.score_items(tiny_model, benchmarks.load_benchmark(task, limit=10))
    assert got["num_items"] == 10
    assert got["acc"] == pytest.approx(ours.mean("acc"))
    if task == "winogrande":
        assert "acc_norm" not in got
    else:
        assert got["acc_norm"] == pytest.approx(ours.mean("acc_norm"))


def test_rank_classification_metric_by_hand():
    # Item 0: choices scored (-1, -3), gold 1, lengths (1, 10): acc picks 0 (wrong); acc_norm -1/1 < -3/10 picks 1.
    # Item 1: choices scored (-5, -2, -9), gold 1: both right.
    targets = [(0, 0, False, 1.0), (0, 1, True, 10.0), (1, 0, False, 2.0), (1, 1, True, 2.0), (1, 2, False, 2.0)]
    scores = [-1.0, -3.0, -5.0, -2.0, -9.0]
    out = seqio_tasks.rank_classification_metrics(targets, scores)
    assert out["acc"].value == 0.5 and out["acc_norm"].value == 1.0 and out["num_items"].value == 2

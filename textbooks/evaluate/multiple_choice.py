"""Multiple-choice benchmarks scored by log-likelihood, with lm-eval-harness's ``acc`` and ``acc_norm``.

For an item with choices ``c_1..c_n`` and log-likelihoods ``ll_i = log p(" " + c_i | context)``:

* ``acc`` = 1 if ``argmax_i ll_i`` is the gold index (ties go to the first maximum, as ``np.argmax``);
* ``acc_norm`` = 1 if ``argmax_i ll_i / len(c_i)`` is the gold index, where ``len`` is the length of lm-eval's
  choice string (``doc_to_choice``, without the leading space). Python's ``len`` counts characters; for the
  ASCII answers of these benchmarks that is their byte length. WinoGrande's choices share one continuation
  (the options change the context), so it reports ``acc`` only, as lm-eval does.

The same log-likelihoods give the continuous metrics of :mod:`textbooks.evaluate.continuous` (bits per byte of
the gold choice, probability of the correct choice).

Headline metric per task (:data:`PRIMARY_METRIC`): the phi-1.5 report ("Textbooks Are All You Need II", Li et
al. 2023, arXiv:2309.05463, Section 3 "Benchmark results" and its three tables) evaluates with lm-eval-harness
and reports zero-shot *accuracy* (MMLU 2-shot) - lm-eval's ``acc`` - for every multiple-choice task:

* WinoGrande, ARC-Easy, ARC-Challenge, BoolQ, SIQA (common sense reasoning table): ``acc``. The report's
  ARC-Challenge 0.444 and SIQA 0.526 for phi-1.5 are accuracies; WinoGrande has no ``acc_norm`` in lm-eval
  (its choices share one continuation), and for BoolQ (choices " no" / " yes") lm-eval reports ``acc``.
* PIQA, HellaSwag, MMLU, OpenBookQA (language understanding and knowledge table): ``acc``. HellaSwag 0.476 and
  OpenBookQA 0.372 match lm-eval's zero-shot ``acc`` of the public phi-1_5 weights, not ``acc_norm`` (about
  0.62 for HellaSwag); MMLU's lettered choices (`` A`` .. `` D``) have equal lengths, so there ``acc_norm`` =
  ``acc`` and lm-eval's ``mmlu`` reports ``acc``.
* SQuAD (same table): exact match, a generation metric (:mod:`textbooks.evaluate.squad`); GSM8K, HumanEval and
  MBPP (multi-step reasoning table): accuracy and pass@1.

lm-eval's task configs list both metrics for PIQA, HellaSwag, ARC and OpenBookQA (``metric_list``: acc,
acc_norm) and ``acc`` alone for BoolQ, SIQA, MMLU and WinoGrande; leaderboards often quote ``acc_norm``. Both are
computed here for every task that has choice strings, stored, and shown in their own columns, so either can be
compared; only the headline follows the report.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from textbooks.evaluate import continuous, prompts

# The headline metric of each task: the phi-1.5 report's (see the module docstring). Both acc and acc_norm are
# always computed and stored; the other one is shown in its own column (SECONDARY_METRIC).
PRIMARY_METRIC: dict[str, str] = {
    "winogrande": "acc", "arc_easy": "acc", "arc_challenge": "acc", "boolq": "acc", "siqa": "acc",
    "piqa": "acc", "hellaswag": "acc", "mmlu": "acc", "openbookqa": "acc",
}
# The metric shown next to the headline (None: the task has no second metric, as WinoGrande in lm-eval).
SECONDARY_METRIC: dict[str, str | None] = {
    "winogrande": None, "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "boolq": "acc_norm",
    "siqa": "acc_norm", "piqa": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc_norm", "openbookqa": "acc_norm",
}


def mc_decisions(logprobs: Sequence[float], gold: int, norm_lengths: Sequence[float] | None) -> dict:
    """acc / acc_norm of one item from its choice log-likelihoods (lm-eval's definitions).

    Args:
        logprobs: log-likelihood of each choice's continuation.
        gold: index of the correct choice.
        norm_lengths: lengths dividing the log-likelihoods for acc_norm (None: no acc_norm).

    Returns:
        {'pred', 'acc', 'pred_norm', 'acc_norm'} (the last two None without norm_lengths).
    """
    lls = np.asarray(logprobs, np.float64)
    pred = int(np.argmax(lls))
    out = {"pred": pred, "acc": float(pred == gold), "pred_norm": None, "acc_norm": None}
    if norm_lengths is not None:
        lengths = np.asarray(norm_lengths, np.float64)
        pred_norm = int(np.argmax(lls / lengths))
        out.update(pred_norm=pred_norm, acc_norm=float(pred_norm == gold))
    return out


@dataclasses.dataclass
class MCResult:
    """Scores of one multiple-choice task.

    Attributes:
        task: benchmark name.
        num_fewshot: shots in the prompt.
        items: per-item records: id, gold, logprobs, pred, acc, pred_norm, acc_norm, bpb, p_correct.
        chance: expected accuracy of a uniform guess (mean of 1 / number of choices).
        truncated: requests cut on the left to fit the model.
    """

    task: str
    num_fewshot: int
    items: list[dict]
    chance: float
    truncated: int = 0

    def values(self, metric: str) -> list[float]:
        return [r[metric] for r in self.items if r.get(metric) is not None]

    def mean(self, metric: str) -> float | None:
        v = self.values(metric)
        return float(np.mean(v)) if v else None


def score_items(model, items: Sequence[Mapping], *, num_fewshot: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> MCResult:
    """Scores every choice of every item with one batched pass of ``model.loglikelihood``.

    Args:
        model: an :class:`textbooks.evaluate.lm.EvalModel` (or anything with the same ``loglikelihood``).
        items: multiple-choice items of one task.
        num_fewshot: shots (default: the phi-1.5 protocol for the task).
        progress: called with (requests done, total).
    """
    if not items:
        raise ValueError("score_items needs at least one item")
    task = items[0]["task"]
    shots = prompts.fewshot_for(task) if num_fewshot is None else int(num_fewshot)
    requests, spans = [], []
    for item in items:
        reqs = prompts.choice_requests(item, shots)
        spans.append((len(requests), len(reqs)))
        requests += reqs
    results = model.loglikelihood(requests, progress=progress)
    records = []
    for item, (start, n) in zip(items, spans):
        lls = [results[start + j].logprob for j in range(n)]
        norm = prompts.norm_texts(item)
        rec = {"id": item["id"], "gold": item["gold"], "logprobs": [round(x, 6) for x in lls]}
        rec.update(mc_decisions(lls, item["gold"], None if norm is None else [len(t) for t in norm]))
        gold_ctx, gold_cont = requests[start + item["gold"]]
        rec["bpb"] = continuous.bits_per_byte(lls[item["gold"]], gold_cont)
        rec["p_correct"] = continuous.p_correct(lls, item["gold"])
        rec["greedy_gold"] = results[start + item["gold"]].is_greedy
        records.append(rec)
    chance = float(np.mean([1.0 / len(item["choices"]) for item in items]))
    return MCResult(task=task, num_fewshot=shots, items=records, chance=chance,
                    truncated=sum(r.truncated for r in results))

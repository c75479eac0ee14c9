"""Continuous benchmark metrics: bits per byte of the gold answer and the probability of the correct choice.

Accuracy moves in steps and sits at chance for small models; these two move smoothly with training, which is
what a mixture sweep needs to rank small runs (the reason OLMES and DataDecide report them):

* ``bpb`` - ``-log2 p(gold continuation | context) / utf8_bytes(gold continuation)``, averaged over items. Any
  task has it: multiple choice (the gold choice), SQuAD (the first gold answer), GSM8K (the worked solution),
  HumanEval and MBPP (the canonical solution after the prompt).
* ``p_correct`` - ``softmax(log-likelihoods of the choices)[gold]``: the probability mass the model puts on the
  correct choice when restricted to the choices, averaged over items (multiple choice only).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from textbooks.evaluate import prompts

LN2 = math.log(2.0)


def bits_per_byte(logprob: float, text: str) -> float:
    """Bits per UTF-8 byte of ``text`` given its natural-log probability ``logprob``.

    Raises:
        ValueError: ``text`` is empty.
    """
    n = len(text.encode("utf-8"))
    if n == 0:
        raise ValueError("bits_per_byte of an empty continuation is undefined")
    return -logprob / LN2 / n


def choice_probabilities(logprobs: Sequence[float]) -> np.ndarray:
    """Softmax of the choices' log-likelihoods (numerically stable)."""
    x = np.asarray(logprobs, np.float64)
    x = x - x.max()
    e = np.exp(x)
    return e / e.sum()


def p_correct(logprobs: Sequence[float], gold: int) -> float:
    """Probability of the gold choice, normalized over the choices."""
    return float(choice_probabilities(logprobs)[gold])


@dataclasses.dataclass
class GoldScores:
    """Per-item gold-answer scores of one task."""

    task: str
    ids: list[str]
    bpb: list[float]
    logprob: list[float]
    num_bytes: list[int]
    truncated: int

    def mean_bpb(self) -> float:
        return float(np.mean(self.bpb)) if self.bpb else float("nan")

    def aggregate_bpb(self) -> float:
        """Total bits over total bytes (weights long answers more than :meth:`mean_bpb`)."""
        return float(-np.sum(self.logprob) / LN2 / max(1, np.sum(self.num_bytes)))


def score_gold(model, items: Sequence[Mapping], *,
               progress: Callable[[int, int], None] | None = None) -> GoldScores:
    """Bits per byte of each item's gold continuation (see :func:`prompts.gold_continuation`)."""
    requests = [prompts.gold_continuation(item) for item in items]
    results = model.loglikelihood(requests, progress=progress)
    bpb, lps, nbytes = [], [], []
    for (_, cont), r in zip(requests, results):
        bpb.append(bits_per_byte(r.logprob, cont))
        lps.append(r.logprob)
        nbytes.append(len(cont.encode("utf-8")))
    task = items[0]["task"] if items else ""
    return GoldScores(task=task, ids=[i["id"] for i in items], bpb=bpb, logprob=lps, num_bytes=nbytes,
                      truncated=sum(r.truncated for r in results))

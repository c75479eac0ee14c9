"""The multiple-choice benchmarks as seqio Tasks, scored by rank classification with ``seqio.Evaluator``.

Each registered task ``textbooks_eval.<benchmark>`` (e.g. ``textbooks_eval.piqa``) reads the benchmark through
:func:`textbooks.evaluate.benchmarks.load_benchmark`, and its preprocessors follow T5's rank-classification
recipe: :func:`rank_classification` expands every item into one example per choice with ``inputs`` (the
context), ``targets`` (the continuation), ``idx = [item, choice]`` and ``is_correct``; then
``seqio.preprocessors.tokenize`` adds token ids (keeping the ``*_pretokenized`` strings). The score metric
:func:`rank_classification_metrics` groups the per-choice log-likelihood scores by item and reports ``acc``
and ``acc_norm`` with lm-eval's definitions (see :mod:`textbooks.evaluate.multiple_choice`).

To evaluate with seqio's Evaluator::

    evaluator = seqio.Evaluator(mixture_or_task_name="textbooks_eval.piqa",
                                feature_converter=TextFeatureConverter(), eval_split="validation")
    metrics, _ = evaluator.evaluate(compute_metrics=True, score_fn=make_score_fn(eval_model))

:func:`make_score_fn` scores the pretokenized (context, continuation) strings with
:meth:`textbooks.evaluate.lm.EvalModel.loglikelihood`, so the numbers equal those of ``textbooks eval``.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from textbooks.evaluate import benchmarks, prompts
from textbooks.vocab.registry import get_vocabulary

TASK_PREFIX = "textbooks_eval."
MC_TASKS = tuple(t for t in benchmarks.BENCHMARKS if benchmarks.benchmark_kind(t) == "multiple_choice")


def _examples(name: str, split: str, limit: int | None) -> Callable:
    def generate():
        for index, item in enumerate(benchmarks.load_benchmark(name, split, limit=limit)):
            requests = prompts.choice_requests(item)
            norm = prompts.norm_texts(item)
            yield {
                "index": np.int32(index),
                "id": item["id"],
                "contexts": [c for c, _ in requests],
                "continuations": [x for _, x in requests],
                "norm_lengths": np.asarray([len(t) for t in norm] if norm else [0] * len(requests), np.float32),
                "gold": np.int32(item["gold"]),
            }

    return generate


def _dataset_fn(name: str, limit: int | None):
    def dataset_fn(split: str, shuffle_files: bool = False, seed: int | None = None):
        del shuffle_files, seed
        signature = {
            "index": tf.TensorSpec([], tf.int32), "id": tf.TensorSpec([], tf.string),
            "contexts": tf.TensorSpec([None], tf.string), "continuations": tf.TensorSpec([None], tf.string),
            "norm_lengths": tf.TensorSpec([None], tf.float32), "gold": tf.TensorSpec([], tf.int32),
        }
        return tf.data.Dataset.from_generator(_examples(name, split, limit), output_signature=signature)

    return dataset_fn


def rank_classification(dataset):
    """Expands each multiple-choice example into one example per choice (T5's rank-classification format).

    Output features: ``inputs``, ``targets`` (strings), ``idx`` ([item index, choice index]), ``is_correct``,
    ``norm_length`` (the acc_norm divisor of the choice; 0 when the task has none).
    """
    def expand(ex):
        n = tf.shape(ex["continuations"])[0]
        choice = tf.range(n, dtype=tf.int32)
        return tf.data.Dataset.from_tensor_slices({
            "inputs": ex["contexts"],
            "targets": ex["continuations"],
            "idx": tf.stack([tf.fill([n], ex["index"]), choice], axis=1),
            "is_correct": tf.equal(choice, ex["gold"]),
            "norm_length": ex["norm_lengths"],
        })

    return dataset.flat_map(expand)


def postprocess_target(output: Any, example: Mapping[str, Any] | None = None, is_target: bool = False) -> Any:
    """For targets, returns (item index, choice index, is_correct, norm_length) for the score metric."""
    if is_target and example is not None:
        idx = np.asarray(example["idx"]).tolist()
        return (int(idx[0]), int(idx[1]), bool(example["is_correct"]), float(example["norm_length"]))
    return output


def rank_classification_metrics(targets: Sequence[tuple], scores: Sequence[float]) -> dict[str, Any]:
    """acc / acc_norm from per-choice log-likelihood scores grouped by item (first maximum wins ties)."""
    by_item: dict[int, list[tuple[int, bool, float, float]]] = collections.defaultdict(list)
    for (item, choice, correct, norm_len), score in zip(targets, scores):
        by_item[item].append((choice, correct, norm_len, float(np.sum(score))))
    acc, acc_norm = [], []
    for rows in by_item.values():
        rows.sort()
        lls = np.array([r[3] for r in rows])
        gold = [r[0] for r in rows if r[1]]
        if len(gold) != 1:
            continue
        acc.append(float(int(np.argmax(lls)) == gold[0]))
        lengths = np.array([r[2] for r in rows])
        if np.all(lengths > 0):
            acc_norm.append(float(int(np.argmax(lls / lengths)) == gold[0]))
    out = {"acc": seqio.metrics.Scalar(float(np.mean(acc)) if acc else float("nan")),
           "num_items": seqio.metrics.Scalar(len(acc))}
    if acc_norm:
        out["acc_norm"] = seqio.metrics.Scalar(float(np.mean(acc_norm)))
    return out


def register_eval_tasks(vocabulary=None, *, limit: int | None = None, prefix: str = TASK_PREFIX) -> list[str]:
    """Registers ``<prefix><benchmark>`` for every multiple-choice benchmark; returns the task names.

    Args:
        vocabulary: seqio vocabulary of the output features (default: ``get_vocabulary('phi')``).
        limit: items per task (a seeded subset), e.g. for quick checks.
        prefix: task name prefix.
    """
    if vocabulary is None:
        vocabulary = get_vocabulary("phi")
    names = []
    features = {"inputs": seqio.Feature(vocabulary, add_eos=False), "targets": seqio.Feature(vocabulary, add_eos=False)}
    for bench in MC_TASKS:
        name = f"{prefix}{bench}"
        splits = [benchmarks.default_split(bench)]
        if name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
                name,
                source=seqio.FunctionDataSource(_dataset_fn(bench, limit), splits=splits),
                preprocessors=[rank_classification, seqio.preprocessors.tokenize],
                output_features=features,
                postprocess_fn=postprocess_target,
                metric_fns=[rank_classification_metrics],
        )
        names.append(name)
    return names


def make_score_fn(model) -> Callable:
    """A seqio ``score_fn``: log-likelihood of each example's pretokenized target given its input."""

    def score_fn(dataset) -> list[tuple[int, float]]:
        indices, requests = [], []
        for index, ex in dataset.as_numpy_iterator():
            indices.append(int(index))
            requests.append((ex["inputs_pretokenized"].decode("utf-8"), ex["targets_pretokenized"].decode("utf-8")))
        results = model.loglikelihood(requests)
        return [(i, r.logprob) for i, r in zip(indices, results)]

    return score_fn


class TextFeatureConverter(seqio.PassThroughFeatureConverter):
    """Pass-through feature converter for the Evaluator: keeps the strings :func:`make_score_fn` reads."""

    TASK_FEATURES = {"inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
                     "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES: dict = {}
    PACKING_FEATURE_DTYPES: dict = {}
    pack = False

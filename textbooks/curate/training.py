"""Training the educational-value classifier: label sources and the gin-configurable ``train_classifier``.

``textbooks curate --train_classifier --gin_file=experiments/curate/train_edu_classifier_web.gin`` calls
:func:`train_classifier`, which

1. collects labeled documents from one source: ``references`` (positives vs a random negative pool, DCLM),
   ``judge`` (LLM rubric scores 0–5, FineWeb-Edu/phi-1) or ``meta`` (labels already stored in records);
2. writes them with their labels (``meta.labels[label_name]``, ``meta.label_source``) as shards under
   ``<output_dir>/labels/``, so the training data can be audited and reused;
3. embeds them and fits the classifier (:mod:`textbooks.curate.classifier`), reporting held-out precision,
   recall and F1, and saves it to ``<output_dir>`` (``classifier.joblib`` + ``classifier.json``).

Sampling is deterministic: each input contributes the ``max_docs_per_class`` documents with the smallest
hash of ``(seed, id)``.
"""

from __future__ import annotations

import heapq
import json
import logging
from typing import Iterable, Sequence

import gin

from textbooks.curate.classifier import ClassifierConfig, LabeledExample, expand_path, train_on_examples
from textbooks.curate.embeddings import EncoderSpec
from textbooks.curate.input_specs import ReadConfig
from textbooks.curate.io import read_records
from textbooks.curate.judge import JudgeConfig, judge_texts
from textbooks.curate.textnorm import stable_unit_interval
from textbooks.data import records as rec

logger = logging.getLogger(__name__)
LABEL_SOURCES = ("references", "judge", "meta")


def sample_records(specs: Sequence, n: int, seed: int = 0, read_config: ReadConfig | None = None) -> list[dict]:
    """The ``n`` records of ``specs`` with the smallest hash of ``(seed, id)`` (a deterministic random sample)."""
    records = read_records(specs, read_config)
    return heapq.nsmallest(n, records, key=lambda r: stable_unit_interval(r["id"], f"sample{seed}"))


def labels_from_references(positives: Sequence, negatives: Sequence, *, max_docs_per_class: int = 1000,
                           seed: int = 0, read_config: ReadConfig | None = None) -> list[LabeledExample]:
    """DCLM-style labels: documents of ``positives`` are 1, a random pool from ``negatives`` is 0."""
    pos = sample_records(positives, max_docs_per_class, seed, read_config)
    neg = sample_records(negatives, max_docs_per_class, seed, read_config)
    if not pos or not neg:
        raise ValueError(f"reference labels need both classes; read {len(pos)} positives from {list(positives)} "
                         f"and {len(neg)} negatives from {list(negatives)}")
    return ([LabeledExample(r["id"], r["text"], 1.0, f"positive:{r['role']}") for r in pos]
            + [LabeledExample(r["id"], r["text"], 0.0, f"negative:{r['role']}") for r in neg])


def labels_from_judge(inputs: Sequence, judge: JudgeConfig, *, max_docs: int = 1000, seed: int = 0,
                      read_config: ReadConfig | None = None) -> tuple[list[LabeledExample], dict]:
    """LLM-judge labels (0–5) for a deterministic sample of ``inputs``; returns the examples and counts
    (documents without a readable score are left out and counted)."""
    records = sample_records(inputs, max_docs, seed, read_config)
    results = judge_texts([r["text"] for r in records], judge)
    examples, counts = [], {"sent": len(records), "scored": 0, "unparsed": 0, "failed": 0}
    for r, res in zip(records, results):
        if res.error is not None:
            counts["failed"] += 1
        elif res.score is None:
            counts["unparsed"] += 1
        else:
            counts["scored"] += 1
            examples.append(LabeledExample(r["id"], r["text"], res.score, "judge"))
    return examples, counts


def labels_from_meta(inputs: Sequence, label_name: str, *, max_docs: int = 100_000, seed: int = 0,
                     read_config: ReadConfig | None = None) -> list[LabeledExample]:
    """Labels stored in records: ``meta.labels[label_name]``, else ``meta.scores[label_name]``."""
    out = []
    for r in sample_records(inputs, max_docs, seed, read_config):
        meta = r.get("meta") or {}
        value = (meta.get("labels") or {}).get(label_name, (meta.get("scores") or {}).get(label_name))
        if isinstance(value, (int, float)):  # bool counts as 0/1.
            out.append(LabeledExample(r["id"], r["text"], float(value), "meta"))
    return out


def write_labels(examples: Iterable[LabeledExample], directory: str, *, label_name: str,
                 label_source: str) -> list[str]:
    """Writes the labeled documents as shards (split ``train``) with ``meta.labels[label_name]``."""
    records = [rec.Record(id=e.id, text=e.text, role="labels", source=e.source or label_source, license="unknown",
                          split="train", meta={"labels": {label_name: e.label}, "label_source": label_source})
               for e in sorted(examples, key=lambda e: e.id)]
    return rec.write_shards(records, directory, "train", 1)


@gin.configurable
def train_classifier(*, output_dir: str, label_source: str = "references", positives: Sequence = (),
                     negatives: Sequence = (), inputs: Sequence = (), judge: JudgeConfig | None = None,
                     label_name: str = "edu", name: str = "edu_classifier", encoder: EncoderSpec | None = None,
                     config: ClassifierConfig | None = None, max_docs_per_class: int = 1000, seed: int = 0,
                     read_config: ReadConfig | None = None) -> dict:
    """Builds labels, trains the educational-value classifier and saves it to ``output_dir``.

    Args:
        output_dir: where ``classifier.joblib``, ``classifier.json`` and ``labels/`` go (local or remote).
        label_source: ``'references'`` (needs ``positives`` and ``negatives``), ``'judge'`` (needs ``inputs``
            and ``judge``) or ``'meta'`` (needs ``inputs`` whose records carry labels).
        positives / negatives / inputs: input specs (see :func:`textbooks.curate.input_specs.parse_input`).
        judge: the LLM judge endpoint and rubric.
        label_name: key of the label in ``meta.labels``.
        name: the classifier's name (the key its scores get in ``meta.scores``).
        encoder: embeddings (default MiniLM).
        config: model, thresholds, held-out split.
        max_docs_per_class: sample size per class (references) or in total (judge).
        seed: sampling seed.
        read_config: reading limits.

    Returns:
        The saved metadata (including held-out precision/recall/F1 under ``metrics``).

    Raises:
        ValueError: unknown label source or missing inputs for it.
    """
    encoder = encoder or EncoderSpec()
    config = config or ClassifierConfig()
    output_dir = expand_path(output_dir)
    extra: dict = {}
    if label_source == "references":
        if not positives or not negatives:
            raise ValueError("label_source='references' needs positives=[...] and negatives=[...] inputs")
        examples = labels_from_references(positives, negatives, max_docs_per_class=max_docs_per_class, seed=seed,
                                          read_config=read_config)
    elif label_source == "judge":
        if not inputs or judge is None:
            raise ValueError("label_source='judge' needs inputs=[...] and judge=@JudgeConfig()")
        examples, extra = labels_from_judge(inputs, judge, max_docs=max_docs_per_class, seed=seed,
                                            read_config=read_config)
    elif label_source == "meta":
        if not inputs:
            raise ValueError("label_source='meta' needs inputs=[...] with meta.labels")
        examples = labels_from_meta(inputs, label_name, seed=seed, read_config=read_config)
    else:
        raise ValueError(f"label_source must be one of {', '.join(LABEL_SOURCES)}; got {label_source!r}")
    if not examples:
        raise ValueError(f"no labeled examples from label_source={label_source!r}")
    write_labels(examples, rec.join(output_dir, "labels"), label_name=label_name, label_source=label_source)
    clf = train_on_examples(examples, encoder=encoder, config=config, label_source=label_source, name=name)
    clf.metadata["label_name"] = label_name
    if extra:
        clf.metadata["judge_counts"] = extra
    clf.save(output_dir)
    held = clf.metadata["metrics"]["held_out"]
    logger.info("classifier %s: held-out precision %.3f recall %.3f F1 %.3f (n=%d)", name, held["precision"],
                held["recall"], held["f1"], held["n"])
    print(json.dumps({"classifier": output_dir, "held_out": held}, indent=2))
    return clf.metadata

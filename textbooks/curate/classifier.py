"""The educational-value classifier: labels, training on embeddings, saving, and batched scoring in Beam.

Labels (stored with each training sample as ``meta.labels[label_name]`` / ``meta.scores``):

* ``'references'`` (DCLM's approach): documents of reference roles (e.g. textbook-like data) are positives,
  a random pool (e.g. ``web_raw``) negatives — :func:`labels_from_references`;
* ``'judge'`` (FineWeb-Edu / phi-1): an LLM grades each document 0–5 with an additive rubric
  (:mod:`textbooks.curate.judge`); the score is the label (regression) and ``score >= label_threshold`` the
  binary class;
* ``'meta'``: labels already stored in the input records' ``meta.labels`` or ``meta.scores``.

Models (scikit-learn, on unit-norm embeddings from :mod:`textbooks.curate.embeddings`): ``'random_forest'``
(phi-1), ``'logistic'`` and ``'ridge'`` heads (FineWeb-Edu's regression head). Held-out precision, recall and
F1 (and ROC-AUC, or MSE for ridge) are measured on a stratified split. A saved classifier is a folder with
``classifier.joblib`` and ``classifier.json`` (encoder, threshold, label source, training data fingerprint,
metrics). :class:`ClassifierFilter` scores documents in batches, loading encoder and model once per worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import logging
from typing import Iterable, Sequence

import apache_beam as beam
import gin
import numpy as np
from apache_beam.io.filesystems import FileSystems

from textbooks.curate import stages
from textbooks.curate.embeddings import EncoderSpec, embed_texts, get_encoder
from textbooks.data import records as rec

logger = logging.getLogger(__name__)
MODELS = ("logistic", "ridge", "random_forest")
MODEL_FILE = "classifier.joblib"
META_FILE = "classifier.json"
STAGE = "classifier"
SCORES = "scores"


@gin.configurable
@dataclasses.dataclass
class ClassifierConfig:
    """How to fit the classifier.

    Attributes:
        model: ``'logistic'``, ``'ridge'`` (regression on the label) or ``'random_forest'``.
        threshold: decision threshold on the score (probability of the positive class; for ridge, the
            predicted label value).
        label_threshold: for ridge, labels at or above it form the positive class in precision/recall/F1.
        test_fraction / seed: the stratified held-out split.
        n_estimators / max_depth: random forest; c: logistic inverse regularization; alpha: ridge
            regularization (None: chosen by leave-one-out cross-validation).
    """

    model: str = "logistic"
    threshold: float = 0.5
    label_threshold: float = 3.0
    test_fraction: float = 0.2
    seed: int = 0
    n_estimators: int = 300
    max_depth: int | None = None
    c: float = 1.0
    alpha: float | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"ClassifierConfig.model must be one of {', '.join(MODELS)}; got {self.model!r}")


@dataclasses.dataclass
class LabeledExample:
    """One training document with its label (1/0 for references, 0–5 for judge scores)."""

    id: str
    text: str
    label: float
    source: str = ""


def expand_path(path: str) -> str:
    """``~`` and environment variables expanded for local paths; remote paths unchanged."""
    import os

    return path if "://" in path else os.path.expanduser(os.path.expandvars(path))


def fingerprint(examples: Iterable[LabeledExample]) -> str:
    """SHA-256 over the sorted ``(id, label, sha256(text))`` of the training data."""
    rows = sorted((e.id, float(e.label), hashlib.sha256(e.text.encode("utf-8", "replace")).hexdigest())
                  for e in examples)
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row).encode())
    return h.hexdigest()


def _make_model(config: ClassifierConfig):
    if config.model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=config.n_estimators, max_depth=config.max_depth,
                                      class_weight="balanced", random_state=config.seed, n_jobs=1)
    if config.model == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=config.c, class_weight="balanced", max_iter=2000)
    from sklearn.linear_model import Ridge, RidgeCV

    if config.alpha is None:  # Regularization chosen by efficient leave-one-out cross-validation.
        return RidgeCV(alphas=np.logspace(-4, 3, 15))
    return Ridge(alpha=config.alpha)


def _binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    pred = (scores >= threshold).astype(int)
    p, r, f1, _ = precision_recall_fscore_support(y_true, pred, average="binary", zero_division=0)
    out = {"precision": float(p), "recall": float(r), "f1": float(f1), "accuracy": float(accuracy_score(y_true, pred)),
           "n": int(len(y_true)), "positives": int(y_true.sum())}
    if 0 < y_true.sum() < len(y_true):
        out["roc_auc"] = float(roc_auc_score(y_true, scores))
    return out


class QualityClassifier:
    """A fitted scikit-learn model on document embeddings plus its metadata.

    Attributes:
        model: the estimator; metadata: the JSON-able description saved as ``classifier.json``.
    """

    def __init__(self, model, metadata: dict):
        self.model = model
        self.metadata = metadata

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def name(self) -> str:
        return self.metadata.get("name", "quality")

    @property
    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec.from_dict(self.metadata["encoder"])

    def score_embeddings(self, x: np.ndarray) -> np.ndarray:
        """Scores: probability of the positive class, or the ridge prediction."""
        if self.metadata["model"] == "ridge":
            return self.model.predict(x).astype(np.float64)
        classes = list(self.model.classes_)
        return self.model.predict_proba(x)[:, classes.index(1)].astype(np.float64)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.score_embeddings(get_encoder(self.encoder_spec).embed(texts))

    def save(self, directory: str) -> list[str]:
        """Writes ``classifier.joblib`` and ``classifier.json`` into ``directory`` (local or remote)."""
        import joblib

        directory = expand_path(directory)
        rec.makedirs(directory)
        buf = _io.BytesIO()
        joblib.dump(self.model, buf)
        paths = [rec.join(directory, MODEL_FILE), rec.join(directory, META_FILE)]
        with FileSystems.create(paths[0]) as f:
            f.write(buf.getvalue())
        with FileSystems.create(paths[1]) as f:
            f.write((json.dumps(self.metadata, indent=2, sort_keys=True) + "\n").encode())
        return paths

    @classmethod
    def load(cls, directory: str) -> "QualityClassifier":
        """Reads a folder written by :meth:`save`.

        Raises:
            FileNotFoundError: the folder lacks ``classifier.json`` or ``classifier.joblib``.
        """
        import joblib

        directory = expand_path(directory)
        meta_path, model_path = rec.join(directory, META_FILE), rec.join(directory, MODEL_FILE)
        for p in (meta_path, model_path):
            if not FileSystems.exists(p):
                raise FileNotFoundError(f"classifier file {p!r} missing; train one with `textbooks curate "
                                        f"--train_classifier --gin_file=...`")
        with FileSystems.open(meta_path, compression_type="uncompressed") as f:
            metadata = json.loads(f.read().decode())
        with FileSystems.open(model_path, compression_type="uncompressed") as f:
            model = joblib.load(_io.BytesIO(f.read()))
        return cls(model, metadata)


def fit_classifier(embeddings: np.ndarray, examples: Sequence[LabeledExample], *, config: ClassifierConfig,
                   encoder: EncoderSpec, label_source: str, name: str = "quality",
                   encoder_info: dict | None = None) -> QualityClassifier:
    """Fits on a stratified split of ``(embeddings, labels)``, measures the held-out part, refits on all data.

    Raises:
        ValueError: fewer than two classes, or too few examples to hold some out.
    """
    from sklearn.model_selection import train_test_split

    import sklearn

    y = np.array([e.label for e in examples], dtype=np.float64)
    binary = (y >= config.label_threshold).astype(int) if config.model == "ridge" else y.astype(int)
    if len(set(binary.tolist())) < 2:
        raise ValueError(f"training data has a single class ({len(examples)} examples); give both positives "
                         f"and negatives")
    idx = np.arange(len(examples))
    train_idx, test_idx = train_test_split(idx, test_size=config.test_fraction, random_state=config.seed,
                                           stratify=binary)
    model = _make_model(config)
    target = y if config.model == "ridge" else binary
    model.fit(embeddings[train_idx], target[train_idx])
    clf = QualityClassifier(model, {"model": config.model})
    test_scores = clf.score_embeddings(embeddings[test_idx])
    metrics = {"held_out": _binary_metrics(binary[test_idx], test_scores, config.threshold),
               "train_size": int(len(train_idx)), "test_size": int(len(test_idx))}
    if config.model == "ridge":
        metrics["held_out"]["mse"] = float(np.mean((test_scores - y[test_idx]) ** 2))
    final = _make_model(config)
    final.fit(embeddings, target)
    metadata = {
        "name": name, "model": config.model, "config": dataclasses.asdict(config), "threshold": config.threshold,
        "label_source": label_source, "encoder": encoder.to_dict(), "encoder_info": encoder_info or {},
        "training_fingerprint": fingerprint(examples), "num_examples": len(examples),
        "class_balance": {"positive": int(binary.sum()), "negative": int(len(binary) - binary.sum())},
        "metrics": metrics, "sklearn_version": sklearn.__version__,
        "note": "metrics are measured on the held-out split; the saved model is refit on all examples",
    }
    return QualityClassifier(final, metadata)


def train_on_examples(examples: Sequence[LabeledExample], *, encoder: EncoderSpec | None = None,
                      config: ClassifierConfig | None = None, label_source: str = "references",
                      name: str = "quality") -> QualityClassifier:
    """Embeds ``examples`` with ``encoder`` and fits the classifier (see :func:`fit_classifier`)."""
    encoder = encoder or EncoderSpec()
    config = config or ClassifierConfig()
    model = get_encoder(encoder)
    x = embed_texts([e.text for e in examples], encoder, desc="embedding training documents")
    return fit_classifier(x, examples, config=config, encoder=encoder, label_source=label_source, name=name,
                          encoder_info=model.describe())


# ----------------------------------------------------------------------------------------------------------
# Beam scoring.


@gin.configurable
@dataclasses.dataclass
class ClassifierStageConfig:
    """Scoring (and filtering) with a saved classifier.

    Attributes:
        path: folder written by :meth:`QualityClassifier.save`.
        threshold: overrides the saved decision threshold.
        score_name: key in ``meta.scores`` (default: the classifier's name).
        filter: drop documents scoring below the threshold; False only annotates.
        batch_size: documents per batch handed to the encoder.
    """

    path: str = ""
    threshold: float | None = None
    score_name: str | None = None
    filter: bool = True
    batch_size: int = 64


class _ScoreDoFn(beam.DoFn):
    def __init__(self, config: ClassifierStageConfig, stage: str):
        self.config = config
        self.stage = stage
        self.classifier = None
        self.encoder = None
        self.counters = None

    def setup(self):
        self.classifier = QualityClassifier.load(self.config.path)
        self.encoder = get_encoder(self.classifier.encoder_spec)
        self.counters = stages.StageCounters(self.stage)
        self.threshold = self.config.threshold if self.config.threshold is not None else self.classifier.threshold
        self.name = self.config.score_name or self.classifier.name

    def process(self, batch: list[dict]):
        scores = self.classifier.score_embeddings(self.encoder.embed([r["text"] for r in batch]))
        for record, score in zip(batch, scores):
            tokens = self.counters.seen(record)
            keep = bool(score >= self.threshold)
            record = stages.set_score(record, self.name, float(score))
            yield beam.pvalue.TaggedOutput(SCORES, (self.name, float(score)))
            if keep or not self.config.filter:
                self.counters.kept(record, tokens)
                yield record
            else:
                self.counters.dropped(record, "below_threshold", tokens)
                yield beam.pvalue.TaggedOutput(stages.DROPPED, stages.mark_dropped(
                        record, self.stage, "below_threshold", score=float(score), threshold=self.threshold))


class ClassifierFilter(beam.PTransform):
    """Beam stage: scores documents in batches and keeps those at or above the threshold.

    Returns a dict: ``kept``, ``dropped``, ``scores`` (``(score name, value)`` pairs for histograms).
    """

    def __init__(self, config: ClassifierStageConfig, stage: str = STAGE):
        super().__init__()
        if not config.path:
            raise ValueError("ClassifierStageConfig.path is empty; point it at a trained classifier folder")
        self.config = config
        self.stage = stage

    def expand(self, records):
        out = (records
               | "Batch" >> beam.BatchElements(min_batch_size=min(8, self.config.batch_size),
                                               max_batch_size=self.config.batch_size)
               | "Score" >> beam.ParDo(_ScoreDoFn(self.config, self.stage)).with_outputs(
                       stages.DROPPED, SCORES, main="kept"))
        return {"kept": out.kept, "dropped": out[stages.DROPPED], "scores": out[SCORES]}

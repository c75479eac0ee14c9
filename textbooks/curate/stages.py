"""Plumbing shared by the curation stages: their output type, counter names, drop/reject records and
per-stage accounting.

Pipeline elements are plain dicts in the shard record layout (``id, text, role, source, license, split,
meta``); see :mod:`textbooks.data.records`. A stage sends each document to exactly one of its outputs:

* the main output (kept, possibly with new ``meta.scores`` / ``meta.labels`` or modified text), or
* the ``dropped`` output, with ``meta.curation = {"stage", "reason", ...details}``.

Every stage is a ``beam.PTransform`` whose ``expand`` returns one type, :data:`StageOutputs`: a dict with the
PCollections ``kept`` (:data:`KEPT`) and ``dropped`` (:data:`DROPPED`), plus the stage's side outputs, named
after what they hold (``clusters`` of the dedup stages, ``matches`` of decontamination, ``scores`` of the
judge and the classifier). :func:`textbooks.curate.pipeline.build_pipeline` chains the stages with one loop
and gathers each side output by name.

Input that cannot even be read as a document goes to ``rejects`` (see :func:`make_reject`). Every stage
counts, as Beam counters in the namespace :data:`NAMESPACE` named ``<stage>/<metric>``:
``docs_in``, ``docs_kept``, ``docs_dropped``, ``dropped/<reason>``, ``tokens_in``, ``tokens_kept``,
``tokens_dropped`` and ``tokens_dropped/<reason>`` (whitespace tokens). :mod:`textbooks.curate.report` reads
them back from the pipeline result, so the counts reconcile: documents read = kept + dropped (per stage and
reason) + rejected.
"""

from __future__ import annotations

import copy
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from textbooks.curate.textnorm import count_tokens

NAMESPACE = "textbooks.curate"
KEPT = "kept"
DROPPED = "dropped"
REJECTS = "rejects"
# What every stage returns: {KEPT: ..., DROPPED: ..., side output name: ...}.
StageOutputs = dict[str, beam.PCollection]
_PREFIX_CHARS = 200


def counter_name(stage: str, metric: str) -> str:
    return f"{stage}/{metric}"


class StageCounters:
    """Beam counters of one stage (created lazily, cached per name).

    Args:
        stage: the stage name used in counter names and in ``meta.curation.stage``.
    """

    def __init__(self, stage: str):
        self.stage = stage
        self._counters: dict[str, Any] = {}

    def inc(self, metric: str, n: int = 1) -> None:
        c = self._counters.get(metric)
        if c is None:
            c = self._counters[metric] = Metrics.counter(NAMESPACE, counter_name(self.stage, metric))
        c.inc(n)

    def seen(self, record: dict, tokens: int | None = None) -> int:
        """Counts one document entering the stage (``tokens``: its token count when the caller has it);
        returns its token count."""
        tokens = count_tokens(record["text"]) if tokens is None else tokens
        self.inc("docs_in")
        self.inc("tokens_in", tokens)
        return tokens

    def kept(self, record: dict, tokens: int | None = None) -> None:
        self.inc("docs_kept")
        self.inc("tokens_kept", count_tokens(record["text"]) if tokens is None else tokens)

    def dropped(self, record: dict, reason: str, tokens: int | None = None) -> None:
        tokens = count_tokens(record["text"]) if tokens is None else tokens
        self.inc("docs_dropped")
        self.inc(f"dropped/{reason}")
        self.inc("tokens_dropped", tokens)
        self.inc(f"tokens_dropped/{reason}", tokens)


def with_meta(record: dict, **updates: Any) -> dict:
    """A shallow copy of ``record`` whose ``meta`` is a copy updated with ``updates``."""
    out = dict(record)
    meta = dict(record.get("meta") or {})
    meta.update(updates)
    out["meta"] = meta
    return out


def set_score(record: dict, name: str, value: float, *, label: Any = None) -> dict:
    """A copy of ``record`` with ``meta.scores[name] = value`` (and ``meta.labels[name] = label``)."""
    out = dict(record)
    meta = dict(record.get("meta") or {})
    scores = dict(meta.get("scores") or {})
    scores[name] = float(value)
    meta["scores"] = scores
    if label is not None:
        labels = dict(meta.get("labels") or {})
        labels[name] = label
        meta["labels"] = labels
    out["meta"] = meta
    return out


def mark_dropped(record: dict, stage: str, reason: str, **detail: Any) -> dict:
    """A copy of ``record`` with ``meta.curation = {"stage": stage, "reason": reason, **detail}``."""
    info = {"stage": stage, "reason": reason}
    info.update(copy.deepcopy(detail))
    return with_meta(record, curation=info)


def drop_reason(record: dict) -> tuple[str, str]:
    """``(stage, reason)`` of a dropped record."""
    info = (record.get("meta") or {}).get("curation") or {}
    return info.get("stage", "?"), info.get("reason", "?")


def make_reject(stage: str, reason: str, *, path: str = "", line: int | None = None, doc_id: str | None = None,
                raw: bytes | str = b"", detail: str = "") -> dict:
    """A reject: input that could not be read as a document.

    Args:
        stage: where it was found (``read``, ``ids``...).
        reason: short machine-readable reason (``malformed_json``, ``invalid_utf8``, ``empty``...).
        path: the input file; line: 1-based line (or row) number when there is one; doc_id: the id if known.
        raw: the start of the raw input (only the first 200 characters are kept).
        detail: a human-readable explanation.
    """
    if isinstance(raw, (bytes, bytearray)):
        prefix = bytes(raw[: _PREFIX_CHARS * 4]).decode("utf-8", "replace")[:_PREFIX_CHARS]
    else:
        prefix = str(raw)[:_PREFIX_CHARS].encode("utf-8", "replace").decode("utf-8")
    return {"stage": stage, "reason": reason, "path": path, "line": line, "id": doc_id,
            "detail": detail, "raw_prefix": prefix}

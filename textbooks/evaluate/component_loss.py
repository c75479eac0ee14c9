"""Validation loss and bits per byte per mixture component (data role).

Two ways to get the held-out text, with the same accounting:

* :func:`component_losses` - a registered seqio mixture or task, read through
  :func:`textbooks.inputs.pipeline.make_eval_datasets` (each component's validation split packed exactly as in
  training, keyed by role);
* :func:`shard_losses` - the role folders under the data root in the shard format, read with
  :func:`textbooks.data.records.iter_records` (no seqio registration needed): each document is tokenized, ends
  with the end-of-text token, is split into pieces of at most ``max_len`` tokens and packed into rows; every
  piece starts with the end-of-text token as its first input, as the training pipeline does.

``loss`` is the mean negative log-likelihood (nats) per predicted token; ``bpb`` is the total in bits divided
by the UTF-8 bytes of the text those tokens spell (end-of-text tokens count in the loss, not in the bytes),
which compares across tokenizers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from textbooks.data import files, paths, records
from textbooks.data.roles import ROLES

log = logging.getLogger(__name__)
LN2 = math.log(2.0)


@dataclasses.dataclass
class ComponentLoss:
    """Accumulated loss of one component."""

    role: str
    tokens: int = 0
    nats: float = 0.0
    bytes: int = 0
    rows: int = 0
    documents: int = 0
    fingerprint: str | None = None  # sha256 over the (id, text) of every document scored (shard_losses)

    @property
    def loss(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")

    @property
    def bpb(self) -> float:
        return self.nats / LN2 / self.bytes if self.bytes else float("nan")

    def to_dict(self) -> dict:
        return {"role": self.role, "tokens": self.tokens, "bytes": self.bytes, "rows": self.rows,
                "documents": self.documents, "fingerprint": self.fingerprint, "loss": self.loss, "bpb": self.bpb}


def _segment_bytes(model, targets: np.ndarray, segments: np.ndarray, weights: np.ndarray) -> int:
    """UTF-8 bytes spelled by the weighted target tokens of each segment (end-of-text tokens excluded)."""
    eos = model.eos_id
    total = 0
    for b in range(targets.shape[0]):
        row_w = weights[b] > 0
        for s in np.unique(segments[b][row_w]):
            ids = targets[b][row_w & (segments[b] == s)]
            ids = ids[ids != eos]
            if ids.size:
                total += len(model.decode(ids.tolist()).encode("utf-8"))
    return total


def accumulate_batch(model, acc: ComponentLoss, batch: dict) -> None:
    """Adds one batch of model features (decoder_* arrays) to ``acc``."""
    targets = np.asarray(batch["decoder_target_tokens"])
    inputs = np.asarray(batch["decoder_input_tokens"])
    weights = np.asarray(batch["decoder_loss_weights"])
    segments = np.asarray(batch.get("decoder_segment_ids", (weights > 0).astype(np.int32)))
    positions = batch.get("decoder_positions")
    if positions is None:
        positions = np.broadcast_to(np.arange(targets.shape[1], dtype=np.int32), targets.shape)
    logp = model.token_logprobs(inputs, targets, segments, np.asarray(positions))
    mask = weights > 0
    acc.nats += float(-np.sum(np.where(mask, logp, 0.0), dtype=np.float64))
    acc.tokens += int(mask.sum())
    acc.rows += int(mask.any(axis=1).sum())
    acc.bytes += _segment_bytes(model, targets, segments, weights)


def component_losses(model, mixture_or_task_name: str, *, vocabulary_name: str | None = None,
                     seq_len: int | None = None, batch_size: int = 8, split: str = "validation",
                     num_batches: int | None = None,
                     progress: Callable[[str, int], None] | None = None) -> dict[str, ComponentLoss]:
    """Loss and bits per byte of each component of a seqio mixture on its ``split``.

    Args:
        model: an :class:`textbooks.evaluate.lm.EvalModel`.
        mixture_or_task_name: a registered mixture or task (see ``mixtures``).
        vocabulary_name: the tokenizer of the mixture's tasks ('phi', 'spm8k', 'byte'; default: gin's).
        seq_len: packed row length (default: the model's max_len).
        batch_size: rows per batch.
        split: the held-out split.
        num_batches: at most this many batches per component (None: all).
        progress: called with (role, batches done).
    """
    # deferred: the input pipeline brings in TensorFlow, seqio and JAX (~6 s); shard_losses needs none of them
    from textbooks.inputs import pipeline

    lengths = {"targets": int(seq_len or model.max_len)}
    datasets = pipeline.make_eval_datasets(mixture_or_task_name, task_feature_lengths=lengths,
                                           batch_size=batch_size, split=split, vocabulary=vocabulary_name)
    out: dict[str, ComponentLoss] = {}
    for role, ds in datasets.items():
        acc = ComponentLoss(role=role)
        for i, batch in enumerate(ds, 1):
            if num_batches is not None and i > num_batches:
                break
            accumulate_batch(model, acc, batch)
            if progress:
                progress(role, i)
        out[role] = acc
        log.info("%s: loss %.4f, %.4f bits/byte over %d tokens", role, acc.loss, acc.bpb, acc.tokens)
    return out


def pack_documents(token_lists: Iterable[Sequence[int]], length: int, bos_id: int
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Packs token lists (each already ending with end-of-text) into rows of ``length``: yields one row at a time
    as decoder_* features (pieces longer than ``length`` are split; every piece starts with ``bos_id`` as
    input)."""
    row = {"t": [], "s": [], "p": [], "i": []}
    segment = 0

    def flush():
        n = len(row["t"])
        pad = length - n
        out = {"decoder_target_tokens": np.array(row["t"] + [0] * pad, np.int32),
               "decoder_input_tokens": np.array(row["i"] + [0] * pad, np.int32),
               "decoder_segment_ids": np.array(row["s"] + [0] * pad, np.int32),
               "decoder_positions": np.array(row["p"] + [0] * pad, np.int32),
               "decoder_loss_weights": np.array([1] * n + [0] * pad, np.int32)}
        for v in row.values():
            v.clear()
        return out

    for ids in token_lists:
        for start in range(0, len(ids), length):
            piece = list(ids[start:start + length])
            if len(row["t"]) + len(piece) > length:
                yield flush()
                segment = 0
            segment += 1
            row["t"] += piece
            row["i"] += [bos_id] + piece[:-1]
            row["s"] += [segment] * len(piece)
            row["p"] += list(range(len(piece)))
    if row["t"]:
        yield flush()


def _batches(rows: Iterator[dict[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    chunk: list[dict[str, np.ndarray]] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == batch_size:
            yield {k: np.stack([c[k] for c in chunk]) for k in chunk[0]}
            chunk = []
    if chunk:
        yield {k: np.stack([c[k] for c in chunk]) for k in chunk[0]}


def text_losses(model, texts: Iterable[str], *, role: str = "texts", seq_len: int | None = None,
                batch_size: int = 8, max_documents: int | None = None) -> ComponentLoss:
    """Loss and bits per byte of ``texts`` (each a document), packed as :func:`pack_documents` describes."""
    length = int(seq_len or model.max_len)
    acc = ComponentLoss(role=role)

    def token_lists():
        for n, text in enumerate(texts):
            if max_documents is not None and n >= max_documents:
                return
            acc.documents += 1
            yield model.encode(text) + [model.eos_id]

    for batch in _batches(pack_documents(token_lists(), length, model.eos_id), batch_size):
        accumulate_batch(model, acc, batch)
    return acc


def shard_losses(model, roles: Sequence[str] | None = None, *, split: str = "validation",
                 data_root: str | None = None, seq_len: int | None = None, batch_size: int = 8,
                 max_documents: int | None = None) -> dict[str, ComponentLoss]:
    """Per-role loss and bits per byte read straight from the shard files ``<data_root>/<role>/<split>-*``.

    Roles without that split are skipped with a warning. Bad records are counted and skipped by the reader.
    Each result's ``fingerprint`` identifies the documents scored (sha256 over their ids and texts, in reading
    order), so two models' losses can be checked to come from identical held-out text.
    """
    out: dict[str, ComponentLoss] = {}
    for role in roles or ROLES:
        pattern = paths.split_pattern(role, split, data_root)
        if not files.glob(pattern):
            log.warning("no %s shards for role %s (%s); skipped", split, role, pattern)
            continue
        digest = hashlib.sha256()

        def texts(pattern=pattern, digest=digest):
            for n, r in enumerate(records.iter_records(pattern, on_error="skip")):
                if max_documents is not None and n >= max_documents:
                    return
                digest.update(hashlib.sha256(f"{r.id}\0{r.text}".encode("utf-8")).digest())
                yield r.text

        out[role] = text_losses(model, texts(), role=role, seq_len=seq_len, batch_size=batch_size,
                                max_documents=max_documents)
        out[role].fingerprint = digest.hexdigest()
        log.info("%s: loss %.4f, %.4f bits/byte over %d tokens", role, out[role].loss, out[role].bpb,
                 out[role].tokens)
    return out

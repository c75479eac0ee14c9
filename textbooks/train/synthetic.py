"""Synthetic packed batches: a learnable, deterministic, resumable stand-in for a seqio mixture.

For throughput benchmarks, sharding tests and smoke runs without data on disk (MaxText's ``synthetic``
dataset). Each row packs several documents; a document is an arithmetic progression of token ids modulo the
vocabulary (learnable: the next token is the previous plus a per-document stride) with a random role id.
Rows are generated from ``(seed, step, global row)``, so a process reading shard ``i`` of ``n`` sees exactly
rows ``i*B/n .. (i+1)*B/n`` of the global batch whatever ``n`` is, and ``get_state``/``set_state`` (the step
counter) resume it exactly.
"""

from __future__ import annotations

from typing import Any, Iterator

import gin
import numpy as np

FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids", "decoder_positions",
            "decoder_loss_weights", "decoder_role_ids")


class SyntheticBatches(Iterator[dict[str, np.ndarray]]):
    """Endless per-process batches of packed synthetic documents.

    Args:
        global_batch_size: rows of the global batch.
        seq_len: tokens per row.
        vocab_size: token ids are drawn from ``[1, vocab_size)``.
        shard_index, num_shards: which contiguous block of the global rows this process yields.
        seed: data seed.
        num_roles: role ids are drawn from ``1..num_roles`` (0 marks padding, as in ``mixtures.roles``).
        mean_doc_len: average document length (geometric), at least 4 tokens.
        noise: probability that a token is replaced by a random one.
    """

    def __init__(self, *, global_batch_size: int, seq_len: int, vocab_size: int, shard_index: int = 0,
                 num_shards: int = 1, seed: int = 0, num_roles: int = 6, mean_doc_len: int = 64,
                 noise: float = 0.05):
        if global_batch_size % num_shards:
            raise ValueError(f"global batch {global_batch_size} is not divisible by {num_shards} shards")
        self.global_batch_size, self.seq_len, self.vocab_size = global_batch_size, seq_len, vocab_size
        self.shard_index, self.num_shards, self.seed = shard_index, num_shards, seed
        self.num_roles, self.mean_doc_len, self.noise = num_roles, max(4, mean_doc_len), noise
        self.step = 0

    def _row(self, step: int, row: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step, row])
        length = self.seq_len
        tokens = np.zeros(length, np.int32)
        inputs = np.zeros(length, np.int32)
        segments = np.zeros(length, np.int32)
        positions = np.zeros(length, np.int32)
        roles = np.zeros(length, np.int32)
        pos, seg = 0, 0
        while pos < length:
            doc_len = int(min(length - pos, max(2, rng.geometric(1.0 / self.mean_doc_len))))
            if seg > 0 and rng.random() < 0.1:  # leave some padding at the end of some rows
                break
            start, stride = rng.integers(1, self.vocab_size), rng.integers(1, 8)
            doc = (start + stride * np.arange(doc_len)) % (self.vocab_size - 1) + 1
            flip = rng.random(doc_len) < self.noise
            doc[flip] = rng.integers(1, self.vocab_size, int(flip.sum()))
            seg += 1
            sl = slice(pos, pos + doc_len)
            tokens[sl] = doc
            inputs[sl] = np.concatenate([[0], doc[:-1]])
            segments[sl] = seg
            positions[sl] = np.arange(doc_len)
            roles[sl] = rng.integers(1, self.num_roles + 1)
            pos += doc_len
        return {"decoder_input_tokens": inputs, "decoder_target_tokens": tokens, "decoder_segment_ids": segments,
                "decoder_positions": positions, "decoder_loss_weights": (segments > 0).astype(np.float32),
                "decoder_role_ids": roles}

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The process's rows of global batch ``step`` (does not move the iterator)."""
        per = self.global_batch_size // self.num_shards
        rows = [self._row(step, r) for r in range(self.shard_index * per, (self.shard_index + 1) * per)]
        return {k: np.stack([r[k] for r in rows]) for k in FEATURES}

    def __next__(self) -> dict[str, np.ndarray]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def __iter__(self) -> "SyntheticBatches":
        return self

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed, "shard_index": self.shard_index,
                "num_shards": self.num_shards}

    def set_state(self, state: dict[str, Any]) -> None:
        if (state.get("seed"), state.get("num_shards")) != (self.seed, self.num_shards):
            raise ValueError(f"synthetic data state {state} was saved with another seed or shard count "
                             f"(now seed={self.seed}, num_shards={self.num_shards})")
        self.step = int(state["step"])


@gin.configurable
def synthetic_dataset(*, batch_size: int, seq_len: int, vocab_size: int, shard_index: int = 0,
                      num_shards: int = 1, seed: int = 0, split: str = "train", num_roles: int = 6,
                      mean_doc_len: int = 64) -> SyntheticBatches:
    """A data source for :func:`textbooks.train.trainer.train` (``train.dataset_fn = @synthetic_dataset``).

    Args:
        batch_size: global batch size.
        seq_len, vocab_size, shard_index, num_shards, seed, num_roles, mean_doc_len: see
            :class:`SyntheticBatches`.
        split: 'train' or another split name (a different stream of documents).
    """
    split_seed = seed if split == "train" else seed + 1_000_003 + sum(map(ord, split))
    return SyntheticBatches(global_batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size,
                            shard_index=shard_index, num_shards=num_shards, seed=split_seed, num_roles=num_roles,
                            mean_doc_len=mean_doc_len)

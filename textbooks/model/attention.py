"""Causal attention a block of queries at a time: of whole sequences (training; with its own backward), and of a
prefill's queries over a KV cache.

:func:`causal_attention` computes ``softmax(q.k * scale) v`` under :func:`attention_mask` (causal, within a
packed segment, padding attends to nothing), ``block`` queries at a time: the queries of a block see no key
after the block's last one, so each block multiplies only by the keys up to its end (at length 256 the scores
cover 3/4 of the ``L x L`` square with 128-query blocks, 5/8 with the CPU's 64-query blocks; products, mask,
softmax and gradients shrink alike). A masked score is exactly zero after the softmax, so dropping the later keys changes the result only
by the order of float sums.

Without dropout the gradient is written out (:func:`_blocked_attention`, a custom VJP), flash-attention
style but keeping each block's probabilities from the forward pass: per block ``dv += p^T do``,
``dp = do v^T``, ``ds = p (dp - rowsum(do * o)) * scale``, ``dq = ds k``, ``dk += ds^T q``, all on the
heads-major copies (``[batch, kv_heads, (group,) length, head_dim]``) the forward pass made. The row sums
read the ``[length, head_dim]`` outputs instead of the ``[length, keys]`` probabilities (autodiff's softmax
gradient), the softmax, mask and scale gradients are one elementwise pass, and ``dk``/``dv`` accumulate
transposed (``[head_dim, keys]``) so that their products transpose the narrow ``[queries, head_dim]`` operand
rather than the probabilities. With dropout, autodiff differentiates the same blocked forward pass.

:func:`cached_attention` is the same blocking for a prefill (decode mode, several new tokens) whose keys and values
are already written into the cache: a block of queries multiplies only by the slots up to its last query.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array

# Queries per block of the causal attention of whole sequences (training, prefill); see causal_attention.
# 128 fills the matrix units of TPUs and GPUs; on CPU 64-query blocks are faster (the scores cover 5/8 of the
# square at length 256 instead of 3/4, and the products stay large enough for the CPU's matmul kernels).
QUERY_BLOCK = 128
CPU_QUERY_BLOCK = 64


def query_block() -> int:
    """The default queries per block on the default backend (:data:`CPU_QUERY_BLOCK` on CPU)."""
    return CPU_QUERY_BLOCK if jax.default_backend() == "cpu" else QUERY_BLOCK


def attention_mask(segment_ids: Array, start: int = 0, stop: int | None = None) -> Array:
    """Block-diagonal causal mask ``[batch, 1, stop - start, stop]`` (True = may attend) from segment ids, for
    the queries at positions ``[start, stop)`` (default: all) and the keys before ``stop`` (the later keys are
    masked for all of them).

    A query attends to keys at or before it in the same segment; padding (segment 0) attends to nothing.
    """
    stop = segment_ids.shape[1] if stop is None else stop
    keys = segment_ids[:, :stop]
    causal = jnp.arange(start, stop)[:, None] >= jnp.arange(stop)[None, :]
    same = segment_ids[:, start:stop, None] == keys[:, None, :]
    real = (keys != 0)[:, None, :]
    return (causal[None] & same & real)[:, None]


def _blocks(length: int, block: int) -> list[tuple[int, int]]:
    block = block if 0 < block < length and length % block == 0 else length
    return [(start, start + block) for start in range(0, length, block)]


def _block_probs(qh: Array, kh: Array, segment_ids: Array, scale: float, start: int, stop: int) -> Array:
    """Softmax probabilities ``[batch, kv_heads, group, stop - start, stop]`` (float32) of one query block."""
    scores = jnp.einsum("bjgqd,bjkd->bjgqk", qh[:, :, :, start:stop], kh[:, :, :stop],
                        preferred_element_type=jnp.float32) * scale
    mask = attention_mask(segment_ids, start, stop)[:, :, None]  # [batch, 1, 1, queries, keys]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)  # finite: masked rows stay NaN-free
    return jax.nn.softmax(scores, axis=-1)


def _forward(qh, kh, vh, segment_ids, scale, block):
    probs, outs = [], []
    for start, stop in _blocks(qh.shape[3], block):
        p = _block_probs(qh, kh, segment_ids, scale, start, stop)
        probs.append(p)
        outs.append(jnp.einsum("bjgqk,bjkd->bjgqd", p.astype(vh.dtype), vh[:, :, :stop]))
    return (outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)), probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blocked_attention(qh: Array, kh: Array, vh: Array, segment_ids: Array, scale: float, block: int) -> Array:
    """Heads-major attention: ``qh [batch, kv_heads, group, length, head_dim]``, ``kh, vh [batch, kv_heads,
    length, head_dim]`` -> ``[batch, kv_heads, group, length, head_dim]``; the backward pass is written out."""
    return _forward(qh, kh, vh, segment_ids, scale, block)[0]


def _blocked_attention_fwd(qh, kh, vh, segment_ids, scale, block):
    out, probs = _forward(qh, kh, vh, segment_ids, scale, block)
    return out, (qh, kh, vh, segment_ids, out, probs)


def _pad_keys(x: Array, length: int) -> Array:
    """``[..., keys]`` zero-padded to ``length`` keys (the keys after a block's last query get no gradient)."""
    pad = [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])]
    return x if x.shape[-1] == length else jnp.pad(x, pad)


def _blocked_attention_bwd(scale, block, residuals, dout):
    qh, kh, vh, segment_ids, out, probs = residuals
    length = qh.shape[3]
    f32 = jnp.float32
    # rowsum(dp * p) of the softmax gradient equals rowsum(do * o): [.., length, head_dim] instead of keys.
    delta = jnp.sum(dout.astype(f32) * out.astype(f32), axis=-1)  # [batch, kv_heads, group, length]
    dq, dk, dv = [], None, None
    for (start, stop), p in zip(_blocks(length, block), probs):
        do = dout[:, :, :, start:stop]
        dp = jnp.einsum("bjgqd,bjkd->bjgqk", do, vh[:, :, :stop], preferred_element_type=f32)
        mask = attention_mask(segment_ids, start, stop)[:, :, None]
        # Masked scores get no gradient (padding rows' uniform probabilities included), as autodiff's select.
        ds = jnp.where(mask, p * (dp - delta[..., start:stop, None]) * scale, 0.0).astype(qh.dtype)
        dq.append(jnp.einsum("bjgqk,bjkd->bjgqd", ds, kh[:, :, :stop]))
        # dk and dv transposed ([head_dim, keys]): the products contract the block's queries, and XLA:CPU then
        # transposes the narrow [queries, head_dim] operand instead of the [queries, keys] probabilities.
        dv_block = _pad_keys(jnp.einsum("bjgqd,bjgqk->bjdk", do, p.astype(vh.dtype)), length)
        dk_block = _pad_keys(jnp.einsum("bjgqd,bjgqk->bjdk", qh[:, :, :, start:stop], ds), length)
        dk = dk_block if dk is None else dk + dk_block
        dv = dv_block if dv is None else dv + dv_block
    dq = dq[0] if len(dq) == 1 else jnp.concatenate(dq, axis=3)
    dk, dv = dk.swapaxes(2, 3), dv.swapaxes(2, 3)
    return dq.astype(qh.dtype), dk.astype(kh.dtype), dv.astype(vh.dtype), None


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


def causal_attention(q: Array, k: Array, v: Array, segment_ids: Array, scale: float,
                     dropout: Callable[..., Array] | None, deterministic: bool, block: int | None = None) -> Array:
    """``softmax(q.k * scale) v`` of whole sequences under :func:`attention_mask`, ``block`` queries at a time.

    Args:
        q: ``[batch, length, kv_heads, group, head_dim]`` (query head ``j * group + g``).
        k, v: ``[batch, length, kv_heads, head_dim]``.
        segment_ids: ``[batch, length]`` (0 = padding).
        scale: multiplies the scores.
        dropout: ``probs -> probs`` with ``deterministic`` (an ``nn.Dropout``) applied to the probabilities, or
            None for no dropout. Without dropout (None, or ``deterministic``) the gradient is the written-out
            one of :func:`_blocked_attention`; with dropout, autodiff's.
        deterministic: no dropout.
        block: queries per block (None: :func:`query_block`); the whole length when it does not divide it.

    Returns:
        ``[batch, length, kv_heads, group, head_dim]`` in ``v``'s dtype.
    """
    block = query_block() if block is None else block
    # Heads-major copies made once ([batch, kv_heads, (group,) length, head_dim]): every block's queries and
    # keys are then contiguous rows of each head, instead of strided slices each block transposes again.
    qh, kh, vh = q.transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    if dropout is None or deterministic:
        out = _blocked_attention(qh, kh, vh, segment_ids, scale, block)
        return out.transpose(0, 3, 1, 2, 4)
    outs = []
    for start, stop in _blocks(q.shape[1], block):
        probs = dropout(_block_probs(qh, kh, segment_ids, scale, start, stop), deterministic=deterministic)
        outs.append(jnp.einsum("bjgqk,bjkd->bjgqd", probs.astype(v.dtype), vh[:, :, :stop]))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4)


def cached_attention(q: Array, k: Array, v: Array, decode_index: Array, scale: float,
                     dropout: Callable[..., Array] | None = None, deterministic: bool = True,
                     block: int | None = None) -> Array:
    """``softmax(q.k * scale) v`` of a chunk of queries (a prefill) over a KV cache that already holds their keys and
    values, ``block`` queries at a time.

    Row ``b``'s query ``t`` sits at slot ``decode_index[b] + t`` and sees every slot up to its own (the slots before
    ``decode_index`` hold the row's earlier tokens). The chunk must fit the cache (``decode_index + length <=
    slots``, what a prefill writes): then a block of queries ending at ``stop`` sees no slot at or after
    ``slots - length + stop``, and multiplies only by the slots before it (a prefill into a cache of its own
    length: the causal blocks of :func:`causal_attention`).

    The products run on heads-major operands (``[batch, kv_heads, queries, group, head_dim]`` queries, the cache's
    own ``[batch, kv_heads, slots, head_dim]`` layout), so that the scores are row-major ``[queries, group,
    keys]`` blocks: the softmax reduces along contiguous rows, and XLA:CPU copies no operand transposed. Without
    dropout the probabilities are normalized after the product with the values (``head_dim`` divisions per
    query instead of one per key).

    Args:
        q: ``[batch, length, kv_heads, group, head_dim]`` (query head ``j * group + g``).
        k, v: the caches ``[batch, kv_heads, slots, head_dim]``, this chunk's keys and values written.
        decode_index: ``[batch]`` slot of each row's first query.
        scale: multiplies the scores.
        dropout: ``probs -> probs`` with ``deterministic`` (an ``nn.Dropout``), or None.
        deterministic: no dropout.
        block: queries per block (None: :func:`query_block`); the last block may be shorter.

    Returns:
        ``[batch, length, kv_heads, group, head_dim]`` in ``v``'s dtype.
    """
    block = query_block() if block is None else block
    length, slots = q.shape[1], k.shape[2]
    qh = q.transpose(0, 2, 1, 3, 4)  # [batch, kv_heads, length, group, head_dim]
    outs = []
    for start in range(0, length, block):
        stop = min(start + block, length)
        keys = slots - length + stop
        scores = jnp.einsum("bjqgd,bjkd->bjqgk", qh[:, :, start:stop], k[:, :, :keys],
                            preferred_element_type=jnp.float32) * scale
        query_slots = decode_index[:, None] + jnp.arange(start, stop)[None, :]  # [batch, queries]
        mask = jnp.arange(keys)[None, None, :] <= query_slots[:, :, None]
        scores = jnp.where(mask[:, None, :, None, :], scores, jnp.finfo(jnp.float32).min)  # finite: no NaN rows
        if dropout is not None and not deterministic:
            probs = dropout(jax.nn.softmax(scores, axis=-1), deterministic=deterministic)
            outs.append(jnp.einsum("bjqgk,bjkd->bjqgd", probs.astype(v.dtype), v[:, :, :keys]))
            continue
        weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = jnp.einsum("bjqgk,bjkd->bjqgd", weights.astype(v.dtype), v[:, :, :keys],
                         preferred_element_type=jnp.float32)
        outs.append((out / total).astype(v.dtype))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
    return out.transpose(0, 2, 1, 3, 4)


def reference_attention(q: Array, k: Array, v: Array, segment_ids: Array, scale: float) -> Any:
    """The plain softmax attention over the whole ``L x L`` square (no blocks, autodiff's gradient): what
    :func:`causal_attention` computes, for tests and comparisons. Shapes as :func:`causal_attention`'s."""
    scores = jnp.einsum("bqjgd,bkjd->bjgqk", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(attention_mask(segment_ids)[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bjgqk,bkjd->bqjgd", probs, v)

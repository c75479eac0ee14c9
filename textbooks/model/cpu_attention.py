"""Decode attention on XLA:CPU as a compiled C++ kernel (XLA FFI; built by :mod:`textbooks.model.cpu_kernels`).

During decoding each new query attends over its row's cache. Written as XLA ops that is two batched
matrix-vector products over the whole cache window plus a masked softmax: every row reads as many slots as the
longest row, and the scores go through memory between several small ops. ``kernels/decode_attention.cc`` does
the same computation in one pass per (row, query, head) over that row's own slots, on XLA's intra-op thread
pool; on a 2-core machine that halves the time of attention at a batch of 16 and more when rows differ in
length (continuous batching). Results equal the XLA formulation up to float rounding (tests compare them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from textbooks.model import cpu_kernels
from textbooks.model.cpu_kernels import status  # noqa: F401 - re-exported: whether the kernels are usable

TARGET = "textbooks_decode_attention"


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, start: jax.Array, scale: float) -> jax.Array:
    """Attention of cached queries over their rows' cache prefixes (float32).

    Args:
        q: ``[batch, queries, heads, head_dim]``; query t of row b sits at cache slot ``start[b] + t``.
        k, v: the cache, ``[batch, kv_heads, slots, head_dim]``, already holding the queries' own keys/values;
            query head ``h`` reads key/value head ``h // (heads // kv_heads)`` (grouped-query attention).
        start: ``[batch]`` int32 slot of each row's first query.
        scale: factor on the dot products (``head_dim ** -0.5``).

    Returns:
        ``[batch, queries, heads, head_dim]`` float32: softmax over slots ``[0, start[b] + t]`` of the scaled
        scores, applied to the values (the XLA formulation in :mod:`textbooks.model.layers`, without its mask
        materialized).

    Raises:
        ValueError: the kernel is unavailable (see :func:`status`).
    """
    cpu_kernels.require("DecodeKernels(attention='cpu_kernel')")
    f32 = jnp.float32
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(q.shape, f32), vmap_method="sequential")
    return call(q.astype(f32), k.astype(f32), v.astype(f32), start.astype(jnp.int32), scale=np.float32(scale))


def xla_decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, start: jax.Array, scale: float) -> jax.Array:
    """What :func:`decode_attention` computes, as XLA ops over the whole cache (any backend): its reference."""
    group = q.shape[2] // k.shape[1]
    k, v = jnp.repeat(k, group, axis=1), jnp.repeat(v, group, axis=1)  # query head h reads KV head h // group
    slots = start[:, None] + jnp.arange(q.shape[1])[None]
    mask = (jnp.arange(k.shape[2])[None, None, :] <= slots[:, :, None])[:, None]
    scores = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), -1)
    return jnp.einsum("bhqk,bhkd->bqhd", probs, v.astype(jnp.float32))

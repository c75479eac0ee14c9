"""The decoders' state: the KV cache (creating it, measuring and resizing its slot axis, and the windows attended
over) and the weights packed for the decode kernels (:func:`pack_weights`).

The cache is the model's ``'cache'`` collection (:class:`textbooks.model.causal_lm.CausalLM` with
``decode=True``): per layer, keys and values ``[batch, heads, slots, head_dim]`` (scanned layers add a leading
layer axis), and one write index per row. XLA attention reads every slot it is given, so the token loop of
:mod:`textbooks.model.decode` attends over growing windows (:func:`attention_windows`), cutting the cache to the
window and zero-padding it back (:func:`resize_cache`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from textbooks.model import packed_decode
from textbooks.model.config import ModelConfig
from textbooks.model.causal_lm import CausalLM


def init_cache(config: ModelConfig, batch_size: int, cache_len: int) -> Any:
    """Returns an empty KV cache (the model's 'cache' collection) for ``batch_size`` rows of ``cache_len``."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _cache_shapes(config, batch_size, cache_len))


@functools.lru_cache(maxsize=64)
def _cache_shapes(config: ModelConfig, batch_size: int, cache_len: int) -> Any:
    # Tracing the model for its cache's shapes takes longer than a decode chunk: do it once per shape.
    model = CausalLM(config)

    def init():
        with nn.logical_axis_rules(()):
            tokens = jnp.zeros((batch_size, cache_len), jnp.int32)
            return model.init(jax.random.PRNGKey(0), tokens, decode=True)["cache"]

    return jax.eval_shape(init)


def attention_windows(cache_len: int) -> list[int]:
    """Cache lengths attended in the phases of the token loop: steps of a quarter (at least 64 slots)."""
    step = max(64, cache_len // 4)
    return list(range(step, cache_len, step)) + [cache_len]


def _slot_axis(leaf: jax.Array) -> int:
    return leaf.ndim - 2  # [..., batch, heads, slots, head_dim]; scanned layers add a leading axis


def cache_length(cache: Any) -> int:
    """Slots of ``cache``."""
    leaves = [x for x in jax.tree.leaves(cache) if x.ndim >= 4]
    return leaves[0].shape[_slot_axis(leaves[0])]


def resize_cache(cache: Any, length: int) -> Any:
    """Cuts or zero-pads every key/value cache to ``length`` slots (the write indices are unchanged)."""

    def resize(x):
        if x.ndim < 4:
            return x
        axis = _slot_axis(x)
        if x.shape[axis] >= length:
            return jax.lax.slice_in_dim(x, 0, length, axis=axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, pad)

    return jax.tree.map(resize, cache)


@functools.partial(jax.jit, static_argnums=(0, 1))
def pack_weights(config: Any, kernels: Any, params: Any) -> Any:
    """The ``'packed'`` collection of ``params`` (a :class:`~textbooks.model.causal_lm.CausalLM` of ``config``
    decoding with :class:`~textbooks.model.layers.DecodeKernels` ``kernels``), made by one decode step with the
    collection mutable: a copy of the weights single-token steps multiply by, in the kernel's layout. Empty
    unless ``kernels.projections`` is 'cpu_kernel'."""
    if kernels.projections != "cpu_kernel":
        return {}
    _, variables = CausalLM(config, kernels).apply(
        {"params": params, "cache": init_cache(config, 1, 1)}, jnp.zeros((1, 1), jnp.int32), decode=True,
        mutable=["cache", packed_decode.COLLECTION])
    return variables.get(packed_decode.COLLECTION, {})

"""Building blocks both model families share: projections, rotary embeddings and self-attention.

:class:`Attention` is the one self-attention of the project: q/k/v projections (biases optional), rotary
embeddings (rotate-half convention, on the first ``rotary_dim`` dims of each head, with linear or llama3
frequency scaling; the model computes the cos/sin tables once per call, :func:`rotary_tables`), grouped-query
attention (``kv_heads`` key/value heads, each shared by ``num_heads / kv_heads`` consecutive query heads,
transformers' ``repeat_kv`` order), packing through segment ids, and a KV cache for decoding. Whole sequences
(training) and prefills into the cache go through the blocked attention of :mod:`textbooks.model.attention`;
cached single-token steps attend here.

The cache: with ``decode=True`` each attention layer keeps ``[batch, kv_heads, cache_len, head_dim]`` keys and
values in the ``'cache'`` collection (only the KV heads: grouping shrinks the cache and the bytes each decode
step reads), written at each row's own index, so rows of a batch may hold prompts of different lengths.

How decode steps compute (XLA ops or the compiled CPU kernels, :class:`DecodeKernels`) is a choice of the
module, not of the saved :class:`~textbooks.model.config.ModelConfig`: the same checkpoint decodes either way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from textbooks.model import cpu_attention, cpu_matmul, packed_decode
from textbooks.model.attention import cached_attention, causal_attention
from textbooks.model.config import ModelConfig

Array = jax.Array

REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}

KERNEL_CHOICES: tuple[str, ...] = ("xla", "cpu_kernel")


@dataclasses.dataclass(frozen=True)
class DecodeKernels:
    """How decode steps compute (a backend choice; results agree up to float rounding).

    Attributes:
        attention: cached attention: 'xla' (einsums over the cache window, any backend) or 'cpu_kernel' (the
            compiled kernel of :mod:`textbooks.model.cpu_attention`, float32 on XLA:CPU).
        projections: weight products of single-token decode steps: 'xla' (einsums, any backend) or
            'cpu_kernel' (the multi-core kernel of :mod:`textbooks.model.cpu_matmul`, float32 on XLA:CPU).
    """

    attention: str = "xla"
    projections: str = "xla"

    def __post_init__(self):
        for name in ("attention", "projections"):
            if getattr(self, name) not in KERNEL_CHOICES:
                raise ValueError(f"DecodeKernels.{name} must be one of {KERNEL_CHOICES}, got {getattr(self, name)!r}")

    def __str__(self) -> str:
        if self.attention == self.projections:
            return self.attention
        return f"attention={self.attention},projections={self.projections}"


def dense_init(config: ModelConfig, names: tuple[str, ...]):
    """Normal(``initializer_range``) initializer carrying logical axis ``names``."""
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def zeros(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def rotary_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies ``[rotary_dim / 2]`` (float32) of the rotary embedding, scaling applied.

    'linear' divides every frequency by the factor (the same as dividing positions). 'llama3' divides the
    frequencies whose wavelength exceeds ``original_max_len / low_freq_factor`` by the factor, keeps those
    whose wavelength is under ``original_max_len / high_freq_factor``, and blends linearly (in
    ``original_max_len / wavelength``) between the two.
    """
    dim = config.rotary_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    inv_freq = inv_freq.astype(np.float32)
    factor = np.float32(config.rope_scaling_factor)
    if config.rope_scaling_type == "linear":
        return (inv_freq / factor).astype(np.float32)
    if config.rope_scaling_type == "llama3":
        low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
        original = config.rope_original_max_len
        wavelen = 2 * math.pi / inv_freq
        smooth = (original / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
        middle = (wavelen >= original / high) & (wavelen <= original / low)
        return np.where(middle, blended, scaled).astype(np.float32)
    return inv_freq


def _rotary_angles_cos_sin(positions: Array, inv_freq: Array) -> tuple[Array, Array]:
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, rotary/2]
    return jnp.cos(angles), jnp.sin(angles)


def rotary_tables(positions: Array, inv_freq: np.ndarray | Array) -> tuple[Array, Array]:
    """The cosines and sines ``[batch, length, rotary_dim / 2]`` (float32) of ``positions * inv_freq``.

    A model computes them once per call and hands them to every layer (:func:`apply_rotary`). On XLA:CPU they
    are computed inside a conditional (both branches the same formula, so the predicate does not matter):
    fusion does not reach into a conditional, so the tables are computed once and stored. Computed plainly,
    fusion copies the cheap elementwise sin/cos into each consumer, and every layer's q and k (every head of
    them) recompute them; an optimization barrier does not stop that on XLA:CPU, which drops barriers before
    fusion. Other backends compute them plainly (a conditional there waits for its predicate on the host).

    Args:
        positions: ``[batch, length]`` integer positions.
        inv_freq: ``[rotary_dim / 2]`` inverse frequencies (:func:`rotary_inv_freq`).
    """
    inv_freq = jnp.asarray(inv_freq, jnp.float32)
    if positions.size == 0:
        return _rotary_angles_cos_sin(positions, inv_freq)

    def materialized(p):
        return jax.lax.cond(p[0, 0] >= 0, _rotary_angles_cos_sin, _rotary_angles_cos_sin, p, inv_freq)

    return jax.lax.platform_dependent(positions, cpu=materialized,
                                      default=lambda p: _rotary_angles_cos_sin(p, inv_freq))


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates the first ``rotary_dim`` dims of each head of ``x`` (rotate-half); the dims after pass through.

    Args:
        x: ``[batch, length, heads, head_dim]``.
        cos, sin: ``[batch, length, rotary_dim / 2]`` tables of :func:`rotary_tables` (``rotary_dim`` at most
            ``head_dim``).
    """
    half = cos.shape[-1]
    if half == 0:
        return x
    if cos.shape != sin.shape or cos.shape[:2] != x.shape[:2] or 2 * half > x.shape[-1]:
        raise ValueError(f"apply_rotary: tables {cos.shape}/{sin.shape} do not fit x {x.shape}: they must be "
                         f"[batch, length, rotary_dim / 2] with x's batch and length and rotary_dim <= head_dim "
                         f"(make them with rotary_tables(positions, rotary_inv_freq(config)))")
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)  # [B, L, 1, rotary/2]
    first, second, passthrough = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin, passthrough], axis=-1)


def token_einsum(equation: str, x: Array, kernel: Array) -> Array:
    """``jnp.einsum(equation, x, kernel)`` for an ``equation`` whose first operand and output begin with the batch
    and length axes (``'bl...'``), computed with those two axes merged into one token axis.

    The result is the same product (a row-major reshape: no copy), but autodiff's weight gradient then
    contracts one axis instead of two: with two contracted axes XLA:CPU copies the ``[tokens, out]`` output
    gradient transposed before each weight-gradient product (the widest activation of the MLP, every layer);
    with one it multiplies the gradient as it lies.
    """
    lhs, rest = equation.split(",")
    rhs, out = rest.split("->")
    if lhs[:2] != out[:2]:
        raise ValueError(f"token_einsum: {equation!r} must begin its first operand and its output with the same "
                         f"two (batch, length) axes")
    y = jnp.einsum(f"{lhs[1:]},{rhs}->{out[1:]}", x.reshape((-1,) + x.shape[2:]), kernel)
    return y.reshape(x.shape[:2] + y.shape[1:])


class Projection(nn.Module):
    """A linear map (bias optional) between head-split and model-width activations, written as one einsum.

    Attributes:
        config: model config (dtypes, initializer).
        equation: einsum from ``[batch, length, ...in]`` and the kernel to ``[batch, length, ...out]``.
        kernel_shape: full kernel shape (input axes first); the bias has the output axes' shape.
        names: logical axis names of the kernel; the bias takes the output axes' names.
        kernels: how single-token decode steps compute the product.
        use_bias: add a bias parameter.
    """

    config: ModelConfig
    equation: str
    kernel_shape: tuple[int, ...]
    names: tuple[str, ...]
    kernels: DecodeKernels = DecodeKernels()
    use_bias: bool = True

    def setup(self):
        cfg = self.config
        param_dtype = jnp.dtype(cfg.param_dtype)
        outputs = len(self.equation.split("->")[1]) - 2  # output axes after batch and length
        self.kernel = self.param("kernel", dense_init(cfg, self.names), self.kernel_shape, param_dtype)
        self.bias = (self.param("bias", zeros(self.names[-outputs:]), self.kernel_shape[-outputs:], param_dtype)
                     if self.use_bias else None)

    def weights(self) -> tuple[Array, Array | None]:
        """``(kernel, bias or None)`` in the compute dtype (for :func:`stacked_projections`)."""
        dtype = jnp.dtype(self.config.dtype)
        return self.kernel.astype(dtype), None if self.bias is None else self.bias.astype(dtype)

    def __call__(self, x: Array, decode: bool = False, residual: Array | None = None) -> Array:
        """The product of ``x``, plus ``residual`` (shaped like the output) when given: in the packed decode
        kernel's output, otherwise added after it."""
        if residual is None:
            return self._product(x, decode)
        if packed_decode.applies(self, decode, x, "kernel"):
            packed = packed_decode.packed_outputs(self, "kernel", (self,), x, residual=residual)
            if packed is not None:
                return packed[0]
        return residual + self._product(x, decode)

    def _product(self, x: Array, decode: bool) -> Array:
        dtype = jnp.dtype(self.config.dtype)
        kernel, bias = self.kernel, self.bias
        if packed_decode.applies(self, decode, x, "kernel"):
            # A decode step (or a prefill on packed weights): the kernel streams the weights on every core,
            # packed when the decoder prepared them (see packed_decode). Input axes flatten into K and output
            # axes into N (row-major reshapes of the kernel: no copies).
            packed = packed_decode.packed_outputs(self, "kernel", (self,), x)
            if packed is not None:
                return packed[0]
            out_shape = self.kernel_shape[len(self.kernel_shape) - (len(self.equation.split("->")[1]) - 2):]
            k_in = math.prod(self.kernel_shape) // math.prod(out_shape)
            flat_bias = jnp.zeros((math.prod(out_shape),), jnp.float32) if bias is None else bias.reshape(-1)
            y = cpu_matmul.small_matmul(x.reshape(x.shape[0], k_in), kernel.reshape(k_in, -1), flat_bias)
            return y.reshape(x.shape[:2] + out_shape).astype(dtype)
        y = token_einsum(self.equation, x.astype(dtype), kernel.astype(dtype))
        return y if bias is None else y + bias.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _stacked_product(equation: str, x: Array, kernel: Array) -> Array:
    """``token_einsum(equation, x, kernel)`` whose kernel gradient is one ``[in, n * out]`` matrix product.

    Autodiff's kernel gradient is the same product, but XLA:CPU lays it out transposed (so that each stacked
    kernel's slice of it is contiguous) and for that copies the ``[tokens, n * out]`` output gradient
    transposed first. Here the product is computed as a plain matrix behind an optimization barrier, which
    keeps its row-major layout; the stacked kernels' slices of it are then weight-sized copies.
    """
    return token_einsum(equation, x, kernel)


def _stacked_product_fwd(equation, x, kernel):
    return token_einsum(equation, x, kernel), (x, kernel)


def _stacked_product_bwd(equation, residuals, dy):
    x, kernel = residuals
    _, x_vjp = jax.vjp(lambda x: token_einsum(equation, x, kernel), x)
    tokens = x.shape[0] * x.shape[1]
    dkernel = jnp.einsum("tk,tn->kn", x.reshape(tokens, -1), dy.reshape(tokens, -1))
    return x_vjp(dy)[0], jax.lax.optimization_barrier(dkernel).reshape(kernel.shape)


_stacked_product.defvjp(_stacked_product_fwd, _stacked_product_bwd)


def stacked_projections(projections: Sequence[Projection], x: Array) -> list[Array]:
    """The outputs of ``projections`` (same equation and kernel shape) of the same input ``x``, as one matmul.

    The kernels are stacked on a new axis right after the input axes (``[in..., n, out...]``, a row-major
    layout whose flattening is one ``[in, n * out]`` matrix), so one product reads ``x`` once and fills the
    matrix units better than ``n`` narrow ones, and its backward pass is one product for ``x``'s gradient
    instead of ``n`` products and a sum. Stacking on a new axis (rather than concatenating along the output
    axes) keeps every output axis, and a sharding of it, as it was. The parameters stay those of each
    projection; the results equal the projections' own up to float rounding.
    """
    first = projections[0]
    lhs, rest = first.equation.split(",")
    rhs, out = rest.split("->")
    inputs = len(rhs) - (len(out) - 2)
    weights = [p.weights() for p in projections]
    kernel = jnp.stack([k for k, _ in weights], axis=inputs)
    y = _stacked_product(f"{lhs},{rhs[:inputs]}S{rhs[inputs:]}->{out[:2]}S{out[2:]}", x.astype(kernel.dtype),
                         kernel)
    if first.use_bias:
        y = y + jnp.stack([b for _, b in weights], axis=0)
    return [y[:, :, i] for i in range(len(projections))]


class Attention(nn.Module):
    """Self-attention with rotary embeddings, grouped-query heads, packing and an optional KV cache.

    Attributes:
        config: model config (heads, KV heads, rotary, dropout, dtypes).
        kernels: how decode steps compute.
        qkv_bias: q, k and v projections carry biases.
        out_bias: the output projection carries a bias.
        out_name: the output projection's parameter name ('dense' in phi, 'o_proj' in llama).
    """

    config: ModelConfig
    kernels: DecodeKernels = DecodeKernels()
    qkv_bias: bool = True
    out_bias: bool = True
    out_name: str = "dense"

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array, rotary: tuple[Array, Array], decode_index: Array | None,
                 deterministic: bool, decode: bool, norm_scale: Array | None = None,
                 residual: Array | None = None) -> Array:
        """Self-attention of ``x`` (``rotary``: the ``(cos, sin)`` tables of :func:`rotary_tables` for its
        positions; ``norm_scale``: of ``rms_norm(x)`` with the config's epsilon, the norm done by the decode
        kernel's q/k/v product when it runs; ``residual``: added to the output projection's)."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        heads, kv_heads, head_dim = cfg.num_heads, cfg.kv_heads, cfg.head_dim
        group = heads // kv_heads

        def projection(name, n):
            return Projection(cfg, "bld,dhk->blhk", (cfg.hidden_size, n, head_dim), ("embed", "heads", "kv"),
                              self.kernels, self.qkv_bias, name=name)

        q_proj, k_proj = projection("q_proj", heads), projection("k_proj", kv_heads)
        v_proj = projection("v_proj", kv_heads)
        packed = None
        if packed_decode.applies(self, decode, x, "qkv"):  # one product, packed weights
            packed = packed_decode.packed_outputs(self, "qkv", (q_proj, k_proj, v_proj), x, norm_scale)
        if packed is None and norm_scale is not None:
            x = cpu_matmul.rms_norm(x, norm_scale, cfg.layer_norm_eps).astype(dtype)
        if packed is not None:
            q, k, v = packed
        elif decode:  # the decode kernels' own products, each projection apart
            q, k, v = q_proj(x, decode), k_proj(x, decode), v_proj(x, decode)  # [B, L, H | KVH, Dh]
        elif kv_heads == heads:
            q, k, v = stacked_projections((q_proj, k_proj, v_proj), x)
        else:
            q, (k, v) = q_proj(x), stacked_projections((k_proj, v_proj), x)
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        q, k, v = (nn.with_logical_constraint(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))

        batch, length = x.shape[:2]
        scale = head_dim ** -0.5
        cached = False
        if decode:
            # The cache is [batch, kv_heads, slots, head_dim]: a decode step's products with it are batched
            # matrix-vector products over contiguous [slots, head_dim] blocks, the fastest layout on CPU and
            # the one a heads-major attention kernel reads.
            initialized = self.has_variable("cache", "cached_key")
            shape = (batch, kv_heads, length, head_dim)
            cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
            if initialized:
                # Write the new keys/values at each row's own slots; out-of-range slots are dropped. (Indexing
                # [rows, :, slots] addresses [batch, length, heads, head_dim] elements: k's own layout.)
                slots = decode_index[:, None] + jnp.arange(length)[None, :]  # [B, T]
                rows = jnp.arange(batch)[:, None]
                k = cached_key.value.at[rows, :, slots].set(k.astype(cached_key.value.dtype), mode="drop")
                v = cached_value.value.at[rows, :, slots].set(v.astype(cached_value.value.dtype), mode="drop")
                cached_key.value, cached_value.value = k, v
                cached = True
                # Row b's query t sits at slot decode_index[b] + t and sees every slot up to it: the slots
                # before decode_index hold this row's earlier tokens, later ones are stale or empty.
                mask = (jnp.arange(k.shape[2])[None, None, :] <= slots[:, :, None])[:, None]  # [B, 1, T, S]
        if cached and self.kernels.attention == "cpu_kernel" and (deterministic or cfg.attn_dropout == 0.0):
            # The same softmax(q.k * scale) v over each row's own slots, in one compiled pass (no dropout).
            out = cpu_attention.decode_attention(q, k, v, decode_index, scale).astype(dtype)
        elif not cached:
            # Query head h = j * group + g uses key/value head j (transformers' repeat_kv order).
            qg = q.reshape(batch, length, kv_heads, group, head_dim)
            dropout = nn.Dropout(rate=cfg.attn_dropout) if cfg.attn_dropout else None
            out = causal_attention(qg, k, v.astype(dtype), segment_ids, scale, dropout, deterministic)
            out = out.reshape(batch, length, heads, head_dim)
        elif length > 1:  # a prefill: the new queries over the cache, a block of them at a time
            qg = q.reshape(batch, length, kv_heads, group, head_dim)
            dropout = nn.Dropout(rate=cfg.attn_dropout) if cfg.attn_dropout else None
            out = cached_attention(qg, k, v.astype(dtype), decode_index, scale, dropout, deterministic)
            out = out.reshape(batch, length, heads, head_dim)
        else:
            qg = q.reshape(batch, length, kv_heads, group, head_dim)
            scores = jnp.einsum("bqjgd,bjkd->bjgqk", qg, k, preferred_element_type=jnp.float32)
            scores = scores.reshape(batch, heads, length, -1) * scale
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)  # finite: masked rows stay NaN-free
            probs = jax.nn.softmax(scores, axis=-1)
            probs = nn.Dropout(rate=cfg.attn_dropout)(probs, deterministic=deterministic)
            probs = probs.astype(dtype).reshape(batch, kv_heads, group, length, -1)
            out = jnp.einsum("bjgqk,bjkd->bqjgd", probs, v.astype(dtype))
            out = out.reshape(batch, length, heads, head_dim)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        return Projection(cfg, "blhk,hkd->bld", (heads, head_dim, cfg.hidden_size), ("heads", "kv", "embed"),
                          self.kernels, self.out_bias, name=self.out_name)(out, decode, residual)


def remat_block(block: Any, config: ModelConfig) -> Any:
    """``block`` wrapped for the config's activation checkpointing (itself when ``remat_policy`` is 'none').

    Blocks take ``(x, segment_ids, rotary, decode_index, deterministic, decode)`` (``rotary``: the ``(cos, sin)``
    tables of :func:`rotary_tables`); the last two are static.
    """
    if config.remat_policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[config.remat_policy], prevent_cse=not config.scan_layers,
                    static_argnums=(5, 6))

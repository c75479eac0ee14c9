"""The phi-1 / phi-1.5 decoder in Flax Linen, with logical partitioning, packing, remat, scan and a KV cache.

One block: a single LayerNorm whose output feeds attention and the MLP in parallel; both are added to the
residual. Attention has biases on q, k, v and the output projection and applies rotary embeddings (HF's
rotate-half convention) to the first ``rotary_dim`` dims of each head. The MLP is fc1 -> gelu (tanh
approximation, "gelu_new") -> fc2. A final LayerNorm feeds an untied LM head with a bias.

Packing: ``segment_ids`` (0 = padding) restrict attention to tokens of the same document, and ``positions``
restart at each document. Decoding: with ``decode=True`` each attention layer keeps a ``[batch, heads,
cache_len, head_dim]`` key/value cache in the ``'cache'`` collection, and the model keeps one write index per row,
so rows of a batch may hold prompts of different lengths (right-padded; see :mod:`textbooks.model.decode`).

Parameters carry logical axis names (``vocab, embed, heads, kv, mlp, layers``); activations are constrained
with ``batch, length, embed, heads, kv, mlp, vocab``. Map them to a mesh with ``nn.logical_axis_rules``.

How decode steps compute (XLA ops or the compiled CPU kernels, :class:`DecodeKernels`) is a choice of the
module, not of the saved :class:`PhiConfig`: the same checkpoint decodes either way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from textbooks.model import cpu_attention, cpu_matmul
from textbooks.model.config import PhiConfig

Array = jax.Array

_REMAT_POLICIES = {
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


def _dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def _dense_init(config: PhiConfig, names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.initializer_range), names)


def _zeros(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _ones(names: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def apply_rotary(x: Array, positions: Array, rotary_dim: int, theta: float) -> Array:
    """Rotates the first ``rotary_dim`` dims of each head of ``x`` by ``positions`` (rotate-half convention).

    Args:
        x: ``[batch, length, heads, head_dim]``.
        positions: ``[batch, length]`` integer positions.
        rotary_dim: even number of leading dims to rotate; the rest pass through.
        theta: rotary base.
    """
    if rotary_dim == 0:
        return x
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, rotary_dim / 2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, L, 1, rotary_dim]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    rot, passthrough = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return jnp.concatenate([rot * cos + rotated_half * sin, passthrough], axis=-1)


def attention_mask(segment_ids: Array) -> Array:
    """Block-diagonal causal mask ``[batch, 1, length, length]`` (True = may attend) from segment ids.

    A query attends to keys at or before it in the same segment; padding (segment 0) attends to nothing.
    """
    length = segment_ids.shape[1]
    causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids != 0)[:, None, :]
    return (causal[None] & same & real)[:, None]


class Projection(nn.Module):
    """A linear map with a bias between head-split and model-width activations, written as one einsum.

    Attributes:
        config: model config (dtypes, initializer).
        equation: einsum from ``[batch, length, ...in]`` and the kernel to ``[batch, length, ...out]``.
        kernel_shape: full kernel shape (input axes first); the bias has the output axes' shape.
        names: logical axis names of the kernel; the bias takes the output axes' names.
        kernels: how single-token decode steps compute the product.
    """

    config: PhiConfig
    equation: str
    kernel_shape: tuple[int, ...]
    names: tuple[str, ...]
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, x: Array, decode: bool = False) -> Array:
        cfg = self.config
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        outputs = len(self.equation.split("->")[1]) - 2  # output axes after batch and length
        kernel = self.param("kernel", _dense_init(cfg, self.names), self.kernel_shape, param_dtype)
        bias = self.param("bias", _zeros(self.names[-outputs:]), self.kernel_shape[-outputs:], param_dtype)
        if decode and x.shape[1] == 1 and self.kernels.projections == "cpu_kernel":
            # A single-token decode step: the kernel streams the weights on every core. Input axes flatten
            # into K and output axes into N (row-major reshapes of the kernel: no copies).
            inputs = len(self.kernel_shape) - outputs
            k_in = math.prod(self.kernel_shape[:inputs])
            y = cpu_matmul.small_matmul(x.reshape(x.shape[0], k_in), kernel.reshape(k_in, -1), bias.reshape(-1))
            return y.reshape(x.shape[:2] + self.kernel_shape[inputs:]).astype(dtype)
        return jnp.einsum(self.equation, x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


class PhiAttention(nn.Module):
    """Multi-head self-attention with biases, partial rotary embeddings and an optional KV cache."""

    config: PhiConfig
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array, positions: Array, decode_index: Array | None,
                 deterministic: bool, decode: bool) -> Array:
        cfg = self.config
        dtype = _dtype(cfg.dtype)

        def projection(name):
            return Projection(cfg, "bld,dhk->blhk", (cfg.hidden_size, cfg.num_heads, cfg.head_dim),
                              ("embed", "heads", "kv"), self.kernels, name=name)

        q, k, v = (projection(n)(x, decode) for n in ("q_proj", "k_proj", "v_proj"))  # [B, L, H, Dh]
        q = apply_rotary(q, positions, cfg.rotary_dim, cfg.rope_theta)
        k = apply_rotary(k, positions, cfg.rotary_dim, cfg.rope_theta)
        q, k, v = (nn.with_logical_constraint(t, ("batch", "length", "heads", "kv")) for t in (q, k, v))

        batch, length = x.shape[:2]
        scale = cfg.head_dim ** -0.5
        cached = False
        if decode:
            # The cache is [batch, heads, slots, head_dim]: a decode step's products with it are batched
            # matrix-vector products over contiguous [slots, head_dim] blocks, the fastest layout on CPU and
            # the one a heads-major attention kernel reads.
            initialized = self.has_variable("cache", "cached_key")
            shape = (batch, cfg.num_heads, length, cfg.head_dim)
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
        else:
            if not cached:
                mask = attention_mask(segment_ids)
                scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
            else:
                scores = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)  # finite: masked rows stay NaN-free
            probs = jax.nn.softmax(scores, axis=-1)
            probs = nn.Dropout(rate=cfg.attn_dropout)(probs, deterministic=deterministic)
            if not cached:
                out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v.astype(dtype))
            else:
                out = jnp.einsum("bhqk,bhkd->bqhd", probs.astype(dtype), v.astype(dtype))
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
        return Projection(cfg, "blhk,hkd->bld", (cfg.num_heads, cfg.head_dim, cfg.hidden_size),
                          ("heads", "kv", "embed"), self.kernels, name="dense")(out, decode)


class PhiMLP(nn.Module):
    """fc1 -> gelu (tanh approximation) -> fc2, with biases."""

    config: PhiConfig
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, x: Array, decode: bool = False) -> Array:
        cfg = self.config
        h = Projection(cfg, "bld,dm->blm", (cfg.hidden_size, cfg.intermediate_size), ("embed", "mlp"),
                       self.kernels, name="fc1")(x, decode)
        h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
        return Projection(cfg, "blm,md->bld", (cfg.intermediate_size, cfg.hidden_size), ("mlp", "embed"),
                          self.kernels, name="fc2")(h, decode)


def _layer_norm(cfg: PhiConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=_dtype(cfg.dtype), param_dtype=_dtype(cfg.param_dtype),
                        scale_init=_ones(("embed",)), bias_init=_zeros(("embed",)), name=name)


class PhiBlock(nn.Module):
    """One decoder block: ``x + dropout(attn(ln(x))) + dropout(mlp(ln(x)))``.

    Returns ``(x, None)`` so that the same module can be the body of ``nn.scan``.
    """

    config: PhiConfig
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array, positions: Array, decode_index: Array | None,
                 deterministic: bool, decode: bool) -> tuple[Array, None]:
        cfg = self.config
        h = _layer_norm(cfg, "input_layernorm")(x)
        attn = PhiAttention(cfg, self.kernels, name="self_attn")(h, segment_ids, positions, decode_index,
                                                               deterministic, decode)
        mlp = PhiMLP(cfg, self.kernels, name="mlp")(h, decode)
        dropout = nn.Dropout(rate=cfg.resid_dropout)
        x = x + dropout(attn, deterministic=deterministic) + dropout(mlp, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


def _block_class(cfg: PhiConfig) -> Any:
    if cfg.remat_policy == "none":
        return PhiBlock
    # Arguments after self: x=1, segment_ids=2, positions=3, decode_index=4, deterministic=5, decode=6.
    return nn.remat(PhiBlock, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers,
                    static_argnums=(5, 6))


class PhiForCausalLM(nn.Module):
    """The phi causal language model.

    Attributes:
        config: the model's :class:`PhiConfig`.
        kernels: how decode steps compute (see :class:`DecodeKernels`); parameters and results do not depend
            on it beyond float rounding.
    """

    config: PhiConfig
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, input_ids: Array, *, segment_ids: Array | None = None, positions: Array | None = None,
                 deterministic: bool = True, decode: bool = False,
                 output_hidden_states: bool = False) -> Array | tuple[Array, Array]:
        """Runs the model.

        Args:
            input_ids: ``[batch, length]`` token ids.
            segment_ids: ``[batch, length]`` document ids of packed rows; 0 marks padding. Default: all 1.
                With ``decode=True`` padding must be on the right of each row; the number of non-zero ids is
                how far the row's cache index advances.
            positions: ``[batch, length]`` positions (restarting per document when packed). Default:
                ``arange(length)``, or the row's cache index onwards when decoding.
            deterministic: disable dropout (pass a 'dropout' rng otherwise).
            decode: use and update the KV cache in the mutable 'cache' collection. Initialize it by calling
                ``init`` with ``decode=True`` and an input of the cache length (see
                :func:`textbooks.model.decode.init_cache`).
            output_hidden_states: also return the final LayerNorm output.

        Returns:
            float32 logits ``[batch, length, vocab]``, or ``(logits, hidden [batch, length, hidden])``.
        """
        cfg = self.config
        dtype, param_dtype = _dtype(cfg.dtype), _dtype(cfg.param_dtype)
        batch, length = input_ids.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)

        decode_index = None
        if decode:
            initialized = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", jnp.zeros, (batch,), jnp.int32)
            decode_index = index.value
            if positions is None:
                positions = decode_index[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
            if initialized:
                index.value = decode_index + jnp.sum(segment_ids != 0, axis=1, dtype=jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None, :], (batch, length))

        x = nn.Embed(num_embeddings=cfg.vocab_size, features=cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=_dense_init(cfg, ("vocab", "embed")), name="embed_tokens")(input_ids)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x = nn.Dropout(rate=cfg.embd_dropout)(x, deterministic=deterministic)

        block = _block_class(cfg)
        if cfg.scan_layers:
            stack = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                            split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * 5,
                            length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(cfg, self.kernels, name="layers")(x, segment_ids, positions, decode_index, deterministic,
                                                           decode)
        else:
            for i in range(cfg.num_layers):
                x, _ = block(cfg, self.kernels, name=f"layers_{i}")(x, segment_ids, positions, decode_index,
                                                                    deterministic, decode)

        hidden = _layer_norm(cfg, "final_layernorm")(x)
        logits = nn.Dense(cfg.vocab_size, dtype=dtype, param_dtype=param_dtype,
                          kernel_init=_dense_init(cfg, ("embed", "vocab")), bias_init=_zeros(("vocab",)),
                          name="lm_head")(hidden)
        logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        if output_hidden_states:
            return logits, hidden
        return logits


def _init_fn(config: PhiConfig):
    def init(rng):
        # No activation constraints: the one-row dummy batch cannot be split over a mesh.
        with nn.logical_axis_rules(()):
            return PhiForCausalLM(config).init(rng, jnp.zeros((1, min(8, config.max_len)), jnp.int32))

    return init


def init_params(config: PhiConfig, rng: Array | int = 0) -> dict:
    """Returns freshly initialized parameters (plain arrays, logical-axis boxes removed)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    return nn.unbox(_jitted_init(config)(rng)["params"])


@functools.lru_cache(maxsize=8)
def _jitted_init(config: PhiConfig):
    return jax.jit(_init_fn(config))


def param_logical_specs(config: PhiConfig) -> dict:
    """Returns the tree of logical ``PartitionSpec``s of the parameters (computed abstractly, nothing allocated)."""
    abstract = jax.eval_shape(_init_fn(config), jax.random.PRNGKey(0))
    return nn.get_partition_spec(abstract)["params"]


def param_shapes(config: PhiConfig) -> dict:
    """Returns the tree of ``jax.ShapeDtypeStruct`` of the parameters (unboxed, nothing allocated)."""
    return nn.unbox(jax.eval_shape(_init_fn(config), jax.random.PRNGKey(0))["params"])

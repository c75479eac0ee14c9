"""The causal language model of either family, in Flax Linen: :class:`CausalLM`, and its parameters' shapes.

The stack is the same for both families: token embedding, ``num_layers`` blocks (unrolled, or stacked with
``nn.scan``; each optionally rematerialized), a final norm and the LM head. The config's ``family`` picks the
block (:class:`textbooks.model.phi.PhiBlock` or :class:`textbooks.model.llama.LlamaBlock`), the final norm
(LayerNorm ``final_layernorm`` / RMSNorm ``norm``) and the head (untied with a bias / untied or tied, no bias).

Packing: ``segment_ids`` (0 = padding) restrict attention to tokens of the same document, and ``positions``
restart at each document. Decoding: with ``decode=True`` the model keeps one write index per row next to the
layers' KV caches (see :mod:`textbooks.model.layers` and :mod:`textbooks.model.decode`); a tied head's
single-token decode steps use the same compiled product kernel as the layers' projections when ``kernels``
asks for it (:func:`textbooks.model.cpu_matmul.small_matmul_nt`, the table read as stored).

Parameters carry logical axis names (``vocab, embed, heads, kv, mlp, layers``); activations are constrained
with ``batch, length, embed, heads, kv, mlp, vocab``. Map them to a mesh with ``nn.logical_axis_rules``.
"""

from __future__ import annotations

import functools
import flax.linen as nn
import jax
import jax.numpy as jnp

from textbooks.model import cpu_matmul, packed_decode
from textbooks.model.config import ModelConfig
from textbooks.model.layers import DecodeKernels, dense_init, remat_block, rotary_inv_freq, rotary_tables, zeros
from textbooks.model.llama import LlamaBlock, rms_norm
from textbooks.model.phi import PhiBlock, layer_norm

Array = jax.Array

_BLOCKS = {"phi": PhiBlock, "llama": LlamaBlock}


class CausalLM(nn.Module):
    """A decoder-only language model of the config's family.

    Attributes:
        config: the model's :class:`ModelConfig` (its ``family`` selects the architecture).
        kernels: how decode steps compute (see :class:`DecodeKernels`); parameters and results do not depend
            on it beyond float rounding.
    """

    config: ModelConfig
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, input_ids: Array, *, segment_ids: Array | None = None, positions: Array | None = None,
                 deterministic: bool = True, decode: bool = False,
                 output_hidden_states: bool = False, head: bool = True) -> Array | tuple[Array, Array]:
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
                :func:`textbooks.model.kv_cache.init_cache`).
            output_hidden_states: also return the final norm's output.
            head: apply the LM head; False returns the final norm's output ``[batch, length, hidden]`` alone
                (for a loss that applies the head itself, :func:`head_weights`; the head's parameters are
                still created by ``init``).

        Returns:
            float32 logits ``[batch, length, vocab]``, or ``(logits, hidden [batch, length, hidden])``.
        """
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
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

        embed = nn.Embed(num_embeddings=cfg.vocab_size, features=cfg.hidden_size, dtype=dtype,
                         param_dtype=param_dtype, embedding_init=dense_init(cfg, ("vocab", "embed")),
                         name="embed_tokens")
        x = nn.with_logical_constraint(embed(input_ids), ("batch", "length", "embed"))
        x = nn.Dropout(rate=cfg.embd_dropout)(x, deterministic=deterministic)

        # The rotary cosines and sines, once for all the layers (broadcast to every step of a scanned stack).
        rotary = rotary_tables(positions, rotary_inv_freq(cfg))
        block = remat_block(_BLOCKS[cfg.family], cfg)
        if cfg.scan_layers:
            stack = nn.scan(block, variable_axes={"params": 0, "cache": 0, "packed": 0},
                            split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * 5,
                            length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(cfg, self.kernels, name="layers")(x, segment_ids, rotary, decode_index, deterministic,
                                                           decode)
        else:
            for i in range(cfg.num_layers):
                x, _ = block(cfg, self.kernels, name=f"layers_{i}")(x, segment_ids, rotary, decode_index,
                                                                    deterministic, decode)

        if cfg.family == "phi":
            hidden = layer_norm(cfg, "final_layernorm")(x)
            if not head and not self.is_initializing():
                return hidden
            logits = nn.Dense(cfg.vocab_size, dtype=dtype, param_dtype=param_dtype,
                              kernel_init=dense_init(cfg, ("embed", "vocab")), bias_init=zeros(("vocab",)),
                              name="lm_head")(hidden)
        else:
            hidden = rms_norm(cfg, "norm")(x)
            if not head and not self.is_initializing():
                return hidden
            tied_step = cfg.tie_word_embeddings and decode and length == 1 and self.kernels.projections == "cpu_kernel"
            packed = None
            if tied_step:  # the decoder's packed copy of the transposed table, if it made one
                packed = packed_decode.packed_product(
                    self, "lm_head", lambda: (embed.embedding.T, jnp.zeros((cfg.vocab_size,), jnp.float32)),
                    hidden.reshape(batch, -1))
            if packed is not None:
                logits = packed[:, None, :]
            elif tied_step:
                # A single-token decode step: the multi-core kernel reads the table row by row as it is stored.
                logits = cpu_matmul.small_matmul_nt(hidden.reshape(batch, -1), embed.embedding)[:, None, :]
            elif cfg.tie_word_embeddings:
                logits = embed.attend(hidden)
            else:
                logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                                  kernel_init=dense_init(cfg, ("embed", "vocab")), name="lm_head")(hidden)
        logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        if output_hidden_states:
            return logits, hidden
        return logits


def head_weights(config: ModelConfig, params: dict) -> tuple[Array, Array | None]:
    """The LM head of :class:`CausalLM` as ``(kernel [hidden_size, vocab], bias [vocab] or None)`` in the
    config's dtype (phi: kernel and bias; llama: its kernel, or the embedding transposed when tied)."""
    dtype = jnp.dtype(config.dtype)
    if config.family == "llama" and config.tie_word_embeddings:
        return params["embed_tokens"]["embedding"].astype(dtype).T, None
    head = params["lm_head"]
    return head["kernel"].astype(dtype), head["bias"].astype(dtype) if "bias" in head else None


def head_logits(config: ModelConfig, params: dict, hidden: Array) -> Array:
    """The LM head of :class:`CausalLM` applied to final-norm outputs ``hidden [..., hidden_size]`` outside the
    module (float32 logits ``[..., vocab]``), e.g. on a few positions only: the same products as the module's
    head (:func:`head_weights`), in the config's dtype."""
    kernel, bias = head_weights(config, params)
    logits = jnp.dot(hidden.astype(kernel.dtype), kernel)
    if bias is not None:
        logits = logits + bias
    return logits.astype(jnp.float32)


def _init_fn(config: ModelConfig):
    def init(rng):
        # No activation constraints: the one-row dummy batch cannot be split over a mesh.
        with nn.logical_axis_rules(()):
            return CausalLM(config).init(rng, jnp.zeros((1, min(8, config.max_len)), jnp.int32))

    return init


def init_params(config: ModelConfig, rng: Array | int = 0) -> dict:
    """Returns freshly initialized parameters (plain arrays, logical-axis boxes removed)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    return nn.unbox(_jitted_init(config)(rng)["params"])


@functools.lru_cache(maxsize=8)
def _jitted_init(config: ModelConfig):
    return jax.jit(_init_fn(config))


def param_logical_specs(config: ModelConfig) -> dict:
    """Returns the tree of logical ``PartitionSpec``s of the parameters (computed abstractly, nothing allocated)."""
    abstract = jax.eval_shape(_init_fn(config), jax.random.PRNGKey(0))
    return nn.get_partition_spec(abstract)["params"]


def param_shapes(config: ModelConfig) -> dict:
    """Returns the tree of ``jax.ShapeDtypeStruct`` of the parameters (unboxed, nothing allocated)."""
    return nn.unbox(jax.eval_shape(_init_fn(config), jax.random.PRNGKey(0))["params"])

"""The Llama decoder block (the ``'llama'`` family of :class:`textbooks.model.causal_lm.CausalLM`).

One block, pre-norm and sequential: ``x + attn(rms(x))`` then ``x + mlp(rms(x))``. Attention
(:class:`textbooks.model.layers.Attention`) uses full rotary embeddings (with the config's linear or llama3
scaling), grouped-query heads, no output bias and q/k/v biases only when ``attention_bias`` (Qwen2). The MLP
is SwiGLU: ``down(silu(gate(x)) * up(x))``, no biases. The model ends with an RMSNorm (``norm``) and an LM
head that is untied (``lm_head``) or the transposed embedding. Parameter names follow transformers'
``LlamaForCausalLM`` so that checkpoints map one to one.

A single-token decode step on the packed CPU kernels hands each norm to the product after it (the q/k/v product,
the fused MLP) and each residual add to the product before it (the output projection, the MLP's down product):
the block is four kernel calls and the attention between them, with no separate norm or add ops.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from textbooks.model import cpu_matmul, packed_decode
from textbooks.model.config import ModelConfig
from textbooks.model.layers import Attention, DecodeKernels, Projection, ones, stacked_projections

Array = jax.Array


class LlamaMLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, without biases."""

    config: ModelConfig
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, x: Array, decode: bool = False, norm_scale: Array | None = None,
                 residual: Array | None = None) -> Array:
        """The MLP of ``x`` (``norm_scale``: of ``rms_norm(x)`` with the config's epsilon; ``residual``: added to
        the output), both inside the fused decode kernel when it runs."""
        cfg = self.config

        def up(name):
            return Projection(cfg, "bld,dm->blm", (cfg.hidden_size, cfg.intermediate_size), ("embed", "mlp"),
                              self.kernels, use_bias=False, name=name)

        gate_proj, up_proj = up("gate_proj"), up("up_proj")
        down_proj = Projection(cfg, "blm,md->bld", (cfg.intermediate_size, cfg.hidden_size), ("mlp", "embed"),
                               self.kernels, use_bias=False, name="down_proj")
        if packed_decode.applies(self, decode, x, "swiglu"):
            # One kernel call for the whole MLP on packed weights (gate, up, SwiGLU, down).
            fused = packed_decode.packed_swiglu(self, "swiglu", gate_proj, up_proj, down_proj, x, norm_scale,
                                                residual)
            if fused is not None:
                return fused
        if norm_scale is not None:
            x = cpu_matmul.rms_norm(x, norm_scale, cfg.layer_norm_eps).astype(jnp.dtype(cfg.dtype))
        if decode:  # the decode kernels' own products, each projection apart
            gate, value = gate_proj(x, decode), up_proj(x, decode)
        else:  # one matmul for both (see stacked_projections)
            gate, value = stacked_projections((gate_proj, up_proj), x)
        h = nn.with_logical_constraint(jax.nn.silu(gate) * value, ("batch", "length", "mlp"))
        return down_proj(h, decode, residual)


def rms_norm(cfg: ModelConfig, name: str) -> nn.RMSNorm:
    """Llama's RMSNorm (scale only; statistics in float32) with the config's epsilon and dtypes."""
    return nn.RMSNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                      scale_init=ones(("embed",)), name=name)


class LlamaBlock(nn.Module):
    """One decoder block: ``x += dropout(attn(rms(x)))``, then ``x += dropout(mlp(rms(x)))``.

    ``rotary``: the ``(cos, sin)`` tables of the positions (:func:`textbooks.model.layers.rotary_tables`),
    computed once by the model for all its blocks. Returns ``(x, None)`` so that the same module can be the
    body of ``nn.scan``.
    """

    config: ModelConfig
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array, rotary: tuple[Array, Array], decode_index: Array | None,
                 deterministic: bool, decode: bool) -> tuple[Array, None]:
        cfg = self.config
        dropout = nn.Dropout(rate=cfg.resid_dropout)
        attn = Attention(cfg, self.kernels, qkv_bias=cfg.attention_bias, out_bias=False, out_name="o_proj",
                         name="self_attn")
        if (not self.is_initializing() and packed_decode.applies(self, decode, x)
                and (deterministic or cfg.resid_dropout == 0.0)):
            # A decode step on the decode kernels (or a prefill on packed weights): each norm is done by the
            # product after it and each residual add by the product before it (the same sums, not separate ops).
            params = self.variables["params"]
            x = attn(x, segment_ids, rotary, decode_index, deterministic, decode,
                     params["input_layernorm"]["scale"], residual=x)
            x = LlamaMLP(cfg, self.kernels, name="mlp")(x, decode, params["post_attention_layernorm"]["scale"],
                                                         residual=x)
            return nn.with_logical_constraint(x, ("batch", "length", "embed")), None
        h = attn(rms_norm(cfg, "input_layernorm")(x), segment_ids, rotary, decode_index, deterministic, decode)
        x = nn.with_logical_constraint(x + dropout(h, deterministic=deterministic), ("batch", "length", "embed"))
        h = LlamaMLP(cfg, self.kernels, name="mlp")(rms_norm(cfg, "post_attention_layernorm")(x), decode)
        x = x + dropout(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None

"""The phi-1 / phi-1.5 decoder block (the ``'phi'`` family of :class:`textbooks.model.causal_lm.CausalLM`).

One block: a single LayerNorm whose output feeds attention and the MLP in parallel; both are added to the
residual. Attention (:class:`textbooks.model.layers.Attention`) has biases on q, k, v and the output
projection ``dense`` and applies rotary embeddings to the first ``rotary_dim`` dims of each head. The MLP is
fc1 -> gelu (tanh approximation, "gelu_new") -> fc2. The model ends with a LayerNorm (``final_layernorm``)
and an untied LM head with a bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from textbooks.model.config import ModelConfig
from textbooks.model.layers import Attention, DecodeKernels, Projection, ones, zeros

Array = jax.Array


_SQRT_2_OVER_PI = 0.7978845608028654


@jax.custom_vjp
def gelu_tanh(x: Array) -> Array:
    """``jax.nn.gelu(x, approximate=True)`` ("gelu_new") whose gradient keeps only ``x`` from the forward pass.

    Autodiff of the tanh formula saves several intermediates of the MLP's widest activation for the backward
    pass (each a write and a later read of ``[tokens, intermediate]`` floats); here the backward pass recomputes
    ``tanh`` from ``x`` (one read) and applies the closed-form derivative
    ``0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2 / pi) (1 + 3 * 0.044715 x^2)``.
    """
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
    return jax.nn.gelu(x, approximate=True), x


def _gelu_tanh_bwd(x, g):
    t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x)))
    slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * (_SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * (x * x)))
    return (g * slope.astype(g.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


class PhiMLP(nn.Module):
    """fc1 -> gelu (tanh approximation) -> fc2, with biases."""

    config: ModelConfig
    kernels: DecodeKernels = DecodeKernels()

    @nn.compact
    def __call__(self, x: Array, decode: bool = False) -> Array:
        cfg = self.config
        h = Projection(cfg, "bld,dm->blm", (cfg.hidden_size, cfg.intermediate_size), ("embed", "mlp"),
                       self.kernels, name="fc1")(x, decode)
        h = nn.with_logical_constraint(gelu_tanh(h), ("batch", "length", "mlp"))
        return Projection(cfg, "blm,md->bld", (cfg.intermediate_size, cfg.hidden_size), ("mlp", "embed"),
                          self.kernels, name="fc2")(h, decode)


def layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
    """phi's LayerNorm (scale and bias) with the config's epsilon and dtypes."""
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                        scale_init=ones(("embed",)), bias_init=zeros(("embed",)), name=name)


class PhiBlock(nn.Module):
    """One decoder block: ``x + dropout(attn(ln(x))) + dropout(mlp(ln(x)))``.

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
        h = layer_norm(cfg, "input_layernorm")(x)
        attn = Attention(cfg, self.kernels, name="self_attn")(h, segment_ids, rotary, decode_index,
                                                            deterministic, decode)
        mlp = PhiMLP(cfg, self.kernels, name="mlp")(h, decode)
        dropout = nn.Dropout(rate=cfg.resid_dropout)
        x = x + dropout(attn, deterministic=deterministic) + dropout(mlp, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None

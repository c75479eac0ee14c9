"""Model configuration: the :class:`ModelConfig` dataclass, the named presets and the gin entry point.

One config describes a decoder of either family the project builds (its ``family`` field names it):

* ``'phi'``: phi-1 / phi-1.5 (parallel attention and MLP behind one LayerNorm, partial rotary, gelu MLP,
  biases everywhere, untied head with a bias). Presets ``phi-1`` (1.3B, "Textbooks Are All You Need"),
  ``phi-1.5`` (same shape, the phi-1.5 report), ``phi-1-small`` (350M) and ``phi-cpu-1m``/``7m``/``30m``.
* ``'llama'``: the Llama architecture most data-mixing work uses (RMSNorm before attention and before the MLP,
  full rotary with optional linear or llama3 scaling, grouped-query attention, SwiGLU MLP, tied or untied
  embeddings, optional q/k/v biases as in Qwen2). Presets ``smollm2-135m``/``360m``/``1.7b`` (the released
  SmolLM2 shapes) and ``llama-cpu-1m``/``7m``/``30m``, which match the phi CPU presets in parameter count so
  that an ablation can vary the architecture as well as the mixture.

Gin binds only :func:`model_config` (``model_config.preset = 'phi-cpu-7m'`` and overrides such as
``model_config.scan_layers = True``); everything else is plain Python.

A config describes the model and is saved with its checkpoints; how a backend computes it (the decode kernels
of :class:`textbooks.model.layers.DecodeKernels`) is not part of it. :data:`SHAPE_FIELDS` and
:data:`PARAM_TREE_FIELDS` say which fields a checkpoint's parameters depend on.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import gin

from textbooks.vocab import PHI_PADDED_VOCAB_SIZE, SPM8K_VOCAB_SIZE

FAMILIES = ("phi", "llama")
DTYPES = ("float32", "bfloat16", "float16")
PARAM_DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "everything")
ROPE_SCALING_TYPES = ("none", "linear", "llama3")
# The fields that set the parameters' shapes, and with the layer layout (stacked by scan or not) the fields
# that set the parameter tree: a checkpoint's parameters only fit a config that agrees on these.
SHAPE_FIELDS: tuple[str, ...] = ("family", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                                 "intermediate_size", "tie_word_embeddings", "attention_bias")
PARAM_TREE_FIELDS: tuple[str, ...] = SHAPE_FIELDS + ("scan_layers",)
# Fields of earlier versions that are no longer part of a config; saved configs holding them still load.
RETIRED_FIELDS: tuple[str, ...] = ("decode_attention", "decode_projections")  # now DecodeKernels (model.layers)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder of the phi or the Llama family.

    Attributes:
        family: 'phi' or 'llama' (see the module docstring); configs saved before families existed are phi.
        vocab_size: rows of the embedding and columns of the LM head (phi pads its 50,295 tokens to 51,200:
            :data:`textbooks.vocab.PHI_PADDED_VOCAB_SIZE`).
        hidden_size: model width.
        num_layers: decoder blocks.
        num_heads: query heads; ``hidden_size`` must be a multiple of it.
        num_kv_heads: key/value heads (grouped-query attention; llama only); 0 means ``num_heads``. Must divide
            ``num_heads``; the KV cache holds only these heads.
        intermediate_size: MLP width (phi: 4 x hidden_size; llama: the SwiGLU width).
        max_len: longest sequence the model is meant for (training context and decode cache limit).
        partial_rotary_factor: fraction of each head's dims that get rotary embeddings (phi: 0.5, 32 of 64;
            llama: 1.0).
        rope_theta: rotary base.
        rope_scaling_type: 'none', 'linear' (positions divided by the factor) or 'llama3' (long wavelengths
            divided by the factor, short ones kept, a smooth blend between); llama only.
        rope_scaling_factor: the scaling factor.
        rope_low_freq_factor, rope_high_freq_factor, rope_original_max_len: llama3 scaling's band edges
            (wavelengths above ``original_max_len / low_freq_factor`` are scaled, below
            ``original_max_len / high_freq_factor`` kept).
        layer_norm_eps: epsilon of every norm (LayerNorm for phi, RMSNorm for llama).
        tie_word_embeddings: the LM head is the transposed embedding (llama only; phi's head is untied).
        attention_bias: q, k and v projections carry biases (llama only, Qwen2-style; phi always has them).
        embd_dropout: dropout on the token embeddings.
        attn_dropout: dropout on the attention probabilities.
        resid_dropout: dropout on the attention and MLP outputs before they join the residual.
        dtype: compute dtype ('float32', 'bfloat16' or 'float16'); logits are always returned in float32.
        param_dtype: storage dtype of the parameters.
        scan_layers: stack the blocks with ``nn.scan`` (one compiled block, params with a leading 'layers' axis).
        remat_policy: activation checkpointing of each block: 'none', 'full' (save nothing), 'dots' (save
            matmul outputs), 'dots_with_no_batch_dims' (save weight matmuls only) or 'everything'.
        initializer_range: standard deviation of the normal initializer of kernels and embeddings.
    """

    family: str = "phi"
    vocab_size: int = PHI_PADDED_VOCAB_SIZE
    hidden_size: int = 2048
    num_layers: int = 24
    num_heads: int = 32
    num_kv_heads: int = 0
    intermediate_size: int = 8192
    max_len: int = 2048
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    rope_scaling_type: str = "none"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    layer_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    embd_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    initializer_range: float = 0.02

    def __post_init__(self):
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {FAMILIES}, got {self.family!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.num_kv_heads, bool) or not isinstance(self.num_kv_heads, int) or self.num_kv_heads < 0:
            problems.append(f"num_kv_heads must be a non-negative integer (0: num_heads), got {self.num_kv_heads!r}")
        if not problems and self.hidden_size % self.num_heads:
            problems.append(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if not problems and self.num_heads % self.kv_heads:
            problems.append(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if not 0.0 <= self.partial_rotary_factor <= 1.0:
            problems.append(f"partial_rotary_factor must be in [0, 1], got {self.partial_rotary_factor}")
        elif not problems and self.rotary_dim % 2:
            problems.append(f"rotary_dim = int(head_dim * partial_rotary_factor) = {self.rotary_dim} must be even "
                            f"(head_dim {self.head_dim}, partial_rotary_factor {self.partial_rotary_factor})")
        for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.rope_theta <= 0:
            problems.append(f"rope_theta must be positive, got {self.rope_theta}")
        if self.rope_scaling_type not in ROPE_SCALING_TYPES:
            problems.append(f"rope_scaling_type must be one of {ROPE_SCALING_TYPES}, got {self.rope_scaling_type!r}")
        elif self.rope_scaling_type != "none":
            if self.rope_scaling_factor <= 0:
                problems.append(f"rope_scaling_factor must be positive, got {self.rope_scaling_factor}")
            if self.rope_scaling_type == "llama3" and not (
                    0 < self.rope_low_freq_factor < self.rope_high_freq_factor and self.rope_original_max_len > 0):
                problems.append("llama3 rope scaling needs 0 < rope_low_freq_factor < rope_high_freq_factor and "
                                f"rope_original_max_len > 0, got {self.rope_low_freq_factor}, "
                                f"{self.rope_high_freq_factor}, {self.rope_original_max_len}")
        if self.layer_norm_eps <= 0:
            problems.append(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.param_dtype not in PARAM_DTYPES:
            problems.append(f"param_dtype must be one of {PARAM_DTYPES}, got {self.param_dtype!r}")
        if self.remat_policy not in REMAT_POLICIES:
            problems.append(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.family == "phi":
            unsupported = [f"{name}={getattr(self, name)!r}" for name, ok in (
                ("num_kv_heads", self.num_kv_heads in (0, self.num_heads)),
                ("tie_word_embeddings", not self.tie_word_embeddings),
                ("attention_bias", not self.attention_bias),
                ("rope_scaling_type", self.rope_scaling_type == "none")) if not ok]
            if unsupported:
                problems.append(f"the phi family has no {', '.join(unsupported)} (grouped-query attention, tied "
                                "embeddings, the attention_bias switch and rope scaling are llama-family "
                                "options; phi always has biases): set family='llama' or drop them")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``num_kv_heads``, or ``num_heads`` when it is 0)."""
        return self.num_kv_heads or self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each head that are rotated (HF's ``int(head_dim * partial_rotary_factor)``)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def replace(self, **changes: Any) -> "ModelConfig":
        """Returns a copy with ``changes`` applied (validated like the constructor)."""
        _check_fields(changes, "ModelConfig.replace")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Builds a config from :meth:`to_dict` output (of this or an earlier version: the
        :data:`RETIRED_FIELDS` are dropped, a missing family is phi); other unknown keys are an error naming them."""
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        _check_fields(d, "ModelConfig.from_dict")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Exact parameter count of :class:`textbooks.model.causal_lm.CausalLM` with this config.

        Args:
            non_embedding: leave out the token embedding and the LM head (weights and bias), the count
                scaling laws use.
        """
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_heads * self.head_dim, self.kv_heads * self.head_dim
        if self.family == "phi":
            norms = 2 * d  # one LayerNorm (scale and bias)
            attention = 4 * (d * d + d)  # q, k, v and the output projection, each with a bias.
            mlp = d * f + f + f * d + d
            final_norm, head = 2 * d, d * v + v
        else:
            norms = 2 * d  # two RMSNorms (scale only)
            attention = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.attention_bias else 0)
            mlp = 3 * d * f
            final_norm, head = d, 0 if self.tie_word_embeddings else d * v
        body = self.num_layers * (norms + attention + mlp) + final_norm
        if non_embedding:
            return body
        return v * d + body + head

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6N for the matmuls plus 12 * L * D * T for attention.

        N counts the weights of every matmul: a tied head's matmul counts once although its weights are the
        embedding's (whose lookup is not a matmul).
        """
        t = self.max_len if seq_len is None else seq_len
        n = self.num_params() - self.vocab_size * self.hidden_size  # the embedding lookup is not a matmul
        if self.tie_word_embeddings:
            n += self.vocab_size * self.hidden_size
        return 6 * n + 12 * self.num_layers * self.hidden_size * t


def param_tree_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (a's value, b's value)}`` for the :data:`PARAM_TREE_FIELDS` on which two config dicts
    (:meth:`ModelConfig.to_dict`) differ; empty when parameters of one fit the other. A field missing from a
    dict (saved by an earlier version) has its default value."""
    defaults = ModelConfig().to_dict()

    def value(d, k):
        v = d.get(k, defaults[k])
        return (d.get("num_heads") if k == "num_kv_heads" and not v else v)

    return {k: (value(a, k), value(b, k)) for k in PARAM_TREE_FIELDS if value(a, k) != value(b, k)}


def _check_fields(d: Mapping[str, Any], where: str) -> None:
    retired = sorted(set(d) & set(RETIRED_FIELDS))
    if retired:
        raise ValueError(f"{where}: {retired} are no longer ModelConfig fields (a backend choice, not saved with "
                         f"the model): choose decode kernels with Decoder(kernels=...) or `textbooks serve "
                         f"--kernels`")
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown ModelConfig field(s) {unknown}; known fields: {sorted(names)}")


_PAPER = dict(vocab_size=PHI_PADDED_VOCAB_SIZE, max_len=2048, partial_rotary_factor=0.5, rope_theta=10000.0, layer_norm_eps=1e-5)
# The CPU presets use the project's SentencePiece vocabulary ('spm8k'); the trainer overrides vocab_size when
# it trains with the phi BPE.
_CPU = dict(vocab_size=SPM8K_VOCAB_SIZE, partial_rotary_factor=0.5, rope_theta=10000.0, layer_norm_eps=1e-5)
# SmolLM2 (HuggingFaceTB's released configs): 49,152-token BPE, tied embeddings, RMSNorm eps 1e-5, 8k context.
_SMOLLM2 = dict(family="llama", vocab_size=49152, max_len=8192, partial_rotary_factor=1.0, layer_norm_eps=1e-5,
                tie_word_embeddings=True)
# CPU-size Llama models with the phi CPU presets' widths, depths, heads and vocabulary: half as many KV heads,
# untied head like phi's, and a SwiGLU width (a multiple of 16) that brings the parameter count within 1% of
# the phi preset's (tests/model/test_model_config.py checks it).
_LLAMA_CPU = dict(family="llama", vocab_size=SPM8K_VOCAB_SIZE, partial_rotary_factor=1.0, rope_theta=10000.0,
                  layer_norm_eps=1e-5)

PRESETS: dict[str, ModelConfig] = {
    # "Textbooks Are All You Need": 24 layers, width 2048, 32 heads of 64, MLP 8192, rotary on 32 dims;
    # attention and residual dropout 0.1.
    "phi-1": ModelConfig(hidden_size=2048, num_layers=24, num_heads=32, intermediate_size=8192,
                         attn_dropout=0.1, resid_dropout=0.1, **_PAPER),
    # phi-1.5 report: the phi-1 architecture. The report states no dropout; the released model's config has 0.
    "phi-1.5": ModelConfig(hidden_size=2048, num_layers=24, num_heads=32, intermediate_size=8192, **_PAPER),
    # phi-1-small (350M): 20 layers, width 1024, 16 heads of 64, MLP 4096.
    "phi-1-small": ModelConfig(hidden_size=1024, num_layers=20, num_heads=16, intermediate_size=4096,
                               attn_dropout=0.1, resid_dropout=0.1, **_PAPER),
    # CPU sizes (total parameters with the 8k vocabulary): ~1.2M, ~7.4M, ~30M.
    "phi-cpu-1m": ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, max_len=256,
                              **_CPU),
    "phi-cpu-7m": ModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_len=512,
                              **_CPU),
    "phi-cpu-30m": ModelConfig(hidden_size=512, num_layers=7, num_heads=8, intermediate_size=2048, max_len=1024,
                               **_CPU),
    # SmolLM2-135M: 30 layers, width 576, 9 query heads sharing 3 KV heads, SwiGLU 1,536, rope theta 1e5.
    "smollm2-135m": ModelConfig(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536,
                                rope_theta=100000.0, **_SMOLLM2),
    # SmolLM2-360M: 32 layers, width 960, 15 query heads sharing 5 KV heads, SwiGLU 2,560, rope theta 1e5.
    "smollm2-360m": ModelConfig(hidden_size=960, num_layers=32, num_heads=15, num_kv_heads=5, intermediate_size=2560,
                                rope_theta=100000.0, **_SMOLLM2),
    # SmolLM2-1.7B: 24 layers, width 2048, 32 heads (no grouping), SwiGLU 8,192, rope theta 1.3e5.
    "smollm2-1.7b": ModelConfig(hidden_size=2048, num_layers=24, num_heads=32, num_kv_heads=32,
                                intermediate_size=8192, rope_theta=130000.0, **_SMOLLM2),
    "llama-cpu-1m": ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=224,
                                max_len=256, **_LLAMA_CPU),
    "llama-cpu-7m": ModelConfig(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768,
                                max_len=512, **_LLAMA_CPU),
    "llama-cpu-30m": ModelConfig(hidden_size=512, num_layers=7, num_heads=8, num_kv_heads=4,
                                 intermediate_size=1536, max_len=1024, **_LLAMA_CPU),
}


def get_preset(name: str) -> ModelConfig:
    """Returns the preset called ``name``.

    Raises:
        KeyError: ``name`` is not a preset; the message lists the presets.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@gin.configurable
def model_config(preset: str = "phi-cpu-7m", **overrides: Any) -> ModelConfig:
    """The model of a run: a preset with field overrides (gin: ``model_config.preset``, ``model_config.X``).

    Args:
        preset: a name from :data:`PRESETS` (its family comes with it).
        **overrides: ModelConfig fields to change, e.g. ``dtype='bfloat16'``, ``scan_layers=True``.

    Raises:
        KeyError: unknown preset. ValueError: unknown field or invalid value.
    """
    return get_preset(preset).replace(**overrides)

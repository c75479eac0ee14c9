"""Phi model configuration: the :class:`PhiConfig` dataclass, the named presets and the gin entry point.

The presets follow the papers: ``phi-1`` (1.3B, "Textbooks Are All You Need"), ``phi-1.5`` (same shape, the
phi-1.5 report) and ``phi-1-small`` (350M), plus three CPU-sized presets for tests, demos and sweeps on a
laptop. Gin binds only :func:`model_config` (``model_config.preset = 'phi-cpu-7m'`` and overrides such as
``model_config.scan_layers = True``); everything else is plain Python.

A config describes the model and is saved with its checkpoints; how a backend computes it (the decode kernels
of :class:`textbooks.model.phi.DecodeKernels`) is not part of it. :data:`SHAPE_FIELDS` and
:data:`PARAM_TREE_FIELDS` say which fields a checkpoint's parameters depend on.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import gin

from textbooks.vocab import PHI_PADDED_VOCAB_SIZE, SPM8K_VOCAB_SIZE

DTYPES = ("float32", "bfloat16", "float16")
PARAM_DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "everything")
# The fields that set the parameters' shapes, and with the layer layout (stacked by scan or not) the fields
# that set the parameter tree: a checkpoint's parameters only fit a config that agrees on these.
SHAPE_FIELDS: tuple[str, ...] = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
PARAM_TREE_FIELDS: tuple[str, ...] = SHAPE_FIELDS + ("scan_layers",)
# Fields of earlier versions that are no longer part of a config; saved configs holding them still load.
RETIRED_FIELDS: tuple[str, ...] = ("decode_attention", "decode_projections")  # now DecodeKernels (model.phi)


@dataclasses.dataclass(frozen=True)
class PhiConfig:
    """Shape and numerics of a phi decoder (phi-1 / phi-1.5 architecture).

    Attributes:
        vocab_size: rows of the embedding and columns of the LM head (phi pads its 50,295 tokens to 51,200:
            :data:`textbooks.vocab.PHI_PADDED_VOCAB_SIZE`).
        hidden_size: model width.
        num_layers: decoder blocks.
        num_heads: attention heads; ``hidden_size`` must be a multiple of it.
        intermediate_size: MLP width (phi uses 4 x hidden_size).
        max_len: longest sequence the model is meant for (training context and decode cache limit).
        partial_rotary_factor: fraction of each head's dims that get rotary embeddings (phi: 0.5, 32 of 64).
        rope_theta: rotary base.
        layer_norm_eps: epsilon of every LayerNorm.
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

    vocab_size: int = PHI_PADDED_VOCAB_SIZE
    hidden_size: int = 2048
    num_layers: int = 24
    num_heads: int = 32
    intermediate_size: int = 8192
    max_len: int = 2048
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
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
        for name in SHAPE_FIELDS + ("max_len",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and self.hidden_size % self.num_heads:
            problems.append(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
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
        if self.layer_norm_eps <= 0:
            problems.append(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.param_dtype not in PARAM_DTYPES:
            problems.append(f"param_dtype must be one of {PARAM_DTYPES}, got {self.param_dtype!r}")
        if self.remat_policy not in REMAT_POLICIES:
            problems.append(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if problems:
            raise ValueError("invalid PhiConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each head that are rotated (HF's ``int(head_dim * partial_rotary_factor)``)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def replace(self, **changes: Any) -> "PhiConfig":
        """Returns a copy with ``changes`` applied (validated like the constructor)."""
        _check_fields(changes, "PhiConfig.replace")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-serializable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PhiConfig":
        """Builds a config from :meth:`to_dict` output (of this or an earlier version: the
        :data:`RETIRED_FIELDS` are dropped); other unknown keys are an error naming them."""
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        _check_fields(d, "PhiConfig.from_dict")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Exact parameter count of :class:`textbooks.model.phi.PhiForCausalLM` with this config.

        Args:
            non_embedding: leave out the token embedding and the LM head (weights and bias), the count
                scaling laws use.
        """
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        layer_norm = 2 * d
        attention = 4 * (d * d + d)  # q, k, v and the output projection, each with a bias.
        mlp = d * f + f + f * d + d
        per_layer = layer_norm + attention + mlp
        body = self.num_layers * per_layer + layer_norm  # + final LayerNorm
        if non_embedding:
            return body
        return v * d + body + d * v + v

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6N for the matmuls plus 12 * L * D * T for attention."""
        t = self.max_len if seq_len is None else seq_len
        n = self.num_params() - self.vocab_size * self.hidden_size  # the embedding lookup is not a matmul
        return 6 * n + 12 * self.num_layers * self.hidden_size * t


def param_tree_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{field: (a's value, b's value)}`` for the :data:`PARAM_TREE_FIELDS` on which two config dicts
    (:meth:`PhiConfig.to_dict`) differ; empty when parameters of one fit the other."""
    return {k: (a.get(k), b.get(k)) for k in PARAM_TREE_FIELDS if a.get(k) != b.get(k)}


def _check_fields(d: Mapping[str, Any], where: str) -> None:
    retired = sorted(set(d) & set(RETIRED_FIELDS))
    if retired:
        raise ValueError(f"{where}: {retired} are no longer PhiConfig fields (a backend choice, not saved with "
                         f"the model): choose decode kernels with Decoder(kernels=...) or `textbooks serve "
                         f"--kernels`")
    names = {f.name for f in dataclasses.fields(PhiConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown PhiConfig field(s) {unknown}; known fields: {sorted(names)}")


_PAPER = dict(vocab_size=PHI_PADDED_VOCAB_SIZE, max_len=2048, partial_rotary_factor=0.5, rope_theta=10000.0, layer_norm_eps=1e-5)
# The CPU presets use the project's SentencePiece vocabulary ('spm8k'); the trainer overrides vocab_size when
# it trains with the phi BPE.
_CPU = dict(vocab_size=SPM8K_VOCAB_SIZE, partial_rotary_factor=0.5, rope_theta=10000.0, layer_norm_eps=1e-5)

PRESETS: dict[str, PhiConfig] = {
    # "Textbooks Are All You Need": 24 layers, width 2048, 32 heads of 64, MLP 8192, rotary on 32 dims;
    # attention and residual dropout 0.1.
    "phi-1": PhiConfig(hidden_size=2048, num_layers=24, num_heads=32, intermediate_size=8192,
                       attn_dropout=0.1, resid_dropout=0.1, **_PAPER),
    # phi-1.5 report: the phi-1 architecture. The report states no dropout; the released model's config has 0.
    "phi-1.5": PhiConfig(hidden_size=2048, num_layers=24, num_heads=32, intermediate_size=8192, **_PAPER),
    # phi-1-small (350M): 20 layers, width 1024, 16 heads of 64, MLP 4096.
    "phi-1-small": PhiConfig(hidden_size=1024, num_layers=20, num_heads=16, intermediate_size=4096,
                             attn_dropout=0.1, resid_dropout=0.1, **_PAPER),
    # CPU sizes (total parameters with the 8k vocabulary): ~1.2M, ~7.4M, ~30M.
    "phi-cpu-1m": PhiConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256, max_len=256,
                            **_CPU),
    "phi-cpu-7m": PhiConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, max_len=512,
                            **_CPU),
    "phi-cpu-30m": PhiConfig(hidden_size=512, num_layers=7, num_heads=8, intermediate_size=2048, max_len=1024,
                             **_CPU),
}


def get_preset(name: str) -> PhiConfig:
    """Returns the preset called ``name``.

    Raises:
        KeyError: ``name`` is not a preset; the message lists the presets.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


@gin.configurable
def model_config(preset: str = "phi-cpu-7m", **overrides: Any) -> PhiConfig:
    """The model of a run: a preset with field overrides (gin: ``model_config.preset``, ``model_config.X``).

    Args:
        preset: a name from :data:`PRESETS`.
        **overrides: PhiConfig fields to change, e.g. ``dtype='bfloat16'``, ``scan_layers=True``.

    Raises:
        KeyError: unknown preset. ValueError: unknown field or invalid value.
    """
    return get_preset(preset).replace(**overrides)

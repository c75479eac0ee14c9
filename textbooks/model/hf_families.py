"""What differs by family between transformers checkpoints and ours: config.json fields and tensor names.

* phi: ``PhiForCausalLM`` (``model_type`` 'phi').
* llama: ``LlamaForCausalLM`` ('llama'), and ``Qwen2ForCausalLM`` ('qwen2'), which is a Llama with biases on
  q, k and v (imported as ``attention_bias=True`` and exported as a Qwen2ForCausalLM: transformers' Llama
  with ``attention_bias`` would also expect a bias on the output projection, which these models do not have).

Tensor names map one to one; :func:`name_map` lists ``(HF name, our unscanned path, layout kind)`` for every
tensor of a config. torch ``Linear`` weights are ``[out, in]``; ours are ``[in, out]`` with the head axes
split out (q/k/v kernels ``[embed, heads, kv]``, the attention output kernel ``[heads, kv, embed]``). The
layout kinds:

=============  ==========================  ============================
kind           ours                        transformers
=============  ==========================  ============================
copy           same shape                  same shape
heads_bias     ``[heads, kv]``             ``[heads * kv]``
in_heads       ``[embed, heads, kv]``      ``[heads * kv, embed]``
heads_out      ``[heads, kv, embed]``      ``[embed, heads * kv]``
linear         ``[in, out]``               ``[out, in]``
=============  ==========================  ============================
"""

from __future__ import annotations

from typing import Any, Mapping

from textbooks.model.config import ModelConfig
from textbooks.model.params_io import CheckpointError

CONFIG_NAME = "config.json"
# The config.json key naming the vocabulary (see textbooks.model.vocab_files); transformers keeps unknown keys.
VOCABULARY_KEY = "textbooks_vocabulary"
MODEL_TYPES = {"phi": "phi", "llama": "llama", "qwen2": "llama"}  # transformers model_type -> our family
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")

_PHI_LAYER = (  # (HF suffix under model.layers.N, our path under layers_N, kind)
    ("input_layernorm.weight", "input_layernorm/scale", "copy"),
    ("input_layernorm.bias", "input_layernorm/bias", "copy"),
    ("self_attn.q_proj.weight", "self_attn/q_proj/kernel", "in_heads"),
    ("self_attn.q_proj.bias", "self_attn/q_proj/bias", "heads_bias"),
    ("self_attn.k_proj.weight", "self_attn/k_proj/kernel", "in_heads"),
    ("self_attn.k_proj.bias", "self_attn/k_proj/bias", "heads_bias"),
    ("self_attn.v_proj.weight", "self_attn/v_proj/kernel", "in_heads"),
    ("self_attn.v_proj.bias", "self_attn/v_proj/bias", "heads_bias"),
    ("self_attn.dense.weight", "self_attn/dense/kernel", "heads_out"),
    ("self_attn.dense.bias", "self_attn/dense/bias", "copy"),
    ("mlp.fc1.weight", "mlp/fc1/kernel", "linear"),
    ("mlp.fc1.bias", "mlp/fc1/bias", "copy"),
    ("mlp.fc2.weight", "mlp/fc2/kernel", "linear"),
    ("mlp.fc2.bias", "mlp/fc2/bias", "copy"),
)
_PHI_GLOBAL = (
    ("model.embed_tokens.weight", "embed_tokens/embedding", "copy"),
    ("model.final_layernorm.weight", "final_layernorm/scale", "copy"),
    ("model.final_layernorm.bias", "final_layernorm/bias", "copy"),
    ("lm_head.weight", "lm_head/kernel", "linear"),
    ("lm_head.bias", "lm_head/bias", "copy"),
)
_LLAMA_LAYER = (
    ("input_layernorm.weight", "input_layernorm/scale", "copy"),
    ("self_attn.q_proj.weight", "self_attn/q_proj/kernel", "in_heads"),
    ("self_attn.k_proj.weight", "self_attn/k_proj/kernel", "in_heads"),
    ("self_attn.v_proj.weight", "self_attn/v_proj/kernel", "in_heads"),
    ("self_attn.o_proj.weight", "self_attn/o_proj/kernel", "heads_out"),
    ("post_attention_layernorm.weight", "post_attention_layernorm/scale", "copy"),
    ("mlp.gate_proj.weight", "mlp/gate_proj/kernel", "linear"),
    ("mlp.up_proj.weight", "mlp/up_proj/kernel", "linear"),
    ("mlp.down_proj.weight", "mlp/down_proj/kernel", "linear"),
)
_LLAMA_QKV_BIAS = tuple((f"self_attn.{p}_proj.bias", f"self_attn/{p}_proj/bias", "heads_bias") for p in "qkv")
_LLAMA_GLOBAL = (
    ("model.embed_tokens.weight", "embed_tokens/embedding", "copy"),
    ("model.norm.weight", "norm/scale", "copy"),
)


def name_map(config: ModelConfig) -> list[tuple[str, str, str]]:
    """(HF name, our unscanned path, kind) for every tensor of ``config``."""
    if config.family == "phi":
        glob, layer = list(_PHI_GLOBAL), _PHI_LAYER
    else:
        glob = list(_LLAMA_GLOBAL)
        if not config.tie_word_embeddings:
            glob.append(("lm_head.weight", "lm_head/kernel", "linear"))
        layer = _LLAMA_LAYER + (_LLAMA_QKV_BIAS if config.attention_bias else ())
    names = glob
    for i in range(config.num_layers):
        names += [(f"model.layers.{i}.{hf}", f"layers_{i}/{ours}", kind) for hf, ours, kind in layer]
    return names


# --------------------------------------------------------------------------------------------------- to HF


def config_to_hf(config: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
                 vocabulary: str | None = None) -> dict[str, Any]:
    """Returns transformers' ``config.json`` for ``config`` (readable by transformers 4.37+ and 5.x).

    ``vocabulary`` is recorded under :data:`VOCABULARY_KEY` (see :mod:`textbooks.model.vocab_files`).
    """
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling_type == "linear":
        rope = {"rope_type": "linear", "rope_theta": config.rope_theta, "factor": config.rope_scaling_factor}
    elif config.rope_scaling_type == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": config.rope_theta, "factor": config.rope_scaling_factor,
                "low_freq_factor": config.rope_low_freq_factor, "high_freq_factor": config.rope_high_freq_factor,
                "original_max_position_embeddings": config.rope_original_max_len}
    common = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "max_position_embeddings": config.max_len,
        "initializer_range": config.initializer_range,
        "rope_theta": config.rope_theta,
        "attention_dropout": config.attn_dropout,
        "tie_word_embeddings": config.tie_word_embeddings,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": "float32",
        "torch_dtype": "float32",
    }
    extra = {} if vocabulary is None else {VOCABULARY_KEY: vocabulary}
    if config.family == "llama":
        scaling = {} if config.rope_scaling_type == "none" else {"rope_scaling": dict(rope)}
        return extra | common | scaling | {
            "architectures": ["Qwen2ForCausalLM" if config.attention_bias else "LlamaForCausalLM"],
            "model_type": "qwen2" if config.attention_bias else "llama",
            "head_dim": config.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": config.layer_norm_eps,
            "rope_parameters": rope,
            "attention_bias": config.attention_bias,
            "mlp_bias": False,
            "pretraining_tp": 1,
        }
    return extra | common | {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "hidden_act": "gelu_new",
        "layer_norm_eps": config.layer_norm_eps,
        "partial_rotary_factor": config.partial_rotary_factor,
        "rope_parameters": rope | {"partial_rotary_factor": config.partial_rotary_factor},
        "embd_pdrop": config.embd_dropout,
        "resid_pdrop": config.resid_dropout,
        "qk_layernorm": False,
    }


# --------------------------------------------------------------------------------------------------- from HF


def _rope_fields(hf: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """Our rope fields from ``rope_parameters`` (transformers 5) or ``rope_theta`` + ``rope_scaling`` (4.x)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    merged = params | scaling
    kind = merged.get("rope_type", merged.get("type", "default"))
    fields: dict[str, Any] = {"rope_theta": float(merged.get("rope_theta", hf.get("rope_theta", 10000.0)))}
    if kind in ("linear", "llama3"):
        fields.update(rope_scaling_type=kind, rope_scaling_factor=float(merged.get("factor", 1.0)))
    if kind == "llama3":
        try:
            fields.update(rope_low_freq_factor=float(merged["low_freq_factor"]),
                          rope_high_freq_factor=float(merged["high_freq_factor"]),
                          rope_original_max_len=int(merged["original_max_position_embeddings"]))
        except KeyError as e:
            problems.append(f"llama3 rope scaling without {e.args[0]!r}")
    elif kind not in ("default", "linear"):
        problems.append(f"rope scaling {kind!r} is not supported (supported: default, linear, llama3)")
    return fields


def config_from_hf(hf: Mapping[str, Any], where: str = CONFIG_NAME, **overrides: Any) -> ModelConfig:
    """Builds a :class:`ModelConfig` from a transformers phi, llama or qwen2 ``config.json`` dict.

    Raises:
        CheckpointError: another model type, a missing field, or a feature these models do not implement
            (qk LayerNorm, another activation, a rope kind other than default/linear/llama3, MLP biases,
            sliding-window attention, a head_dim other than hidden_size / num_attention_heads).
    """
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        hint = (" (the original microsoft 'phi-msft' / 'mixformer-sequential' format: load it with transformers "
                ">= 4.37 and save_pretrained it first)" if model_type in ("phi-msft", "mixformer-sequential") else "")
        raise CheckpointError(f"{where}: model_type is {model_type!r}; supported: {sorted(MODEL_TYPES)}{hint}")
    family = MODEL_TYPES[model_type]
    problems: list[str] = []
    heads = hf.get("num_attention_heads")
    rope = _rope_fields(hf, problems)
    if family == "phi":
        if hf.get("num_key_value_heads") not in (None, heads):
            problems.append(f"num_key_value_heads={hf['num_key_value_heads']} != num_attention_heads={heads} "
                            "(phi has no grouped-query attention)")
        if hf.get("qk_layernorm"):
            problems.append("qk_layernorm=true is not supported")
        if hf.get("hidden_act", "gelu_new") not in _TANH_GELUS:
            problems.append(f"hidden_act={hf.get('hidden_act')!r} is not supported (expected one of {_TANH_GELUS})")
        if "rope_scaling_type" in rope:
            problems.append("phi with rope scaling is not supported")
    else:
        if hf.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act={hf.get('hidden_act')!r} is not supported (Llama uses 'silu')")
        if hf.get("mlp_bias"):
            problems.append("mlp_bias=true is not supported")
        if hf.get("use_sliding_window"):
            problems.append("use_sliding_window=true is not supported (full attention only)")
        if model_type == "llama" and hf.get("attention_bias"):
            problems.append("attention_bias=true (transformers' Llama then has biases on q, k, v and o_proj) is not "
                            "supported; q/k/v biases without an o_proj bias are (model_type 'qwen2')")
        if int(hf.get("pretraining_tp", 1) or 1) != 1:
            problems.append(f"pretraining_tp={hf['pretraining_tp']} is not supported (save it with 1)")
    if problems:
        raise CheckpointError(f"{where}: unsupported {model_type} config: " + "; ".join(problems))
    try:
        fields = dict(
            family=family, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"], max_len=hf.get("max_position_embeddings", 2048),
            attn_dropout=float(hf.get("attention_dropout") or 0.0),
            initializer_range=float(hf.get("initializer_range", 0.02)), **rope)
        if family == "phi":
            fields.update(
                partial_rotary_factor=float((hf.get("rope_parameters") or {}).get(
                    "partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))),
                layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
                embd_dropout=float(hf.get("embd_pdrop") or 0.0), resid_dropout=float(hf.get("resid_pdrop") or 0.0))
        else:
            fields.update(
                partial_rotary_factor=1.0, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                layer_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                attention_bias=model_type == "qwen2")
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e.args[0]!r}") from None
    head_dim = hf.get("head_dim")
    if head_dim not in (None, fields["hidden_size"] // max(1, heads or 1)):
        raise CheckpointError(f"{where}: head_dim={head_dim} differs from hidden_size / num_attention_heads; "
                              "not supported")
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from e

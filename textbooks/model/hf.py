"""Import and export of transformers' ``PhiForCausalLM`` checkpoints (config.json + safetensors), without torch.

Names map one to one: ``model.embed_tokens``, ``model.layers.N.input_layernorm``,
``model.layers.N.self_attn.{q,k,v}_proj`` and ``.dense``, ``model.layers.N.mlp.fc1/fc2``,
``model.final_layernorm`` and ``lm_head``. torch ``Linear`` weights are ``[out, in]``; ours are ``[in, out]``
with the head axes split out (q/k/v kernels ``[embed, heads, kv]``, the output kernel ``[heads, kv, embed]``).

Loading checks everything before converting anything: the config is supported, every tensor is present
with the shape the config implies, no tensor is unknown, and every file is readable. Errors name the file,
the tensor, the expected and the found shape.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from safetensors.numpy import save_file

from textbooks.data import files
from textbooks.model.config import ModelConfig
from textbooks.model.params_io import (CheckpointError, atomic_write, cast_and_layout, check_overrides,
                                       expected_shapes, flatten, read_safetensors, safetensors_header, to_layout,
                                       unflatten, validate_params, write_text)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# The config.json key naming the vocabulary (see textbooks.model.vocab_files); transformers keeps unknown keys.
VOCABULARY_KEY = "textbooks_vocabulary"
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Buffers some transformers versions wrote that carry no weights.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")

# How a tensor's layout differs between transformers and us:
#   copy       same shape (LayerNorms, embedding, output biases)
#   heads_bias ours [heads, kv]          <-> HF [heads * kv]
#   in_heads   ours [embed, heads, kv]   <-> HF [heads * kv, embed]    (q, k, v weights)
#   heads_out  ours [heads, kv, embed]   <-> HF [embed, heads * kv]    (attention output weight)
#   linear     ours [in, out]            <-> HF [out, in]
_LAYER_TENSORS = (  # (HF suffix under model.layers.N, our path under layers_N, kind)
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
_GLOBAL_TENSORS = (
    ("model.embed_tokens.weight", "embed_tokens/embedding", "copy"),
    ("model.final_layernorm.weight", "final_layernorm/scale", "copy"),
    ("model.final_layernorm.bias", "final_layernorm/bias", "copy"),
    ("lm_head.weight", "lm_head/kernel", "linear"),
    ("lm_head.bias", "lm_head/bias", "copy"),
)


def _name_map(config: ModelConfig) -> list[tuple[str, str, str]]:
    """(HF name, our unscanned path, kind) for every tensor of ``config``."""
    names = list(_GLOBAL_TENSORS)
    for i in range(config.num_layers):
        names += [(f"model.layers.{i}.{hf}", f"layers_{i}/{ours}", kind) for hf, ours, kind in _LAYER_TENSORS]
    return names


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "heads_bias":
        return (shape[0] * shape[1],)
    if kind == "in_heads":
        return (shape[1] * shape[2], shape[0])
    if kind == "heads_out":
        return (shape[2], shape[0] * shape[1])
    if kind == "linear":
        return (shape[1], shape[0])
    return tuple(shape)


def _to_ours(kind: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (w.T if kind in ("in_heads", "heads_out", "linear") else w).reshape(shape)


def _to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "heads_bias":
        return x.reshape(-1)
    if kind == "in_heads":
        return x.reshape(x.shape[0], -1).T
    if kind == "heads_out":
        return x.reshape(-1, x.shape[-1]).T
    if kind == "linear":
        return x.T
    return x


# --------------------------------------------------------------------------------------------------- config


def config_to_hf(config: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
                 vocabulary: str | None = None) -> dict[str, Any]:
    """Returns transformers' ``config.json`` for ``config`` (readable by transformers 4.37+ and 5.x).

    ``vocabulary`` is recorded under :data:`VOCABULARY_KEY` (see :mod:`textbooks.model.vocab_files`).
    """
    extra = {} if vocabulary is None else {VOCABULARY_KEY: vocabulary}
    return extra | {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "max_position_embeddings": config.max_len,
        "hidden_act": "gelu_new",
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "partial_rotary_factor": config.partial_rotary_factor,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta,
                            "partial_rotary_factor": config.partial_rotary_factor},
        "embd_pdrop": config.embd_dropout,
        "resid_pdrop": config.resid_dropout,
        "attention_dropout": config.attn_dropout,
        "qk_layernorm": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def config_from_hf(hf: Mapping[str, Any], where: str = CONFIG_NAME, **overrides: Any) -> ModelConfig:
    """Builds a :class:`ModelConfig` from a transformers phi ``config.json`` dict.

    Raises:
        CheckpointError: not a phi config, a missing field, or a feature this model does not implement
            (qk LayerNorm, grouped-query attention, rope scaling, a non-tanh gelu).
    """
    model_type = hf.get("model_type")
    if model_type != "phi":
        hint = (" (the original microsoft 'phi-msft' / 'mixformer-sequential' format: load it with transformers "
                ">= 4.37 and save_pretrained it first)" if model_type in ("phi-msft", "mixformer-sequential") else "")
        raise CheckpointError(f"{where}: model_type is {model_type!r}, expected 'phi'{hint}")
    problems = []
    heads = hf.get("num_attention_heads")
    if hf.get("num_key_value_heads") not in (None, heads):
        problems.append(f"num_key_value_heads={hf['num_key_value_heads']} != num_attention_heads={heads} "
                        "(grouped-query attention is not supported)")
    if hf.get("qk_layernorm"):
        problems.append("qk_layernorm=true is not supported")
    if hf.get("hidden_act", "gelu_new") not in _TANH_GELUS:
        problems.append(f"hidden_act={hf.get('hidden_act')!r} is not supported (expected one of {_TANH_GELUS})")
    rope = dict(hf.get("rope_parameters") or {})
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        problems.append(f"rope scaling {rope or hf.get('rope_scaling')} is not supported (only default rope)")
    if problems:
        raise CheckpointError(f"{where}: unsupported phi config: " + "; ".join(problems))
    try:
        fields = dict(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
            max_len=hf.get("max_position_embeddings", 2048),
            partial_rotary_factor=float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            embd_dropout=float(hf.get("embd_pdrop") or 0.0), resid_dropout=float(hf.get("resid_pdrop") or 0.0),
            attn_dropout=float(hf.get("attention_dropout") or 0.0),
            initializer_range=float(hf.get("initializer_range", 0.02)))
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


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


# --------------------------------------------------------------------------------------------------- load


def _weight_files(directory: str) -> dict[str, str]:
    """Returns ``{tensor name: file path}`` for a single-file or sharded safetensors checkpoint."""
    index_path = os.path.join(directory, INDEX_NAME)
    single = os.path.join(directory, WEIGHTS_NAME)
    if os.path.isfile(index_path):
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: no 'weight_map' object")
        return {name: os.path.join(directory, file) for name, file in weight_map.items()}
    if os.path.isfile(single):
        return {name: single for name in safetensors_header(single)}
    others = sorted(f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".h5", ".msgpack")))
    hint = f" (found {others}: re-save with transformers' save_pretrained(safe_serialization=True))" if others else ""
    raise CheckpointError(f"{directory}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found{hint}")


def load_hf_checkpoint(directory: str, **config_overrides: Any) -> tuple[ModelConfig, dict]:
    """Loads a transformers phi checkpoint folder.

    Args:
        directory: folder with ``config.json`` and ``model.safetensors`` (or a sharded
            ``model.safetensors.index.json`` and its files).
        **config_overrides: ModelConfig fields to set other than the shape fields
            (:data:`textbooks.model.config.SHAPE_FIELDS`), e.g. ``scan_layers=True``, ``dtype='bfloat16'``.

    Returns:
        ``(config, params)``: params as numpy arrays in ``config.param_dtype`` and the config's layer layout.

    Raises:
        CheckpointError: unreadable config or weights (naming the file), unsupported config, missing or
            unknown tensors, tensors whose shape does not match the config (name, expected, found), or an
            override of a shape field.
    """
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory} is not a directory")
    config_path = os.path.join(directory, CONFIG_NAME)
    hf_config = _read_json(config_path)
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    check_overrides(config_overrides, directory)
    config = config_from_hf(hf_config, config_path, **config_overrides)
    tied = bool(hf_config.get("tie_word_embeddings", False))
    weight_files = _weight_files(directory)
    headers = {path: safetensors_header(path) for path in sorted(set(weight_files.values()))}
    found = {}
    for path, header in headers.items():
        for name, (dtype, shape) in header.items():
            found[name] = (path, dtype, shape)

    ours = expected_shapes(config.replace(scan_layers=False))
    problems, plan = [], []
    for hf_name, our_key, kind in _name_map(config):
        want = _hf_shape(kind, ours[our_key])
        if hf_name not in found:
            if tied and hf_name == "lm_head.weight" and "model.embed_tokens.weight" in found:
                plan.append(("model.embed_tokens.weight", our_key, kind))
                continue
            problems.append(f"missing tensor {hf_name!r} (expected shape {want})")
            continue
        path, dtype, shape = found[hf_name]
        if shape != want:
            problems.append(f"tensor {hf_name!r} in {os.path.basename(path)} has shape {shape}, "
                            f"config expects {want}")
        elif dtype not in ("F32", "F16", "BF16", "F64"):
            problems.append(f"tensor {hf_name!r} in {os.path.basename(path)} has dtype {dtype}, not a float")
        plan.append((hf_name, our_key, kind))
    known = {hf for hf, _, _ in _name_map(config)}
    unknown = sorted(n for n in found if n not in known and not _IGNORED.match(n))
    if unknown:
        problems.append(f"unknown tensors {unknown[:20]}{' ...' if len(unknown) > 20 else ''} "
                        f"(not part of a phi model with {config.num_layers} layers)")
    for name, path in weight_files.items():
        if name not in found and name in known:
            problems.append(f"index lists {name!r} in {os.path.basename(path)} but that file does not hold it")
    if problems:
        raise CheckpointError(f"{directory}: checkpoint does not match its config.json: " + "; ".join(problems))

    by_file: dict[str, list[str]] = {}
    for hf_name, _, _ in plan:
        by_file.setdefault(found[hf_name][0], []).append(hf_name)
    tensors = {}
    for path, names in by_file.items():
        tensors.update(read_safetensors(path, sorted(set(names))))
    uses = {}
    for hf_name, _, _ in plan:
        uses[hf_name] = uses.get(hf_name, 0) + 1
    flat = {}
    for hf_name, our_key, kind in plan:
        flat[our_key] = _to_ours(kind, tensors[hf_name], ours[our_key])
        uses[hf_name] -= 1
        if not uses[hf_name]:
            del tensors[hf_name]  # keep peak memory near one copy of the model
    params = unflatten(flat)
    return config, cast_and_layout(params, config)


# --------------------------------------------------------------------------------------------------- save


def save_hf_checkpoint(params: Mapping[str, Any], config: ModelConfig, out_dir: str, *,
                       max_shard_bytes: int | None = 5 * 10**9, bos_token_id: int | None = None,
                       eos_token_id: int | None = None, vocabulary: str | None = None) -> str:
    """Writes ``params`` as a transformers ``PhiForCausalLM`` checkpoint (float32 safetensors + config.json).

    Args:
        params: parameters (scanned or unscanned layout, boxed or not, on any device).
        config: their config.
        out_dir: folder to write (created); stale weight files of a previous export are replaced.
        max_shard_bytes: split the weights into ``model-0000i-of-0000n.safetensors`` plus an index when they
            are larger than this (None: one file).
        bos_token_id, eos_token_id: written to config.json (e.g. 50256 for the phi vocabulary).
        vocabulary: the vocabulary's name, recorded in config.json (its files are written by
            :func:`textbooks.model.vocab_files.save_tokenizer`).

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: ``params`` do not match ``config``.
    """
    params = jax.device_get(params)
    params = to_layout(params, scan_layers=False)
    validate_params(params, config.replace(scan_layers=False))
    flat = flatten(params)
    tensors = {}
    for hf_name, our_key, kind in _name_map(config):
        tensors[hf_name] = np.ascontiguousarray(_to_hf(kind, np.asarray(flat[our_key], dtype=np.float32)))

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, x in tensors.items():
        if max_shard_bytes and shards[-1] and size + x.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = x
        size += x.nbytes

    os.makedirs(out_dir, exist_ok=True)
    stale = [f for f in os.listdir(out_dir)
             if f in (WEIGHTS_NAME, INDEX_NAME) or re.fullmatch(r"model-\d+-of-\d+\.safetensors", f)]
    for f in stale:
        os.remove(os.path.join(out_dir, f))
    meta = {"format": "pt"}
    if len(shards) == 1:
        atomic_write(os.path.join(out_dir, WEIGHTS_NAME), lambda p: save_file(shards[0], p, metadata=meta))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            atomic_write(os.path.join(out_dir, file), lambda p, s=shard: save_file(s, p, metadata=meta))
            weight_map.update({name: file for name in shard})
        index = {"metadata": {"total_size": int(sum(x.nbytes for x in tensors.values()))},
                 "weight_map": weight_map}
        atomic_write(os.path.join(out_dir, INDEX_NAME),
                     lambda p: write_text(p, json.dumps(index, indent=2, sort_keys=True) + "\n"))
    hf_config = config_to_hf(config, bos_token_id=bos_token_id, eos_token_id=eos_token_id, vocabulary=vocabulary)
    atomic_write(os.path.join(out_dir, CONFIG_NAME),
                 lambda p: write_text(p, json.dumps(hf_config, indent=2, sort_keys=True) + "\n"))
    return out_dir


def is_hf_dir(path: str) -> bool:
    """True if ``path`` (local or ``gs://``) is a transformers checkpoint folder: one holding ``config.json``.

    No other folder the project reads has that file (params folders hold ``textbooks_config.json``, run dirs
    ``model_config.json``), so the weights are not looked for here: :func:`load_hf_checkpoint` names what is
    missing or in another format (``pytorch_model.bin``, shards without their index).
    """
    return files.exists(files.join(path, CONFIG_NAME))


__all__ = ["CheckpointError", "config_from_hf", "config_to_hf", "is_hf_dir", "load_hf_checkpoint",
           "save_hf_checkpoint"]

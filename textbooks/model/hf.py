"""Import and export of transformers checkpoints (config.json + safetensors), without torch.

phi (``PhiForCausalLM``) and the Llama family (``LlamaForCausalLM``, and ``Qwen2ForCausalLM`` on import);
the per-family config fields and tensor names are in :mod:`textbooks.model.hf_families`.

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
from textbooks.model.hf_families import CONFIG_NAME, VOCABULARY_KEY, config_from_hf, config_to_hf, name_map
from textbooks.model.params_io import (CheckpointError, atomic_write, cast_and_layout, check_overrides,
                                       expected_shapes, flatten, read_safetensors, safetensors_header, to_layout,
                                       unflatten, validate_params, write_text)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# Buffers some transformers versions wrote that carry no weights.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


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
    """Loads a transformers checkpoint folder (phi, llama or qwen2).

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

    plan, problems = _plan(config, found, tied)
    known = {hf for hf, _, _ in name_map(config)}
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
    return config, _convert(config, plan, tensors)


def params_from_hf_tensors(hf_config: Mapping[str, Any], tensors: dict[str, np.ndarray], where: str,
                           **config_overrides: Any) -> tuple[ModelConfig, dict]:
    """Converts tensors already in memory, in transformers' names and layouts, like :func:`load_hf_checkpoint`.

    The same checks run (every tensor present with the shape the config implies, none unknown, float
    dtypes); ``tensors`` is emptied as it is converted, to keep peak memory near one copy of the model.

    Args:
        hf_config: transformers' ``config.json`` dict for the tensors.
        tensors: ``{HF name: array}``.
        where: what the tensors came from, for error messages (a file name).
        **config_overrides: as for :func:`load_hf_checkpoint`.

    Raises:
        CheckpointError: as for :func:`load_hf_checkpoint`.
    """
    check_overrides(config_overrides, where)
    config = config_from_hf(hf_config, where, **config_overrides)
    # Any numpy float passes the dtype check (as F32); anything else is named by its numpy dtype.
    found = {name: (where, "F32" if np.issubdtype(x.dtype, np.floating) else str(x.dtype), tuple(x.shape))
             for name, x in tensors.items()}
    plan, problems = _plan(config, found, bool(hf_config.get("tie_word_embeddings", False)))
    if problems:
        raise CheckpointError(f"{where}: tensors do not match the config: " + "; ".join(problems))
    return config, _convert(config, plan, tensors)


def _plan(config: ModelConfig, found: Mapping[str, tuple[str, str, tuple[int, ...]]],
          tied: bool) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``(plan, problems)``: the (HF name, our path, kind) to convert, and what does not fit the config.

    ``found`` maps each available tensor to (file path, safetensors dtype, shape).
    """
    ours = expected_shapes(config.replace(scan_layers=False))
    problems, plan = [], []
    for hf_name, our_key, kind in name_map(config):
        want = _hf_shape(kind, ours[our_key])
        if hf_name not in found:
            if tied and hf_name == "lm_head.weight" and "model.embed_tokens.weight" in found:
                plan.append(("model.embed_tokens.weight", our_key, kind))
                continue
            problems.append(f"missing tensor {hf_name!r} (expected shape {want})")
            continue
        path, dtype, shape = found[hf_name]
        if tuple(shape) != want:
            problems.append(f"tensor {hf_name!r} in {os.path.basename(path)} has shape {tuple(shape)}, "
                            f"config expects {want}")
        elif dtype not in ("F32", "F16", "BF16", "F64"):
            problems.append(f"tensor {hf_name!r} in {os.path.basename(path)} has dtype {dtype}, not a float")
        plan.append((hf_name, our_key, kind))
    known = {hf for hf, _, _ in name_map(config)}
    # A tied model's head is its embedding: an lm_head.weight saved beside it (older exports) is not read.
    unknown = sorted(n for n in found if n not in known and not _IGNORED.match(n)
                     and not (config.tie_word_embeddings and n == "lm_head.weight"))
    if unknown:
        problems.append(f"unknown tensors {unknown[:20]}{' ...' if len(unknown) > 20 else ''} "
                        f"(not part of a {config.family} model with {config.num_layers} layers)")
    return plan, problems


def _convert(config: ModelConfig, plan: list[tuple[str, str, str]], tensors: dict[str, np.ndarray]) -> dict:
    """Our parameters (``config``'s dtype and layout) from ``tensors``, which it empties as it goes."""
    ours = expected_shapes(config.replace(scan_layers=False))
    uses: dict[str, int] = {}
    for hf_name, _, _ in plan:
        uses[hf_name] = uses.get(hf_name, 0) + 1
    flat = {}
    for hf_name, our_key, kind in plan:
        flat[our_key] = _to_ours(kind, tensors[hf_name], ours[our_key])
        uses[hf_name] -= 1
        if not uses[hf_name]:
            del tensors[hf_name]  # keep peak memory near one copy of the model
    return cast_and_layout(unflatten(flat), config)


# --------------------------------------------------------------------------------------------------- save


def save_hf_checkpoint(params: Mapping[str, Any], config: ModelConfig, out_dir: str, *,
                       max_shard_bytes: int | None = 5 * 10**9, bos_token_id: int | None = None,
                       eos_token_id: int | None = None, vocabulary: str | None = None) -> str:
    """Writes ``params`` as a transformers checkpoint (float32 safetensors + config.json): ``PhiForCausalLM``
    for the phi family, ``LlamaForCausalLM`` for the llama family (``Qwen2ForCausalLM`` with q/k/v biases).

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
    for hf_name, our_key, kind in name_map(config):
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
           "params_from_hf_tensors", "save_hf_checkpoint"]

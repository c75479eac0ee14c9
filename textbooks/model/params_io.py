"""Parameter trees on disk and in memory: layer layouts, validation, and the project's own params format.

Two layouts of the same weights exist: unscanned (``layers_0 ... layers_{N-1}``) and scanned (one ``layers``
subtree whose leaves carry a leading layer axis, from ``scan_layers=True``). :func:`to_layout` converts
between them. The own format is a folder holding ``textbooks_config.json`` (the :class:`ModelConfig`) and
``params.safetensors`` (the unscanned tree, float32, keys joined with ``/``); it needs neither orbax nor torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from textbooks.data import files
from textbooks.model.config import SHAPE_FIELDS, ModelConfig
from textbooks.model.causal_lm import param_shapes

CONFIG_FILE = "textbooks_config.json"
VOCABULARY_KEY = "vocabulary"  # in CONFIG_FILE, when recorded
PARAMS_FILE = "params.safetensors"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint or parameter tree is missing, unreadable or does not match its config."""


def _unbox(params: Any) -> Any:
    return nn.unbox(params)


def flatten(params: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Flattens a nested dict into ``{'a/b/c': leaf}``."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for key, child in node.items():
                walk(child, f"{prefix}{sep}{key}" if prefix else str(key))
        else:
            out[prefix] = node

    walk(params, "")
    return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        parts = key.split(sep)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def is_scanned(params: Mapping[str, Any]) -> bool:
    """True if the tree has a stacked ``layers`` subtree (``scan_layers=True`` layout)."""
    return "layers" in params


def to_layout(params: Mapping[str, Any], scan_layers: bool) -> dict[str, Any]:
    """Returns ``params`` in the scanned or unscanned layout (numpy or jax leaves; boxes removed)."""
    params = dict(_unbox(params))
    if is_scanned(params) == scan_layers:
        return params
    if scan_layers:
        names = sorted((k for k in params if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
        layers = [params.pop(k) for k in names]
        params["layers"] = _tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *layers)
        return params
    stacked = params.pop("layers")
    count = len(next(iter(flatten(stacked).values())))
    for i in range(count):
        params[f"layers_{i}"] = _tree_map(lambda x, i=i: np.asarray(x[i]), stacked)
    return params


def _tree_map(fn, *trees):
    first = trees[0]
    if isinstance(first, Mapping):
        return {k: _tree_map(fn, *(t[k] for t in trees)) for k in first}
    return fn(*trees)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Flat ``{path: shape}`` of the parameters of ``config`` (computed abstractly)."""
    return {k: tuple(v.shape) for k, v in flatten(param_shapes(config)).items()}


def validate_params(params: Mapping[str, Any], config: ModelConfig, where: str = "params") -> None:
    """Checks that ``params`` has exactly the tensors and shapes of ``config`` (in its ``scan_layers`` layout).

    Raises:
        CheckpointError: listing missing and unexpected tensors and shape mismatches.
    """
    expected = expected_shapes(config)
    found = {k: tuple(np.shape(v)) for k, v in flatten(_unbox(params)).items()}
    problems = []
    missing = sorted(set(expected) - set(found))
    unknown = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if unknown:
        problems.append(f"unexpected tensors {unknown}")
    for key in sorted(set(expected) & set(found)):
        if expected[key] != found[key]:
            problems.append(f"tensor {key!r} has shape {found[key]}, config expects {expected[key]}")
    if problems:
        raise CheckpointError(f"{where} do not match the model config: " + "; ".join(problems))


def save_params(params: Mapping[str, Any], config: ModelConfig, out_dir: str, *,
                vocabulary: str | None = None) -> str:
    """Writes ``params`` and ``config`` in the own format (float32, unscanned layout); returns ``out_dir``.

    ``vocabulary``, a vocabulary name, is recorded in ``textbooks_config.json`` when given.

    Raises:
        CheckpointError: ``params`` do not match ``config``.
    """
    params = jax.device_get(_unbox(params))
    validate_params(params, config.replace(scan_layers=is_scanned(params)))
    flat = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32))
            for k, v in flatten(to_layout(params, scan_layers=False)).items()}
    os.makedirs(out_dir, exist_ok=True)
    meta = {"format_version": str(FORMAT_VERSION), "layout": "unscanned"}
    atomic_write(os.path.join(out_dir, PARAMS_FILE), lambda path: save_file(flat, path, metadata=meta))
    body = {"format_version": FORMAT_VERSION, "config": config.to_dict()}
    if vocabulary is not None:
        body[VOCABULARY_KEY] = vocabulary
    body = json.dumps(body, indent=2, sort_keys=True)
    atomic_write(os.path.join(out_dir, CONFIG_FILE), lambda path: write_text(path, body + "\n"))
    return out_dir


def is_params_dir(path: str) -> bool:
    """True if ``path`` (local or ``gs://``) is a folder in the own format (it holds :data:`CONFIG_FILE`)."""
    return files.exists(files.join(path, CONFIG_FILE))


def check_overrides(overrides: Mapping[str, Any], where: str) -> None:
    """Checks config fields to change while loading a checkpoint: the shape fields cannot change.

    Raises:
        CheckpointError: ``overrides`` names one of :data:`textbooks.model.config.SHAPE_FIELDS`.
    """
    shape = sorted(set(overrides) & set(SHAPE_FIELDS))
    if shape:
        raise CheckpointError(f"{where}: {shape} set the shapes of the stored parameters and cannot be changed "
                              f"while loading; load the checkpoint as it is (other fields, e.g. scan_layers or "
                              f"dtype, can be changed)")


def load_config(path: str) -> ModelConfig:
    """Reads ``textbooks_config.json`` from the own-format folder ``path``."""
    config_path = os.path.join(path, CONFIG_FILE)
    try:
        with open(config_path) as f:
            body = json.load(f)
        return ModelConfig.from_dict(body["config"])
    except FileNotFoundError:
        raise CheckpointError(f"{config_path} not found: not a params folder written by save_params") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: invalid model config ({e})") from e


def load_params(path: str, **config_overrides: Any) -> tuple[ModelConfig, dict]:
    """Reads an own-format folder; returns ``(config, params)`` in the config's layout.

    Args:
        path: folder written by :func:`save_params`.
        **config_overrides: ModelConfig fields to change after loading (e.g. ``scan_layers=True``,
            ``dtype='bfloat16'``); shape fields must not change.

    Raises:
        CheckpointError: missing or corrupt files, tensors that do not match the config, or an override of a
            shape field.
    """
    check_overrides(config_overrides, path)
    config = load_config(path)
    if config_overrides:
        config = config.replace(**config_overrides)
    flat = read_safetensors(os.path.join(path, PARAMS_FILE))
    params = unflatten(flat)
    validate_params(params, config.replace(scan_layers=False), where=os.path.join(path, PARAMS_FILE))
    return config, cast_and_layout(params, config)


def cast_and_layout(params: Mapping[str, Any], config: ModelConfig) -> dict[str, Any]:
    """Returns numpy ``params`` cast to ``config.param_dtype`` in the ``config.scan_layers`` layout."""
    dtype = jnp.dtype(config.param_dtype)  # a numpy dtype (ml_dtypes for bfloat16)
    return _tree_map(lambda x: np.asarray(x).astype(dtype, copy=False), to_layout(params, config.scan_layers))


def read_safetensors(path: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Reads tensors (all, or ``names``) from one safetensors file as float32 numpy arrays.

    Raises:
        CheckpointError: the file is missing, truncated or not safetensors (the message names it).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found")
    out = {}
    try:
        with safe_open(path, framework="np") as f:
            for name in names if names is not None else list(f.keys()):
                dtype = f.get_slice(name).get_dtype()
                if dtype == "BF16":  # numpy has no bfloat16; read through the flax (jax) backend instead.
                    out[name] = None
                else:
                    out[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
        bf16 = [k for k, v in out.items() if v is None]
        if bf16:
            with safe_open(path, framework="flax") as f:
                for name in bf16:
                    out[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file, it is truncated or corrupt ({e}); "
                              "re-export or re-download it") from e
    return out


def safetensors_header(path: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Returns ``{name: (dtype, shape)}`` from a safetensors header without reading the data.

    Raises:
        CheckpointError: the file is missing, truncated or not safetensors.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found")
    try:
        with safe_open(path, framework="np") as f:
            return {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape()))
                    for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file, it is truncated or corrupt ({e}); "
                              "re-export or re-download it") from e


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def atomic_write(path: str, write) -> None:
    """Writes through ``write(tmp_path)`` and renames, so a crash never leaves a half-written ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

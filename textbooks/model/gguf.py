"""Reads GGUF files (llama.cpp's one-file checkpoints) as transformers-named float32 weights and a config dict.

A GGUF file carries its model's config as metadata under llama.cpp's key names and its weights as tensors,
often quantized, under llama.cpp's tensor names. This module turns both into what a transformers-format
folder of the same model holds, so that the Llama import serves GGUF files and transformers folders alike:

* :func:`read_gguf_config` -- the ``config.json`` dict transformers builds for the file (``LlamaForCausalLM``
  or ``Qwen2ForCausalLM``), from the metadata and the tensor list only;
* :func:`read_gguf` -- a :class:`GGUFModel`: that config, every weight dequantized to float32 under
  transformers' name and in its layout, the chat template, and the plain metadata.

llama.cpp's converter reorders the rows of each Llama q and k projection, head by head, from transformers'
rotary layout (dimension i of a head rotates with dimension i + head_dim/2) to llama.cpp's (2i with 2i + 1);
:func:`read_gguf` puts them back, so its tensors equal transformers' state dict of the same file. Qwen2 files
are not reordered (llama.cpp runs them with the rotary layout of transformers).

Everything is checked before a tensor is dequantized: the architecture, the metadata the config needs, every
tensor's presence, shape and type, that the token list matches the embedding, and (while the header is
parsed) that each tensor's data lies inside the file. A file that is no GGUF, is cut short or has corrupt
metadata raises :class:`GGUFError` naming the path, the key or tensor, and what would fix it. ``gguf``'s reader
memory-maps the file and tensors are dequantized one at a time with ``gguf.quants``, so peak memory stays near
one float32 copy of the weights.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import Keys

from textbooks.data import files
from textbooks.model.config import ModelConfig
from textbooks.model.hf import params_from_hf_tensors
from textbooks.model.params_io import CheckpointError
from textbooks.vocab.gguf_tokenizer import is_gguf_file

SUPPORTED_TYPES: tuple[QType, ...] = (QType.F32, QType.F16, QType.BF16, QType.Q8_0, QType.Q4_0, QType.Q4_1,
                                      QType.Q4_K, QType.Q6_K)
# general.architecture -> (transformers class, model_type)
ARCHITECTURES: dict[str, tuple[str, str]] = {"llama": ("LlamaForCausalLM", "llama"),
                                             "qwen2": ("Qwen2ForCausalLM", "qwen2")}
_REDOWNLOAD = "re-download the file (or copy it again)"
_RECONVERT = ("convert the transformers checkpoint with llama.cpp's convert_hf_to_gguf.py (--outtype q8_0, f16 "
              "or bf16), or requantize the file with `llama-quantize --allow-requantize IN OUT Q8_0`")
# llama.cpp tensor name (layer ``{bid}``) -> transformers name (layer ``{i}``); biases only for Qwen2.
_GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}
_LAYER_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight", "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_BIAS_TENSORS = {"attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
                 "attn_v.bias": "self_attn.v_proj.bias"}
_ROPE_FREQS = "rope_freqs.weight"


class GGUFError(CheckpointError):
    """A GGUF file is unreadable, corrupt, truncated or holds a model this reader does not support."""


@dataclasses.dataclass(frozen=True)
class GGUFModel:
    """A GGUF checkpoint read into transformers' terms.

    Attributes:
        path: the file.
        hf_config: the transformers ``config.json`` dict (see :func:`read_gguf_config`).
        tensors: float32 weights under transformers' names and layouts; ``lm_head.weight`` only when the file
            has its own output matrix (else ``hf_config['tie_word_embeddings']`` is True).
        chat_template: the file's ``tokenizer.chat_template`` (Jinja), or None.
        metadata: the file's scalar and string metadata (arrays such as the token list left out).
    """

    path: str
    hf_config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    chat_template: str | None
    metadata: dict[str, Any]


class _HeaderProblem(Exception):
    """Raised while gguf's reader parses the header; :func:`_open` adds the path."""


class _CheckedReader(gguf.GGUFReader):
    """``gguf.GGUFReader`` that refuses to read past the end of the file and checks each tensor's type and extent
    before mapping it, so that a truncated or corrupt file is reported by tensor or offset (the plain reader
    maps short slices and fails later, or loops over an array length that a corrupt header made huge)."""

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        end = int(offset) + np.dtype(dtype).itemsize * int(count)
        if end > len(self.data):
            raise _HeaderProblem(f"the GGUF header needs bytes up to offset {end:,} but the file ends at byte "
                                 f"{len(self.data):,}: the file is truncated or its metadata is corrupt; "
                                 f"{_REDOWNLOAD}")
        return super()._get(offset, dtype, count, override_order)

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        for field in fields:  # parts: name length, name, n_dims, dims, type, offset (GGUF tensor info)
            name = bytes(field.parts[1]).decode("utf-8", errors="replace")
            try:
                block, size = gguf.GGML_QUANT_SIZES[QType(int(field.parts[4][0]))]
            except (ValueError, KeyError):
                raise _HeaderProblem(f"tensor {name!r} has type code {int(field.parts[4][0])}, unknown to the gguf "
                                     f"package: the file is corrupt or from a newer llama.cpp; {_RECONVERT}") from None
            end = start_offs + int(field.parts[5][0]) + math.prod(int(d) for d in field.parts[3]) * size // block
            if end > len(self.data):
                raise _HeaderProblem(f"tensor {name!r} needs bytes up to offset {end:,} but the file ends at byte "
                                     f"{len(self.data):,}: the file is truncated; {_REDOWNLOAD}")
        super()._build_tensors(start_offs, fields)


def _open(path: str) -> gguf.GGUFReader:
    """Parses the header (metadata and tensor list; no tensor data is read)."""
    if files.is_url(path):
        raise GGUFError(f"{path}: GGUF files are memory-mapped from a local disk; copy it first "
                        f"(e.g. `gsutil cp {path} .`) and give the local file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist (or is not a file)")
    if not is_gguf_file(path):
        with open(path, "rb") as f:
            head = f.read(4)
        raise GGUFError(f"{path} is not a GGUF file: it starts with {head!r}, not b'GGUF'. Give a .gguf file "
                        f"written by llama.cpp, or {_REDOWNLOAD} if it should be one")
    try:
        return _CheckedReader(path)
    except _HeaderProblem as err:
        raise GGUFError(f"{path}: {err}") from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, MemoryError) as err:
        raise GGUFError(f"{path}: the GGUF header cannot be parsed ({type(err).__name__}: {err}); the file is "
                        f"truncated or its metadata is corrupt: {_REDOWNLOAD}") from None


def _metadata(reader: gguf.GGUFReader, path: str) -> dict[str, Any]:
    """Scalar and string fields (not the reader's own ``GGUF.*`` header entries, not arrays)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        try:
            out[key] = field.contents()
        except (ValueError, IndexError) as err:
            raise GGUFError(f"{path}: metadata key {key!r} cannot be decoded ({err}): the metadata is corrupt; "
                            f"{_REDOWNLOAD}") from None
    return out


def _array_length(reader: gguf.GGUFReader, key: str, path: str) -> int | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    if not field.types or field.types[0] != gguf.GGUFValueType.ARRAY:
        raise GGUFError(f"{path}: metadata key {key!r} should be an array; the metadata is corrupt: {_REDOWNLOAD}")
    return len(field.data)


def _shape(tensor: Any) -> tuple[int, ...]:
    """A tensor's shape in numpy (row-major) order; GGUF lists the fastest-varying dimension first."""
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


class _Meta:
    """Typed access to one file's metadata, with errors naming the key."""

    def __init__(self, reader: gguf.GGUFReader, metadata: dict[str, Any], arch: str, path: str):
        self.metadata, self.arch, self.path = metadata, arch, path
        self.arrays = set(reader.fields) - set(metadata)

    def get(self, template: str, kind: type, default: Any = None, positive: bool = True) -> Any:
        key = template.format(arch=self.arch)
        if key in self.arrays:
            raise GGUFError(f"{self.path}: metadata key {key!r} holds a list (one value per layer), where a plain "
                            f"{self.arch} model has one value; this reader does not build such models")
        if key not in self.metadata:
            if default is None:
                raise GGUFError(f"{self.path}: metadata key {key!r} is missing, so the model's shape is unknown; "
                                f"{_RECONVERT}")
            return default
        value = self.metadata[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float else \
            isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok or (positive and kind in (int, float) and not value > 0):
            expected = f"a positive {kind.__name__}" if positive and kind in (int, float) else f"a {kind.__name__}"
            raise GGUFError(f"{self.path}: metadata key {key!r} is {value!r}, expected {expected}; the metadata is "
                            f"corrupt: {_REDOWNLOAD}")
        return kind(value)


def _rope_scaling(meta: _Meta, tensor_names: set[str]) -> dict[str, Any] | None:
    """transformers' ``rope_scaling`` for the file: None, or linear scaling; other kinds are refused."""
    if _ROPE_FREQS in tensor_names:
        raise GGUFError(
            f"{meta.path}: the file carries {_ROPE_FREQS!r}, the per-dimension rotary frequency factors llama.cpp "
            f"writes for Llama 3.1-style ('llama3') rope scaling; the factors do not determine the config's "
            f"low/high-frequency factors and original context length, so the model cannot be rebuilt faithfully. "
            f"Import the model's transformers checkpoint instead (its config.json states rope_scaling)")
    kind = meta.get(Keys.Rope.SCALING_TYPE, str, default="none", positive=False)
    factor = meta.get(Keys.Rope.SCALING_FACTOR, float, default=1.0)
    legacy = f"{meta.arch}.rope.scale_linear"  # older llama.cpp files state linear scaling only by this key
    if kind == "none" and legacy in meta.metadata:
        kind, factor = "linear", meta.get(legacy, float)
    if kind == "none" or (kind == "linear" and factor == 1.0):
        return None
    if kind != "linear":
        raise GGUFError(f"{meta.path}: metadata {Keys.Rope.SCALING_TYPE.format(arch=meta.arch)!r} is {kind!r}; "
                        f"only 'linear' rope scaling is read from GGUF files. Import the model's transformers "
                        f"checkpoint instead")
    return {"rope_type": "linear", "factor": factor}


def _config(reader: gguf.GGUFReader, metadata: dict[str, Any], path: str) -> dict[str, Any]:
    arch = metadata.get(Keys.General.ARCHITECTURE)
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: general.architecture is {arch!r}; this reader supports {sorted(ARCHITECTURES)} "
                        f"GGUF files. Import the model's transformers checkpoint instead, if its family is supported")
    meta = _Meta(reader, metadata, arch, path)
    names = {t.name for t in reader.tensors}
    heads = meta.get(Keys.Attention.HEAD_COUNT, int)
    hidden = meta.get(Keys.LLM.EMBEDDING_LENGTH, int)
    head_dim = meta.get(Keys.Attention.KEY_LENGTH, int, default=hidden // heads)
    if head_dim % 2:
        raise GGUFError(f"{path}: the head dimension is {head_dim}; rotary embeddings pair dimensions, so it must be "
                        f"even: the metadata is corrupt: {_REDOWNLOAD}")
    for template in (Keys.Attention.VALUE_LENGTH, Keys.Rope.DIMENSION_COUNT):
        if (width := meta.get(template, int, default=head_dim)) != head_dim:
            raise GGUFError(f"{path}: metadata {template.format(arch=arch)!r} is {width}, not the head dimension "
                            f"{head_dim}; value heads of another width and partial rotary embeddings are not part "
                            f"of the {arch} architecture, so the file is not a plain {arch} model")
    tokens = _array_length(reader, Keys.Tokenizer.LIST, path)
    embedding = next((_shape(t)[0] for t in reader.tensors if t.name == "token_embd.weight"), None)
    if Keys.LLM.VOCAB_SIZE.format(arch=arch) not in metadata and tokens is None and embedding is None:
        raise GGUFError(f"{path}: neither {Keys.LLM.VOCAB_SIZE.format(arch=arch)!r}, a token list nor "
                        f"token_embd.weight states the vocabulary size; {_RECONVERT}")
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch][0]],
        "model_type": ARCHITECTURES[arch][1],
        "vocab_size": meta.get(Keys.LLM.VOCAB_SIZE, int, default=tokens if tokens is not None else embedding),
        "hidden_size": hidden,
        "intermediate_size": meta.get(Keys.LLM.FEED_FORWARD_LENGTH, int),
        "num_hidden_layers": meta.get(Keys.LLM.BLOCK_COUNT, int),
        "num_attention_heads": heads,
        "num_key_value_heads": meta.get(Keys.Attention.HEAD_COUNT_KV, int, default=heads),
        "head_dim": head_dim,
        "hidden_act": "silu",  # both architectures' MLP; GGUF does not state it
        "rms_norm_eps": meta.get(Keys.Attention.LAYERNORM_RMS_EPS, float),
        "rope_theta": meta.get(Keys.Rope.FREQ_BASE, float, default=10000.0),  # llama.cpp's default base
        "max_position_embeddings": meta.get(Keys.LLM.CONTEXT_LENGTH, int),
        "tie_word_embeddings": "output.weight" not in names,  # llama.cpp omits output.weight when it is tied
        "attention_bias": arch == "qwen2",  # Qwen2: q, k and v biases (no o bias)
    }
    if (scaling := _rope_scaling(meta, names)) is not None:
        config["rope_scaling"] = scaling
    for name, key in (("bos_token_id", Keys.Tokenizer.BOS_ID), ("eos_token_id", Keys.Tokenizer.EOS_ID),
                      ("pad_token_id", Keys.Tokenizer.PAD_ID)):
        if key in metadata:
            config[name] = meta.get(key, int, positive=False)
    return config


def read_gguf_config(path: str) -> dict[str, Any]:
    """The transformers ``config.json`` dict of a GGUF file, from its metadata (no tensor data is read).

    Keys: ``architectures``, ``model_type``, ``vocab_size``, ``hidden_size``, ``intermediate_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``hidden_act``,
    ``rms_norm_eps``, ``rope_theta``, ``max_position_embeddings``, ``tie_word_embeddings``, ``attention_bias``,
    ``rope_scaling`` (linear scaling only, when the file states one) and ``bos_token_id``/``eos_token_id``/
    ``pad_token_id`` where the file states them.

    Raises:
        FileNotFoundError: no such file.
        GGUFError: not a GGUF file, truncated or corrupt header, an architecture other than llama/qwen2, a
            missing shape key, or rope scaling other than linear.
    """
    reader = _open(path)
    return _config(reader, _metadata(reader, path), path)


def _expected(config: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """llama.cpp name -> (transformers name, numpy shape, heads to un-permute the rows of, or 0)."""
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q, kv = config["num_attention_heads"], config["num_key_value_heads"]
    q_out, kv_out = q * config["head_dim"], kv * config["head_dim"]
    permuted = config["model_type"] == "llama"
    shapes = {"token_embd.weight": (v, d), "output_norm.weight": (d,), "output.weight": (v, d)}
    out = {g: (hf, shapes[g], 0) for g, hf in _GLOBAL_TENSORS.items()}
    if config["tie_word_embeddings"]:
        del out["output.weight"]
    layer = {"attn_q.weight": ((q_out, d), q * permuted), "attn_k.weight": ((kv_out, d), kv * permuted),
             "attn_v.weight": ((kv_out, d), 0), "attn_output.weight": ((d, q_out), 0),
             "ffn_gate.weight": ((f, d), 0), "ffn_up.weight": ((f, d), 0), "ffn_down.weight": ((d, f), 0),
             "attn_norm.weight": ((d,), 0), "ffn_norm.weight": ((d,), 0)}
    if config["attention_bias"]:
        layer |= {"attn_q.bias": ((q_out,), 0), "attn_k.bias": ((kv_out,), 0), "attn_v.bias": ((kv_out,), 0)}
    hf_names = _LAYER_TENSORS | _BIAS_TENSORS
    for i in range(config["num_hidden_layers"]):
        for g, (shape, heads) in layer.items():
            out[f"blk.{i}.{g}"] = (f"model.layers.{i}.{hf_names[g]}", shape, heads)
    return out


def _check_tensors(reader: gguf.GGUFReader, config: dict[str, Any], path: str) -> dict[str, Any]:
    """Checks names, shapes, types and the vocabulary; returns llama.cpp name -> ``ReaderTensor``."""
    expected = _expected(config)
    found = {t.name: t for t in reader.tensors}
    arch = config["model_type"]
    if missing := [n for n in expected if n not in found]:
        raise GGUFError(f"{path}: tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} missing "
                        f"({len(missing)} of {len(expected)} expected of a {config['num_hidden_layers']}-layer {arch} "
                        f"model); the file is incomplete or not a plain {arch} model: {_REDOWNLOAD}")
    if extra := [n for n in found if n not in expected]:
        raise GGUFError(f"{path}: tensor(s) {extra[:5]} are not weights of a plain {arch} model; ignoring them "
                        f"would compute another model than the file describes. {_RECONVERT}")
    tokens = _array_length(reader, Keys.Tokenizer.LIST, path)
    rows = _shape(found["token_embd.weight"])[0]
    if tokens is not None and tokens != rows:
        raise GGUFError(f"{path}: the token list ({Keys.Tokenizer.LIST!r}) has {tokens} tokens but the embedding "
                        f"'token_embd.weight' has {rows} rows; the tokenizer does not belong to these weights: "
                        f"{_RECONVERT}")
    for name, (_, shape, _) in expected.items():
        tensor = found[name]
        if tensor.tensor_type not in SUPPORTED_TYPES:
            raise GGUFError(f"{path}: tensor {name!r} is stored as {tensor.tensor_type.name}, which this reader "
                            f"does not dequantize (supported: {', '.join(t.name for t in SUPPORTED_TYPES)}); "
                            f"{_RECONVERT}")
        if _shape(tensor) != shape:
            raise GGUFError(f"{path}: tensor {name!r} has shape {list(_shape(tensor))}, but the metadata describes "
                            f"{list(shape)}; the metadata and the weights disagree: {_RECONVERT}")
    return found


def _unpermute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's rotary row order of a q or k projection (or bias).

    Within each head of ``d`` rows, llama.cpp stores transformers' row ``c * d/2 + j`` (``c`` in {0, 1},
    ``j < d/2``) at row ``2j + c``; this gathers each row back from there.
    """
    d = weight.shape[0] // heads
    source = np.arange(weight.shape[0]).reshape(heads, d // 2, 2).transpose(0, 2, 1).reshape(-1)
    return weight[source]


def _dequantize(tensor: Any, heads: int) -> np.ndarray:
    """One tensor as a float32 array of its own (not a view of the mapped file)."""
    if tensor.tensor_type == QType.F32:
        values = np.array(tensor.data, dtype=np.float32)
    else:
        values = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    values = values.reshape(_shape(tensor))
    return _unpermute_rows(values, heads) if heads else values


def read_gguf(path: str) -> GGUFModel:
    """Reads a llama or qwen2 GGUF file: config, float32 weights in transformers' names, chat template, metadata.

    Every check runs before the first tensor is dequantized; tensors are then dequantized one at a time.

    Raises:
        FileNotFoundError: no such file.
        GGUFError: anything :func:`read_gguf_config` refuses; a tensor missing, unexpected, of another shape
            than the metadata describes or of an unsupported type (supported: :data:`SUPPORTED_TYPES`); a token
            list whose length differs from the embedding's rows.
    """
    reader = _open(path)
    metadata = _metadata(reader, path)
    config = _config(reader, metadata, path)
    found = _check_tensors(reader, config, path)
    tensors = {hf: _dequantize(found[name], heads) for name, (hf, _, heads) in _expected(config).items()}
    template = metadata.get(Keys.Tokenizer.CHAT_TEMPLATE)
    return GGUFModel(path=path, hf_config=config, tensors=tensors,
                     chat_template=template if isinstance(template, str) else None, metadata=metadata)


def load_gguf_checkpoint(path: str, **config_overrides: Any) -> tuple[ModelConfig, dict]:
    """Reads a GGUF file into ``(ModelConfig, params)`` through the transformers-layout import
    (:func:`textbooks.model.hf.params_from_hf_tensors`), with the same checks as a transformers folder.

    Args:
        path: a ``.gguf`` file.
        **config_overrides: ModelConfig fields other than the shape fields (``scan_layers``, ``dtype``, ...).

    Raises:
        GGUFError: as :func:`read_gguf`. CheckpointError: tensors that do not fit the config.
    """
    model = read_gguf(path)
    return params_from_hf_tensors(model.hf_config, dict(model.tensors), os.path.basename(path), **config_overrides)


def gguf_summary(path: str) -> dict[str, Any]:
    """What a GGUF file holds, from its header alone (no tensor data is read): ``name`` (``general.name``),
    ``architecture``, ``parameters`` (elements of all tensors), ``quantization`` (tensor type -> parameters,
    largest first) and ``file_bytes``. For reports that name a model by size and quantization.

    Raises:
        FileNotFoundError, GGUFError: as :func:`read_gguf_config`.
    """
    reader = _open(path)
    metadata = _metadata(reader, path)
    by_type: dict[str, int] = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        by_type[kind] = by_type.get(kind, 0) + int(tensor.n_elements)
    return {"name": metadata.get("general.name"), "architecture": metadata.get("general.architecture"),
            "parameters": sum(by_type.values()),
            "quantization": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
            "file_bytes": os.path.getsize(path)}

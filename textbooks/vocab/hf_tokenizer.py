"""seqio Vocabularies over HF ``tokenizers`` Tokenizers, in Python and in tf.data.

* :class:`BaseTokenizerVocabulary`: the machinery every such vocabulary shares (encode without adding special
  tokens, batch encode, decode up to the first end-of-sequence id, tf.data encode/decode through
  ``tf.numpy_function``, pickling, equality). :class:`textbooks.vocab.phi.PhiVocabulary` is one.
* :class:`TokenizerVocabulary`: a vocabulary over any Tokenizer, built from a ``tokenizer.json`` file (or a
  folder holding one, with transformers' ``tokenizer_config.json`` and ``chat_template.jinja`` beside it when
  present), from a GGUF file (:mod:`textbooks.vocab.gguf_tokenizer`), or from a Tokenizer object. It knows
  the special tokens and chat template of its source, renders chats (:mod:`textbooks.vocab.chat_template`)
  and saves itself as a folder that ``transformers.AutoTokenizer.from_pretrained`` loads with the same ids.

Ids are those of the Tokenizer: ``encode`` adds no bos/eos (seqio appends the end-of-sequence id itself);
special tokens written literally in text (``<|im_start|>``) encode to their ids, unless
``split_special_tokens=True``. ``decode`` stops at the first end-of-sequence id (dropping it) and drops ids
outside the vocabulary (padded embedding rows, seqio sentinel ids); other special tokens decode to their text.
"""

from __future__ import annotations

import abc
import json
import os
import threading
from collections.abc import Mapping
from typing import Any, Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf
from tokenizers import Tokenizer

from textbooks.vocab.chat_template import render_chat
from textbooks.vocab.gguf_tokenizer import is_gguf_file, tokenizer_config_from_gguf, tokenizer_from_gguf

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


class BaseTokenizerVocabulary(seqio.Vocabulary):
    """A seqio Vocabulary over an HF ``tokenizers.Tokenizer`` (see the module docstring).

    Subclasses give :meth:`_load_tokenizer`, :attr:`eos_id`, :attr:`_base_vocab_size` and :meth:`_init_args`
    (the keyword arguments that rebuild the vocabulary: pickling and equality use them).

    Args:
        extra_ids: seqio sentinel ids appended after the tokenizer's ids (they decode to nothing).
        split_special_tokens: encode special tokens written in text as plain text instead of their ids.
    """

    _op_name = "tokenizer"  # prefix of the tf.numpy_function op names

    def __init__(self, extra_ids: int = 0, split_special_tokens: bool = False):
        self._split_special_tokens = split_special_tokens
        self._tokenizer: Tokenizer | None = None
        self._tokenizer_lock = threading.Lock()
        super().__init__(extra_ids=extra_ids)

    @abc.abstractmethod
    def _load_tokenizer(self) -> Tokenizer:
        """The Tokenizer (called once per instance; may return a shared one, which is not changed)."""

    @abc.abstractmethod
    def _init_args(self) -> dict[str, Any]:
        """Keyword arguments of ``__init__`` that rebuild this vocabulary."""

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (do not change it)."""
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None:
                    tok = self._load_tokenizer()
                    if self._split_special_tokens:
                        tok = Tokenizer.from_str(tok.to_str())
                        tok.encode_special_tokens = True
                    self._tokenizer = tok
        return self._tokenizer

    @property
    def unk_id(self) -> None:
        """None: ids outside the vocabulary decode to nothing rather than to an unknown token."""
        return None

    def __getstate__(self) -> dict[str, Any]:
        return self._init_args()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._init_args() == self._init_args()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.extra_ids, self._split_special_tokens))

    # ---------------------------------------------------------------------------------------------------
    # Python.

    def _encode(self, s: str | bytes) -> list[int]:
        if isinstance(s, bytes):
            s = s.decode("utf-8")
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes many strings at once (parallel in the Rust library)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def _decode(self, ids: Iterable[int]) -> str:
        # Text tokens only: no end-of-sequence marker, nothing for padded-embedding rows or sentinel ids.
        size, eos = self._base_vocab_size, self.eos_id
        clean = [int(i) for i in ids if 0 <= int(i) < size and int(i) != eos]
        return self.tokenizer.decode(clean, skip_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenizes ids up to the first end-of-sequence id (which is dropped)."""
        return super().decode(ids)

    # ---------------------------------------------------------------------------------------------------
    # TensorFlow (tf.numpy_function around the same tokenizer; runs inside tf.data maps).

    def _encode_np_scalar(self, s: bytes | np.ndarray) -> np.ndarray:
        if isinstance(s, np.ndarray):
            s = s.item()
        return np.asarray(self._encode(s.decode("utf-8")), dtype=np.int32)

    def _encode_np_batch(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.encode_batch([s.decode("utf-8") for s in strings.reshape(-1)])
        lengths = np.asarray([len(e) for e in encoded], dtype=np.int64)
        values = np.asarray([i for e in encoded for i in e], dtype=np.int32)
        return values, lengths

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """A scalar string gives int32 ``[None]``; a string tensor of rank r gives a RaggedTensor of rank r+1."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(self._encode_np_scalar, [s], tf.int32, stateful=False,
                                    name=f"{self._op_name}_encode")
            ids.set_shape([None])
            return ids
        shape = tf.shape(s, out_type=tf.int64)
        values, lengths = tf.numpy_function(self._encode_np_batch, [tf.reshape(s, [-1])], [tf.int32, tf.int64],
                                            stateful=False, name=f"{self._op_name}_encode_batch")
        values.set_shape([None])
        lengths.set_shape([None])
        ragged = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
        for dim in range(s.shape.rank - 1, 0, -1):
            ragged = tf.RaggedTensor.from_uniform_row_length(ragged, shape[dim], validate=False)
        return ragged

    def _decode_np(self, ids: np.ndarray) -> np.ndarray:
        flat = ids.reshape(-1, ids.shape[-1]) if ids.ndim else ids.reshape(1, 1)
        out = np.asarray([self._decode(row[row >= 0]).encode("utf-8") for row in flat], dtype=object)
        return out.reshape(ids.shape[:-1]) if ids.ndim else out.reshape(())

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids, dtype=tf.int32)
        out = tf.numpy_function(self._decode_np, [ids], tf.string, stateful=False, name=f"{self._op_name}_decode")
        out.set_shape(ids.shape[:-1] if ids.shape.rank else [])
        return out

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Detokenizes an int tensor ``[..., L]`` to strings ``[...]``, each up to its first end-of-sequence id.

        Unlike seqio's default this does not overwrite the ids after end-of-sequence with ``pad_id``: 0 is a
        real token in these vocabularies.
        """
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank == 0:
            raise ValueError("decode_tf needs ids of rank >= 1")
        ids = tf.cast(ids, tf.int32)
        after_eos = tf.cumsum(tf.cast(tf.equal(ids, self.eos_id), tf.int32), exclusive=True, axis=-1)
        return self._decode_tf(tf.where(after_eos > 0, -1, ids))


class TokenizerVocabulary(BaseTokenizerVocabulary):
    """A seqio Vocabulary over a ``tokenizers.Tokenizer`` with the special tokens and chat template of its source.

    Args:
        source: a ``tokenizer.json`` file, a folder holding one (its ``tokenizer_config.json`` and
            ``chat_template.jinja``, when present, give the special tokens and chat template), a GGUF file, or
            a ``tokenizers.Tokenizer`` (copied).
        special_tokens: ``bos_token`` / ``eos_token`` / ``unk_token`` / ``pad_token`` strings overriding
            (or, for a Tokenizer object, giving) the source's; the eos token is required.
        chat_template: a jinja2 chat template overriding the source's.
        extra_ids: see :class:`BaseTokenizerVocabulary`.
        split_special_tokens: see :class:`BaseTokenizerVocabulary`; None takes the source's setting
            (``split_special_tokens`` in ``tokenizer_config.json``, else False).

    Raises:
        FileNotFoundError: ``source`` is a missing path, or a folder without ``tokenizer.json``.
        ValueError: an unreadable file, a GGUF tokenizer that cannot be built, no eos token, or a special
            token that is not in the vocabulary.
    """

    def __init__(self, source: str | os.PathLike | Tokenizer, *, special_tokens: Mapping[str, str | None] | None = None,
                 chat_template: str | None = None, extra_ids: int = 0, split_special_tokens: bool | None = None):
        unknown = set(special_tokens or {}) - set(SPECIAL_TOKEN_NAMES)
        if unknown:
            raise ValueError(f"special_tokens: unknown names {sorted(unknown)}; known: "
                             f"{', '.join(SPECIAL_TOKEN_NAMES)}")
        self._overrides = {"special_tokens": dict(special_tokens or {}), "chat_template": chat_template,
                           "split_special_tokens": split_special_tokens}
        if isinstance(source, Tokenizer):
            self._source, self._from_json_text = source.to_str(), True
            self._base, config = Tokenizer.from_str(self._source), {}
        else:
            self._source, self._from_json_text = os.fspath(source), False
            self._base, config = _load(self._source)
        split = config.pop("split_special_tokens", False) if split_special_tokens is None else split_special_tokens
        super().__init__(extra_ids=extra_ids, split_special_tokens=bool(split))
        config.update(self._overrides["special_tokens"])
        if chat_template is not None:
            config["chat_template"] = chat_template
        self._config = config
        self._ids = {name: self._token_id(name) for name in SPECIAL_TOKEN_NAMES}
        if self._ids["eos_token"] is None:
            raise ValueError(f"tokenizer {self._describe_source()} names no eos token; pass "
                             f"special_tokens={{'eos_token': ...}} or write it into {TOKENIZER_CONFIG_FILE}")

    def _token_id(self, name: str) -> int | None:
        token = self._config.get(name)
        if token is None:
            return None
        token_id = self._base.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer {self._describe_source()}: {name} {token!r} is not in its vocabulary")
        return token_id

    def _describe_source(self) -> str:
        return "given as a Tokenizer object" if self._from_json_text else self._source

    def _load_tokenizer(self) -> Tokenizer:
        return self._base

    def _init_args(self) -> dict[str, Any]:
        source = Tokenizer.from_str(self._source) if self._from_json_text else self._source
        return {"source": source, **self._overrides, "extra_ids": self.extra_ids}

    def __eq__(self, other) -> bool:
        # Tokenizer objects have no equality of their own: compare the source text or path instead.
        return (type(other) is type(self) and other._source == self._source and other._overrides == self._overrides
                and other.extra_ids == self.extra_ids)

    def __hash__(self) -> int:
        return super().__hash__()

    @property
    def eos_id(self) -> int:
        return self._ids["eos_token"]

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos_token"]

    @property
    def _base_vocab_size(self) -> int:
        return self._base.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, Any]:
        """``{'bos_token', 'bos_token_id', 'eos_token', ...}`` (None for a token the source does not name)."""
        out: dict[str, Any] = {}
        for name in SPECIAL_TOKEN_NAMES:
            out[name], out[f"{name}_id"] = self._config.get(name), self._ids[name]
        return out

    @property
    def chat_template(self) -> str | None:
        """The jinja2 chat template, or None."""
        return self._config.get("chat_template")

    def render_chat(self, messages: list[dict], *, add_generation_prompt: bool, tools: list[dict] | None = None,
                    **extra: Any) -> str:
        """The prompt text of ``messages`` under this vocabulary's chat template, with its special tokens
        (:func:`textbooks.vocab.chat_template.render_chat`).

        Raises:
            ValueError: the vocabulary has no chat template; ChatTemplateError: the template fails.
        """
        if self.chat_template is None:
            raise ValueError(f"tokenizer {self._describe_source()} has no chat template; pass chat_template=...")
        named = {k: self._config.get(k) for k in ("unk_token", "pad_token") if self._config.get(k) is not None}
        return render_chat(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=self._config.get("bos_token"), eos_token=self._config.get("eos_token"),
                           tools=tools, **{**named, **extra})

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Writes ``tokenizer.json`` and ``tokenizer_config.json`` (special tokens, chat template, bos/eos
        flags) into ``directory`` (created if needed), so that ``transformers.AutoTokenizer.from_pretrained``
        loads the same ids and chat template. Returns the paths written."""
        os.makedirs(directory, exist_ok=True)
        paths = [os.path.join(directory, TOKENIZER_FILE), os.path.join(directory, TOKENIZER_CONFIG_FILE)]
        self._base.save(paths[0])
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        config.update({k: v for k, v in self._config.items() if v is not None})
        config["split_special_tokens"] = self._split_special_tokens
        with open(paths[1], "w", encoding="utf-8") as f:
            f.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return paths

    def __repr__(self) -> str:
        return (f"TokenizerVocabulary({self._describe_source()!s}, vocab_size={self.vocab_size}, "
                f"eos_id={self.eos_id}, extra_ids={self.extra_ids})")


def _load(path: str) -> tuple[Tokenizer, dict[str, Any]]:
    """``(Tokenizer, config)`` of a tokenizer.json file, a folder holding one, or a GGUF file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer {path} not found: give a {TOKENIZER_FILE} file, a folder holding "
                                f"one, or a .gguf file")
    if os.path.isdir(path):
        folder, path = path, os.path.join(path, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} holds no {TOKENIZER_FILE}")
    if is_gguf_file(path):
        return tokenizer_from_gguf(path), tokenizer_config_from_gguf(path)
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # the Rust library raises plain Exceptions for malformed files
        raise ValueError(f"{path} is not a readable {TOKENIZER_FILE} ({e})") from e
    return tok, _folder_config(os.path.dirname(path))


def _folder_config(folder: str) -> dict[str, Any]:
    """Special tokens, chat template and bos/eos flags from transformers' files beside a tokenizer.json."""
    config_path, config = os.path.join(folder, TOKENIZER_CONFIG_FILE), {}
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            body = json.load(f)
        if not isinstance(body, dict):
            raise ValueError(f"{config_path} must hold a JSON object")
        for name in SPECIAL_TOKEN_NAMES:  # a token is a string or, in older files, {"content": ...}
            token = body.get(name)
            config[name] = token.get("content") if isinstance(token, dict) else token
        for key in ("chat_template", "add_bos_token", "add_eos_token", "split_special_tokens"):
            if body.get(key) is not None:
                config[key] = body[key]
    template_path = os.path.join(folder, CHAT_TEMPLATE_FILE)
    if os.path.isfile(template_path):
        with open(template_path, encoding="utf-8") as f:
            config["chat_template"] = f.read()
    if not isinstance(config.get("chat_template", ""), str):
        raise ValueError(f"{config_path}: chat_template must be a string (named templates are not supported)")
    return config

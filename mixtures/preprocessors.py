"""Task preprocessors for language-model pretraining on the data roles.

The chain registered for every role (see :mod:`mixtures.roles`)::

    select_text -> tokenize_targets -> CacheDatasetPlaceholder -> append_eos -> split_to_length -> add_role_id

* tokenization happens before the cache placeholder, so a seqio cache stores token ids once;
* ``append_eos`` ends every document with the vocabulary's end-of-text id (``<|endoftext|>`` for phi, as in
  phi-1, where documents are concatenated with it);
* ``split_to_length`` cuts documents longer than the sequence length into consecutive pieces of exactly that
  length (the last one shorter) instead of letting seqio's trimming drop the tail;
* ``add_role_id`` tags each example with its role id (:data:`textbooks.data.roles.ROLE_IDS`) for
  per-component losses.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional

import seqio
import tensorflow as tf

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 64


def select_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Keeps the document text as ``targets`` and its ``id``; drops the other record fields."""
    return dataset.map(lambda ex: {"targets": ex["text"], "id": ex["id"]}, num_parallel_calls=tf.data.AUTOTUNE)


def _encodes_batches(vocabulary: seqio.Vocabulary) -> bool:
    """Whether ``vocabulary.encode_tf`` accepts a vector of strings and returns a RaggedTensor."""
    vocabulary = getattr(vocabulary, "resolved", vocabulary)
    if isinstance(vocabulary, (seqio.ByteVocabulary, seqio.PassThroughVocabulary)):
        return False
    try:
        out = vocabulary.encode_tf(tf.constant(["a", "bc d"]))
    except Exception:  # noqa: BLE001 (vocabularies raise many kinds; fall back to one string at a time)
        return False
    return isinstance(out, tf.RaggedTensor) and out.shape.rank == 2


def tokenize_targets(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """Encodes ``targets`` with its feature's vocabulary (int32 ids, no end-of-text yet).

    Vocabularies that encode a batch of strings at once (phi, SentencePiece) get documents in batches of
    64, which keeps the tokenizer's parallelism and avoids per-document Python calls; others get one
    document per call. The order of documents is unchanged.
    """
    vocabulary = output_features["targets"].vocabulary
    if not _encodes_batches(vocabulary):
        @tf.autograph.experimental.do_not_convert
        def encode_one(ex):
            out = dict(ex)
            out["targets"] = tf.cast(vocabulary.encode_tf(ex["targets"]), tf.int32)
            return out
        return dataset.map(encode_one, num_parallel_calls=tf.data.AUTOTUNE)

    @tf.autograph.experimental.do_not_convert
    def encode_batch(ex):
        out = dict(ex)
        out["targets"] = tf.cast(vocabulary.encode_tf(ex["targets"]), tf.int32)
        return out

    batched = dataset.batch(TOKENIZE_BATCH).map(encode_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return batched.unbatch()


def split_to_length(dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]] = None,
                    feature: str = "targets") -> tf.data.Dataset:
    """Cuts ``feature`` into consecutive pieces of at most ``sequence_length[feature]`` tokens.

    A document of ``n`` tokens becomes ``ceil(n / L)`` examples; the other features are copied to each
    piece. Without a sequence length the dataset is unchanged.
    """
    length = (sequence_length or {}).get(feature)
    if not length:
        return dataset
    length = int(length)

    @tf.autograph.experimental.do_not_convert
    def pieces(ex):
        tokens = ex[feature]
        n = tf.shape(tokens)[0]
        num = tf.maximum((n + length - 1) // length, 1)
        padded = tf.reshape(tf.pad(tokens, [[0, num * length - n]]), [num, length])
        sizes = tf.minimum(n - tf.range(num) * length, length)
        rest = {k: tf.repeat(tf.expand_dims(v, 0), num, axis=0) for k, v in ex.items() if k != feature}
        return tf.data.Dataset.from_tensor_slices(({feature: padded, **rest}, sizes))

    @tf.autograph.experimental.do_not_convert
    def trim(ex, size):
        return {**ex, feature: ex[feature][:size]}

    return dataset.flat_map(pieces).map(trim, num_parallel_calls=tf.data.AUTOTUNE)


def add_role_id(dataset: tf.data.Dataset, role_id: int) -> tf.data.Dataset:
    """Adds the scalar int32 feature ``role_id``."""
    value = tf.constant(role_id, tf.int32)
    return dataset.map(lambda ex: {**ex, "role_id": value}, num_parallel_calls=tf.data.AUTOTUNE)

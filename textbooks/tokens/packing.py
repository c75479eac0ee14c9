"""Packing token streams into fixed-length rows.

:func:`pack_rows` lays documents end to end (each already ends with the end-of-text id) and cuts the stream
into rows of exactly ``length`` tokens, the way GPT-style and phi-1 pretraining data is prepared; only the
last row of a finite stream is padded, so packing efficiency is ~100% whatever the document lengths. Within a
row every document fragment is its own segment (ids 1, 2, ... ; 0 is padding), attention is confined to
segments, and positions restart at 0 for each fragment (a document cut by a row boundary continues as a new
segment in the next row, so no token is dropped).

Every row is ``{targets, targets_segment_ids, targets_positions, targets_role_ids}`` (:data:`ROW_KEYS`), int32
``[length]`` each; the role ids are those of :data:`textbooks.data.roles.ROLE_IDS`, 0 on padding.
:class:`mixtures.mixing.TokenMixture` packs each component this way, and
:class:`textbooks.inputs.converters.LMPackingFeatureConverter` turns rows into model features.
"""

from __future__ import annotations

from typing import Mapping

import tensorflow as tf

ROW_KEYS = ("targets", "targets_segment_ids", "targets_positions", "targets_role_ids")


def _sentinel_like(spec: Mapping[str, tf.TensorSpec]) -> dict:
    out = {}
    for k, s in spec.items():
        shape = [0 if d is None else d for d in s.shape.as_list()]
        out[k] = tf.zeros(shape, s.dtype) if s.dtype != tf.string else tf.fill(shape, "")
    return out


def pack_rows(dataset: tf.data.Dataset, length: int, *, feature: str = "targets", role_key: str = "role_id",
              default_role_id: int = 0, pad_last: bool = True) -> tf.data.Dataset:
    """Concatenates documents and cuts the stream into rows of ``length`` tokens.

    Args:
        dataset: examples with a rank-1 int ``feature`` and optionally a scalar int ``role_key``.
        length: row length.
        default_role_id: role id used when examples carry no ``role_key``.
        pad_last: when the input ends, emit the remainder as a last, padded row (else drop it).

    Returns:
        A dataset of rows ``{targets, targets_segment_ids, targets_positions, targets_role_ids}``, each int32
        ``[length]``; padding has segment id 0, position 0, role id 0 and token 0.
    """
    if length <= 0:
        raise ValueError(f"row length must be positive, got {length}")
    length = int(length)
    has_role = role_key in dataset.element_spec

    @tf.autograph.experimental.do_not_convert
    def select(ex):
        role = tf.cast(ex[role_key], tf.int32) if has_role else tf.constant(default_role_id, tf.int32)
        return {"tokens": tf.cast(ex[feature], tf.int32), "role": role, "last": tf.constant(False)}

    docs = dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    if pad_last:
        end = _sentinel_like(docs.element_spec)
        end["last"] = tf.constant(True)
        docs = docs.concatenate(tf.data.Dataset.from_tensors(end))

    empty_i32 = tf.zeros([0], tf.int32)
    init = (empty_i32, tf.zeros([0], tf.int64), empty_i32, empty_i32, tf.constant(0, tf.int64))

    @tf.autograph.experimental.do_not_convert
    def step(state, doc):
        buf_t, buf_d, buf_p, buf_r, next_doc = state
        tokens = doc["tokens"]
        n = tf.shape(tokens)[0]
        t = tf.concat([buf_t, tokens], 0)
        d = tf.concat([buf_d, tf.fill([n], next_doc)], 0)
        p = tf.concat([buf_p, tf.range(n, dtype=tf.int32)], 0)
        r = tf.concat([buf_r, tf.fill([n], doc["role"])], 0)
        size = tf.shape(t)[0]
        # At the end of the input, pad the remainder to a full row (segment marker -1).
        pad = tf.where(doc["last"], (length - size % length) % length, 0)
        t = tf.concat([t, tf.zeros([pad], tf.int32)], 0)
        d = tf.concat([d, tf.fill([pad], tf.constant(-1, tf.int64))], 0)
        p = tf.concat([p, tf.zeros([pad], tf.int32)], 0)
        r = tf.concat([r, tf.zeros([pad], tf.int32)], 0)
        k = (size + pad) // length
        m = k * length
        rows = (tf.reshape(t[:m], [k, length]), tf.reshape(d[:m], [k, length]),
                tf.reshape(p[:m], [k, length]), tf.reshape(r[:m], [k, length]))
        return (t[m:], d[m:], p[m:], r[m:], next_doc + 1), rows

    @tf.autograph.experimental.do_not_convert
    def finish(t, d, p, r):
        first_doc = d[:1]
        real = d >= 0
        seg = tf.where(real, tf.cast(d - first_doc, tf.int32) + 1, 0)
        # The first fragment may continue a document from the previous row: restart its positions.
        pos = tf.where(real & tf.equal(d, first_doc), p - p[:1], p)
        return {"targets": t, "targets_segment_ids": seg, "targets_positions": tf.where(real, pos, 0),
                "targets_role_ids": tf.where(real, r, 0)}

    rows = docs.scan(init, step).unbatch()
    return rows.map(finish, num_parallel_calls=tf.data.AUTOTUNE)


def pad_rows(dataset: tf.data.Dataset, length: int, *, feature: str = "targets", role_key: str = "role_id",
             default_role_id: int = 0) -> tf.data.Dataset:
    """One example per row, padded to ``length`` (no packing); same row layout as :func:`pack_rows`."""
    has_role = role_key in dataset.element_spec

    @tf.autograph.experimental.do_not_convert
    def pad(ex):
        tokens = tf.cast(ex[feature], tf.int32)[:length]
        n = tf.shape(tokens)[0]
        role = tf.cast(ex[role_key], tf.int32) if has_role else tf.constant(default_role_id, tf.int32)
        real = tf.range(length) < n
        row = {"targets": tf.pad(tokens, [[0, length - n]]),
               "targets_segment_ids": tf.cast(real, tf.int32),
               "targets_positions": tf.where(real, tf.range(length), 0),
               "targets_role_ids": tf.where(real, role, 0)}
        return {k: tf.ensure_shape(v, [length]) for k, v in row.items()}

    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE)

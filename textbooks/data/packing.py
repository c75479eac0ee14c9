"""Packing token streams into fixed-length rows, and the seqio feature converter for decoder-only LMs.

:func:`pack_rows` lays documents end to end (each already ends with the end-of-text id) and cuts the stream
into rows of exactly ``length`` tokens, the way GPT-style and phi-1 pretraining data is prepared; only the
last row of a finite stream is padded, so packing efficiency is ~100% whatever the document lengths. Within a
row every document fragment is its own segment (ids 1, 2, ... ; 0 is padding), attention is confined to
segments, and positions restart at 0 for each fragment (a document cut by a row boundary continues as a new
segment in the next row, so no token is dropped).

:class:`LMPackingFeatureConverter` turns task features into model features::

    decoder_target_tokens  the tokens
    decoder_input_tokens   targets shifted right within each segment; bos_id at each segment start
    decoder_segment_ids    1.. per fragment, 0 on padding
    decoder_positions      position within the fragment
    decoder_loss_weights   1 where decoder_segment_ids > 0 (never derived from token ids: id 0 is a real
                           token, "!", in the phi vocabulary)
    decoder_role_ids       the data role of each token (``mixtures.roles.ROLE_IDS``), 0 on padding

It accepts either documents (``targets`` plus an optional scalar ``role_id``), which it packs itself, or rows
already packed per component by ``mixtures.mixing.TokenMixture`` (``targets`` with ``targets_segment_ids``,
``targets_positions`` and ``targets_role_ids``).
"""

from __future__ import annotations

from typing import Mapping, Optional

import seqio
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


def rows_to_model_features(row: Mapping[str, tf.Tensor], bos_id: int) -> dict[str, tf.Tensor]:
    """Model features of one packed row (see the module docstring)."""
    targets = row["targets"]
    seg = row["targets_segment_ids"]
    pos = row["targets_positions"]
    shifted = tf.concat([tf.fill([1], tf.constant(bos_id, targets.dtype)), targets[:-1]], 0)
    inputs = tf.where(tf.equal(pos, 0), tf.constant(bos_id, targets.dtype), shifted)
    real = seg > 0
    return {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": tf.where(real, inputs, 0),
        "decoder_segment_ids": seg,
        "decoder_positions": pos,
        "decoder_loss_weights": tf.cast(real, tf.int32),
        "decoder_role_ids": tf.where(real, row["targets_role_ids"], 0),
    }


def _default_bos_id() -> int:
    from mixtures import roles  # The default vocabulary is chosen with gin in mixtures.roles.

    return int(roles.default_vocabulary().eos_id)


class LMPackingFeatureConverter(seqio.FeatureConverter):
    """Decoder-only LM features with stream packing, segment-based loss weights and per-token role ids.

    Args:
        pack: pack documents end to end into full rows (else one document piece per padded row; the
            model features then omit segment ids and positions, as in seqio).
        bos_id: decoder input at the start of each segment; default the end-of-text id of the default
            vocabulary (``<|endoftext|>`` = 50256 for phi, which is also the token that precedes every
            document in the concatenated stream).
        default_role_id: role id for examples without ``role_id`` (tasks from outside ``mixtures``).
        pad_last: emit the last partial row of a finite dataset (padded) instead of dropping it.
    """

    TASK_FEATURES = {"targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
    MODEL_FEATURES = {
        "decoder_target_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_input_tokens": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_loss_weights": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_role_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    PACKING_FEATURE_DTYPES = {"decoder_segment_ids": tf.int32, "decoder_positions": tf.int32}

    def __init__(self, pack: bool = True, bos_id: Optional[int] = None, default_role_id: int = 0,
                 pad_last: bool = True, apply_length_check: bool = True):
        self._explicit_bos = bos_id
        self._default_role_id = default_role_id
        self._pad_last = pad_last
        super().__init__(pack=pack, apply_length_check=apply_length_check, bos_id=0 if bos_id is None else bos_id)

    @property
    def bos_id(self) -> int:
        return _default_bos_id() if self._explicit_bos is None else self._explicit_bos

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
        length = int(task_feature_lengths["targets"])
        prepacked = "targets_segment_ids" in ds.element_spec
        if prepacked:
            rows = ds.map(lambda ex: {k: ex[k] for k in ROW_KEYS}, num_parallel_calls=tf.data.AUTOTUNE)
        elif self.pack:
            rows = pack_rows(ds, length, default_role_id=self._default_role_id, pad_last=self._pad_last)
        else:
            rows = pad_rows(ds, length, default_role_id=self._default_role_id)
        bos_id = self.bos_id
        keep = set(self.MODEL_FEATURES) | (set(self.PACKING_FEATURE_DTYPES) if self.pack else set())

        @tf.autograph.experimental.do_not_convert
        def convert(row):
            features = rows_to_model_features(row, bos_id)
            return {k: v for k, v in features.items() if k in keep}

        return rows.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
        length = task_feature_lengths["targets"]
        names = list(self.MODEL_FEATURES) + (list(self.PACKING_FEATURE_DTYPES) if self.pack else [])
        return {k: length for k in names}

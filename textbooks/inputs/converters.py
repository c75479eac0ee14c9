"""The seqio feature converter for decoder-only LMs: packed rows in, model features out.

:class:`LMPackingFeatureConverter` turns task features into model features::

    decoder_target_tokens  the tokens
    decoder_input_tokens   targets shifted right within each segment; bos_id at each segment start
    decoder_segment_ids    1.. per fragment, 0 on padding
    decoder_positions      position within the fragment
    decoder_loss_weights   1 where decoder_segment_ids > 0 (never derived from token ids: id 0 is a real
                           token, "!", in the phi vocabulary)
    decoder_role_ids       the data role of each token (:data:`textbooks.data.roles.ROLE_IDS`), 0 on padding

It accepts either documents (``targets`` plus an optional scalar ``role_id``), which it packs itself with
:func:`textbooks.tokens.packing.pack_rows`, or rows already packed per component by
:class:`mixtures.mixing.TokenMixture` (``targets`` with ``targets_segment_ids``, ``targets_positions`` and
``targets_role_ids``).
"""

from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

from mixtures import roles
from textbooks.tokens import packing


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
    return int(roles.default_vocabulary().eos_id)  # The default vocabulary is chosen with gin in mixtures.roles.


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
            rows = ds.map(lambda ex: {k: ex[k] for k in packing.ROW_KEYS}, num_parallel_calls=tf.data.AUTOTUNE)
        elif self.pack:
            rows = packing.pack_rows(ds, length, default_role_id=self._default_role_id, pad_last=self._pad_last)
        else:
            rows = packing.pad_rows(ds, length, default_role_id=self._default_role_id)
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

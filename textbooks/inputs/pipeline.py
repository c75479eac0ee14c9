"""The per-host input pipeline: seqio mixture -> packed rows -> per-host batches of numpy arrays.

Training::

    it = make_train_iterator("phi15", task_feature_lengths={"targets": 2048}, batch_size=256,
                             shard_info=seqio.ShardInfo(jax.process_index(), jax.process_count()), seed=0)
    batch = next(it)            # dict of int32 [256 // num_hosts, 2048]: decoder_input_tokens,
                                # decoder_target_tokens, decoder_segment_ids, decoder_positions,
                                # decoder_loss_weights, decoder_role_ids
    state = it.get_state()      # bytes; store with the model checkpoint
    it.set_state(state)         # resume exactly: no example is repeated or skipped

Each host reads a disjoint part of every component (whole shard files when there are at least as many files as
hosts, otherwise every n-th example) and the hosts' parts together cover the data. Batches are a function of
(mixture, lengths, global batch size, shard info, seed, vocabulary): the same arguments give the same batches.

Checkpointing the position uses tf.data's iterator checkpoints (``tf.train.Checkpoint(iterator=...)``), the
mechanism T5X uses: the state holds the shuffle buffers, the packer's carry-over and read positions in every
file, so restoring costs the size of those buffers (a few MB per component at length 2048), not the number of
steps taken, and resumes at exactly the next batch. The alternative, replaying a skip count, needs no
storage but re-reads and re-tokenizes everything seen so far on each restart (hours for long runs). The
state is tied to the pipeline's arguments; restoring into a pipeline built differently raises an error.

Evaluation: :func:`make_eval_datasets` gives each component's validation split packed the same way, once,
with its role ids, so losses can be reported per component.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tempfile
import zipfile
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np
import seqio
import tensorflow as tf

from mixtures import factory, mixing as mixing_lib, roles, sources  # importing mixtures registers its tasks
from textbooks import gin_utils
from textbooks.data.roles import ROLE_IDS, role_name
from textbooks.inputs import cache, converters

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
_STATE_KEYS = ("name", "task_feature_lengths", "batch_size", "shard_info", "seed", "vocabulary", "split",
               "mixing")


def _lengths(task_feature_lengths: Union[int, Mapping[str, int]]) -> dict[str, int]:
    if isinstance(task_feature_lengths, int):
        return {"targets": task_feature_lengths}
    lengths = {k: int(v) for k, v in task_feature_lengths.items()}
    if set(lengths) != {"targets"}:
        raise ValueError(f"task_feature_lengths must be {{'targets': L}} for decoder-only LMs, got {lengths}")
    return lengths


def _resolve_name(name: str, vocabulary: Optional[str]) -> str:
    cache.register_cache_dirs()  # gin: textbooks.inputs.cache.cache_dirs.dirs
    if vocabulary is None:
        seqio.get_mixture_or_task(name)  # Raises a helpful error for unknown names.
        return name
    return factory.with_vocabulary(name, vocabulary)


def _per_host(batch_size: int, shard_info: seqio.ShardInfo) -> int:
    if batch_size <= 0 or batch_size % shard_info.num_shards:
        raise ValueError(f"global batch size {batch_size} must be a positive multiple of the number of hosts "
                         f"({shard_info.num_shards})")
    if not 0 <= shard_info.index < shard_info.num_shards:
        raise ValueError(f"shard_info.index {shard_info.index} out of range for {shard_info.num_shards} shards")
    return batch_size // shard_info.num_shards


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


def _converter(feature_converter: Optional[seqio.FeatureConverter], provider) -> seqio.FeatureConverter:
    if feature_converter is not None:
        return feature_converter
    vocab = seqio.get_subtasks(provider)[0].output_features["targets"].vocabulary
    return converters.LMPackingFeatureConverter(pack=True, bos_id=vocab.eos_id)


class TrainIterator(Iterator[dict]):
    """Yields per-host batches (dicts of numpy arrays); ``get_state``/``set_state`` checkpoint the position."""

    def __init__(self, dataset: tf.data.Dataset, config: dict, *, mixture=None):
        self.dataset = dataset
        self.config = config
        self.mixture = mixture
        self.step = 0
        self._iterator = iter(dataset)

    def __iter__(self) -> "TrainIterator":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise RuntimeError(
                f"the training input of {self.config['name']!r} ended after {self.step} batches on host "
                f"{self.config['shard_info'][0]} of {self.config['shard_info'][1]}: a component has no documents "
                f"in this host's part of the data (or its split is empty). Give every shard file at least one "
                f"document (fewer shards for small roles).") from None
        self.step += 1
        return {k: v.numpy() for k, v in batch.items()}

    @property
    def element_spec(self):
        return self.dataset.element_spec

    @property
    def repetition_report(self) -> Optional[list[dict]]:
        """Epochs per component within the planned token budget (TokenMixtures with a budget)."""
        return getattr(self.mixture, "repetition_report", None)

    @staticmethod
    def bad_records() -> dict:
        """Lines the shard readers skipped in this process (count, per file, first reasons)."""
        return sources.bad_record_report()

    def get_state(self) -> bytes:
        """The position as bytes: a zip of the tf.data iterator checkpoint and the pipeline's arguments."""
        with tempfile.TemporaryDirectory() as tmp:
            tf.train.Checkpoint(iterator=self._iterator).write(os.path.join(tmp, "iterator"))
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
                z.writestr("state.json", json.dumps({"format": STATE_FORMAT, "step": self.step,
                                                     "config": self.config}, sort_keys=True))
                for name in sorted(os.listdir(tmp)):
                    z.write(os.path.join(tmp, name), arcname=name)
            return buf.getvalue()

    def set_state(self, state: bytes) -> None:
        """Restores a position from :meth:`get_state`.

        Raises:
            ValueError: the state is not an iterator state, or was saved by a pipeline with other arguments
                (the message lists them).
        """
        try:
            z = zipfile.ZipFile(io.BytesIO(state))
            meta = json.loads(z.read("state.json"))
        except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as e:
            raise ValueError(f"not an input pipeline state ({type(e).__name__}: {e})") from e
        saved = meta.get("config", {})
        diff = {k: (saved.get(k), self.config.get(k)) for k in _STATE_KEYS if saved.get(k) != self.config.get(k)}
        if diff:
            raise ValueError("the input pipeline state was saved with different arguments (saved, now): "
                             + ", ".join(f"{k}={v[0]!r} vs {v[1]!r}" for k, v in diff.items()))
        with tempfile.TemporaryDirectory() as tmp:
            z.extractall(tmp)
            tf.train.Checkpoint(iterator=self._iterator).read(os.path.join(tmp, "iterator")).assert_consumed()
        self.step = int(meta.get("step", 0))

    def save(self, path: str) -> None:
        """Writes :meth:`get_state` to ``path`` (local or gs://)."""
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(self.get_state())

    def restore(self, path: str) -> None:
        """Restores the state written by :meth:`save`."""
        with tf.io.gfile.GFile(path, "rb") as f:
            self.set_state(f.read())


@gin_utils.configurable  # may be first imported after gin is locked
def make_train_iterator(mixture_or_task_name: str, *, task_feature_lengths: Union[int, Mapping[str, int]] = 2048,
                        batch_size: int = 32, shard_info: Optional[seqio.ShardInfo] = None, seed: int = 0,
                        vocabulary: Optional[str] = None, split: str = "train", use_cached: Optional[bool] = None,
                        mixing: Optional[str] = None, num_train_steps: Optional[int] = None,
                        feature_converter: Optional[seqio.FeatureConverter] = None,
                        prefetch: int = 2) -> TrainIterator:
    """The endless per-host training iterator of a mixture or task.

    Args:
        mixture_or_task_name: a registered seqio mixture or task (``phi15``, ``code_filtered``, a factory name).
        task_feature_lengths: ``{'targets': L}`` or ``L``.
        batch_size: global batch size; each host yields ``batch_size // shard_info.num_shards`` rows.
        shard_info: this host's shard (``seqio.ShardInfo(jax.process_index(), jax.process_count())``);
            default one host.
        seed: shuffling and mixing seed (same seed, same batches).
        vocabulary: pin a vocabulary ('phi', 'spm8k', 'byte', 'spm:PATH'); default the gin default.
        use_cached: read seqio caches (None: where they exist).
        mixing: TokenMixture mode override ('rows' or 'documents').
        num_train_steps: with a mixture that has ``max_epochs``, caps repetition within the planned budget.
        feature_converter: default :class:`~textbooks.inputs.converters.LMPackingFeatureConverter` with the
            vocabulary's end-of-text as bos.
        prefetch: batches prepared ahead.

    Raises:
        ValueError: unknown name, bad lengths or batch size; FileNotFoundError: missing data.
    """
    shard_info = shard_info or seqio.ShardInfo(index=0, num_shards=1)
    lengths = _lengths(task_feature_lengths)
    per_host = _per_host(batch_size, shard_info)
    name = _resolve_name(mixture_or_task_name, vocabulary)
    provider = seqio.get_mixture_or_task(name)
    kwargs = dict(split=split, use_cached=use_cached, shuffle=True, seed=seed, shard_info=shard_info,
                  num_epochs=None)
    if isinstance(provider, mixing_lib.TokenMixture):
        budget = num_train_steps * batch_size * lengths["targets"] if num_train_steps else None
        ds = provider.get_dataset(lengths, mixing=mixing, token_budget=budget, **kwargs)
    else:
        if mixing is not None:
            raise ValueError(f"mixing={mixing!r} applies to TokenMixtures; {name!r} is a "
                             f"{type(provider).__name__}")
        ds = provider.get_dataset(lengths, **kwargs)
    ds = _converter(feature_converter, provider)(ds, lengths)
    ds = ds.batch(per_host, drop_remainder=True).prefetch(prefetch).with_options(_options())
    config = {"name": name, "task_feature_lengths": lengths, "batch_size": batch_size,
              "shard_info": [shard_info.index, shard_info.num_shards], "seed": seed, "vocabulary": vocabulary,
              "split": split, "mixing": mixing}
    return TrainIterator(ds, config, mixture=provider)


@dataclasses.dataclass
class EvalDataset:
    """One component's evaluation batches (iterate for dicts of numpy arrays)."""

    role: str
    role_id: int
    task_name: str
    dataset: tf.data.Dataset

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.dataset.as_numpy_iterator()


def _pad_batch(batch: Mapping[str, tf.Tensor], rows: int) -> dict[str, tf.Tensor]:
    """Pads a (last, short) batch with all-padding rows (segment id 0, so loss weight 0)."""
    out = {}
    for k, v in batch.items():
        missing = rows - tf.shape(v)[0]
        out[k] = tf.ensure_shape(tf.pad(v, [[0, missing], [0, 0]]), [rows, v.shape[1]])
    return out


@gin_utils.configurable  # may be first imported after gin is locked
def make_eval_datasets(mixture_or_task_name: str, *, task_feature_lengths: Union[int, Mapping[str, int]] = 2048,
                       batch_size: int = 32, shard_info: Optional[seqio.ShardInfo] = None,
                       split: str = "validation", vocabulary: Optional[str] = None,
                       use_cached: Optional[bool] = None, num_batches: Optional[int] = None,
                       feature_converter: Optional[seqio.FeatureConverter] = None) -> dict[str, EvalDataset]:
    """Each component's ``split``, packed like training data, read once, keyed by role.

    Rows are packed per component, so every row holds one role; the last batch is padded with empty rows
    (loss weight 0). With ``num_batches`` every component yields exactly that many batches (cut or padded
    with empty batches), which keeps hosts in step.

    Raises:
        ValueError: unknown name or bad batch size.
    """
    shard_info = shard_info or seqio.ShardInfo(index=0, num_shards=1)
    lengths = _lengths(task_feature_lengths)
    per_host = _per_host(batch_size, shard_info)
    name = _resolve_name(mixture_or_task_name, vocabulary)
    provider = seqio.get_mixture_or_task(name)
    tasks = roles.role_tasks(provider)
    converter = _converter(feature_converter, provider)
    out: dict[str, EvalDataset] = {}
    for task in tasks:
        if split not in task.splits or task.resolve().source.num_input_examples(split) == 0:
            logger.warning("component %s has no %r data; skipped in evaluation", task.role, split)
            continue
        ds = task.get_dataset(lengths, split=split, use_cached=use_cached, shuffle=False, seed=None,
                              shard_info=shard_info, num_epochs=1)
        ds = converter(ds, lengths)
        ds = ds.batch(per_host, drop_remainder=False).map(lambda b: _pad_batch(b, per_host))
        if num_batches is not None:
            empty = ds.element_spec
            blank = {k: tf.zeros([per_host, s.shape[1]], s.dtype) for k, s in empty.items()}
            ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat()).take(num_batches)
        out[task.role] = EvalDataset(role=task.role, role_id=ROLE_IDS[task.role], task_name=task.name,
                                     dataset=ds.prefetch(1).with_options(_options()))
    return out


def describe_batch(batch: Mapping[str, Any]) -> dict:
    """Token counts per role and packing efficiency of one batch (for logs and tests)."""
    weights = np.asarray(batch["decoder_loss_weights"]) > 0
    role_ids = np.asarray(batch["decoder_role_ids"])
    per_role = {role_name(int(r)): int(((role_ids == r) & weights).sum()) for r in np.unique(role_ids[weights])}
    return {"tokens": int(weights.sum()), "efficiency": float(weights.mean()), "tokens_per_role": per_role}

"""Where a run's batches come from: a seqio mixture through the project's input pipeline, or a data function.

Every source yields per-process numpy batch dicts with the features of
:data:`textbooks.train.synthetic.FEATURES`, ``[per_process_batch, seq_len]`` each. A source with
``get_state()`` / ``set_state()`` resumes exactly; one without is fast-forwarded on resume (slow, and only
exact if it is deterministic).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterator, Mapping, Sequence

import seqio

from mixtures import roles as mixture_roles  # importing mixtures registers the project's tasks and mixtures
from textbooks.data.roles import ID_NAMES
from textbooks.inputs import pipeline
from textbooks.partitioning import DataShardInfo

log = logging.getLogger(__name__)

Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a run asks of its data source.

    Attributes:
        mixture_or_task_name: registered seqio mixture or task (None with a ``dataset_fn``).
        task_feature_lengths: e.g. ``{'targets': 2048}``.
        batch_size: global batch size (rows).
        seed: data seed (the same on every process).
        vocab_size: the model's vocabulary size (for synthetic sources).
    """

    mixture_or_task_name: str | None
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    seed: int
    vocab_size: int

    @property
    def seq_len(self) -> int:
        lengths = dict(self.task_feature_lengths)
        if "targets" not in lengths:
            raise ValueError(f"task_feature_lengths needs a 'targets' length for a decoder-only model, got "
                             f"{lengths}")
        return int(lengths["targets"])


def registered_names() -> list[str]:
    """Names of the registered seqio mixtures and tasks (the project's are registered by importing mixtures)."""
    return sorted(set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names()))


def check_mixture(name: str) -> None:
    """Raises ValueError naming the registered mixtures and tasks when ``name`` is not one of them."""
    names = registered_names()
    if name not in names:
        shown = ", ".join(names) if names else "(none registered)"
        raise ValueError(f"unknown mixture or task {name!r}; registered: {shown}. Set MIXTURE_OR_TASK_NAME "
                         f"(gin) to one of them, or register it in mixtures/.")


def _shard_info(shard: DataShardInfo) -> seqio.ShardInfo:
    return seqio.ShardInfo(index=shard.index, num_shards=shard.num_shards)


def make_iterator(spec: DataSpec, shard: DataShardInfo, split: str, *,
                  dataset_fn: Callable[..., Iterator[Batch]] | None = None, vocabulary: str | None = None,
                  train_steps: int | None = None) -> Iterator[Batch]:
    """This process's endless training batches.

    Args:
        spec: the run's data settings.
        shard: this process's shard (from :func:`textbooks.partitioning.data_shard_info`).
        split: the split to read ('train').
        dataset_fn: optional data function called as ``dataset_fn(batch_size=, seq_len=, vocab_size=,
            shard_index=, num_shards=, seed=, split=)`` (e.g. :func:`textbooks.train.synthetic.synthetic_dataset`).
            Without it the seqio pipeline (:func:`textbooks.inputs.pipeline.make_train_iterator`) reads
            ``spec.mixture_or_task_name``.
        vocabulary: pin the mixture's vocabulary (None: the mixture's own / the gin default).
        train_steps: the planned number of steps (lets the pipeline check repetition against a token budget).
    """
    if dataset_fn is not None:
        return dataset_fn(batch_size=spec.batch_size, seq_len=spec.seq_len, vocab_size=spec.vocab_size,
                          shard_index=shard.index, num_shards=shard.num_shards, seed=spec.seed, split=split)
    if not spec.mixture_or_task_name:
        raise ValueError("no training data: set MIXTURE_OR_TASK_NAME (train.mixture_or_task_name) or "
                         "train.dataset_fn")
    check_mixture(spec.mixture_or_task_name)
    return pipeline.make_train_iterator(
        spec.mixture_or_task_name, task_feature_lengths=dict(spec.task_feature_lengths), batch_size=spec.batch_size,
        shard_info=_shard_info(shard), seed=spec.seed, vocabulary=vocabulary, split=split,
        num_train_steps=train_steps)


def make_eval_batches(spec: DataSpec, shard: DataShardInfo, split: str, num_batches: int, *,
                      dataset_fn: Callable[..., Iterator[Batch]] | None = None,
                      vocabulary: str | None = None) -> Iterator[Batch]:
    """This process's validation batches: ``num_batches`` of each mixture component (or of the data function).

    Every process yields the same number of batches (short components are padded with empty rows), so the
    processes stay in step.
    """
    if dataset_fn is not None:
        it = dataset_fn(batch_size=spec.batch_size, seq_len=spec.seq_len, vocab_size=spec.vocab_size,
                        shard_index=shard.index, num_shards=shard.num_shards, seed=spec.seed, split=split)
        for _ in range(num_batches):
            yield next(it)
        return
    datasets = pipeline.make_eval_datasets(
        spec.mixture_or_task_name, task_feature_lengths=dict(spec.task_feature_lengths), batch_size=spec.batch_size,
        shard_info=_shard_info(shard), split=split, vocabulary=vocabulary, num_batches=num_batches)
    if not datasets:
        log.warning("mixture %r has no %r data in any component: no evaluation", spec.mixture_or_task_name, split)
    for role in sorted(datasets):
        yield from datasets[role]


def mixture_vocabulary_name(name: str) -> str | None:
    """The vocabulary name of a registered mixture's or task's ``targets``: the task's own when it names one,
    else the gin default (``mixtures.roles.vocabulary_name``)."""
    try:
        vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
    except (ValueError, KeyError, AttributeError, TypeError):
        vocab = None
    named = getattr(vocab, "name", None)
    if isinstance(named, str) and named:
        return named
    if isinstance(vocab, seqio.ByteVocabulary):
        return "byte"
    return mixture_roles.vocabulary_name()


def role_names() -> tuple[str, ...]:
    """Names of the ``decoder_role_ids`` values, in id order (:data:`textbooks.data.roles.ID_NAMES`)."""
    return ID_NAMES


def restore_iterator(iterator: Iterator[Batch], state: Any, step: int) -> Iterator[Batch]:
    """Puts ``iterator`` where a checkpoint left it: ``set_state(state)``, or skipping ``step`` batches."""
    if state is not None and hasattr(iterator, "set_state"):
        iterator.set_state(state)
        return iterator
    if step:
        log.warning("the data source has no get_state/set_state: skipping %d batches to resume (exact only "
                    "if the source is deterministic)", step)
        for _ in range(step):
            next(iterator)
    return iterator


def iterator_state(iterator: Iterator[Batch]) -> Any:
    """The iterator's resumable state, or None when it has none."""
    return iterator.get_state() if hasattr(iterator, "get_state") else None


def check_batch(batch: Mapping[str, Any], per_process_batch: int, seq_len: int,
                required: Sequence[str] = ("decoder_input_tokens", "decoder_target_tokens",
                                           "decoder_loss_weights")) -> None:
    """Raises ValueError if ``batch`` lacks features or has the wrong shape (checked on the first batch)."""
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"the data source's batches lack {missing}; they have {sorted(batch)}")
    for k, v in batch.items():
        shape = tuple(getattr(v, "shape", ()))
        if shape != (per_process_batch, seq_len):
            raise ValueError(f"feature {k!r} has shape {shape}; expected (per-process batch {per_process_batch}, "
                             f"length {seq_len})")

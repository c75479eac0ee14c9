"""One seqio Task per data role and vocabulary, plus default-vocabulary aliases chosen with gin.

Task names (all registered when ``mixtures`` is imported)::

    <role>_<vocab>          the role's shards tokenized with vocabulary <vocab> ('phi', 'spm8k', 'byte')
    <role>_tfds_<vocab>     the same documents read from the ``textbooks_corpus/<role>`` TFDS build
    <role>, <role>_tfds     aliases that use the default vocabulary, gin ``vocabulary_name.name``

where ``<role>`` is one of ``synthetic_textbooks, code_textbooks, code_exercises, code_filtered, web_filtered,
web_raw``. This mirrors how a T5X user picks a task by name in gin (``MIXTURE_OR_TASK_NAME = 'code_filtered'``)
and switches tokenizer with one binding (``mixtures.roles.vocabulary_name.name = 'spm8k'``) without renaming
anything; the explicit names stay available when two vocabularies meet in one program. An alias hands every
dataset request to the explicit task of the current default, so a seqio cache of ``code_filtered_phi`` also
serves ``code_filtered`` under the phi default. Other SentencePiece models (``'spm:/path/model.model'``) get
tasks on demand through :func:`get_role_task`.

Every task yields ``targets`` (token ids ending with the end-of-text id, at most the sequence length: longer
documents are split into consecutive pieces) and ``role_id`` (:data:`textbooks.data.roles.ROLE_IDS`; 0 is kept
for padding), and reads its folder when a dataset is built, so the data root can be set after import.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from typing import Optional

import seqio
import tensorflow as tf

from mixtures import preprocessors, sources
from textbooks import gin_utils
from textbooks.data.roles import ROLE_IDS, ROLES, check_role
from textbooks.vocab import VOCABULARY_NAMES
from textbooks.vocab.registry import get_vocabulary

SOURCES: tuple[str, ...] = ("shards", "tfds")
TFDS_NAME = "textbooks_corpus"
TFDS_VERSION = "1.0.0"

_lock = threading.RLock()


@gin_utils.configurable  # may be first imported after gin is locked
def vocabulary_name(name: str = "phi") -> str:
    """The default vocabulary of the alias tasks and mixtures (gin: ``vocabulary_name.name``)."""
    return name


def default_vocabulary() -> seqio.Vocabulary:
    return get_vocabulary(vocabulary_name())


def vocab_suffix(name: str) -> str:
    """The task-name suffix of a vocabulary: its name, or ``<kind>_<hash>`` for ``'spm:PATH'``, ``'hf:PATH'``
    and ``'gguf:PATH'`` (a model's own tokenizer, e.g. ``'gguf:smollm2-135m-instruct'``)."""
    if name in VOCABULARY_NAMES:
        return name
    kind = name.split(":", 1)[0]
    if ":" in name and kind in ("spm", "hf", "gguf"):
        return f"{kind}_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    raise ValueError(f"unknown vocabulary {name!r}; use one of {', '.join(VOCABULARY_NAMES)}, 'spm:PATH', "
                     f"'hf:PATH' or 'gguf:PATH'")


class DeferredVocabulary(seqio.Vocabulary):
    """Stands for the default vocabulary (:func:`vocabulary_name`), looked up on every use."""

    def __init__(self):
        super().__init__(extra_ids=0)

    @property
    def resolved(self) -> seqio.Vocabulary:
        return default_vocabulary()

    @property
    def eos_id(self):
        return self.resolved.eos_id

    @property
    def unk_id(self):
        return self.resolved.unk_id

    @property
    def bos_id(self):
        return self.resolved.bos_id

    @property
    def pad_id(self) -> int:
        return self.resolved.pad_id

    @property
    def extra_ids(self) -> int:
        return self.resolved.extra_ids

    @property
    def vocab_size(self) -> int:
        return self.resolved.vocab_size

    @property
    def _base_vocab_size(self) -> int:
        return self.resolved.vocab_size

    def _encode(self, s):
        return self.resolved.encode(s)

    def _decode(self, ids):
        return self.resolved.decode(ids)

    def _encode_tf(self, s):
        return self.resolved.encode_tf(s)

    def _decode_tf(self, ids):
        return self.resolved.decode_tf(ids)

    def encode(self, s):
        return self.resolved.encode(s)

    def decode(self, ids):
        return self.resolved.decode(ids)

    def encode_tf(self, s):
        return self.resolved.encode_tf(s)

    def decode_tf(self, ids):
        return self.resolved.decode_tf(ids)

    def __eq__(self, other) -> bool:
        if type(other) is DeferredVocabulary:
            return True
        if isinstance(other, DeferredVocabulary):
            return self.resolved == other.resolved
        return self.resolved == other

    def __hash__(self) -> int:
        return hash("DeferredVocabulary")

    def __repr__(self) -> str:
        return f"DeferredVocabulary(default={vocabulary_name()!r})"


DEFAULT_VOCABULARY = DeferredVocabulary()


class RoleTask(seqio.Task):
    """A seqio Task over one data role.

    Attributes:
        role: the data role.
        vocabulary_name: the vocabulary, or None for an alias of the default vocabulary's task.
        source_kind: 'shards' or 'tfds'.
    """

    def __init__(self, name: str, source: seqio.DataSource, output_features, preprocessors=None, *,
                 role: str, vocabulary_name: Optional[str], source_kind: str, **kwargs):
        self.role = role
        self.vocabulary_name = vocabulary_name
        self.source_kind = source_kind
        super().__init__(name, source, output_features, preprocessors=preprocessors, **kwargs)

    @property
    def role_id(self) -> int:
        return ROLE_IDS[self.role]

    def resolve(self) -> "RoleTask":
        """The explicit-vocabulary task this one stands for (itself unless it is an alias)."""
        if self.vocabulary_name is not None:
            return self
        return get_role_task(self.role, vocabulary_name(), self.source_kind)

    @property
    def resolved_vocabulary_name(self) -> str:
        return self.resolve().vocabulary_name

    def get_dataset(self, sequence_length=None, split: str = "train", use_cached: Optional[bool] = False,
                    shuffle: bool = True, shuffle_buffer_size: Optional[int] = None, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, num_epochs: Optional[int] = 1,
                    trim_output_features: bool = True, try_in_mem_cache: bool = True) -> tf.data.Dataset:
        """seqio's ``Task.get_dataset``; ``use_cached=None`` reads the cache when one exists.

        An alias task delegates to the explicit task of the current default vocabulary.
        """
        target = self.resolve()
        kwargs = dict(sequence_length=sequence_length, split=split, shuffle=shuffle,
                      shuffle_buffer_size=shuffle_buffer_size, seed=seed, shard_info=shard_info,
                      num_epochs=num_epochs, trim_output_features=trim_output_features,
                      try_in_mem_cache=try_in_mem_cache)
        if target is not self:
            return target.get_dataset(use_cached=use_cached, **kwargs)
        if use_cached is None:
            use_cached = self.supports_caching and self.cache_dir is not None
        return super().get_dataset(use_cached=use_cached, **kwargs)


def task_name(role: str, vocabulary: Optional[str] = None, source: str = "shards") -> str:
    """The registered name of a role's task (``vocabulary=None``: the default-vocabulary alias)."""
    check_role(role)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; use one of {', '.join(SOURCES)}")
    name = role if source == "shards" else f"{role}_tfds"
    return name if vocabulary is None else f"{name}_{vocab_suffix(vocabulary)}"


def _make_source(role: str, source: str) -> seqio.DataSource:
    if source == "shards":
        return sources.ShardDataSource(role)
    return sources.LazyTfdsDataSource(f"{TFDS_NAME}/{role}:{TFDS_VERSION}")


def _register(role: str, vocabulary: Optional[str], source: str) -> RoleTask:
    name = task_name(role, vocabulary, source)
    # An alias hands dataset requests to an explicit task (see RoleTask.get_dataset) and is never cached.
    vocab = DEFAULT_VOCABULARY if vocabulary is None else _LazyNamedVocabulary.get(vocabulary)
    cache = [] if vocabulary is None else [seqio.CacheDatasetPlaceholder()]
    steps = [preprocessors.select_text, preprocessors.tokenize_targets, *cache, seqio.preprocessors.append_eos,
             preprocessors.split_to_length, functools.partial(preprocessors.add_role_id, role_id=ROLE_IDS[role])]
    output_features = {
        "targets": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32, rank=1),
        "role_id": seqio.Feature(vocabulary=seqio.PassThroughVocabulary(size=0), add_eos=False,
                                 dtype=tf.int32, rank=0, required=False),
    }
    return seqio.TaskRegistry.add(name, source=_make_source(role, source), output_features=output_features,
                                  preprocessors=steps, task_cls=RoleTask, role=role, vocabulary_name=vocabulary,
                                  source_kind=source)


class _LazyNamedVocabulary(DeferredVocabulary):
    """A named vocabulary loaded on first use (registering tasks must not load tokenizers)."""

    _instances: dict[str, "_LazyNamedVocabulary"] = {}

    def __init__(self, name: str):
        self.name = name
        super().__init__()

    @classmethod
    def get(cls, name: str) -> "_LazyNamedVocabulary":
        with _lock:
            if name not in cls._instances:
                cls._instances[name] = cls(name)
            return cls._instances[name]

    @property
    def resolved(self) -> seqio.Vocabulary:
        return get_vocabulary(self.name)

    def __eq__(self, other) -> bool:
        if isinstance(other, _LazyNamedVocabulary) and other.name == self.name:
            return True
        if isinstance(other, DeferredVocabulary):
            return other.resolved == self.resolved
        return self.resolved == other

    def __hash__(self) -> int:
        return hash(("_LazyNamedVocabulary", self.name))

    def __repr__(self) -> str:
        return f"Vocabulary({self.name!r})"


def get_role_task(role: str, vocabulary: Optional[str] = None, source: str = "shards") -> RoleTask:
    """The task of ``role`` for ``vocabulary`` (None: the default alias), registering it if needed."""
    name = task_name(role, vocabulary, source)
    with _lock:
        if name not in seqio.TaskRegistry.names():
            _register(role, vocabulary, source)
        return seqio.TaskRegistry.get(name)


def register_role_tasks(vocabularies=VOCABULARY_NAMES) -> list[str]:
    """Registers (idempotently) every role's tasks for ``vocabularies`` plus the aliases; returns the names."""
    names = []
    for role in ROLES:
        for source in SOURCES:
            for vocabulary in (None, *vocabularies):
                names.append(get_role_task(role, vocabulary, source).name)
    return names


def role_tasks(task_or_mixture) -> list[RoleTask]:
    """The RoleTasks inside a task or mixture (object or name)."""
    provider = seqio.get_mixture_or_task(task_or_mixture) if isinstance(task_or_mixture, str) else task_or_mixture
    tasks = seqio.get_subtasks(provider)
    for t in tasks:
        if not isinstance(t, RoleTask):
            raise TypeError(f"task {t.name!r} is not a data-role task (mixtures.roles.RoleTask)")
    return tasks

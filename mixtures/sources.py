"""seqio DataSources for the data roles: the shard format (jsonl.gz) read with tf.data, and the TFDS builds.

Both sources find their folder when a dataset is read, not when the task is registered, so the data root can be
set by gin (``textbooks.data.paths.data_root.path``), by ``$TEXTBOOKS_DATA_DIR`` or by a flag after
``import mixtures``.

:class:`ShardDataSource` reads ``<data_root>/<role>/<split>-iiiii-of-nnnnn.jsonl.gz`` (see
:mod:`textbooks.data.records`) with ``tf.data.TextLineDataset`` and parses each line with the records API, so a
bad line (not JSON, invalid UTF-8, missing fields) is counted and skipped with its file and line number
(:func:`bad_record_report`), never silently dropped and never fatal. A gzip stream that is truncated ends its
file early with a warning logged by tf.data; ``textbooks.data.records.iter_records`` locates it exactly.
Shards are the unit of host sharding: with at least as many files as hosts each host reads whole files,
otherwise seqio shards by example. ``num_input_examples`` comes from ``manifest.json``.

:class:`LazyTfdsDataSource` reads the ``textbooks_corpus/<role>`` TFDS build from ``<data_root>/tfds`` unless
gin binds ``tfds_data_dir.path``. It reads the prepared files alone (TFDS restores a build from its
``dataset_info.json``), so the builder, :mod:`textbooks.inputs.tfds_builders`, is needed only to make them.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from textbooks import gin_utils
from textbooks.data import files, paths
from textbooks.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from textbooks.data.records import SHARD_SUFFIX, Record, RecordError, shard_pattern
from textbooks.data.roles import check_role

logger = logging.getLogger(__name__)

# Fields every source yields (all tf.string): the record's fields, ``meta`` as a JSON string.
FIELDS = ("id", "text", "role", "source", "license", "meta")
_MAX_LOGGED = 20


class BadRecordLog:
    """Counts lines that could not be read, by file, with the first reasons; thread-safe, process-wide."""

    def __init__(self, keep: int = 1000):
        self._lock = threading.Lock()
        self._keep = keep
        self.num_rejected = 0
        self.by_file: collections.Counter = collections.Counter()
        self.rejected: list[str] = []

    def add(self, path: str, line: int, reason: str) -> None:
        with self._lock:
            self.num_rejected += 1
            self.by_file[path] += 1
            message = f"{path}:{line}: {reason}"
            if len(self.rejected) < self._keep:
                self.rejected.append(message)
            if self.num_rejected <= _MAX_LOGGED:
                logger.warning("skipping bad record %s", message)

    def summary(self) -> dict:
        with self._lock:
            return {"num_rejected": self.num_rejected, "by_file": dict(self.by_file),
                    "first": list(self.rejected[:_MAX_LOGGED])}

    def reset(self) -> None:
        with self._lock:
            self.num_rejected = 0
            self.by_file.clear()
            self.rejected.clear()


BAD_RECORDS = BadRecordLog()


def bad_record_report() -> dict:
    """What the shard readers of this process skipped: ``{'num_rejected', 'by_file', 'first'}``."""
    return BAD_RECORDS.summary()


def _parse_line(path: bytes, lineno: np.int64, line: bytes):
    """numpy_function body: one JSON line -> the record fields as bytes, plus whether it was valid."""
    try:
        record = Record.from_json(line)
    except RecordError as e:
        BAD_RECORDS.add(path.decode("utf-8", "replace"), int(lineno), str(e))
        return b"", b"", b"", b"", b"", b"", False
    meta = json.dumps(record.meta, ensure_ascii=False, sort_keys=True)
    return (record.id.encode("utf-8", "surrogatepass"), record.text.encode("utf-8", "surrogatepass"),
            record.role.encode(), record.source.encode(), record.license.encode(), meta.encode("utf-8"), True)


def read_shard_file(path: tf.Tensor) -> tf.data.Dataset:
    """A dataset of records (dicts of FIELDS) from one shard file; bad lines counted and skipped."""
    compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
    lines = tf.data.TextLineDataset(path, compression_type=compression)
    # A truncated gzip stream ends the file with a logged warning instead of stopping training.
    lines = lines.enumerate(start=1).ignore_errors(log_warning=True)

    @tf.autograph.experimental.do_not_convert
    def parse(lineno, line):
        out = tf.numpy_function(_parse_line, [path, lineno, line], [tf.string] * 6 + [tf.bool],
                                stateful=False, name="parse_record")
        fields = {k: tf.ensure_shape(v, []) for k, v in zip(FIELDS, out[:6])}
        return fields, tf.ensure_shape(out[6], [])

    parsed = lines.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return parsed.filter(lambda fields, ok: ok).map(lambda fields, ok: fields)


class ShardDataSource(seqio.DataSource):
    """A role's shard folder as a seqio DataSource (folder resolved at read time).

    Args:
        role: the data role; the folder is ``textbooks.data.paths.role_dir(role)`` unless ``directory`` is given.
        directory: a folder, or a zero-argument callable returning one, to read instead of the role folder.
        splits: split names offered.
        cycle_length: files read concurrently (tf.data interleave).
        block_length: consecutive records taken from each file in turn.
    """

    def __init__(self, role: str, *, directory: str | Callable[[], str] | None = None,
                 splits: Sequence[str] = paths.SPLITS, caching_permitted: bool = True,
                 cycle_length: int = 16, block_length: int = 8):
        check_role(role)
        self.role = role
        self._directory = directory
        self._cycle_length = cycle_length
        self._block_length = block_length
        self._manifest_cache: dict[str, tuple[float, Manifest]] = {}
        super().__init__(splits=splits, caching_permitted=caching_permitted)

    @property
    def directory(self) -> str:
        d = self._directory
        if d is None:
            return paths.role_dir(self.role)
        return d() if callable(d) else d

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(role={self.role!r}, directory={self._directory or '<data_root>/' + self.role})"

    def _missing(self, directory: str) -> FileNotFoundError:
        return FileNotFoundError(
            f"no data for role {self.role!r}: folder {directory!r} does not exist. Build it (`textbooks corpora "
            f"--out DIR`, or curation) and point the data root at DIR with gin "
            f"`textbooks.data.paths.data_root.path = 'DIR'` or the environment variable {paths.ENV_VAR}")

    def manifest(self) -> Manifest | None:
        """The folder's manifest (re-read when it changes), or None when the folder has none."""
        directory = self.directory
        if not files.isdir(directory):
            raise self._missing(directory)
        path = files.join(directory, MANIFEST_NAME)
        if not files.exists(path):
            return None
        mtime = tf.io.gfile.stat(path).mtime_nsec if files.is_url(path) else os.stat(path).st_mtime_ns
        cached = self._manifest_cache.get(directory)
        if cached is None or cached[0] != mtime:
            self._manifest_cache[directory] = (mtime, read_manifest(directory))
        return self._manifest_cache[directory][1]

    def list_shards(self, split: str) -> Sequence[str]:
        """Full paths of the split's shard files, in order (from the manifest, else by glob).

        Raises:
            FileNotFoundError: the folder, the split or a listed shard is missing.
        """
        if split not in self.splits:
            raise ValueError(f"role {self.role!r} has no split {split!r}; splits: {', '.join(self.splits)}")
        manifest = self.manifest()
        directory = self.directory
        if manifest is not None:
            if split not in manifest.splits:
                raise FileNotFoundError(f"{files.join(directory, MANIFEST_NAME)} lists no split "
                                        f"{split!r} (it has {', '.join(sorted(manifest.splits)) or 'none'})")
            shards = manifest.shard_paths(split)
            missing = [f for f in shards if not files.exists(f)]
            if missing:
                raise FileNotFoundError(f"shard(s) listed in the manifest of {directory!r} are missing: "
                                        f"{', '.join(missing[:5])}; rebuild the folder")
        else:
            shards = files.glob(shard_pattern(directory, split))
        if not shards:
            raise FileNotFoundError(f"no {split!r} shards in {directory!r} (expected {split}-00000-of-000NN"
                                    f"{SHARD_SUFFIX}); was the folder written by write_shards?")
        return shards

    def num_input_examples(self, split: str) -> Optional[int]:
        manifest = self.manifest()
        if manifest is None or split not in manifest.splits:
            return None
        return manifest.splits[split].num_docs

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *,
                    sequence_length: Optional[Mapping[str, int]] = None, use_cached: bool = False,
                    num_epochs: Optional[int] = 1) -> tf.data.Dataset:
        shards = list(self.list_shards(split))
        if self.num_input_examples(split) == 0:
            raise ValueError(f"split {split!r} of role {self.role!r} in {self.directory!r} holds no documents "
                             f"(manifest num_docs = 0); rebuild it or drop the role from the mixture")
        files_ds = tf.data.Dataset.from_tensor_slices(np.asarray(shards, dtype=str))
        if shard_info is not None and shard_info.num_shards > 1:
            if len(shards) < shard_info.num_shards:
                raise ValueError(f"{len(shards)} shard file(s) of {self.role!r}/{split} cannot be split over "
                                 f"{shard_info.num_shards} hosts; write at least that many shards")
            files_ds = files_ds.shard(shard_info.num_shards, shard_info.index)
        if shuffle:
            files_ds = files_ds.shuffle(len(shards), seed=seed)
        return files_ds.interleave(read_shard_file, cycle_length=min(self._cycle_length, len(shards)),
                                   block_length=self._block_length, num_parallel_calls=tf.data.AUTOTUNE,
                                   deterministic=True)


# ----------------------------------------------------------------------------------------------------------
# TFDS.


@gin_utils.configurable  # may be first imported after gin is locked
def tfds_data_dir(path: str | None = None) -> str:
    """The TFDS data dir holding ``textbooks_corpus``: ``path`` if bound, else ``<data_root>/tfds``."""
    if path:
        return paths.resolve(path)
    return files.join(paths.data_root(), "tfds")


class LazyTfdsDataSource(seqio.TfdsDataSource):
    """``seqio.TfdsDataSource`` whose data dir is resolved when read (gin/flags may set it after import).

    Reads only prepared builds (``read_only``): build them with
    ``python -m textbooks.inputs.tfds_builders --roles ROLE``.
    """

    def __init__(self, tfds_name: str, *, data_dir: str | Callable[[], str] | None = None,
                 splits: Sequence[str] = paths.SPLITS, caching_permitted: bool = True):
        self._lazy_name = tfds_name
        self._lazy_dir = data_dir
        self._loaders: dict[str, seqio.utils.LazyTfdsLoader] = {}
        super().__init__(tfds_name=tfds_name, splits=splits, caching_permitted=caching_permitted,
                         read_only=True)

    def _resolved_dir(self) -> str:
        d = self._lazy_dir
        return tfds_data_dir() if d is None else (d() if callable(d) else d)

    @property
    def tfds_dataset(self) -> seqio.utils.LazyTfdsLoader:
        data_dir = self._resolved_dir()
        if data_dir not in self._loaders:
            name = self._lazy_name.split(":")[0]
            if not tf.io.gfile.exists(files.join(data_dir, *name.split("/"))):
                raise FileNotFoundError(
                    f"TFDS dataset {name!r} is not prepared in {data_dir!r}; build it with `python -m "
                    f"textbooks.inputs.tfds_builders --roles {name.split('/')[-1]} --data_dir {data_dir}` or bind "
                    f"gin `mixtures.sources.tfds_data_dir.path`")
            self._loaders[data_dir] = seqio.utils.LazyTfdsLoader(
                self._lazy_name, data_dir=data_dir, split_map={s: s for s in self._splits}, read_only=True)
        return self._loaders[data_dir]

    def __str__(self) -> str:
        return f"{type(self).__name__}({self._lazy_name})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tfds_name={self._lazy_name!r}, splits={self._splits})"

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, **kwargs) -> tf.data.Dataset:
        ds = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info, **kwargs)
        return ds.map(lambda ex: {k: ex[k] for k in FIELDS}, num_parallel_calls=tf.data.AUTOTUNE)

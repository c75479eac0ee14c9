"""Tokenize role tasks once with a Beam job into a seqio cache, and make seqio read the cached version.

Every role task has a ``seqio.CacheDatasetPlaceholder`` right after tokenization (see
:mod:`mixtures.preprocessors`), so a cache holds token ids; end-of-text, splitting at the sequence length and
role ids are applied when reading. The job follows seqio's ``cache_tasks_main``: per split, the shards are
preprocessed in parallel (``seqio.beam_utils.PreprocessTask``), spread over output shards by a digest of each
example (a deterministic global shuffle: rerunning gives identical files), written as TFRecords of tf.Examples
with ``info``/``stats`` JSON files, and a ``COMPLETED`` marker is written last::

    python -m textbooks.inputs.cache --tasks code_filtered_phi web_filtered_phi --cache_dir gs://bucket/cache \\
        --data_root gs://bucket/data --runner DataflowRunner --pipeline_option=--project=...

Aliases (``code_filtered``) and mixtures (``phi15``) expand to their explicit-vocabulary tasks. Readers find
caches through seqio's global cache dirs: :func:`cache_tasks` adds its folder, and training configs bind
``textbooks.inputs.cache.cache_dirs.dirs = ['gs://bucket/cache']`` (the input pipeline adds them).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
from typing import Optional, Sequence

import gin
import seqio
import tensorflow as tf

from mixtures import roles  # importing mixtures registers its tasks
from textbooks import gin_utils, logs
from textbooks.data import paths

logger = logging.getLogger(__name__)


@gin_utils.configurable  # may be first imported after gin is locked
def cache_dirs(dirs: Sequence[str] = ()) -> list[str]:
    """Cache folders seqio should search (gin: ``cache_dirs.dirs``)."""
    return list(dirs)


def register_cache_dirs(dirs: Optional[Sequence[str]] = None) -> None:
    """Adds ``dirs`` (default: the gin-bound :func:`cache_dirs`) to seqio's global cache dirs."""
    dirs = cache_dirs() if dirs is None else list(dirs)
    if dirs:
        seqio.add_global_cache_dirs(dirs)


def _worker_setup(data_root: str) -> None:
    # Beam workers do not see the launcher's gin bindings; the data root travels as an environment variable.
    os.environ[paths.ENV_VAR] = data_root


def resolve_tasks(names: Sequence[str]) -> list:
    """Explicit-vocabulary role tasks for task, alias or mixture names (deduplicated, in order)."""
    out: dict[str, object] = {}
    for name in names:
        for task in roles.role_tasks(name):
            concrete = task.resolve()
            out.setdefault(concrete.name, concrete)
    return list(out.values())


def _shard_of(serialized: bytes, num_shards: int) -> tuple[int, bytes]:
    return int.from_bytes(hashlib.sha1(serialized).digest()[:8], "little") % num_shards, serialized


def _write_shard(item, prefix: str, num_shards: int) -> str:
    """Writes one TFRecord shard; examples ordered by digest, so reruns give identical files."""
    index, examples = item
    path = f"{prefix}-{index:05d}-of-{num_shards:05d}"
    with tf.io.TFRecordWriter(path) as writer:
        for data in sorted(examples, key=lambda b: hashlib.sha1(b).digest()):
            writer.write(data)
    return path


def _write_tfrecords(examples, label: str, prefix: str, num_shards: int):
    """tf.Examples into ``num_shards`` TFRecord files named as seqio's cache reader expects.

    Examples go to a shard by a digest of their bytes (a deterministic global shuffle); the files are
    written with TensorFlow's writer, which needs no extra checksum package.
    """
    import apache_beam as beam

    return (examples
            | f"{label}_to_tfexample" >> beam.Map(lambda ex: seqio.dict_to_tfexample(ex).SerializeToString())
            | f"{label}_assign_shard" >> beam.Map(_shard_of, num_shards)
            | f"{label}_group_shards" >> beam.GroupByKey()
            | f"{label}_write_shards" >> beam.Map(_write_shard, prefix, num_shards))


def _fill_empty_shards(prefix: str, num_shards: int) -> None:
    for i in range(num_shards):
        path = f"{prefix}-{i:05d}-of-{num_shards:05d}"
        if not tf.io.gfile.exists(path):
            with tf.io.TFRecordWriter(path):
                pass


def _task_seed(task_name: str, base_seed: Optional[int]) -> Optional[int]:
    if base_seed is None:
        return None
    return int.from_bytes(hashlib.md5(task_name.encode()).digest()[:7], "little") + base_seed


def cache_tasks(task_names: Sequence[str], cache_dir: str, *, splits: Optional[Sequence[str]] = None,
                runner: str = "DirectRunner", pipeline_options: Sequence[str] = (), min_shards: int = 1,
                max_shards: int = 0, overwrite: bool = False, base_seed: Optional[int] = None,
                register: bool = True) -> dict[str, str]:
    """Runs the cache job for ``task_names`` into ``cache_dir`` on a Beam runner.

    Args:
        task_names: tasks, aliases or mixtures (expanded to explicit-vocabulary tasks).
        cache_dir: output folder (local or gs://); each task goes to ``<cache_dir>/<task_name>``.
        splits: splits to cache (default all of each task's splits).
        runner: Beam runner name ('DirectRunner' locally).
        pipeline_options: extra Beam options (``--project=...``, ``--direct_num_workers=4``).
        min_shards, max_shards: output files per split (at least the input shard count unless max caps it).
        overwrite: recompute tasks that are already cached in ``cache_dir``.
        base_seed: seed for stateless preprocessing (none of the role preprocessors is random).
        register: add ``cache_dir`` to seqio's global cache dirs afterwards.

    Returns:
        Task name -> cache folder, for every task (including those already cached).

    Raises:
        FileNotFoundError: a task's data is missing.
    """
    import apache_beam as beam  # Beam is heavy and needed only to build a cache, not to read one.
    from apache_beam.options.pipeline_options import PipelineOptions
    from seqio import beam_utils

    tasks = resolve_tasks(task_names)
    outputs: dict[str, str] = {}
    todo = []
    for task in tasks:
        out = os.path.join(cache_dir, seqio.get_task_dir_from_name(task.name))
        outputs[task.name] = out
        if tf.io.gfile.exists(os.path.join(out, "COMPLETED")):
            if not overwrite:
                logger.info("task %s is already cached in %s", task.name, out)
                continue
            tf.io.gfile.rmtree(out)
        todo.append((task, out))
    if todo:
        setup = functools.partial(_worker_setup, paths.data_root())
        options = PipelineOptions([f"--runner={runner}", *pipeline_options])
        tf.io.gfile.makedirs(cache_dir)
        shard_files: list[tuple[str, int]] = []
        with beam.Pipeline(options=options) as pipeline:
            for task, out in todo:
                for split in splits or task.splits:
                    label = f"{task.name}_{split}"
                    pat = beam_utils.PreprocessTask(task, split, preprocessors_seed=_task_seed(task.name, base_seed),
                                                    setup_fn=setup, modules_to_import=["mixtures"])
                    num_shards = max(len(pat.shards), min_shards)
                    if max_shards > 0:
                        num_shards = min(num_shards, max_shards)
                    examples = pipeline | f"{label}_preprocess" >> pat
                    prefix = seqio.get_cached_tfrecord_prefix(out, split)
                    shard_files.append((prefix, num_shards))
                    _write_tfrecords(examples, label, prefix, num_shards)
                    _ = (examples
                         | f"{label}_info" >> beam_utils.GetInfo(num_shards)
                         | f"{label}_write_info" >> beam_utils.WriteJson(seqio.get_cached_info_path(out, split)))
                    _ = (examples
                         | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
                         | f"{label}_write_stats" >> beam_utils.WriteJson(seqio.get_cached_stats_path(out, split)))
        for prefix, num_shards in shard_files:
            _fill_empty_shards(prefix, num_shards)
        for task, out in todo:  # Marked complete only once every file is in place.
            with tf.io.gfile.GFile(os.path.join(out, "COMPLETED"), "w") as f:
                f.write("")
            logger.info("cached %s in %s", task.name, out)
    if register:
        seqio.add_global_cache_dirs([cache_dir])
    return outputs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", required=True, help="tasks, aliases or mixtures to cache")
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--data_root", help="data root (else gin/TEXTBOOKS_DATA_DIR/default)")
    parser.add_argument("--vocabulary", help="default vocabulary for alias names (phi, spm8k, byte)")
    parser.add_argument("--splits", nargs="*")
    parser.add_argument("--runner", default="DirectRunner")
    parser.add_argument("--pipeline_option", action="append", default=[], help="extra Beam option (repeatable)")
    parser.add_argument("--min_shards", type=int, default=1)
    parser.add_argument("--max_shards", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logs.setup("INFO")
    if args.data_root:
        os.environ[paths.ENV_VAR] = args.data_root
    if args.vocabulary:
        gin.bind_parameter("mixtures.roles.vocabulary_name.name", args.vocabulary)
    out = cache_tasks(args.tasks, args.cache_dir, splits=args.splits, runner=args.runner,
                      pipeline_options=args.pipeline_option, min_shards=args.min_shards,
                      max_shards=args.max_shards, overwrite=args.overwrite)
    for name, path in out.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TFDS builders: ``textbooks_corpus/<role>`` from local shards, ``textbooks_benchmarks/<name>`` from the
evaluation files.

``textbooks_corpus`` has one config per data role, splits ``train`` and ``validation`` (as in the role's
manifest) and the features ``id, text, role, source, license`` plus ``meta`` as a JSON string. It is built
offline from a role folder in the shard format, taken from (first that applies) the builder argument
``input_dir``, the TFDS manual dir (either the data root holding ``<role>/`` or the role folder itself), or
``textbooks.data.paths.role_dir(role)``::

    import numpy as np
import tensorflow_datasets as tfds
    import textbooks.data.tfds_builders  # registers the builders

    ds = tfds.load("textbooks_corpus/web_filtered", split="train", data_dir="/data/tfds",
                   download_and_prepare_kwargs={"download_config":
                       tfds.download.DownloadConfig(manual_dir="/data/roles")})

or ``python -m textbooks.data.tfds_builders --roles web_filtered --data_dir /data/tfds``. Records are keyed by
their stable ids, so building twice gives the same example order and byte-identical record files. Output is
TFRecord by default, which tf.data (and so seqio) reads; ``file_format='array_record'`` (builder argument or
``--file_format``) gives random access through ``builder.as_data_source()`` instead. The tasks ``<role>_tfds_<vocab>`` in :mod:`mixtures.roles` read these builds through
``seqio.TfdsDataSource``.

``textbooks_benchmarks`` has one config per benchmark of :mod:`textbooks.evaluate.benchmarks`
(``humaneval``, ``mbpp``, ``gsm8k``, ``piqa``, ...), the benchmark's own splits, and the features ``index``
(position in the benchmark; TFDS stores examples in hashed order), ``id``, ``task``, ``split``, ``text`` (all
text of the item, as used for decontamination) and ``record`` (the normalized item as JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from textbooks import logs
from textbooks.data import paths, records
from textbooks.data.manifest import MANIFEST_NAME, read_manifest

logger = logging.getLogger(__name__)

CORPUS_VERSION = "1.0.0"
BENCHMARKS_VERSION = "1.0.0"
# Benchmarks offered when textbooks.evaluate.benchmarks does not list its own names.
DEFAULT_BENCHMARKS = ("humaneval", "mbpp", "gsm8k", "piqa", "hellaswag", "arc_easy", "arc_challenge", "boolq",
                      "winogrande", "openbookqa", "siqa", "mmlu")


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builders defined in this file. TFDS's default ``code_path`` probes the optional package
    ``importlib_resources`` for modules installed in editable mode; the file is known, so say it."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)


def _text_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({k: tfds.features.Text() for k in
                                       ("id", "text", "role", "source", "license", "meta")})


class TextbooksCorpus(_LocalBuilder):
    """The documents of one data role (config = role), built from local shards."""

    VERSION = tfds.core.Version(CORPUS_VERSION)
    RELEASE_NOTES = {"1.0.0": "Documents of the shard format: id, text, role, source, license, meta (JSON)."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=role, description=f"data role {role}") for role in paths.ROLES]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Nothing is downloaded. Point the manual dir at the data root (holding <role>/ folders in the shard "
        "format) or at one role folder, or pass input_dir=..., or set the data root (gin "
        "textbooks.data.paths.data_root.path or $TEXTBOOKS_DATA_DIR).")

    def __init__(self, *, input_dir: Optional[str] = None, **kwargs):
        self._input_dir = input_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Documents of one textbooks data role (shard format: one JSON object per line).",
            features=_text_features(), supervised_keys=None, homepage=None)

    def _role_dir(self, dl_manager) -> str:
        role = self.builder_config.name
        if self._input_dir:
            return os.fspath(self._input_dir)
        try:
            manual = os.fspath(dl_manager.manual_dir)
        except (AssertionError, ValueError):
            manual = None
        if manual:
            for candidate in (records.join(manual, role), manual):
                manifest = records.join(candidate, MANIFEST_NAME)
                if paths.exists(manifest) and read_manifest(candidate).role == role:
                    return candidate
        return paths.role_dir(role)

    def _split_generators(self, dl_manager):
        directory = self._role_dir(dl_manager)
        manifest = read_manifest(directory)
        if manifest.role != self.builder_config.name:
            raise ValueError(f"{directory!r} holds role {manifest.role!r}, not {self.builder_config.name!r}")
        logger.info("building textbooks_corpus/%s from %s", manifest.role, directory)
        return {split: self._generate_examples(directory, split) for split in sorted(manifest.splits)}

    def _generate_examples(self, directory: str, split: str):
        report = records.ReadReport()
        for record in records.read_split(directory, split, on_error="skip", report=report):
            yield record.id, {"id": record.id, "text": record.text, "role": record.role, "source": record.source,
                              "license": record.license,
                              "meta": json.dumps(record.meta, ensure_ascii=False, sort_keys=True)}
        if report.num_rejected:
            logger.warning("textbooks_corpus/%s %s: %s", self.builder_config.name, split, report.summary())


def _benchmark_names() -> tuple[str, ...]:
    try:
        from textbooks.evaluate import benchmarks
    except ImportError:
        return DEFAULT_BENCHMARKS
    return tuple(getattr(benchmarks, "BENCHMARKS", DEFAULT_BENCHMARKS))


_SPLIT_NAMES = ("train", "validation", "dev", "test")


class TextbooksBenchmarks(_LocalBuilder):
    """Evaluation benchmarks read from local package files by ``textbooks.evaluate.benchmarks``."""

    VERSION = tfds.core.Version(BENCHMARKS_VERSION)
    RELEASE_NOTES = {"1.0.0": "index, id, task, split, text (decontamination passage), record (JSON)."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"benchmark {n}") for n in _benchmark_names()]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="An evaluation benchmark as loaded by textbooks.evaluate.benchmarks.load_benchmark: "
                        "'record' is the normalized item as JSON, 'text' all of its text (for decontamination).",
            features=tfds.features.FeaturesDict({
                **{k: tfds.features.Text() for k in ("id", "task", "split", "text", "record")},
                "index": tfds.features.Scalar(dtype=np.int64)}),
            supervised_keys=None, homepage=None)

    def _split_generators(self, dl_manager):
        from textbooks.evaluate import benchmarks

        name = self.builder_config.name
        splits = {}
        for split in _SPLIT_NAMES:
            try:
                items = benchmarks.load_benchmark(name, split)
            except benchmarks.BenchmarkError as e:
                if "has no split" in str(e):
                    continue
                raise
            splits[split] = self._generate_examples(items, split)
        return splits

    def _generate_examples(self, items: list, split: str):
        from textbooks.evaluate import benchmarks

        for i, item in enumerate(items):
            yield f"{i:08d}", {"index": i, "id": str(item.get("id", i)), "task": str(item.get("task", self.builder_config.name)),
                               "split": split, "text": benchmarks.item_text(item),
                               "record": json.dumps(item, ensure_ascii=False, sort_keys=True, default=str)}


def build_role(role: str, data_dir: str, *, input_dir: Optional[str] = None,
               file_format: str = "tfrecord") -> tfds.core.DatasetBuilder:
    """Prepares ``textbooks_corpus/<role>`` in ``data_dir`` (a no-op when already built); returns the builder."""
    paths.check_role(role)
    builder = TextbooksCorpus(config=role, data_dir=data_dir, input_dir=input_dir, file_format=file_format)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=input_dir or paths.data_root()))
    return builder


def build_benchmark(name: str, data_dir: str, *, file_format: str = "tfrecord") -> tfds.core.DatasetBuilder:
    """Prepares ``textbooks_benchmarks/<name>`` in ``data_dir``; returns the builder."""
    builder = TextbooksBenchmarks(config=name, data_dir=data_dir, file_format=file_format)
    builder.download_and_prepare()
    return builder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build the textbooks TFDS datasets from local files.")
    parser.add_argument("--roles", nargs="*", default=[], help=f"roles to build ({', '.join(paths.ROLES)}; "
                                                              f"'all' for every role)")
    parser.add_argument("--benchmarks", nargs="*", default=[], help="benchmarks to build ('all' for every one)")
    parser.add_argument("--data_dir", help="TFDS data dir (default <data_root>/tfds)")
    parser.add_argument("--data_root", help="data root holding the role folders")
    parser.add_argument("--file_format", default="tfrecord", choices=["tfrecord", "array_record"])
    args = parser.parse_args(argv)
    logs.setup("INFO")
    if args.data_root:
        os.environ[paths.ENV_VAR] = args.data_root
    data_dir = args.data_dir or records.join(paths.data_root(), "tfds")
    roles = list(paths.ROLES) if args.roles == ["all"] else args.roles
    names = [c.name for c in TextbooksBenchmarks.BUILDER_CONFIGS] if args.benchmarks == ["all"] else args.benchmarks
    for role in roles:
        builder = build_role(role, data_dir, file_format=args.file_format)
        print(f"textbooks_corpus/{role}\t{builder.data_dir}\t{dict(builder.info.splits)}")
    for name in names:
        builder = build_benchmark(name, data_dir, file_format=args.file_format)
        print(f"textbooks_benchmarks/{name}\t{builder.data_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

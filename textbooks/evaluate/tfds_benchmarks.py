"""TFDS builder ``textbooks_benchmarks/<name>``: an evaluation benchmark as a TFDS dataset, built from the
package files that :mod:`textbooks.evaluate.benchmarks` reads.

One config per benchmark (``humaneval``, ``mbpp``, ``gsm8k``, ``piqa``, ...), the benchmark's own splits, and
the features ``index`` (position in the benchmark; TFDS stores examples in hashed order), ``id``, ``task``,
``split``, ``text`` (all text of the item, as used for decontamination) and ``record`` (the normalized item as
JSON)::

    python -m textbooks.evaluate.tfds_benchmarks --benchmarks humaneval mbpp --data_dir /data/tfds
"""

from __future__ import annotations

import argparse
import json
from typing import Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from mixtures.sources import tfds_data_dir
from textbooks import logs
from textbooks.evaluate import benchmarks
from textbooks.inputs.tfds_builders import LocalBuilder, add_build_arguments

TFDS_NAME = "textbooks_benchmarks"
VERSION = "1.0.0"
_SPLIT_NAMES = ("train", "validation", "dev", "test")


class TextbooksBenchmarks(LocalBuilder):
    """Evaluation benchmarks read from local package files by ``textbooks.evaluate.benchmarks``."""

    name = TFDS_NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "index, id, task, split, text (decontamination passage), record (JSON)."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"benchmark {n}") for n in benchmarks.BENCHMARKS]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="An evaluation benchmark as loaded by textbooks.evaluate.benchmarks.load_benchmark: "
                        "'record' is the normalized item as JSON, 'text' all of its text (for decontamination).",
            features=tfds.features.FeaturesDict({
                **{k: tfds.features.Text() for k in ("id", "task", "split", "text", "record")},
                "index": tfds.features.Scalar(dtype=np.int64)}),
            supervised_keys=None, homepage=None)

    def _split_generators(self, dl_manager):
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
        for i, item in enumerate(items):
            yield f"{i:08d}", {"index": i, "id": str(item.get("id", i)),
                               "task": str(item.get("task", self.builder_config.name)), "split": split,
                               "text": benchmarks.item_text(item),
                               "record": json.dumps(item, ensure_ascii=False, sort_keys=True, default=str)}


def build_benchmark(name: str, data_dir: str, *, file_format: str = "tfrecord") -> tfds.core.DatasetBuilder:
    """Prepares ``textbooks_benchmarks/<name>`` in ``data_dir`` (a no-op when already built); returns the builder.

    Raises:
        textbooks.evaluate.benchmarks.BenchmarkError: an unknown benchmark (the message lists the known ones),
            or its package files are missing.
    """
    if name not in benchmarks.BENCHMARKS:
        raise benchmarks.BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(benchmarks.BENCHMARKS)}")
    builder = TextbooksBenchmarks(config=name, data_dir=data_dir, file_format=file_format)
    builder.download_and_prepare()
    return builder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=f"Build the {TFDS_NAME} TFDS datasets from local files.")
    parser.add_argument("--benchmarks", nargs="+", required=True, metavar="NAME",
                        help=f"benchmarks to build ({', '.join(benchmarks.BENCHMARKS)}; 'all' for every one)")
    add_build_arguments(parser)
    args = parser.parse_args(argv)
    logs.setup("INFO")
    for name in list(benchmarks.BENCHMARKS) if args.benchmarks == ["all"] else args.benchmarks:
        builder = build_benchmark(name, args.data_dir or tfds_data_dir(), file_format=args.file_format)
        print(f"{TFDS_NAME}/{name}\t{builder.data_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

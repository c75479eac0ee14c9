"""TFDS builder ``textbooks_corpus/<role>``: a role's documents from its local shards, as a TFDS dataset.

``textbooks_corpus`` has one config per data role, splits ``train`` and ``validation`` (as in the role's
manifest) and the features ``id, text, role, source, license`` plus ``meta`` as a JSON string. It is built
offline from a role folder in the shard format, taken from (first that applies) the builder argument
``input_dir``, the TFDS manual dir (either the data root holding ``<role>/`` or the role folder itself), or
``textbooks.data.paths.role_dir(role)``::

    import tensorflow_datasets as tfds
    import textbooks.inputs.tfds_builders  # registers the builder

    ds = tfds.load("textbooks_corpus/web_filtered", split="train", data_dir="/data/tfds",
                   download_and_prepare_kwargs={"download_config":
                       tfds.download.DownloadConfig(manual_dir="/data/roles")})

or ``python -m textbooks.inputs.tfds_builders --roles web_filtered --data_dir /data/tfds``. Records are keyed
by their stable ids, so building twice gives the same example order and byte-identical record files. Output is
TFRecord by default, which tf.data (and so seqio) reads; ``file_format='array_record'`` (builder argument or
``--file_format``) gives random access through ``builder.as_data_source()`` instead. The tasks
``<role>_tfds_<vocab>`` of :mod:`mixtures.roles` read these builds through
:class:`mixtures.sources.LazyTfdsDataSource`, from the prepared files alone (they do not import this module).

The evaluation benchmarks have their own builder, :mod:`textbooks.evaluate.tfds_benchmarks`, on
:class:`LocalBuilder` from here.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
from typing import Optional, Sequence

import tensorflow_datasets as tfds
from etils import epath

from mixtures.roles import TFDS_NAME, TFDS_VERSION
from mixtures.sources import tfds_data_dir
from textbooks import logs
from textbooks.data import files, paths
from textbooks.data.counts import ReadReport
from textbooks.data.manifest import MANIFEST_NAME, read_manifest
from textbooks.data.records import read_split
from textbooks.data.roles import ROLES, check_role

logger = logging.getLogger(__name__)


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder defined in this project, located by its file rather than by its module name.

    TFDS finds a builder's code and metadata folder from the module name, probing the optional package
    ``importlib_resources`` for editable installs, and fails when the module is ``__main__`` (``python -m``).
    The defining file is known, so both are taken from it.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    @classmethod
    def _get_pkg_dir_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls)).parent


def _text_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({k: tfds.features.Text() for k in
                                       ("id", "text", "role", "source", "license", "meta")})


class TextbooksCorpus(LocalBuilder):
    """The documents of one data role (config = role), built from local shards."""

    name = TFDS_NAME
    VERSION = tfds.core.Version(TFDS_VERSION)
    RELEASE_NOTES = {"1.0.0": "Documents of the shard format: id, text, role, source, license, meta (JSON)."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=role, description=f"data role {role}") for role in ROLES]
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
            for candidate in (files.join(manual, role), manual):
                manifest = files.join(candidate, MANIFEST_NAME)
                if files.exists(manifest) and read_manifest(candidate).role == role:
                    return candidate
        return paths.role_dir(role)

    def _split_generators(self, dl_manager):
        directory = self._role_dir(dl_manager)
        manifest = read_manifest(directory)
        if manifest.role != self.builder_config.name:
            raise ValueError(f"{directory!r} holds role {manifest.role!r}, not {self.builder_config.name!r}")
        logger.info("building %s/%s from %s", TFDS_NAME, manifest.role, directory)
        return {split: self._generate_examples(directory, split) for split in sorted(manifest.splits)}

    def _generate_examples(self, directory: str, split: str):
        report = ReadReport()
        for record in read_split(directory, split, on_error="skip", report=report):
            yield record.id, {"id": record.id, "text": record.text, "role": record.role, "source": record.source,
                              "license": record.license,
                              "meta": json.dumps(record.meta, ensure_ascii=False, sort_keys=True)}
        if report.num_rejected:
            logger.warning("%s/%s %s: %s", TFDS_NAME, self.builder_config.name, split, report.summary())


def build_role(role: str, data_dir: str, *, input_dir: Optional[str] = None,
               file_format: str = "tfrecord") -> tfds.core.DatasetBuilder:
    """Prepares ``textbooks_corpus/<role>`` in ``data_dir`` (a no-op when already built); returns the builder.

    Raises:
        ValueError: unknown role, or the folder holds another role.
        FileNotFoundError: the role folder or its manifest is missing.
    """
    check_role(role)
    builder = TextbooksCorpus(config=role, data_dir=data_dir, input_dir=input_dir, file_format=file_format)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=input_dir or paths.data_root()))
    return builder


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every TFDS build command: ``--data_dir`` and ``--file_format``."""
    parser.add_argument("--data_dir", help="TFDS data dir (default: where the tfds tasks read, gin "
                                           "mixtures.sources.tfds_data_dir.path, else <data_root>/tfds)")
    parser.add_argument("--file_format", default="tfrecord", choices=["tfrecord", "array_record"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=f"Build the {TFDS_NAME} TFDS datasets from local shards.")
    parser.add_argument("--roles", nargs="+", required=True, metavar="ROLE",
                        help=f"roles to build ({', '.join(ROLES)}; 'all' for every role)")
    parser.add_argument("--data_root", help="data root holding the role folders")
    add_build_arguments(parser)
    args = parser.parse_args(argv)
    logs.setup("INFO")
    if args.data_root:
        os.environ[paths.ENV_VAR] = args.data_root
    for role in list(ROLES) if args.roles == ["all"] else args.roles:
        builder = build_role(role, args.data_dir or tfds_data_dir(), file_format=args.file_format)
        print(f"{TFDS_NAME}/{role}\t{builder.data_dir}\t{dict(builder.info.splits)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

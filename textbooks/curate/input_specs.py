"""What a curation run reads: input specs, reading limits, and the files each spec names.

* :class:`InputSpec` (gin) — one input: its kind, paths, field names, and what to record on its records;
  :func:`parse_input` also accepts a dict of its fields or ``'<kind>:<path>'``. Kinds:

  * ``shards``  — the project's shard format (``<split>-iiiii-of-nnnnn.jsonl.gz`` folders, files or globs);
  * ``jsonl``   — arbitrary JSON Lines (optionally ``.gz``) with a configurable text field (and id field);
  * ``parquet`` — Parquet files, one record per row;
  * ``text``    — folders of plain-text files, one record per file;
  * ``source``  — source trees: files chosen by extension;
  * ``role``    — a data role's folder under the data root (shard format), e.g. ``role:web_raw/validation``.

* :class:`ReadConfig` (gin) — size limits, empty documents, split assignment, the id check.
* :func:`list_input_files` — the files a spec reads, listed on the driver so that a missing input fails at
  once, naming the spec (local, ``gs://``, ... through ``apache_beam.io.filesystems``).

The readers that turn these files into records are in :mod:`textbooks.curate.io`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import posixpath
from typing import Any

import gin
from apache_beam.io.filesystems import FileSystems

from textbooks.data import paths as data_paths
from textbooks.data import records as rec

KINDS = ("shards", "jsonl", "parquet", "text", "source", "role")
_GLOB_CHARS = "*?["
# Files a jsonl/parquet input takes from a folder.
_DIR_SUFFIXES = {"jsonl": (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz"),
                 "parquet": (".parquet", ".pq")}


@gin.configurable
@dataclasses.dataclass
class InputSpec:
    """One input of a curation run.

    Attributes:
        paths: files, globs or folders (local or remote); for ``kind='role'``, role names, optionally with a
            split (``'web_raw/validation'``).
        kind: one of :data:`KINDS`.
        text_field / id_field: field names for ``jsonl`` and ``parquet`` (without an id field, ids are
            ``<source>/<relative path>:<line or row>``).
        meta_fields: other fields copied into ``meta`` (None: all other fields).
        source / license: recorded on each record (shards keep theirs); ``source`` defaults to the kind.
        role: role recorded on records of non-shard inputs.
        split: force this split; otherwise shards keep theirs and other records are assigned one by a hash
            of their id (see :class:`ReadConfig`).
        extensions: file name endings read by ``text`` and ``source`` inputs.
        language: ``meta.language`` of ``source`` records (default: from the extension).
        exclude: ``fnmatch`` patterns of paths (relative to the input folder) to leave out, e.g.
            ``('*/tests/*', 'site-packages/*')``.
    """

    paths: Any = ()
    kind: str = "shards"
    text_field: str = "text"
    id_field: str | None = None
    meta_fields: tuple[str, ...] | None = None
    source: str | None = None
    license: str = "unknown"
    role: str = "unknown"
    split: str | None = None
    extensions: tuple[str, ...] = (".py",)
    language: str | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.paths, (str, os.PathLike)):
            self.paths = (os.fspath(self.paths),)
        self.paths = tuple(os.fspath(p) for p in self.paths)
        if self.kind not in KINDS:
            raise ValueError(f"InputSpec.kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not self.paths:
            raise ValueError(f"InputSpec(kind={self.kind!r}) has no paths")
        if self.kind == "text" and self.extensions == (".py",):
            self.extensions = (".txt",)
        self.extensions = tuple(self.extensions)

    @property
    def source_name(self) -> str:
        return self.source or self.kind


@gin.configurable
@dataclasses.dataclass
class ReadConfig:
    """Limits and defaults applied while reading.

    Attributes:
        max_doc_bytes: larger documents (UTF-8 bytes; for files, the file size) are rejected as ``too_large``.
        min_doc_chars: documents with fewer non-whitespace characters are rejected as ``empty``.
        default_split / validation_fraction: split of records that bring none: ``validation`` for a
            deterministic ``validation_fraction`` of ids, else ``default_split``.
        max_control_char_frac: text/source files with more control characters than this are ``binary_file``.
        check_unique_ids: group by id and reject repeats (``duplicate_id``); later stages join by id.
    """

    max_doc_bytes: int = 4 * 1024 * 1024
    min_doc_chars: int = 1
    default_split: str = "train"
    validation_fraction: float = 0.0
    max_control_char_frac: float = 0.05
    check_unique_ids: bool = True


def parse_input(spec: "InputSpec | str | dict") -> InputSpec:
    """Accepts an :class:`InputSpec`, a dict of its fields, or ``'<kind>:<path>'`` (e.g. ``'jsonl:/d/*.jsonl'``,
    ``'role:web_raw'``); a bare path means ``shards``."""
    if isinstance(spec, InputSpec):
        return spec
    if isinstance(spec, dict):
        return InputSpec(**spec)
    if isinstance(spec, str):
        kind, sep, path = spec.partition(":")
        if sep and kind in KINDS:
            return InputSpec(paths=(path,), kind=kind)
        return InputSpec(paths=(spec,), kind="shards")
    raise TypeError(f"cannot read an input from {spec!r}; pass an InputSpec, a dict or '<kind>:<path>'")


def _base_dir(path: str) -> str:
    """The folder relative paths (and default ids) are taken from: the part before the first glob character."""
    if any(c in path for c in _GLOB_CHARS):
        head = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)]
        return head if head.endswith("/") else posixpath.dirname(head)
    return path if rec.isdir(path) else posixpath.dirname(path)


def _match(pattern: str) -> list[str]:
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def list_input_files(spec: InputSpec) -> list[tuple[str, str]]:
    """``(file, base folder)`` pairs the spec reads, sorted and de-duplicated.

    Raises:
        FileNotFoundError: a path matches nothing (the message names the spec and path).
    """
    out: dict[str, str] = {}
    for path in spec.paths:
        if spec.kind == "role":  # 'web_raw' (all splits) or 'web_raw/validation' (one split).
            role, _, split = path.partition("/")
            path = rec.shard_pattern(data_paths.role_dir(role), split) if split else data_paths.role_dir(role)
        base = _base_dir(path)
        if spec.kind in ("shards", "role"):
            files = rec.expand_paths(path)
        elif spec.kind in ("text", "source"):
            if any(c in path for c in _GLOB_CHARS):
                files = _match(path)
            elif rec.isdir(path):
                files = [f for f in _match(path.rstrip("/") + "/**") if f.endswith(spec.extensions)]
            else:
                files = [path] if rec.exists(path) else []
        else:
            files = _match(path) if any(c in path for c in _GLOB_CHARS) else ([path] if rec.exists(path) else [])
            if len(files) == 1 and rec.isdir(files[0]):
                files = [f for f in _match(files[0].rstrip("/") + "/**") if f.endswith(_DIR_SUFFIXES[spec.kind])]
        if spec.exclude:
            files = [f for f in files
                     if not any(fnmatch.fnmatch(relpath(f, base), pattern) for pattern in spec.exclude)]
        if not files:
            raise FileNotFoundError(f"input {spec.kind}:{path!r} matches no files; check the path, the glob, "
                                    f"InputSpec.extensions={spec.extensions} and InputSpec.exclude={spec.exclude}")
        for f in files:
            out.setdefault(f, base)
    return sorted(out.items())


def relpath(path: str, base: str) -> str:
    """``path`` relative to the input folder ``base`` (its file name when it is not under ``base``)."""
    if base and path.startswith(base.rstrip("/") + "/"):
        return path[len(base.rstrip("/")) + 1:]
    return posixpath.basename(path)

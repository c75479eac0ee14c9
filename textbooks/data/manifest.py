"""The manifest of a shard folder: ``<dir>/manifest.json``, what the folder holds.

One JSON object: the data role, per split the shard file names and counts (documents, bytes, sources,
licenses, stand-ins), what the data stands in for when it is not the real thing, a description and free-form
``meta``. Written deterministically (sorted keys, no timestamps) next to the shards that
:mod:`textbooks.data.records` writes; every stage reads a folder through it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from textbooks.data.counts import SplitStats
from textbooks.data.files import exists, isdir, join, makedirs, open_file
from textbooks.data.records import FORMAT_VERSION, SHARD_RE, RecordError, expand_paths, iter_records, sort_keys

MANIFEST_NAME = "manifest.json"


@dataclasses.dataclass
class Manifest:
    """``<dir>/manifest.json``: what a shard folder holds.

    Attributes:
        role: the data role (see :data:`textbooks.data.roles.ROLES`).
        splits: per split, the shard file names and counts.
        stand_in: when the data stands in for something unavailable offline, what it stands in for.
        description: one or two sentences about the contents and how they were made.
        meta: free-form (builder name, filter settings, source notes).
        format_version: :data:`FORMAT_VERSION` of the shard format.
        directory: the folder it was read from (not serialized).
    """

    role: str
    splits: dict[str, SplitStats]
    stand_in: str | None = None
    description: str = ""
    meta: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    directory: str | None = dataclasses.field(default=None, compare=False)

    @property
    def num_docs(self) -> int:
        return sum(s.num_docs for s in self.splits.values())

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.splits.values())

    def _totals(self, attr: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for s in self.splits.values():
            for k, v in getattr(s, attr).items():
                total[k] = total.get(k, 0) + v
        return dict(sorted(total.items()))

    @property
    def sources(self) -> dict[str, int]:
        """Documents per source over all splits."""
        return self._totals("sources")

    @property
    def licenses(self) -> dict[str, int]:
        """Documents per license over all splits."""
        return self._totals("licenses")

    def shard_paths(self, split: str) -> list[str]:
        """Full paths of the shards of ``split`` (needs ``directory``, set by :func:`read_manifest`)."""
        if split not in self.splits:
            raise KeyError(f"split {split!r} not in manifest of role {self.role!r}; it has "
                           f"{', '.join(sorted(self.splits))}")
        if self.directory is None:
            raise ValueError("manifest has no directory; read it with read_manifest(dir)")
        return [join(self.directory, n) for n in self.splits[split].shards]

    def to_dict(self) -> dict:
        return {"format_version": self.format_version, "role": self.role, "stand_in": self.stand_in,
                "description": self.description, "num_docs": self.num_docs, "num_bytes": self.num_bytes,
                "sources": self.sources, "licenses": self.licenses,
                "splits": {k: self.splits[k].to_dict() for k in sorted(self.splits)},
                "meta": sort_keys(self.meta)}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], directory: str | None = None) -> "Manifest":
        return cls(role=obj["role"], splits={k: SplitStats.from_dict(v) for k, v in obj["splits"].items()},
                   stand_in=obj.get("stand_in"), description=obj.get("description", ""),
                   meta=dict(obj.get("meta", {})), format_version=int(obj.get("format_version", 1)),
                   directory=directory)


def write_manifest(directory: str | os.PathLike, manifest: Manifest) -> str:
    """Writes ``<directory>/manifest.json`` deterministically (sorted keys, no timestamps); returns its path."""
    directory = os.fspath(directory)
    makedirs(directory)
    path = join(directory, MANIFEST_NAME)
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    with open_file(path, "wb") as f:
        f.write(text.encode("utf-8"))
    return path


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """Reads ``<directory>/manifest.json``.

    Raises:
        FileNotFoundError: the folder or its manifest is missing.
        RecordError: the manifest is not valid JSON, lacks ``role``/``splits``, or has a newer format version.
    """
    directory = os.fspath(directory)
    path = join(directory, MANIFEST_NAME)
    if not exists(path):
        what = "folder" if not isdir(directory) else "manifest"
        raise FileNotFoundError(f"{what} missing: {path!r}; build the data first (e.g. `textbooks corpora "
                                f"--out DIR`) or point data_root at the right place")
    with open_file(path, "rb") as f:
        raw = f.read()
    try:
        obj = json.loads(raw.decode("utf-8"))
        manifest = Manifest.from_dict(obj, directory=directory)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise RecordError(f"{path}: not a valid manifest ({type(e).__name__}: {e})") from e
    if manifest.format_version > FORMAT_VERSION:
        raise RecordError(f"{path}: format_version {manifest.format_version} is newer than this library's "
                          f"{FORMAT_VERSION}; upgrade textbooks")
    return manifest


def manifest_from_shards(directory: str | os.PathLike, role: str, **kwargs: Any) -> Manifest:
    """Builds a manifest by reading every shard in ``directory`` (for folders written without one)."""
    directory = os.fspath(directory)
    splits: dict[str, SplitStats] = {}
    for path in expand_paths(directory):
        name = os.path.basename(path)
        split = SHARD_RE.match(name).group("split")
        stats = splits.setdefault(split, SplitStats())
        stats.shards.append(name)
        for record in iter_records(path):
            stats.add(record, record.num_bytes)
    return Manifest(role=role, splits=splits, **kwargs)

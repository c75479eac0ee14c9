"""The shard format every stage reads and writes: sharded, gzip-compressed JSON Lines.

Layout of one role's folder (local or ``gs://``)::

    <dir>/<split>-<iiiii>-of-<nnnnn>.jsonl.gz    one JSON object per line (see :class:`Record`)
    <dir>/manifest.json                          role, splits with shard lists, counts, sources, licenses
                                                 (see :mod:`textbooks.data.manifest`)

One line::

    {"id": "...", "text": "...", "role": "code_filtered", "source": "cpython-stdlib", "license": "PSF-2.0",
     "split": "train", "meta": {"stand_in": null, "path": "json/decoder.py", ...}}

Writing is deterministic: the same records in the same order give byte-identical files (gzip header with
mtime 0 and no file name, fixed compression level, keys in a fixed order, ``meta`` keys sorted). Reading
counts every bad line (not JSON, invalid UTF-8, missing or mistyped fields, a truncated gzip stream) with its
file and line number; ``on_error='skip'`` sets it aside as a :class:`RejectedRecord` and goes on,
``on_error='raise'`` stops with a :class:`RecordError` naming the file and line. Paths may be local or
``gs://`` (:mod:`textbooks.data.files`); what a read or a write counted is in :mod:`textbooks.data.counts`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import zlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

from textbooks.data.files import exists, glob, isdir, join, listdir, makedirs, open_file, remove, rename
from textbooks.data.counts import ReadReport, RejectedRecord, SplitStats

FORMAT_VERSION = 1
SHARD_SUFFIX = ".jsonl.gz"
# <split>-<iiiii>-of-<nnnnn>.jsonl.gz (split names are letters, digits, '_' and '.').
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.jsonl(?:\.gz)?$")
REQUIRED_FIELDS = ("id", "text", "role", "source", "license", "split")
_FIELDS = REQUIRED_FIELDS + ("meta",)
_GZIP_LEVEL = 6
_RAW_PREFIX_CHARS = 200
_MAX_LOGGED_REJECTS = 20

logger = logging.getLogger(__name__)


class RecordError(ValueError):
    """A line or record does not follow the shard format; the message names the file and line.

    ``kind`` is a short code for counting: not_json, invalid_utf8, blank_line, not_object, missing_field,
    unknown_field, wrong_type, duplicate_id, wrong_split, corrupt_file.
    """

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------------------
# Records.


def sort_keys(value: Any) -> Any:
    """``value`` with every mapping's keys sorted (as strings), recursively: stable JSON output."""
    if isinstance(value, Mapping):
        return {str(k): sort_keys(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [sort_keys(v) for v in value]
    return value


@dataclasses.dataclass
class Record:
    """One document. ``meta`` is free-form JSON (stand_in, url, scores, template ids, ...)."""

    id: str
    text: str
    role: str
    source: str
    license: str
    split: str
    meta: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        """Raises RecordError if a field has the wrong type or ``id`` is empty."""
        for name in REQUIRED_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise RecordError(f"field {name!r} must be a string, got {type(value).__name__} "
                                  f"(record id {self.id!r})", "wrong_type")
        if not self.id:
            raise RecordError("field 'id' must be a non-empty string", "wrong_type")
        if not isinstance(self.meta, dict):
            raise RecordError(f"field 'meta' must be an object, got {type(self.meta).__name__} "
                              f"(record id {self.id!r})", "wrong_type")

    def to_dict(self) -> dict:
        """The record as a plain dict with keys in the canonical order and ``meta`` keys sorted."""
        return {"id": self.id, "text": self.text, "role": self.role, "source": self.source,
                "license": self.license, "split": self.split, "meta": sort_keys(self.meta)}

    def to_json(self) -> str:
        """One JSON line (no trailing newline); deterministic for equal records.

        Raises:
            RecordError: a field is mistyped, or ``meta`` holds something JSON cannot represent (NaN, sets).
        """
        self.validate()
        try:
            return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise RecordError(f"record {self.id!r} cannot be written as JSON: {e}", "wrong_type") from e

    def to_bytes(self) -> bytes:
        """The UTF-8 line with its trailing newline, as written to a shard."""
        try:
            return (self.to_json() + "\n").encode("utf-8")
        except UnicodeEncodeError as e:  # Lone surrogates in a Python str.
            raise RecordError(f"record {self.id!r} holds text that is not valid Unicode ({e.reason} at "
                              f"position {e.start}); clean it with str.encode('utf-8', 'replace')",
                              "invalid_utf8") from e

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "Record":
        """Builds and validates a Record from a decoded JSON object.

        Raises:
            RecordError: not an object, a required field is missing, a field has the wrong type, or there
                are unknown top-level fields (free-form data belongs in ``meta``).
        """
        if not isinstance(obj, Mapping):
            raise RecordError(f"expected a JSON object, got {type(obj).__name__}", "not_object")
        missing = [k for k in REQUIRED_FIELDS if k not in obj]
        if missing:
            raise RecordError(f"missing field(s) {', '.join(missing)}", "missing_field")
        unknown = sorted(set(obj) - set(_FIELDS))
        if unknown:
            raise RecordError(f"unknown top-level field(s) {', '.join(unknown)}; put free-form data in 'meta'",
                              "unknown_field")
        meta = obj.get("meta", {})
        record = cls(**{k: obj[k] for k in REQUIRED_FIELDS}, meta={} if meta is None else meta)
        record.validate()
        return record

    @classmethod
    def from_json(cls, line: str | bytes) -> "Record":
        """Parses one JSON line (str or UTF-8 bytes).

        Raises:
            RecordError: invalid UTF-8, not JSON, or not a valid record (see :meth:`from_dict`).
        """
        if isinstance(line, (bytes, bytearray)):
            try:
                line = bytes(line).decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(f"invalid UTF-8 at byte {e.start}", "invalid_utf8") from e
        if not line.strip():
            raise RecordError("blank line", "blank_line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise RecordError(f"not JSON: {e.msg} at column {e.colno}", "not_json") from e
        return cls.from_dict(obj)

    @property
    def num_bytes(self) -> int:
        """UTF-8 size of ``text``."""
        return len(self.text.encode("utf-8", "surrogatepass"))


def _raw_prefix(raw: bytes) -> str:
    return raw[: _RAW_PREFIX_CHARS * 4].decode("utf-8", "replace")[:_RAW_PREFIX_CHARS].rstrip("\n")


def expand_paths(path_or_glob: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Resolves files, globs, shard folders or a list of them to a sorted list of shard files.

    A folder stands for all shard files (``*-?????-of-?????.jsonl[.gz]``) directly inside it.

    Raises:
        FileNotFoundError: a path does not exist, a glob matches nothing or a folder holds no shards.
    """
    if isinstance(path_or_glob, (str, os.PathLike)):
        items = [os.fspath(path_or_glob)]
    else:
        items = [os.fspath(p) for p in path_or_glob]
    files: list[str] = []
    for item in items:
        if any(c in item for c in "*?["):
            found = glob(item)
            if not found:
                raise FileNotFoundError(f"no files match {item!r}; check the path and the split name")
            files.extend(found)
        elif isdir(item):
            found = [join(item, n) for n in listdir(item) if SHARD_RE.match(n)]
            if not found:
                raise FileNotFoundError(f"folder {item!r} holds no shard files (<split>-00000-of-00001"
                                        f"{SHARD_SUFFIX}); was it written by write_shards?")
            files.extend(found)
        elif exists(item):
            files.append(item)
        else:
            parent = os.path.dirname(item.rstrip("/")) or "."
            hint = "" if exists(parent) else f" (folder {parent!r} does not exist either)"
            raise FileNotFoundError(f"no such shard file or folder: {item!r}{hint}")
    return sorted(dict.fromkeys(files))


def _iter_lines(path: str) -> Iterator[bytes]:
    with open_file(path, "rb") as raw:
        if path.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                yield from f
        else:
            yield from raw


def iter_records(path_or_glob: str | os.PathLike | Sequence[str | os.PathLike], *, on_error: str = "skip",
                 report: ReadReport | None = None) -> Iterator[Record]:
    """Yields the records of shard files in path order, then line order.

    Args:
        path_or_glob: a shard file, a glob (``dir/train-*.jsonl.gz``), a shard folder (all splits), or a
            list of these; local or ``gs://``.
        on_error: ``'skip'`` counts each bad line, keeps it in ``report.rejected`` and logs the first few;
            ``'raise'`` raises :class:`RecordError` at the first bad line.
        report: optional :class:`ReadReport` filled in while reading (files, counts, rejects).

    Raises:
        FileNotFoundError: nothing to read at ``path_or_glob``.
        RecordError: a bad line with ``on_error='raise'``; the message names the file and line.
        ValueError: an unknown ``on_error``.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    report = report if report is not None else ReadReport()
    files = expand_paths(path_or_glob)

    def reject(path: str, lineno: int, reason: str, raw: bytes, kind: str) -> None:
        item = RejectedRecord(path=path, line=lineno, reason=reason, raw_prefix=_raw_prefix(raw), kind=kind)
        if on_error == "raise":
            raise RecordError(f"{path}:{lineno}: {reason}", kind)
        if report.num_rejected < _MAX_LOGGED_REJECTS:
            logger.warning("skipping bad record %s", item)
        report.add_reject(item)

    for path in files:
        report.files.append(path)
        lineno = 0
        try:
            for raw in _iter_lines(path):
                lineno += 1
                try:
                    record = Record.from_json(raw)
                except RecordError as e:
                    reject(path, lineno, str(e), raw, e.kind)
                    continue
                report.num_records += 1
                yield record
        except (EOFError, OSError, zlib.error) as e:
            reject(path, lineno + 1, f"corrupt or truncated file after line {lineno}: {e}", b"", "corrupt_file")
    if report.num_rejected:
        logger.warning("%s", report.summary())


def read_split(directory: str, split: str, *, on_error: str = "skip",
               report: ReadReport | None = None) -> Iterator[Record]:
    """Yields the records of one split of a shard folder (``<dir>/<split>-*-of-*.jsonl.gz``)."""
    if not isdir(directory):
        raise FileNotFoundError(f"shard folder {directory!r} does not exist; build it first (for the "
                                f"local corpora: `textbooks corpora --out DIR`)")
    return iter_records(shard_pattern(directory, split), on_error=on_error, report=report)


# ----------------------------------------------------------------------------------------------------------
# Writing.


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``<split>-<iiiii>-of-<nnnnn>.jsonl.gz``."""
    if not re.fullmatch(r"[A-Za-z0-9_.]+", split):
        raise ValueError(f"split name {split!r} may hold only letters, digits, '_' and '.'")
    if not 0 <= index < num_shards <= 99_999:
        raise ValueError(f"shard index {index} out of range for {num_shards} shards (at most 99,999)")
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_pattern(directory: str, split: str) -> str:
    """The glob matching all shards of ``split`` in ``directory``."""
    return join(directory, f"{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]{SHARD_SUFFIX}")


class ShardWriter:
    """Streams records of one split into ``num_shards`` gzip JSON Lines files, round-robin by position.

    Files are written under temporary names and renamed when :meth:`close` succeeds, so readers never see
    half-written shards; shards of the same split left over from an earlier write with another shard count
    are removed on close. Use as a context manager::

        with ShardWriter(out_dir, "train", num_shards=4) as w:
            for r in records:
                w.write(r)
        w.stats  # SplitStats

    Args:
        out_dir: the folder (created if missing), local or ``gs://``.
        split: split name written into file names; every record's ``split`` must equal it.
        num_shards: number of files (at least 1; empty files are written when there are fewer records).
        check_unique_ids: raise on a repeated ``id`` within this split (keeps an 8-byte digest per id).
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, num_shards: int = 1, *,
                 check_unique_ids: bool = True):
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}")
        self.out_dir = os.fspath(out_dir)
        self.split = split
        self.num_shards = num_shards
        self.names = [shard_name(split, i, num_shards) for i in range(num_shards)]
        self.paths = [join(self.out_dir, n) for n in self.names]
        self.stats = SplitStats(shards=list(self.names))
        self._seen: set[bytes] | None = set() if check_unique_ids else None
        self._tmp = [p + f".tmp-{os.getpid()}" for p in self.paths]
        makedirs(self.out_dir)
        self._raw = [open_file(t, "wb") for t in self._tmp]
        self._gz = [gzip.GzipFile(filename="", mode="wb", fileobj=r, compresslevel=_GZIP_LEVEL, mtime=0)
                    for r in self._raw]
        self._closed = False

    def write(self, record: Record | Mapping[str, Any]) -> None:
        """Appends one record (a Record or a dict in the record layout).

        Raises:
            RecordError: the record is invalid, its split differs from the writer's, or its id repeats.
        """
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if not isinstance(record, Record):
            record = Record.from_dict(record)
        if record.split != self.split:
            raise RecordError(f"record {record.id!r} has split {record.split!r} but is being written to "
                              f"split {self.split!r} in {self.out_dir}", "wrong_split")
        if self._seen is not None:
            digest = hashlib.blake2b(record.id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            if digest in self._seen:
                raise RecordError(f"duplicate record id {record.id!r} in split {self.split!r}; ids must be "
                                  f"unique and stable", "duplicate_id")
            self._seen.add(digest)
        data = record.to_bytes()
        self._gz[self.stats.num_docs % self.num_shards].write(data)
        self.stats.add(record, record.num_bytes)

    def close(self) -> SplitStats:
        """Finishes the files, moves them into place, removes stale shards of the split; returns the stats."""
        if self._closed:
            return self.stats
        self._closed = True
        for gz, raw in zip(self._gz, self._raw):
            gz.close()
            raw.close()
        for tmp, path in zip(self._tmp, self.paths):
            rename(tmp, path)
        keep = set(self.names)
        for path in glob(shard_pattern(self.out_dir, self.split)):
            if os.path.basename(path) not in keep:
                remove(path)
        return self.stats

    def abort(self) -> None:
        """Closes and deletes the temporary files without touching existing shards."""
        if self._closed:
            return
        self._closed = True
        for gz, raw, tmp in zip(self._gz, self._raw, self._tmp):
            try:
                gz.close()
                raw.close()
            finally:
                if exists(tmp):
                    remove(tmp)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shards(records: Iterable[Record | Mapping[str, Any]], out_dir: str | os.PathLike, split: str,
                 num_shards: int = 1) -> list[str]:
    """Writes ``records`` (all of split ``split``) into ``num_shards`` shard files; returns their paths.

    Deterministic: the same records in the same order give byte-identical files. Record ``i`` goes to shard
    ``i % num_shards``.

    Raises:
        RecordError: an invalid record, a record of another split, or a repeated id (nothing is left behind).
    """
    with ShardWriter(out_dir, split, num_shards) as writer:
        for record in records:
            writer.write(record)
    return list(writer.paths)


def matches_shard_name(name: str, split: str | None = None) -> bool:
    """Whether ``name`` (a base name) is a shard file name, optionally of ``split``."""
    m = SHARD_RE.match(name)
    return bool(m) and (split is None or m.group("split") == split)

"""Beam readers of the curation pipeline (the inputs they read are described in
:mod:`textbooks.curate.input_specs`; the writers are in :mod:`textbooks.curate.writers`).

Readers turn every kind of input (shards, JSON Lines, Parquet read with pyarrow, text folders, source trees
whose binary files are detected and rejected, a data role's shards) into records in the shard layout (plain
dicts, see :mod:`textbooks.data.records`) and send whatever cannot become a valid record to a ``rejects``
output with a reason, file and line; then ids are checked to be unique and splits to be the run's.

Files are listed on the driver (:func:`~textbooks.curate.input_specs.list_input_files`), then read on workers
through ``apache_beam.io.filesystems`` (local, ``gs://``, ...). :func:`read_records` applies the same rules
in-process, without Beam.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import zlib
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from textbooks.curate import stages
from textbooks.curate.input_specs import InputSpec, ReadConfig, list_input_files, parse_input, relpath
from textbooks.curate.textnorm import count_tokens, stable_unit_interval
from textbooks.data import records as rec

STAGE = "read"
_EXT_LANGUAGE = {".py": "python", ".pyi": "python", ".pyw": "python", ".c": "c", ".h": "c", ".cc": "cpp",
                 ".cpp": "cpp", ".hpp": "cpp", ".js": "javascript", ".ts": "typescript", ".java": "java",
                 ".go": "go", ".rs": "rust", ".rb": "ruby", ".sh": "shell", ".md": "markdown", ".rst": "rst",
                 ".txt": "text", ".pl": "perl", ".pm": "perl", ".pod": "pod"}


@contextlib.contextmanager
def _open_lines(path: str):
    """A binary file object to read lines from; gzip goes through Python's gzip module, which (unlike a
    silent stop) raises EOFError on a truncated stream."""
    if not path.endswith(".gz"):
        with FileSystems.open(path) as f:
            yield f
        return
    with FileSystems.open(path, compression_type="uncompressed") as raw:
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            yield f


def _check_writable(record: rec.Record) -> None:
    """Raises :class:`~textbooks.data.records.RecordError` where :meth:`Record.to_bytes` would: a field
    JSON cannot represent (NaN, sets...) or a string that is not valid Unicode. The text, whose UTF-8 the
    reader has just encoded, is not encoded again (it is most of the record)."""
    try:
        json.dumps([record.id, record.role, record.source, record.license, record.split, record.meta],
                   ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError is a ValueError.
        raise rec.RecordError(f"record {record.id!r} cannot be written as JSON: {e}", "wrong_type") from e


class _ReadFileDoFn(beam.DoFn):
    """Reads one input file into records; every line/row/file counts as one input unit."""

    def __init__(self, specs: Sequence[InputSpec], config: ReadConfig):
        self.specs = list(specs)
        self.config = config
        self.counters = None

    def setup(self):
        self.counters = stages.StageCounters(STAGE)

    # -- helpers -------------------------------------------------------------------------------------------

    def _reject(self, reason: str, **kwargs):
        self.counters.inc("rejected")
        self.counters.inc(f"rejected/{reason}")
        return beam.pvalue.TaggedOutput(stages.REJECTS, stages.make_reject(STAGE, reason, **kwargs))

    def _split_for(self, spec: InputSpec, doc_id: str, own: str | None) -> str:
        if spec.split:
            return spec.split
        if own:
            return own
        if self.config.validation_fraction > 0 and \
                stable_unit_interval(doc_id, "split") < self.config.validation_fraction:
            return "validation"
        return self.config.default_split

    def _finish(self, record: dict, path: str, line: int | None):
        """Validates a candidate record; yields it or a reject."""
        text = record.get("text")
        where = {"path": path, "line": line, "doc_id": record.get("id")}
        if not isinstance(text, str):
            yield self._reject("invalid_field", raw=repr(text)[:200], detail="text is not a string", **where)
            return
        if len(text.strip()) < self.config.min_doc_chars:
            yield self._reject("empty", raw=text, detail=f"fewer than {self.config.min_doc_chars} non-space chars",
                               **where)
            return
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            yield self._reject("invalid_unicode", raw=text, detail=f"{e.reason} at position {e.start}", **where)
            return
        if size > self.config.max_doc_bytes:
            yield self._reject("too_large", raw=text, detail=f"{size} bytes > max_doc_bytes "
                                                             f"{self.config.max_doc_bytes}", **where)
            return
        try:
            r = rec.Record.from_dict(record)
            _check_writable(r)
        except rec.RecordError as e:
            yield self._reject("invalid_record", raw=text, detail=str(e), **where)
            return
        self.counters.inc("docs_out")
        self.counters.inc("tokens_out", count_tokens(text))
        yield r.to_dict()

    # -- kinds ---------------------------------------------------------------------------------------------

    def _lines(self, spec: InputSpec, path: str, base: str):
        lineno = 0
        try:
            with _open_lines(path) as f:
                for raw in iter(f.readline, b""):
                    lineno += 1
                    self.counters.inc("units")
                    yield from self._line(spec, path, base, lineno, raw)
        except (OSError, EOFError, ValueError, zlib.error) as e:
            self.counters.inc("units")
            yield self._reject("corrupt_file", path=path, line=lineno + 1,
                               detail=f"unreadable after line {lineno}: {type(e).__name__}: {e}")

    def _line(self, spec: InputSpec, path: str, base: str, lineno: int, raw: bytes):
        where = {"path": path, "line": lineno, "raw": raw}
        if len(raw) > self.config.max_doc_bytes:
            yield self._reject("too_large", detail=f"line of {len(raw)} bytes > max_doc_bytes "
                                                   f"{self.config.max_doc_bytes}", **where)
            return
        if not raw.strip():
            yield self._reject("blank_line", **where)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield self._reject("invalid_utf8", detail=f"invalid UTF-8 at byte {e.start}", **where)
            return
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield self._reject("malformed_json", detail=f"{e.msg} at column {e.colno}", **where)
            return
        if not isinstance(obj, dict):
            yield self._reject("invalid_record", detail=f"expected a JSON object, got {type(obj).__name__}",
                               **where)
            return
        if spec.kind in ("shards", "role"):
            try:
                r = rec.Record.from_dict(obj)
            except rec.RecordError as e:
                yield self._reject("invalid_record", detail=str(e), **where)
                return
            record = r.to_dict()
            if spec.split:
                record["split"] = spec.split
            yield from self._finish(record, path, lineno)
            return
        yield from self._from_row(spec, obj, path, base, lineno, raw)

    def _from_row(self, spec: InputSpec, obj: dict, path: str, base: str, lineno: int, raw: Any):
        if spec.text_field not in obj:
            yield self._reject("missing_field", path=path, line=lineno, raw=raw,
                               detail=f"no field {spec.text_field!r} (set InputSpec.text_field)")
            return
        if spec.id_field:
            doc_id = obj.get(spec.id_field)
            if doc_id is None or doc_id == "":
                yield self._reject("missing_field", path=path, line=lineno, raw=raw,
                                   detail=f"no field {spec.id_field!r} (set InputSpec.id_field)")
                return
            doc_id = str(doc_id)
        else:
            doc_id = f"{spec.source_name}/{relpath(path, base)}:{lineno}"
        names = spec.meta_fields if spec.meta_fields is not None else \
            [k for k in obj if k not in (spec.text_field, spec.id_field)]
        meta = {k: obj[k] for k in names if k in obj}
        meta.setdefault("path", relpath(path, base))
        split = obj.get("split") if isinstance(obj.get("split"), str) else None
        record = {"id": doc_id, "text": obj[spec.text_field], "role": spec.role, "source": spec.source_name,
                  "license": spec.license, "split": self._split_for(spec, doc_id, split), "meta": meta}
        yield from self._finish(record, path, lineno)

    def _parquet(self, spec: InputSpec, path: str, base: str):
        import pyarrow.parquet as pq

        row = 0
        try:
            with FileSystems.open(path) as f:
                pf = pq.ParquetFile(f)
                for batch in pf.iter_batches(batch_size=1024):
                    for obj in batch.to_pylist():
                        row += 1
                        self.counters.inc("units")
                        yield from self._from_row(spec, obj, path, base, row, json.dumps(obj, default=str)[:800])
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for corrupt files.
            self.counters.inc("units")
            yield self._reject("corrupt_file", path=path, line=row + 1,
                               detail=f"unreadable after row {row}: {type(e).__name__}: {e}")

    def _file(self, spec: InputSpec, path: str, base: str, size: int | None):
        self.counters.inc("units")
        rel = relpath(path, base)
        doc_id = f"{spec.source_name}/{rel}"
        if size is not None and size > self.config.max_doc_bytes:
            yield self._reject("too_large", path=path, doc_id=doc_id,
                               detail=f"file of {size} bytes > max_doc_bytes {self.config.max_doc_bytes}")
            return
        try:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                data = f.read(self.config.max_doc_bytes + 1)
        except OSError as e:
            yield self._reject("corrupt_file", path=path, doc_id=doc_id, detail=f"{type(e).__name__}: {e}")
            return
        if len(data) > self.config.max_doc_bytes:
            yield self._reject("too_large", path=path, doc_id=doc_id, raw=data,
                               detail=f"more than max_doc_bytes {self.config.max_doc_bytes}")
            return
        if b"\x00" in data[:8192]:
            yield self._reject("binary_file", path=path, doc_id=doc_id, raw=data, detail="NUL byte in the first 8 KiB")
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            yield self._reject("binary_file" if spec.kind == "source" else "invalid_utf8", path=path,
                               doc_id=doc_id, raw=data, detail=f"invalid UTF-8 at byte {e.start}")
            return
        controls = sum(1 for c in text[:65536] if ord(c) < 32 and c not in "\t\n\r\f\v")
        if controls > self.config.max_control_char_frac * max(min(len(text), 65536), 1):
            yield self._reject("binary_file", path=path, doc_id=doc_id, raw=data,
                               detail=f"{controls} control characters")
            return
        ext = os.path.splitext(path)[1].lower()
        meta = {"path": rel}
        if spec.kind == "source":
            meta["language"] = spec.language or _EXT_LANGUAGE.get(ext, ext.lstrip(".") or "unknown")
        record = {"id": doc_id, "text": text, "role": spec.role, "source": spec.source_name,
                  "license": spec.license, "split": self._split_for(spec, doc_id, None), "meta": meta}
        yield from self._finish(record, path, None)

    def process(self, item: tuple[int, str, str]):
        index, path, base = item
        spec = self.specs[index]
        self.counters.inc("files")
        if spec.kind in ("shards", "role", "jsonl"):
            yield from self._lines(spec, path, base)
        elif spec.kind == "parquet":
            yield from self._parquet(spec, path, base)
        else:
            size = None
            try:
                size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
            except Exception:  # Size unknown: the read itself enforces the limit.
                pass
            yield from self._file(spec, path, base, size)


def read_records(specs: Iterable, config: ReadConfig | None = None, rejects: list | None = None):
    """Reads inputs in this process, without Beam (same rules as :class:`ReadInputs`, minus the id check).

    Args:
        specs: inputs (see :func:`parse_input`).
        config: reading limits.
        rejects: when given, rejected inputs are appended to it.

    Yields:
        Records (dicts in the shard layout), in file order.
    """
    specs = [parse_input(s) for s in specs]
    reader = _ReadFileDoFn(specs, config or ReadConfig())
    reader.setup()
    for i, spec in enumerate(specs):
        for path, base in list_input_files(spec):
            for out in reader.process((i, path, base)):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    if rejects is not None:
                        rejects.append(out.value)
                else:
                    yield out


class _UniqueIdsDoFn(beam.DoFn):
    """Keeps one record per id (the smallest canonical JSON); the others become ``duplicate_id`` rejects."""

    def __init__(self):
        self.counters = None

    def setup(self):
        self.counters = stages.StageCounters("ids")

    def process(self, item):
        doc_id, group = item
        group = list(group)
        if len(group) > 1:
            group.sort(key=lambda r: json.dumps(r, sort_keys=True, ensure_ascii=False))
        yield group[0]
        for r in group[1:]:
            self.counters.inc("rejected")
            self.counters.inc("rejected/duplicate_id")
            yield beam.pvalue.TaggedOutput(stages.REJECTS, stages.make_reject(
                    "ids", "duplicate_id", doc_id=doc_id, raw=r["text"],
                    detail=f"id repeated in the input (source {r['source']!r}); ids must be unique"))


class _CheckSplitDoFn(beam.DoFn):
    """Rejects records whose split is not one of the run's splits (``unknown_split``)."""

    def __init__(self, splits: Sequence[str]):
        self.splits = tuple(splits)
        self.counters = None

    def setup(self):
        self.counters = stages.StageCounters("ids")

    def process(self, record: dict):
        if record["split"] in self.splits:
            yield record
            return
        self.counters.inc("rejected")
        self.counters.inc("rejected/unknown_split")
        yield beam.pvalue.TaggedOutput(stages.REJECTS, stages.make_reject(
                "ids", "unknown_split", doc_id=record["id"], raw=record["text"],
                detail=f"split {record['split']!r} is not one of {list(self.splits)}"))


class _Uncounted:
    """Stands in for :class:`~textbooks.curate.stages.StageCounters` where a read must count nothing."""

    def inc(self, metric: str, n: int = 1) -> None:
        pass


class _RereadFileDoFn(_ReadFileDoFn):
    """Reads one input file again, lazily, into the records :class:`ReadInputs` made of it: the same parsing,
    checks and split assignment, and the same ``CheckSplit`` filter; it counts nothing and drops what the
    first read rejected (each input unit is counted once, by the first read)."""

    def __init__(self, specs: Sequence[InputSpec], config: ReadConfig, splits: Sequence[str]):
        super().__init__(specs, config)
        self.splits = tuple(splits)

    def setup(self):
        self.counters = _Uncounted()

    def process(self, item: tuple[int, str, str]):
        for out in super().process(item):
            if not isinstance(out, beam.pvalue.TaggedOutput) and out["split"] in self.splits:
                yield out


class Reread(beam.PTransform):
    """The records of a :class:`ReadInputs` read again from the same files (listed once, on the driver, by
    that ``ReadInputs``): a later stage can take the texts from the input instead of from a shuffle. Without
    the id check: with ``check_unique_ids`` the first read drops repeated ids, which a second read cannot
    know, so :meth:`ReadInputs.reread` refuses it."""

    def __init__(self, reader: "ReadInputs"):
        super().__init__()
        self.reader = reader

    def expand(self, pbegin):
        r = self.reader
        return (pbegin
                | "ListFiles" >> beam.Create(r.files)
                | "Spread" >> beam.Reshuffle()
                | "ReadFiles" >> beam.ParDo(_RereadFileDoFn(r.specs, r.config, r.splits)))


class ReadInputs(beam.PTransform):
    """Reads all inputs; returns a tuple-like with ``records`` (main) and ``rejects``.

    Args:
        specs: the inputs (see :func:`parse_input`).
        config: reading limits.
        splits: allowed splits; records of another split are rejected as ``unknown_split``.
    """

    def __init__(self, specs: Iterable, config: ReadConfig | None = None, splits: Sequence[str] = ("train",
                                                                                                       "validation")):
        super().__init__()
        self.specs = [parse_input(s) for s in specs]
        self.config = config or ReadConfig()
        self.splits = tuple(splits)
        self.files = [(i, path, base) for i, spec in enumerate(self.specs) for path, base in list_input_files(spec)]

    def reread(self) -> Reread:
        """A transform that reads these records again (see :class:`Reread`)."""
        if self.config.check_unique_ids:
            raise ValueError("ReadInputs.reread: with ReadConfig.check_unique_ids the records are those left "
                             "after dropping repeated ids, which a second read cannot reproduce; set "
                             "check_unique_ids=False or take the records from the first read")
        return Reread(self)

    def expand(self, pbegin):
        out = (pbegin
               | "ListFiles" >> beam.Create(self.files)
               | "Spread" >> beam.Reshuffle()
               | "ReadFiles" >> beam.ParDo(_ReadFileDoFn(self.specs, self.config)).with_outputs(
                       stages.REJECTS, main="records"))
        records, rejects = out.records, out[stages.REJECTS]
        checked = records | "CheckSplit" >> beam.ParDo(_CheckSplitDoFn(self.splits)).with_outputs(
                stages.REJECTS, main="ok")
        records, more = checked.ok, checked[stages.REJECTS]
        rejects_all = [rejects, more]
        if self.config.check_unique_ids:
            uniq = (records
                    | "KeyById" >> beam.Map(lambda r: (r["id"], r))
                    | "GroupById" >> beam.GroupByKey()
                    | "OnePerId" >> beam.ParDo(_UniqueIdsDoFn()).with_outputs(stages.REJECTS, main="unique"))
            records = uniq.unique
            rejects_all.append(uniq[stages.REJECTS])
        rejects = tuple(rejects_all) | "AllRejects" >> beam.Flatten()
        return {"records": records, "rejects": rejects}

"""Beam writers of the curation pipeline: shards in the project's record format, side files, the manifest.

Kept records are written as gzip JSON Lines named like the shard format (``<split>-SSSSS-of-NNNNN.jsonl.gz``,
see :mod:`textbooks.data.records`) by a Beam file sink that compresses at ``gzip_level`` (Beam's own text sink
always uses zlib's default, 6); per-split counts are combined in the pipeline and a final step writes
``manifest.json``. Side outputs (rejects, dropped documents, dedup clusters, decontamination matches, report
inputs) are gzip JSON Lines too.

Compression is the largest single CPU item of a curation run that keeps most of its input (it touches every
kept byte once). :data:`DEFAULT_GZIP_LEVEL` is 1: on real text it writes files about 20% larger than level 6
in about a third of the time, and reading (decompression) costs the same at every level. Raise it
(``curate.gzip_level``, 1-9) when disk matters more than curation CPU.
"""

from __future__ import annotations

import json
import posixpath
import zlib

import apache_beam as beam
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes

from textbooks.data import manifest as manifests
from textbooks.data import records as rec

DEFAULT_GZIP_LEVEL = 1
_SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
_GZIP_WBITS = 31  # zlib's gzip container (header with mtime 0, so equal input gives equal bytes)


def check_gzip_level(level: int) -> int:
    """``level`` if it is a gzip level (1-9); else a ValueError that says how to set it."""
    if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 9:
        raise ValueError(f"gzip_level must be an integer from 1 (fastest) to 9 (smallest), got {level!r} "
                         f"(gin: curate.gzip_level = {DEFAULT_GZIP_LEVEL})")
    return level


class _GzipStream:
    """A gzip stream at a chosen level on top of a Beam file handle (closing it closes the handle)."""

    def __init__(self, raw, level: int):
        self.raw = raw
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)

    def write(self, data: bytes) -> None:
        out = self._compressor.compress(data)
        if out:
            self.raw.write(out)

    def close(self) -> None:
        self.raw.write(self._compressor.flush())
        self.raw.close()


class _GzipLinesSink(FileBasedSink):
    """Strings as UTF-8 lines in gzip files at ``level`` (Beam's ``FileBasedSink`` does the sharding, the
    temporary files and their renaming)."""

    def __init__(self, prefix: str, suffix: str, num_shards: int, level: int):
        super().__init__(prefix, coder=None, file_name_suffix=suffix, num_shards=num_shards,
                         shard_name_template=_SHARD_TEMPLATE, mime_type="application/gzip",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self.level = check_gzip_level(level)

    def open(self, temp_path):
        return _GzipStream(super().open(temp_path), self.level)

    def write_record(self, file_handle, value: str) -> None:
        file_handle.write(value.encode("utf-8") + b"\n")


def _write_lines(lines, prefix: str, suffix: str, num_shards: int, level: int):
    return lines | "Write" >> beam.io.Write(_GzipLinesSink(prefix, suffix, num_shards, level))



def _to_line(record: dict) -> str:
    return rec.Record.from_dict(record).to_json()


class WriteShards(beam.PTransform):
    """Writes records of one split as ``<output_dir>/<split>-SSSSS-of-NNNNN.jsonl.gz``; returns the file paths.

    Args:
        num_shards: number of files; 0 lets the runner choose.
        gzip_level: gzip compression level, 1 (fastest) to 9 (smallest).
    """

    def __init__(self, output_dir: str, split: str, num_shards: int = 0, gzip_level: int = DEFAULT_GZIP_LEVEL):
        super().__init__()
        rec.shard_name(split, 0, 1)  # Validates the split name.
        self.prefix = rec.join(output_dir, split)
        self.num_shards = num_shards
        self.gzip_level = check_gzip_level(gzip_level)

    def expand(self, records):
        return _write_lines(records | "ToJson" >> beam.Map(_to_line), self.prefix, rec.SHARD_SUFFIX,
                            self.num_shards, self.gzip_level)


class WriteJsonl(beam.PTransform):
    """Writes JSON-able dicts as gzip JSON Lines ``<prefix>-SSSSS-of-NNNNN.jsonl.gz`` (side outputs)."""

    def __init__(self, prefix: str, num_shards: int = 1, gzip_level: int = DEFAULT_GZIP_LEVEL):
        super().__init__()
        self.prefix = prefix
        self.num_shards = num_shards
        self.gzip_level = check_gzip_level(gzip_level)

    def expand(self, items):
        lines = items | "ToJson" >> beam.Map(lambda x: json.dumps(x, ensure_ascii=False, sort_keys=True, default=str))
        return _write_lines(lines, self.prefix, ".jsonl.gz", self.num_shards, self.gzip_level)


class SplitStatsFn(beam.CombineFn):
    """Combines records into the manifest's per-split counts (documents, bytes, sources, licenses)."""

    def create_accumulator(self):
        return rec.SplitStats()

    def add_input(self, acc, record):
        r = rec.Record.from_dict(record)
        acc.add(r, r.num_bytes)
        return acc

    def merge_accumulators(self, accs):
        out = rec.SplitStats()
        for a in accs:
            out.num_docs += a.num_docs
            out.num_bytes += a.num_bytes
            for mine, theirs in ((out.sources, a.sources), (out.licenses, a.licenses),
                                 (out.stand_ins, a.stand_ins)):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
        return out

    def extract_output(self, acc):
        return acc.to_dict()


def write_manifest(_, *, output_dir: str, role: str, stats: dict, files: list[str], description: str,
                   meta: dict) -> str:
    """Writes ``manifest.json`` from per-split stats and the written file paths (a Beam step's body)."""
    splits = {}
    for split, s in sorted(stats.items()):
        names = sorted(posixpath.basename(f) for f in files if rec.matches_shard_name(posixpath.basename(f), split))
        split_stats = rec.SplitStats.from_dict(s)
        split_stats.shards = names
        splits[split] = split_stats
    manifest = manifests.Manifest(role=role, splits=splits, description=description, meta=meta,
                            stand_in=_stand_in(splits))
    return manifests.write_manifest(output_dir, manifest)


def _stand_in(splits: dict) -> str | None:
    notes = sorted({k for s in splits.values() for k in s.stand_ins})
    return "; ".join(notes) if notes else None

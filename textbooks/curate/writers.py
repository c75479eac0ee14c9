"""Beam writers of the curation pipeline: shards in the project's record format, side files, the manifest.

Kept records are written with ``WriteToText`` as gzip JSON Lines named like the shard format
(``<split>-SSSSS-of-NNNNN.jsonl.gz``, see :mod:`textbooks.data.records`); per-split counts are combined in the
pipeline and a final step writes ``manifest.json``. Side outputs (rejects, dropped documents, dedup
clusters, decontamination matches, report inputs) are gzip JSON Lines too.
"""

from __future__ import annotations

import json
import posixpath

import apache_beam as beam

from textbooks.data import records as rec
from textbooks.data import manifest as manifests



def _to_line(record: dict) -> str:
    return rec.Record.from_dict(record).to_json()


class WriteShards(beam.PTransform):
    """Writes records of one split as ``<output_dir>/<split>-SSSSS-of-NNNNN.jsonl.gz``; returns the file paths.

    Args:
        num_shards: number of files; 0 lets the runner choose.
    """

    def __init__(self, output_dir: str, split: str, num_shards: int = 0):
        super().__init__()
        rec.shard_name(split, 0, 1)  # Validates the split name.
        self.prefix = rec.join(output_dir, split)
        self.num_shards = num_shards

    def expand(self, records):
        return (records
                | "ToJson" >> beam.Map(_to_line)
                | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=rec.SHARD_SUFFIX,
                                                 num_shards=self.num_shards,
                                                 shard_name_template="-SSSSS-of-NNNNN"))


class WriteJsonl(beam.PTransform):
    """Writes JSON-able dicts as gzip JSON Lines ``<prefix>-SSSSS-of-NNNNN.jsonl.gz`` (side outputs)."""

    def __init__(self, prefix: str, num_shards: int = 1):
        super().__init__()
        self.prefix = prefix
        self.num_shards = num_shards

    def expand(self, items):
        return (items
                | "ToJson" >> beam.Map(lambda x: json.dumps(x, ensure_ascii=False, sort_keys=True, default=str))
                | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl.gz",
                                                 num_shards=self.num_shards,
                                                 shard_name_template="-SSSSS-of-NNNNN"))


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

"""The data layer shared by every stage: the shard format (:mod:`.records`, with its counts in :mod:`.counts`),
the folder manifest (:mod:`.manifest`), data locations (:mod:`.paths`), file access for local and ``gs://``
paths (:mod:`.files`) and the data roles with their ids (:mod:`.roles`).

Nothing here imports the packages above it (tokens, mixtures, the input pipeline); seqio tasks live in
:mod:`mixtures`, the input pipeline in :mod:`textbooks.inputs`.
"""

from textbooks.data.counts import ReadReport, RejectedRecord, SplitStats
from textbooks.data.manifest import Manifest, read_manifest, write_manifest
from textbooks.data.paths import SPLITS, data_root, role_dir, split_pattern
from textbooks.data.records import (
    FORMAT_VERSION,
    Record,
    RecordError,
    ShardWriter,
    iter_records,
    read_split,
    shard_pattern,
    write_shards,
)
from textbooks.data.roles import ROLE_IDS, ROLES

__all__ = [
    "FORMAT_VERSION", "Manifest", "ROLES", "ROLE_IDS", "ReadReport", "Record", "RecordError", "RejectedRecord",
    "SPLITS", "ShardWriter", "SplitStats", "data_root", "iter_records", "read_manifest", "read_split", "role_dir",
    "shard_pattern", "split_pattern", "write_manifest", "write_shards",
]

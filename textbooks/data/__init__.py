"""The data layer shared by every stage: the shard format (:mod:`.records`), the folder manifest
(:mod:`.manifest`) and data locations (:mod:`.paths`).

Only light modules are imported here; seqio sources and input pipelines live in their own modules.
"""

from textbooks.data.manifest import Manifest, read_manifest, write_manifest
from textbooks.data.paths import ROLES, SPLITS, data_root, role_dir, split_pattern
from textbooks.data.records import (
    FORMAT_VERSION,
    ReadReport,
    Record,
    RecordError,
    RejectedRecord,
    ShardWriter,
    SplitStats,
    iter_records,
    read_split,
    shard_pattern,
    write_shards,
)

__all__ = [
    "FORMAT_VERSION", "Manifest", "ROLES", "ReadReport", "Record", "RecordError", "RejectedRecord", "SPLITS",
    "ShardWriter", "SplitStats", "data_root", "iter_records", "read_manifest", "read_split", "role_dir",
    "shard_pattern", "split_pattern", "write_manifest", "write_shards",
]

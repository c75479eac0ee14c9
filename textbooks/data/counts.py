"""What reading and writing shards counted: a written split's counts and a read's report.

* :class:`SplitStats`: one split's shard names, documents, bytes, sources, licenses and stand-ins; what a shard
  writer returns and a manifest stores per split. Counting needs only a document's ``source``, ``license``
  and ``meta['stand_in']`` besides its UTF-8 size (a :class:`textbooks.data.records.Record` has them).
* :class:`ReadReport`: the files a read went through, the records it accepted, and every line it rejected
  (a :class:`RejectedRecord` with file, line, reason and first characters).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Protocol

_MAX_KEPT_REJECTS = 10_000


class Counted(Protocol):
    """What :meth:`SplitStats.add` reads of a document."""

    source: str
    license: str
    meta: dict


@dataclasses.dataclass
class SplitStats:
    """Counts for one split: shard file names (relative to the folder), documents, UTF-8 bytes of text."""

    shards: list[str] = dataclasses.field(default_factory=list)
    num_docs: int = 0
    num_bytes: int = 0
    sources: dict[str, int] = dataclasses.field(default_factory=dict)
    licenses: dict[str, int] = dataclasses.field(default_factory=dict)
    stand_ins: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, record: Counted, num_bytes: int) -> None:
        """Counts one document of ``num_bytes`` bytes of text."""
        self.num_docs += 1
        self.num_bytes += num_bytes
        for table, key in ((self.sources, record.source), (self.licenses, record.license)):
            table[key] = table.get(key, 0) + 1
        stand_in = record.meta.get("stand_in")
        if stand_in:
            self.stand_ins[str(stand_in)] = self.stand_ins.get(str(stand_in), 0) + 1

    def to_dict(self) -> dict:
        return {"shards": list(self.shards), "num_docs": self.num_docs, "num_bytes": self.num_bytes,
                "sources": dict(sorted(self.sources.items())), "licenses": dict(sorted(self.licenses.items())),
                "stand_ins": dict(sorted(self.stand_ins.items()))}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "SplitStats":
        return cls(shards=list(obj.get("shards", [])), num_docs=int(obj.get("num_docs", 0)),
                   num_bytes=int(obj.get("num_bytes", 0)), sources=dict(obj.get("sources", {})),
                   licenses=dict(obj.get("licenses", {})), stand_ins=dict(obj.get("stand_ins", {})))


@dataclasses.dataclass(frozen=True)
class RejectedRecord:
    """A line that could not be read: where it is, why, and its first characters."""

    path: str
    line: int
    reason: str
    raw_prefix: str
    kind: str = "invalid"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason} (starts {self.raw_prefix[:60]!r})"


@dataclasses.dataclass
class ReadReport:
    """What :func:`textbooks.data.records.iter_records` read: filled in while iterating, complete when the
    iterator is exhausted.

    ``rejected`` keeps the first 10,000 rejects; ``num_rejected`` and ``reasons`` count all of them.
    """

    files: list[str] = dataclasses.field(default_factory=list)
    num_records: int = 0
    num_rejected: int = 0
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    rejected: list[RejectedRecord] = dataclasses.field(default_factory=list)

    def add_reject(self, reject: RejectedRecord) -> None:
        """Counts ``reject``; keeps it while fewer than 10,000 are kept."""
        self.num_rejected += 1
        self.reasons[reject.kind] += 1
        if len(self.rejected) < _MAX_KEPT_REJECTS:
            self.rejected.append(reject)

    def summary(self) -> str:
        """One line: files, records read, rejects by kind."""
        text = f"read {self.num_records} records from {len(self.files)} file(s), rejected {self.num_rejected}"
        if self.num_rejected:
            text += " (" + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()) + ")"
        return text

"""The near dedup's drop decisions as one compact table, for the paths that give every worker all of them (a
side input: ``decisions='side_input'`` and ``'reread'`` in :mod:`textbooks.curate.dedup`).

A dict from id to ``{duplicate_of, cluster_size}`` costs a worker about 450 bytes per dropped document (the
id, the survivor's id decoded again for every member, a dict and its slot). :class:`DropTable` holds the same
decisions as numpy arrays: the 16-byte BLAKE2b digest of each dropped id (sorted, looked up by binary
search), its cluster size, and the row of its survivor in one UTF-8 blob of the survivors' ids: 24 bytes per
dropped document and the survivor's id once per cluster. A digest stands for its id, as the exact dedup's
16-byte text digest stands for its text: two ids with one digest are a 2**-128 event.
"""

from __future__ import annotations

import array

import apache_beam as beam
import numpy as np

from textbooks.curate.textnorm import digest16

_DIGEST = 16


def id_digest(doc_id: str) -> bytes:
    """The 16-byte digest that stands for ``doc_id`` in a :class:`DropTable` (:func:`textnorm.digest16`)."""
    return digest16(doc_id)


class DropTable:
    """Dropped ids (by digest) -> their decision; :meth:`get` answers like ``dict.get`` on
    ``{id: {'duplicate_of': ..., 'cluster_size': ...}}``."""

    def __init__(self, digests: np.ndarray, sizes: np.ndarray, rows: np.ndarray, survivors: bytes,
                 offsets: np.ndarray):
        self.digests = digests  # S16, sorted
        self.sizes = sizes  # int32 cluster size per digest
        self.rows = rows  # int32 survivor row per digest
        self.survivors = survivors  # the survivors' ids, UTF-8, end to end
        self.offsets = offsets  # int64 [survivors + 1]

    @classmethod
    def build(cls, digests: bytes, sizes: array.array, survivors: list[str]) -> "DropTable":
        """From the end-to-end digests of the dropped ids, their cluster sizes and their survivors' ids."""
        keys = np.frombuffer(digests, dtype=f"S{_DIGEST}")
        order = np.argsort(keys, kind="stable")
        names: dict[str, int] = {}
        rows = np.fromiter((names.setdefault(s, len(names)) for s in survivors), dtype=np.int32,
                           count=len(survivors))
        encoded = [s.encode("utf-8", "surrogatepass") for s in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return cls(keys[order], np.asarray(sizes, dtype=np.int32)[order], rows[order], b"".join(encoded), offsets)

    def __len__(self) -> int:
        return len(self.digests)

    def get(self, doc_id: str, default=None):
        """``{'duplicate_of': survivor id, 'cluster_size': n}`` if ``doc_id`` was dropped, else ``default``."""
        key = np.frombuffer(id_digest(doc_id), dtype=f"S{_DIGEST}")[0]
        i = int(np.searchsorted(self.digests, key))
        if i == len(self.digests) or self.digests[i] != key:
            return default
        row = int(self.rows[i])
        survivor = self.survivors[self.offsets[row]:self.offsets[row + 1]].decode("utf-8", "surrogatepass")
        return {"duplicate_of": survivor, "cluster_size": int(self.sizes[i])}


class DropTableFn(beam.CombineFn):
    """``(id, {duplicate_of, cluster_size})`` decisions -> one :class:`DropTable`. The accumulator keeps the
    digests and sizes packed (and the survivors' ids), so the worker that merges holds no dict per decision."""

    def create_accumulator(self):
        return bytearray(), array.array("q"), []

    def add_input(self, acc, decision):
        doc_id, info = decision
        acc[0].extend(id_digest(doc_id))
        acc[1].append(info["cluster_size"])
        acc[2].append(info["duplicate_of"])
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for digests, sizes, survivors in accs:
            out[0].extend(digests)
            out[1].extend(sizes)
            out[2].extend(survivors)
        return out

    def extract_output(self, acc):
        return DropTable.build(bytes(acc[0]), acc[1], acc[2])

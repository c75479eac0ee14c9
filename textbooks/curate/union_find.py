"""The one-worker connected components of the near-duplicate candidate graph: its nodes (:func:`node_key`,
one bytes object per document that sorts like ``(priority, id)``), the edges packed with each distinct node
once (:class:`EdgePack`, 8 bytes an edge) and merged on one worker by a ``CombineFn`` (:class:`PackEdgesFn`),
and a vectorized union-find over them (:func:`connected_components`). :mod:`textbooks.curate.components`
chooses between this and its distributed rounds.
"""

from __future__ import annotations

import array
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np

_RANK = 8  # bytes of a node's rank in node_key
_RANK_BIAS = 1 << 63


def node_key(rank: int, doc_id: bytes) -> bytes:
    """A document's node as one bytes object that sorts like ``(rank, id)`` (bytes compare like the ids'
    code points in UTF-8): the rank as 8 bytes, big-endian, offset by 2**63, then the id's UTF-8."""
    return (rank + _RANK_BIAS).to_bytes(_RANK, "big") + doc_id


def node_id(node) -> str:
    """The document id of a node: a :func:`node_key`, or the second element of a ``(priority, id)`` tuple."""
    return node[_RANK:].decode("utf-8", "surrogatepass") if isinstance(node, bytes) else node[1]


class EdgePack:
    """Edges with each distinct node held once: the nodes in the order first seen and the edges as pairs of
    their indices (uint32, 8 bytes an edge). It is the accumulator that carries the candidate edges to the
    one-worker union-find (:class:`PackEdgesFn`), so neither the shuffle nor that worker holds two node
    objects per edge, and :meth:`components` resolves them with numpy."""

    def __init__(self):
        self.nodes: list = []
        self.pairs = array.array("I")
        self._index: dict | None = {}

    def _lookup(self) -> dict:
        if self._index is None:  # after unpickling: rebuilt only where edges are added
            self._index = {node: i for i, node in enumerate(self.nodes)}
        return self._index

    def _add_node(self, index: dict, node) -> int:
        i = index.get(node)
        if i is None:
            i = index[node] = len(self.nodes)
            self.nodes.append(node)
        return i

    def add(self, u, v) -> None:
        index = self._lookup()
        self.pairs.append(self._add_node(index, u))
        self.pairs.append(self._add_node(index, v))

    def merge(self, other: "EdgePack") -> None:
        index = self._lookup()
        remap = np.fromiter((self._add_node(index, node) for node in other.nodes), dtype=np.uint32,
                            count=len(other.nodes))
        self.pairs.frombytes(remap[np.frombuffer(other.pairs, dtype=np.uint32)].tobytes())

    def __getstate__(self):
        return {"nodes": self.nodes, "pairs": self.pairs.tobytes()}

    def __setstate__(self, state):
        self.nodes, self.pairs, self._index = state["nodes"], array.array("I"), None
        self.pairs.frombytes(state["pairs"])

    def components(self) -> Iterator[list]:
        """The connected components, each a sorted list of its nodes, in the order of their smallest nodes."""
        self._index = None  # not needed from here on
        n = len(self.nodes)
        if not n:
            return
        pairs = np.frombuffer(self.pairs, dtype=np.uint32).astype(np.int64)
        roots = _roots(n, pairs[0::2], pairs[1::2])
        rank = np.empty(n, dtype=np.int64)
        rank[sorted(range(n), key=self.nodes.__getitem__)] = np.arange(n)
        first = np.full(n, n, dtype=np.int64)
        np.minimum.at(first, roots, rank)
        order = np.lexsort((rank, first[roots]))
        bounds = np.flatnonzero(np.diff(roots[order])) + 1
        for members in np.split(order, bounds):
            yield [self.nodes[i] for i in members]


def _roots(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Union-find on node indices, vectorized: every round hooks the larger root of each edge whose ends have
    different roots under the smallest root it meets, then compresses paths until every node points at its
    root. A root that is smallest among its neighbouring roots gains at least one of them each round, so the
    number of roots of a component at least halves: O(log n) rounds. Returns each node's root."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            return parent
        lo, hi = np.minimum(pu[differ], pv[differ]), np.maximum(pu[differ], pv[differ])
        np.minimum.at(parent, hi, lo)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def connected_components(edges: Iterable[tuple]) -> list[list[tuple]]:
    """Union-find (one process): components of an undirected graph given as node pairs (nodes are comparable
    and hashable); each sorted, the first element being the component's smallest node, in the order of those."""
    pack = EdgePack()
    for u, v in edges:
        pack.add(u, v)
    return list(pack.components())


class PackEdgesFn(beam.CombineFn):
    """Edges -> one :class:`EdgePack` (each worker packs its share, and the packs merge on one)."""

    def create_accumulator(self) -> EdgePack:
        return EdgePack()

    def add_input(self, pack: EdgePack, edge: tuple) -> EdgePack:
        pack.add(*edge)
        return pack

    def merge_accumulators(self, packs: Iterable[EdgePack]) -> EdgePack:
        packs = iter(packs)
        out = next(packs)
        for pack in packs:
            out.merge(pack)
        return out

    def extract_output(self, pack: EdgePack) -> EdgePack:
        return pack

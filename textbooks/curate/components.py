"""Connected components of the near-duplicate candidate graph, as Beam stages with no single-worker step.

The graph's nodes are comparable values (the MinHash stage uses ``(priority, id)`` tuples); its edges are node
pairs. Every component is resolved to a star around its smallest node, which is what the dedup stage needs:
each node ``v`` that is not the smallest of its component gets the edge ``(v, min)``.

Algorithm: large-star / small-star (Kiveris et al., "Connected Components in MapReduce and Beyond", SoCC 2014).
One round is a large-star step followed by a small-star step:

* large-star: every node ``u`` links each larger neighbour to ``m(u)``, the smallest of ``u`` and its neighbours;
* small-star: every node ``u`` links itself and each smaller neighbour to the smallest of them.

Neither step changes the components; a round that leaves the edge set unchanged means every component is a star
around its minimum (then every later round is a no-op). The number of rounds is O(log² n) in the worst case and
a handful on real candidate graphs.

Memory: each step groups the edges by node and streams a node's grouped neighbours twice (once for their
minimum, once to emit), never collecting them into a list; runners page grouped values (Dataflow, Flink and
Spark all re-iterate them from the shuffle), so no worker holds more than the edges of its bundle, even for
the centre of a giant component.

Beam graphs have no loops, so :class:`DistributedComponents` unrolls ``max_rounds`` rounds. Each round counts
the edges that changed (the symmetric difference of its input and output edge sets, found by the same
``GroupByKey`` on the edge that removes duplicate edges) and
hands that count to the next round as a singleton side input; a round after a converged one passes the edges
through without shuffling them. After the last round a check raises :class:`ComponentsNotConvergedError` if the
last round still changed edges (raise ``ComponentsConfig.max_rounds``). Counters (namespace
``textbooks.curate``): ``<stage>/components_rounds`` (rounds that changed something) and
``<stage>/components_changed_edges``.

:class:`Components` chooses between this and the single-worker union-find
(:func:`textbooks.curate.dedup.connected_components`, all edges under one key: fine for small corpora) from the
number of distinct candidate edges, at run time, through a side input: ``ComponentsConfig.method`` ``'auto'``
uses the union-find up to ``union_find_max_edges`` edges; ``'union_find'`` or ``'distributed'`` forces one. The
counter ``<stage>/components_union_find`` or ``<stage>/components_distributed`` (1) says which ran; the curation
report shows them. Both give the same components.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import apache_beam as beam
import gin

from textbooks.curate import stages

METHODS = ("auto", "union_find", "distributed")


class ComponentsNotConvergedError(RuntimeError):
    """The distributed connected components still changed in their last unrolled round."""


@gin.configurable
@dataclasses.dataclass
class ComponentsConfig:
    """How the connected components of the candidate graph are computed.

    Attributes:
        method: ``'auto'`` (union-find up to ``union_find_max_edges`` distinct candidate edges, else
            distributed), ``'union_find'`` (one worker) or ``'distributed'`` (large-star/small-star rounds).
        union_find_max_edges: the largest candidate-edge count that ``'auto'`` resolves on one worker.
        max_rounds: rounds unrolled into the Beam graph; a graph still changing after them is an error.
    """

    method: str = "auto"
    union_find_max_edges: int = 2_000_000
    max_rounds: int = 12

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"ComponentsConfig.method must be one of {METHODS}, got {self.method!r} "
                             f"(gin: ComponentsConfig.method = 'auto')")
        if self.max_rounds < 1 or self.union_find_max_edges < 0:
            raise ValueError("ComponentsConfig: max_rounds must be >= 1 and union_find_max_edges >= 0, got "
                             f"{self.max_rounds} and {self.union_find_max_edges}")


def connected_components(edges: Iterable[tuple]) -> list[list[tuple]]:
    """Union-find (one process): components of an undirected graph given as node pairs (nodes are comparable);
    each sorted, the first element being the component's smallest node."""
    parent: dict = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # Path compression.
            parent[x], x = root, parent[x]
        return root

    for u, v in edges:
        parent.setdefault(u, u)
        parent.setdefault(v, v)
        ru, rv = find(u), find(v)
        if ru != rv:
            if rv < ru:
                ru, rv = rv, ru
            parent[rv] = ru
    groups: dict = {}
    for node in parent:
        groups.setdefault(find(node), []).append(node)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def canonical(edge: tuple) -> tuple:
    """The undirected edge as ``(smaller, larger)``."""
    u, v = edge
    return (u, v) if u <= v else (v, u)


def _both_directions(edge: tuple):
    u, v = edge
    yield u, v
    yield v, u


def _larger_first(edge: tuple):
    u, v = edge
    yield (u, v) if u > v else (v, u)


def _large_star(item):
    """``u`` with its neighbours: each larger neighbour gets an edge to the smallest of ``u`` and them. The
    grouped neighbours are iterated twice (min, then emit), never collected."""
    u, nbrs = item
    m = min(u, min(nbrs))
    for v in nbrs:
        if v > u:
            yield (m, v)


def _small_star(item):
    """``u`` with its smaller neighbours: they and ``u`` get an edge to the smallest of them."""
    u, nbrs = item
    m = min(u, min(nbrs))
    for v in nbrs:
        if v != m:
            yield (m, v)
    if u != m:
        yield (m, u)


class _Star(beam.PTransform):
    """One star step: keys each edge by a node (``direct``), groups, and streams each node's edges through
    ``emit``. Both emitters give edges as ``(smaller, larger)``; duplicates are removed by the round."""

    def __init__(self, direct: Callable, emit: Callable):
        super().__init__()
        self.direct = direct
        self.emit = emit

    def expand(self, edges):
        return (edges
                | "Direct" >> beam.FlatMap(self.direct)
                | "Group" >> beam.GroupByKey()
                | "Emit" >> beam.FlatMap(self.emit))


def _compare(item):
    """An edge with the tags of the sets it is in (0: before the round, 1: after): the new edge set, distinct,
    on the main output, and a ``changed`` mark when it is in one set only."""
    edge, tags = item
    tags = set(tags)
    if 1 in tags:
        yield edge
    if len(tags) == 1:
        yield beam.pvalue.TaggedOutput("changed", 1)


class _Round(beam.PTransform):
    """A large-star and a small-star step, skipped (edges passed through) when ``prev_changed`` is 0.

    Returns ``(edges, changed)``: the new edge set and a one-element PCollection with the number of edges in
    the symmetric difference of the input and output edge sets.
    """

    def __init__(self, prev_changed):
        super().__init__()
        self.prev_changed = prev_changed

    def expand(self, edges):
        flag = beam.pvalue.AsSingleton(self.prev_changed)
        active = edges | "Active" >> beam.Filter(lambda e, c: c != 0, flag)
        idle = edges | "Idle" >> beam.Filter(lambda e, c: c == 0, flag)
        new = (active
               | "LargeStar" >> _Star(_both_directions, _large_star)
               | "SmallStar" >> _Star(_larger_first, _small_star))
        compared = ((active | "TagOld" >> beam.Map(lambda e: (e, 0)), new | "TagNew" >> beam.Map(lambda e: (e, 1)))
                    | "Both" >> beam.Flatten()
                    | "ByEdge" >> beam.GroupByKey()
                    | "Compare" >> beam.FlatMap(_compare).with_outputs("changed", main="edges"))
        changed = compared.changed | "CountChanged" >> beam.combiners.Count.Globally()
        out = (compared.edges, idle) | "Merge" >> beam.Flatten()
        return out, changed


class _CountRounds(beam.DoFn):
    def __init__(self, stage: str, max_rounds: int):
        self.stage = stage
        self.max_rounds = max_rounds

    def setup(self):
        self.counters = stages.StageCounters(self.stage)

    def process(self, _, changes: list):
        rounds = sum(1 for c in changes if c)
        self.counters.inc("components_rounds", rounds)
        self.counters.inc("components_changed_edges", sum(changes))
        if changes and changes[-1]:
            raise ComponentsNotConvergedError(
                    f"{self.stage}: connected components did not converge in {self.max_rounds} rounds "
                    f"({changes[-1]} edges still changed in the last one); raise ComponentsConfig.max_rounds "
                    f"(gin: ComponentsConfig.max_rounds = {2 * self.max_rounds})")
        yield rounds


class DistributedComponents(beam.PTransform):
    """Candidate edges -> star edges ``(component minimum, node)`` for every node that is not its component's
    minimum, by large-star/small-star rounds (see the module docstring)."""

    def __init__(self, max_rounds: int = 12, stage: str = "near_dedup"):
        super().__init__()
        self.max_rounds = max_rounds
        self.stage = stage

    def expand(self, edges):
        p = edges.pipeline
        current = (edges
                   | "Canonical" >> beam.Map(canonical)
                   | "NoLoops" >> beam.Filter(lambda e: e[0] != e[1])
                   | "Distinct" >> beam.Distinct())
        changed = p | "Start" >> beam.Create([1])
        changes = []
        for i in range(self.max_rounds):
            current, changed = current | f"Round{i + 1}" >> _Round(changed)
            changes.append(changed)
        numbered = [c | f"Number{i}" >> beam.Map(lambda n, i=i: (i, n)) for i, c in enumerate(changes)]
        ordered = (tuple(numbered)
                   | "AllChanges" >> beam.Flatten()
                   | "Gather" >> beam.combiners.ToList()
                   | "Ordered" >> beam.Map(lambda pairs: [n for _, n in sorted(pairs)]))
        _ = (p | "CheckTrigger" >> beam.Create([None])
             | "Check" >> beam.ParDo(_CountRounds(self.stage, self.max_rounds), beam.pvalue.AsSingleton(ordered)))
        return current


# ----------------------------------------------------------------------------------------------------------
# Choosing the method; decisions and cluster summaries.

CLUSTER_MEMBERS = 20


def _summary(stage: str, keeper: tuple, size: int, others: Iterable[tuple]) -> dict:
    members = [keeper[1]] + [node[1] for node in sorted(others)[:CLUSTER_MEMBERS - 1]]
    return {"stage": stage, "keeper": keeper[1], "size": size, "members": members}


class _DecisionsDoFn(beam.DoFn):
    """Emits ``(id, decision)`` for non-surviving nodes, and cluster summaries under ``clusters_tag``."""

    def __init__(self, stage: str, clusters_tag: str):
        self.stage = stage
        self.clusters_tag = clusters_tag

    def setup(self):
        self.counters = stages.StageCounters(self.stage)


class _UnionFindDoFn(_DecisionsDoFn):
    """All candidate edges (one key) -> decisions per non-surviving id, and cluster summaries."""

    def process(self, item):
        _, edges = item
        for comp in connected_components(edges):
            self.counters.inc("clusters")
            yield beam.pvalue.TaggedOutput(self.clusters_tag, _summary(self.stage, comp[0], len(comp), comp[1:]))
            for node in comp[1:]:
                yield node[1], {"duplicate_of": comp[0][1], "cluster_size": len(comp)}


class _StarsDoFn(_DecisionsDoFn):
    """One component's minimum with its size, its smallest members and (streamed) all its other nodes."""

    def process(self, item):
        keeper, grouped = item
        size = 1 + list(grouped["others"])[0]
        self.counters.inc("clusters")
        yield beam.pvalue.TaggedOutput(self.clusters_tag,
                                       _summary(self.stage, keeper, size, list(grouped["smallest"])[0]))
        for node in grouped["node"]:
            yield node[1], {"duplicate_of": keeper[1], "cluster_size": size}


class _SayWhich(beam.DoFn):
    def __init__(self, stage: str, config: ComponentsConfig):
        self.stage = stage
        self.config = config

    def setup(self):
        self.counters = stages.StageCounters(self.stage)

    def process(self, _, num_edges: int):
        method = _method(self.config, num_edges)
        self.counters.inc(f"components_{method}")
        self.counters.inc("candidate_edges_distinct", num_edges)
        yield method


def _method(config: ComponentsConfig, num_edges: int) -> str:
    if config.method != "auto":
        return config.method
    return "union_find" if num_edges <= config.union_find_max_edges else "distributed"


class Components(beam.PTransform):
    """Distinct candidate edges between ``(priority, id)`` nodes -> ``{'decisions': (id, {duplicate_of,
    cluster_size}) for every node but each component's smallest, clusters_tag: one summary per component}``,
    by the union-find or the distributed rounds as ``config`` chooses (see the module docstring)."""

    def __init__(self, config: ComponentsConfig | None = None, stage: str = "near_dedup",
                 clusters_tag: str = "clusters"):
        super().__init__()
        self.config = config or ComponentsConfig()
        self.stage = stage
        self.clusters_tag = clusters_tag

    def expand(self, edges):
        p = edges.pipeline
        cfg = self.config
        num_edges = beam.pvalue.AsSingleton(edges | "CountEdges" >> beam.combiners.Count.Globally())
        _ = p | "Trigger" >> beam.Create([None]) | "SayWhich" >> beam.ParDo(_SayWhich(self.stage, cfg), num_edges)
        outs = []
        if cfg.method in ("auto", "union_find"):
            small = edges | "ForUnionFind" >> beam.Filter(lambda e, n: _method(cfg, n) == "union_find", num_edges)
            outs.append(small
                        | "OneKey" >> beam.Map(lambda e: (0, e))
                        | "AllEdges" >> beam.GroupByKey()
                        | "UnionFind" >> beam.ParDo(_UnionFindDoFn(self.stage, self.clusters_tag)).with_outputs(
                                self.clusters_tag, main="decisions"))
        if cfg.method in ("auto", "distributed"):
            big = edges | "ForRounds" >> beam.Filter(lambda e, n: _method(cfg, n) == "distributed", num_edges)
            stars = (big
                     | "Rounds" >> DistributedComponents(cfg.max_rounds, self.stage)
                     | "ByMinimum" >> beam.Map(lambda e: (e[0], e[1])))
            others = stars | "Size" >> beam.combiners.Count.PerKey()
            smallest = stars | "Smallest" >> beam.combiners.Top.SmallestPerKey(CLUSTER_MEMBERS - 1)
            outs.append({"others": others, "smallest": smallest, "node": stars}
                        | "JoinStars" >> beam.CoGroupByKey()
                        | "Stars" >> beam.ParDo(_StarsDoFn(self.stage, self.clusters_tag)).with_outputs(
                                self.clusters_tag, main="decisions"))
        if len(outs) == 1:
            return {"decisions": outs[0].decisions, self.clusters_tag: outs[0][self.clusters_tag]}
        return {"decisions": (outs[0].decisions, outs[1].decisions) | "AllDecisions" >> beam.Flatten(),
                self.clusters_tag: ((outs[0][self.clusters_tag], outs[1][self.clusters_tag])
                                    | "AllClusters" >> beam.Flatten())}

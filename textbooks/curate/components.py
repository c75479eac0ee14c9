"""Connected components of the near-duplicate candidate graph, as Beam stages with no single-worker step.

The graph's nodes are comparable values (the MinHash stage uses :func:`~textbooks.curate.union_find.node_key`
bytes, which sort like ``(priority, id)``; ``(priority, id)`` tuples work too); its edges are node pairs. Every
component is resolved to a star around its smallest node, which is what the dedup stage needs: each node ``v``
that is not the smallest of its component gets the edge ``(v, min)``.

Algorithm: large-star / small-star (Kiveris et al., "Connected Components in MapReduce and Beyond", SoCC 2014).
One round is a large-star step followed by a small-star step:

* large-star: every node ``u`` links each larger neighbour to ``m(u)``, the smallest of ``u`` and its neighbours;
* small-star: every node ``u`` links itself and each smaller neighbour to the smallest of them.

Neither step changes the components. A node changes its edges in the large-star step only when it has both a
smaller and a larger neighbour, and in the small-star step only when it has two different smaller neighbours;
a round in which no node changed anything means every component is a star around its minimum (then every later
round is a no-op). The number of rounds is O(log² n) in the worst case and a handful on real candidate graphs.

Memory: each step groups the edges by node and streams a node's grouped neighbours twice (once for their
minimum, once to emit), never collecting them into a list; runners page grouped values (Dataflow, Flink and
Spark all re-iterate them from the shuffle), so no worker holds more than the edges of its bundle, even for
the centre of a giant component.

Beam graphs have no loops, so :class:`DistributedComponents` unrolls ``max_rounds`` rounds of three shuffles
each (large-star, small-star, duplicate removal). The star steps count the nodes that changed their edges and
report ``(round, count)`` once per bundle; these counts are summed per round only after the last round (no
round waits on a side input of the one before, which keeps the unrolled graph to three stages a round), and a
check raises :class:`ComponentsNotConvergedError` if nodes still changed in the last round (raise
``ComponentsConfig.max_rounds``). Counters (namespace ``textbooks.curate``): ``<stage>/components_rounds``
(rounds that changed something) and ``<stage>/components_changed_nodes``.

:class:`Components` chooses between this and the one-worker union-find (:mod:`textbooks.curate.union_find`:
the edges packed with each distinct node once, merged on one worker) by ``ComponentsConfig.method``:
``'union_find'`` or ``'distributed'`` forces one; ``'auto'`` uses the union-find up to ``union_find_max_edges``
distinct edges, counted at run time (a side input), except on Beam's local runners
(:func:`~textbooks.curate.local_workers.is_local_runner`): there it is the union-find, chosen when the graph is
built. There the driver holds every stage's input whatever the method, so the rounds save it nothing; with
bounded bundles (:mod:`textbooks.curate.local_runner`) they do bound the workers, but their ~45 stages cost
time and leave a descriptor and a cached bundle processor behind in every worker (about 0.4 MB each; measured in
:mod:`textbooks.curate.dedup`), and a run-time choice would build them for every run. The counter
``<stage>/components_union_find`` or ``<stage>/components_distributed`` (1) says which ran; the curation report
shows them. Both give the same components.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import apache_beam as beam
import gin
from apache_beam.transforms.window import GlobalWindows

from textbooks.curate import stages
from textbooks.curate.local_workers import is_local_runner
from textbooks.curate.union_find import EdgePack, PackEdgesFn, node_id

METHODS = ("auto", "union_find", "distributed")


class ComponentsNotConvergedError(RuntimeError):
    """The distributed connected components still changed in their last unrolled round."""


@gin.configurable
@dataclasses.dataclass
class ComponentsConfig:
    """How the connected components of the candidate graph are computed.

    Attributes:
        method: ``'auto'`` (union-find up to ``union_find_max_edges`` distinct candidate edges, else
            distributed; on the local runners, the union-find), ``'union_find'`` (one worker) or
            ``'distributed'`` (large-star/small-star rounds).
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


class _StarStep(beam.DoFn):
    """One star step's emission for one node and its grouped neighbours (iterated twice, never collected),
    counting the nodes whose edges it changed; each bundle reports ``(round, changed nodes)`` when it ends.

    A node changes nothing in the large-star step when it has no larger neighbour or is smaller than all its
    neighbours, and nothing in the small-star step when all its smaller neighbours are one node; a round in
    which no node changed anything leaves every component a star around its minimum (so the same graph)."""

    def __init__(self, large: bool, round_index: int):
        self.large = large
        self.round_index = round_index
        self.changed = 0

    def start_bundle(self):
        self.changed = 0

    def process(self, item):
        u, nbrs = item
        m = min(u, min(nbrs))
        changed = False
        if self.large:
            for v in nbrs:
                if v > u:
                    changed = changed or m != u
                    yield (m, v)
        else:
            for v in nbrs:
                if v != m:
                    changed = True
                    yield (m, v)
            if u != m:
                yield (m, u)
        self.changed += changed

    def finish_bundle(self):
        if self.changed:
            yield beam.pvalue.TaggedOutput("changed", GlobalWindows.windowed_value((self.round_index, self.changed)))


class _Round(beam.PTransform):
    """A large-star and a small-star step, then duplicate edges removed. Returns ``(edges, changed)``: the new
    edge set and ``(round, changed nodes)`` pairs (per bundle) for the convergence check."""

    def __init__(self, round_index: int):
        super().__init__()
        self.round_index = round_index

    def expand(self, edges):
        large = (edges
                 | "LargeDirect" >> beam.FlatMap(_both_directions)
                 | "LargeGroup" >> beam.GroupByKey()
                 | "LargeStar" >> beam.ParDo(_StarStep(True, self.round_index)).with_outputs("changed", main="edges"))
        small = (large.edges
                 | "SmallDirect" >> beam.FlatMap(_larger_first)
                 | "SmallGroup" >> beam.GroupByKey()
                 | "SmallStar" >> beam.ParDo(_StarStep(False, self.round_index)).with_outputs("changed", main="edges"))
        changed = (large.changed, small.changed) | "Changed" >> beam.Flatten()
        return small.edges | "Distinct" >> beam.Distinct(), changed


class _CountRounds(beam.DoFn):
    def __init__(self, stage: str, max_rounds: int):
        self.stage = stage
        self.max_rounds = max_rounds

    def setup(self):
        self.counters = stages.StageCounters(self.stage)

    def process(self, _, changed: dict):
        rounds = len(changed)
        last = changed.get(self.max_rounds - 1, 0)
        self.counters.inc("components_rounds", rounds)
        self.counters.inc("components_changed_nodes", sum(changed.values()))
        if last:
            raise ComponentsNotConvergedError(
                    f"{self.stage}: connected components did not converge in {self.max_rounds} rounds "
                    f"({last} nodes still changed their edges in the last one); raise ComponentsConfig.max_rounds "
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
        changes = []
        for i in range(self.max_rounds):
            current, changed = current | f"Round{i + 1}" >> _Round(i)
            changes.append(changed)
        per_round = (tuple(changes)
                     | "AllChanges" >> beam.Flatten()
                     | "PerRound" >> beam.CombinePerKey(sum))
        _ = (p | "CheckTrigger" >> beam.Create([None])
             | "Check" >> beam.ParDo(_CountRounds(self.stage, self.max_rounds), beam.pvalue.AsDict(per_round)))
        return current


# ----------------------------------------------------------------------------------------------------------
# Choosing the method; decisions and cluster summaries.

CLUSTER_MEMBERS = 20


def _summary(stage: str, keeper: tuple, size: int, others: Iterable[tuple]) -> dict:
    members = [node_id(keeper)] + [node_id(node) for node in sorted(others)[:CLUSTER_MEMBERS - 1]]
    return {"stage": stage, "keeper": members[0], "size": size, "members": members}


class _DecisionsDoFn(beam.DoFn):
    """Emits ``(id, decision)`` for non-surviving nodes, and cluster summaries under ``clusters_tag``."""

    def __init__(self, stage: str, clusters_tag: str):
        self.stage = stage
        self.clusters_tag = clusters_tag

    def setup(self):
        self.counters = stages.StageCounters(self.stage)


class _UnionFindDoFn(_DecisionsDoFn):
    """All candidate edges (one :class:`EdgePack`) -> decisions per non-surviving id, and cluster summaries."""

    def process(self, pack: EdgePack):
        for comp in pack.components():
            self.counters.inc("clusters")
            summary = _summary(self.stage, comp[0], len(comp), comp[1:])
            yield beam.pvalue.TaggedOutput(self.clusters_tag, summary)
            for node in comp[1:]:
                yield node_id(node), {"duplicate_of": summary["keeper"], "cluster_size": len(comp)}


class _StarsDoFn(_DecisionsDoFn):
    """One component's minimum with its size, its smallest members and (streamed) all its other nodes."""

    def process(self, item):
        keeper, grouped = item
        size = 1 + list(grouped["others"])[0]
        self.counters.inc("clusters")
        yield beam.pvalue.TaggedOutput(self.clusters_tag,
                                       _summary(self.stage, keeper, size, list(grouped["smallest"])[0]))
        survivor = node_id(keeper)
        for node in grouped["node"]:
            yield node_id(node), {"duplicate_of": survivor, "cluster_size": size}


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


def build_time_method(config: ComponentsConfig, pipeline: beam.Pipeline,
                      choose_at_run_time: bool | None = None) -> str:
    """``config.method``, but ``'auto'`` is the union-find unless the edge count chooses at run time
    (``choose_at_run_time``; by default on every runner but the local ones: see the module docstring)."""
    run_time = not is_local_runner(pipeline) if choose_at_run_time is None else choose_at_run_time
    return "union_find" if config.method == "auto" and not run_time else config.method


class Components(beam.PTransform):
    """Distinct candidate edges between nodes (:func:`~textbooks.curate.union_find.node_key`, or
    ``(priority, id)``) -> ``{'decisions': (id, {duplicate_of, cluster_size}) for every node but each
    component's smallest, clusters_tag: one summary per component}``, by the union-find or the distributed
    rounds as ``config`` chooses (see the module docstring; ``choose_at_run_time``: see
    :func:`build_time_method`)."""

    def __init__(self, config: ComponentsConfig | None = None, stage: str = "near_dedup",
                 clusters_tag: str = "clusters", choose_at_run_time: bool | None = None):
        super().__init__()
        self.config = config or ComponentsConfig()
        self.stage = stage
        self.clusters_tag = clusters_tag
        self.choose_at_run_time = choose_at_run_time

    def expand(self, edges):
        p = edges.pipeline
        cfg = dataclasses.replace(self.config, method=build_time_method(self.config, p, self.choose_at_run_time))
        num_edges = beam.pvalue.AsSingleton(edges | "CountEdges" >> beam.combiners.Count.Globally())
        _ = p | "Trigger" >> beam.Create([None]) | "SayWhich" >> beam.ParDo(_SayWhich(self.stage, cfg), num_edges)
        outs = []
        if cfg.method in ("auto", "union_find"):
            small = edges | "ForUnionFind" >> beam.Filter(lambda e, n: _method(cfg, n) == "union_find", num_edges)
            outs.append(small
                        | "PackEdges" >> beam.CombineGlobally(PackEdgesFn()).without_defaults()
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

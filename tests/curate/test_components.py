"""Distributed connected components (large-star/small-star Beam rounds) against the one-worker union-find:
random graphs, long chains, a giant component, and MinHash near-dedup of real text with chained documents."""

import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

import curate_testdata as td
from textbooks.curate import components, dedup, union_find


def _expected_stars(edges):
    """(component minimum, node) for every node that is not its component's minimum, by union-find."""
    return sorted((comp[0], node) for comp in union_find.connected_components(edges) for node in comp[1:])


def _planted_graph(seed=0):
    """Small clusters, chains (each node linked to the next only) and one giant component built as a long
    path with random shortcuts; node labels shuffled so that minima sit anywhere along the chains."""
    rng = random.Random(seed)
    labels = list(range(3000))
    rng.shuffle(labels)
    it = iter(labels)
    edges = []
    for _ in range(150):  # small clusters of 2-4 nodes
        nodes = [next(it) for _ in range(rng.randint(2, 4))]
        edges += [(nodes[0], n) for n in nodes[1:]]
    for _ in range(20):  # chains A~B~C~...: A is linked only through the others
        nodes = [next(it) for _ in range(rng.randint(3, 30))]
        edges += list(zip(nodes, nodes[1:]))
    giant = [next(it) for _ in range(1200)]
    edges += list(zip(giant, giant[1:]))
    edges += [(rng.choice(giant), rng.choice(giant)) for _ in range(200)]
    edges += [(v, u) for u, v in edges[:50]]  # both directions and repeats
    return edges


def test_distributed_components_equal_union_find_on_planted_graph():
    edges = _planted_graph()
    expected = _expected_stars(edges)
    assert max(len(c) for c in union_find.connected_components(edges)) >= 1200
    with beam.Pipeline(runner="DirectRunner") as p:
        stars = p | beam.Create(edges) | components.DistributedComponents(max_rounds=8, stage="test")
        assert_that(stars, equal_to(expected))


def test_not_converged_is_an_error():
    path = list(range(400))
    edges = list(zip(path[::-1], path[-2::-1]))  # a long path: needs several rounds
    with pytest.raises(Exception, match="did not converge in 1 rounds"):
        with beam.Pipeline(runner="DirectRunner") as p:
            _ = p | beam.Create(edges) | components.DistributedComponents(max_rounds=1, stage="test")


@pytest.mark.parametrize("method,run_time,max_edges,ran", [
    ("union_find", None, 0.5, "union_find"), ("distributed", None, 0.5, "distributed"),
    ("auto", True, 0.5, "distributed"), ("auto", True, 2, "union_find"),  # the edge count chooses
    ("auto", None, 0.5, "union_find")])  # DirectRunner, a local runner: the union-find, chosen when built
def test_components_decisions_and_which_ran(method, run_time, max_edges, ran):
    edges = [((0, f"n{u:05d}"), (0, f"n{v:05d}")) for u, v in _planted_graph(seed=1)]
    comps = union_find.connected_components(edges)
    expected = sorted((n[1], {"duplicate_of": c[0][1], "cluster_size": len(c)}) for c in comps for n in c[1:])
    cfg = components.ComponentsConfig(method=method, union_find_max_edges=int(len(edges) * max_edges), max_rounds=8)
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(edges) | beam.Distinct() | components.Components(cfg, "test",
                                                                              choose_at_run_time=run_time)
        assert_that(out["decisions"], equal_to(expected), label="decisions")
        sizes = out["clusters"] | beam.Map(lambda c: (c["keeper"], c["size"], c["members"][:3]))
        assert_that(sizes, equal_to([(c[0][1], len(c), [n[1] for n in c[:3]]) for c in comps]), label="clusters")
        result = p.run()
        result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query()["counters"]}
    other = "distributed" if ran == "union_find" else "union_find"
    assert counters.get(f"test/components_{ran}") == 1 and f"test/components_{other}" not in counters
    if ran == "distributed":  # converged within the unrolled rounds; the last one changed nothing
        assert 1 <= counters["test/components_rounds"] < cfg.max_rounds


@pytest.mark.parametrize("runner,run_time,rounds_built", [
    ("DirectRunner", None, False), ("DirectRunner", True, True), ("DirectRunner", False, False)])
def test_auto_builds_the_rounds_only_where_the_edge_count_chooses(runner, run_time, rounds_built):
    p = beam.Pipeline(runner=runner)
    _ = p | beam.Create([]) | components.Components(components.ComponentsConfig(), "test", choose_at_run_time=run_time)
    names = [t.unique_name for t in p.to_runner_api().components.transforms.values()]
    assert any("/Rounds/" in name for name in names) == rounds_built
    assert any("/UnionFind" in name for name in names)


def test_build_time_method_on_other_runners():
    class DataflowRunner:  # stands for any runner that is not one of Beam's local runners
        pass

    pipeline = type("P", (), {"runner": DataflowRunner()})()
    auto = components.ComponentsConfig()
    assert components.build_time_method(auto, pipeline) == "auto"
    assert components.build_time_method(auto, beam.Pipeline(runner="DirectRunner")) == "union_find"
    assert components.build_time_method(auto, pipeline, choose_at_run_time=False) == "union_find"
    for method in ("union_find", "distributed"):
        assert components.build_time_method(components.ComponentsConfig(method=method), pipeline) == method
        assert components.build_time_method(components.ComponentsConfig(method=method), beam.Pipeline()) == method


def _chained_documents(num_docs=60):
    """Documents D_i = P_i + P_(i+1) over consecutive 80-word passages of real text: each shares half its
    words with its neighbours, and D_i, D_(i+2) share none (one chain, a giant component for its size)."""
    words = " ".join(text for _, text in td.stdlib_docstrings(min_words=150, max_docs=200)).split()
    parts = [" ".join(words[i * 80:(i + 1) * 80]) for i in range(num_docs + 1)]
    return [(f"chain{i:03d}", parts[i] + "\n\n" + parts[i + 1]) for i in range(num_docs)]


def test_near_dedup_distributed_equals_union_find_on_chained_documents(tmp_path):
    docs = _chained_documents()
    assert td.jaccard(docs[0][1], docs[2][1]) < 0.05 < 0.25 < td.jaccard(docs[0][1], docs[1][1])
    records = [{"id": i, "text": t, "role": "r", "source": "stdlib", "license": "PSF-2.0", "split": "train",
                "meta": {}} for i, t in docs]
    decisions = {}
    for method in ("union_find", "distributed"):
        # One-row bands: pairs sharing a third of their shingles are candidates with probability 1 - (2/3)**32.
        cfg = dedup.MinHashConfig(num_bands=32, rows_per_band=1,
                                  components=components.ComponentsConfig(method=method, max_rounds=8))
        with beam.Pipeline(runner="DirectRunner") as p:
            out = p | beam.Create(records) | dedup.NearDedup(cfg)
            load = td.collect({"dropped": out["dropped"] | beam.Map(lambda r: (r["id"], r["meta"]["curation"]))},
                              str(tmp_path / method))
        decisions[method] = sorted(map(tuple, load()["dropped"]), key=lambda d: d[0])
    assert decisions["union_find"] == decisions["distributed"]
    assert len(decisions["distributed"]) == len(docs) - 1
    assert {d[1]["duplicate_of"] for d in decisions["distributed"]} == {"chain000"}
    assert {d[1]["cluster_size"] for d in decisions["distributed"]} == {len(docs)}


def _reference_components(edges):
    """Components by breadth-first search over an adjacency dict: sorted members, ordered by their minimum."""
    adjacent = {}
    for u, v in edges:
        adjacent.setdefault(u, set()).add(v)
        adjacent.setdefault(v, set()).add(u)
    seen, out = set(), []
    for start in adjacent:
        if start in seen:
            continue
        seen.add(start)
        queue, comp = [start], []
        while queue:
            node = queue.pop()
            comp.append(node)
            for nxt in adjacent[node] - seen:
                seen.add(nxt)
                queue.append(nxt)
        out.append(sorted(comp))
    return sorted(out, key=lambda c: c[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_union_find_equals_breadth_first_search(seed):
    edges = _planted_graph(seed)
    assert union_find.connected_components(edges) == _reference_components(edges)
    path = list(range(5000))  # a long path, its labels descending: the worst order for hooking
    random.Random(seed).shuffle(path)
    chain = list(zip(path, path[1:]))
    assert union_find.connected_components(chain) == [sorted(path)]


def test_edge_packs_merge_and_pickle_to_the_same_components():
    """Packs of parts of the edges, pickled as the shuffle carries them and merged, give the components of all
    the edges; each distinct node is held once and each edge as 8 bytes."""
    import pickle

    edges = [((0, f"n{u:05d}"), (0, f"n{v:05d}")) for u, v in _planted_graph(seed=3)]
    fn = union_find.PackEdgesFn()
    packs = []
    for part in (edges[0::3], edges[1::3], edges[2::3]):
        acc = fn.create_accumulator()
        for e in part:
            acc = fn.add_input(acc, e)
        packs.append(pickle.loads(pickle.dumps(acc)))
    merged = fn.extract_output(fn.merge_accumulators(packs))
    assert len(merged.nodes) == len({n for e in edges for n in e}) and len(merged.pairs) == 2 * len(edges)
    assert list(merged.components()) == _reference_components(edges)

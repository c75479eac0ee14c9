"""The compact table of drop decisions answers like the dict of them, merged from any split of the input."""

import pickle
import random

from textbooks.curate.decisions import DropTable, DropTableFn


def _decisions(n_clusters=300, seed=0):
    rng = random.Random(seed)
    out = {}
    for c in range(n_clusters):
        size = rng.randint(2, 6)
        survivor = f"doc/{c:04d}/é{'x' * rng.randint(0, 40)}"
        for m in range(1, size):
            out[f"{survivor}~{m}"] = {"duplicate_of": survivor, "cluster_size": size}
    return out


def _table(decisions: dict, parts: int) -> DropTable:
    """Through the CombineFn as a runner would use it: one accumulator per part, merged, pickled once."""
    fn = DropTableFn()
    items = list(decisions.items())
    accs = []
    for p in range(parts):
        acc = fn.create_accumulator()
        for item in items[p::parts]:
            acc = fn.add_input(acc, item)
        accs.append(pickle.loads(pickle.dumps(acc)))
    return pickle.loads(pickle.dumps(fn.extract_output(fn.merge_accumulators(accs))))


def test_drop_table_answers_like_the_dict():
    decisions = _decisions()
    for parts in (1, 3):
        table = _table(decisions, parts)
        assert len(table) == len(decisions)
        for doc_id, decision in decisions.items():
            assert table.get(doc_id) == decision
        survivors = {d["duplicate_of"] for d in decisions.values()}
        for doc_id in list(survivors)[:50] + ["", "doc/0000", "unknown~1", "\udcff"]:
            assert table.get(doc_id) is None and table.get(doc_id, "no") == "no"
    # The survivors' ids are stored once per cluster, not once per dropped document.
    assert len(table.survivors) == sum(len(s.encode()) for s in survivors)


def test_empty_drop_table_drops_nothing():
    table = _table({}, 2)
    assert len(table) == 0 and table.get("a") is None

"""Near dedup with ``decisions='reread'`` (the records read again from the input files) against the join and
the side input: the same kept records, drops, clusters and rejects, each input unit counted once, on the
DirectRunner with 2 worker processes and several files and bundles."""

import collections
import gzip
import json
import os

import apache_beam as beam
import pytest

from test_dedup import _planted_corpus
from textbooks.curate import dedup
from textbooks.curate.heuristics import HeuristicsConfig
from textbooks.curate.input_specs import InputSpec, ReadConfig
from textbooks.curate.pipeline import Plan, build_pipeline, curate
from textbooks.curate.report import read_jsonl_files
from textbooks.data import records

BAD_LINES = [b'{"id": "broken", "text": "unterminated',                                  # malformed_json
             json.dumps({"id": "huge", "text": "x" * (10 * 1024 * 1024)}).encode(),    # too_large (10 MB)
             b"\xff\xfe not utf-8",                                                     # invalid_utf8
             json.dumps({"id": "other-split", "text": "a fine text", "split": "test"}).encode()]  # unknown_split
EXPECTED_REJECTS = {"malformed_json": 1, "too_large": 1, "invalid_utf8": 1, "unknown_split": 1, "empty": 1,
                    "binary_file": 1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The planted near-duplicates of test_dedup as 4 gzipped JSON Lines files (the variants of a document
    in other files than it), a file of bad lines and a text folder with a 0-byte and a binary file."""
    docs, truth = _planted_corpus()
    root = tmp_path_factory.mktemp("reread")
    (root / "docs").mkdir()
    for part in range(4):
        lines = [json.dumps({"id": i, "text": t}) for i, t in docs[part::4]]
        with gzip.open(root / "docs" / f"part-{part}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    (root / "bad.jsonl").write_bytes(b"\n".join(BAD_LINES) + b"\n")
    (root / "files").mkdir()
    (root / "files" / "empty.txt").write_bytes(b"")
    (root / "files" / "blob.txt").write_bytes(b"\x7fELF\x00" + bytes(range(256)) * 4)
    inputs = [InputSpec(paths=(str(root / "docs"),), kind="jsonl", id_field="id", meta_fields=(), source="planted"),
              InputSpec(paths=(str(root / "bad.jsonl"),), kind="jsonl", id_field="id", meta_fields=(),
                        source="planted"),
              InputSpec(paths=(str(root / "files"),), kind="text", source="planted", extensions=(".txt",))]
    return {"inputs": inputs, "docs": docs, "truth": truth, "units": len(docs) + len(BAD_LINES) + 2}


def _run(corpus, out: str, decisions: str, keep: str) -> dict:
    report = curate(inputs=corpus["inputs"], role="web_raw", output_dir=out, splits=("train",),
                    read=ReadConfig(check_unique_ids=False),
                    near_dedup=dedup.MinHashConfig(keep=keep, decisions=decisions, batch_size=37, bucket_shards=3),
                    runner="DirectRunner", direct_num_workers=2, direct_running_mode="multi_processing")
    near = next(s for s in report["stages"] if s["stage"] == "near_dedup")["other"]
    return {"kept": sorted((r.to_dict() for r in records.iter_records(out, on_error="raise")),
                           key=lambda r: r["id"]),
            "dropped": {r.id: r.meta["curation"] for r in records.iter_records(os.path.join(out, "dropped"),
                                                                               on_error="raise")},
            "clusters": sorted((c["keeper"], c["size"], tuple(sorted(c["members"])))
                               for c in read_jsonl_files(os.path.join(out, "dedup", "clusters-*.jsonl.gz"))),
            "rejects": collections.Counter(r["reason"] for r in
                                           read_jsonl_files(os.path.join(out, "rejects", "rejects-*.jsonl.gz"))),
            "ran": [path for path in dedup.DECISIONS if near.get(f"decisions_{path}")],
            "reconciliation": report["reconciliation"]}


@pytest.mark.parametrize("keep", ["min_id", "longest"])
def test_reread_keeps_and_drops_what_the_join_and_side_input_do(corpus, tmp_path, keep):
    runs = {path: _run(corpus, str(tmp_path / path), decisions, keep)
            for path, decisions in (("join", "join"), ("side_input", "side_input"), ("reread", "auto"))}
    for path, run in runs.items():
        assert run["ran"] == [path]  # 'auto' picks 'reread' here: near dedup is the first stage, no id check
        rc = run["reconciliation"]
        assert rc["balanced"] and all(rc["stages_balanced"].values())
        # Every unit once: the re-read neither counts nor writes the rejects again.
        assert rc["units_read"] == corpus["units"]
        assert (rc["kept"], rc["dropped"], rc["rejected"]) == (len(run["kept"]), len(run["dropped"]),
                                                              sum(run["rejects"].values()))
        assert run["rejects"] == EXPECTED_REJECTS
    reread = runs["reread"]
    for other in ("join", "side_input"):
        for key in ("kept", "dropped", "clusters"):
            assert reread[key] == runs[other][key], (key, other)
    docs, truth = corpus["docs"], corpus["truth"]
    assert len(reread["kept"]) + len(reread["dropped"]) == len(docs)
    assert len(reread["dropped"]) >= 0.9 * (len(docs) - len(set(truth.values())))
    assert len({r["id"] for r in reread["kept"]}) == len(reread["kept"])


@pytest.mark.parametrize("shape", ["heuristics_first", "unique_ids"])
def test_reread_is_refused_where_near_dedup_does_not_see_the_records_as_read(corpus, tmp_path, shape):
    """Where a stage before near dedup changes or drops records, or the id check drops repeated ids, the input
    read again is not near dedup's input: 'auto' falls back and an explicit 'reread' fails before running."""
    def plan(decisions):
        return Plan(inputs=corpus["inputs"], output_dir=str(tmp_path), role="web_raw", splits=("train",),
                    num_shards=0, read=ReadConfig(check_unique_ids=shape == "unique_ids"),
                    heuristics=HeuristicsConfig() if shape == "heuristics_first" else None,
                    near_dedup=dedup.MinHashConfig(decisions=decisions))

    with pytest.raises(ValueError, match="'reread' needs near dedup to see the records exactly as read"):
        build_pipeline(beam.Pipeline(runner="DirectRunner"), plan("reread"))
    p = beam.Pipeline(runner="DirectRunner")
    build_pipeline(p, plan("auto"))
    labels = _labels(p)
    assert not any("Reread" in label for label in labels) and any("NearDedup/Apply" in label for label in labels)


def _labels(p: beam.Pipeline) -> list[str]:
    found = []

    class _Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node):
            found.append(node.full_label)

        def visit_transform(self, node):
            found.append(node.full_label)

    p.visit(_Visitor())
    return found

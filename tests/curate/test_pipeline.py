"""End to end: a small real corpus through heuristics, exact and near dedup and decontamination on the
DirectRunner in multi_processing mode (2 workers); every input unit is accounted for."""

import json
import os
import random

import pytest

import curate_testdata as td
from textbooks.curate.dedup import ExactDedupConfig, MinHashConfig
from textbooks.curate.decontam import DecontamConfig
from textbooks.curate.heuristics import GopherQualityConfig, GopherRepetitionConfig, HeuristicsConfig, apply_heuristics
from textbooks.curate.input_specs import InputSpec
from textbooks.curate.pipeline import curate
from textbooks.curate.report import read_jsonl_files
from textbooks.data import records
from textbooks.data.manifest import read_manifest
from textbooks.evaluate.benchmarks import benchmark_texts


HEURISTICS = HeuristicsConfig(gopher_quality=GopherQualityConfig(min_doc_words=30),
                              gopher_repetition=GopherRepetitionConfig())


def _rec(doc_id, text, split="train", role="web_raw", source="fixture"):
    return {"id": doc_id, "text": text, "role": role, "source": source, "license": "various", "split": split,
            "meta": {}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Prose (corpora builder output when present, else stdlib docstrings and noisy pages) with planted exact
    and near duplicates and benchmark contamination; a JSONL file; a small source tree."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("e2e")
    prose = td.textbook_like(50, seed=1) + td.web_like_noise(30, seed=1)
    recs = [_rec(f"p{i:03d}/{doc_id}", text, "validation" if i % 10 == 0 else "train")
            for i, (doc_id, text) in enumerate(prose)]
    long_docs = [r for r in recs if len(r["text"].split()) >= 150][:16]
    planted = {"exact": [], "near": [], "contaminated": []}
    for i, r in enumerate(long_docs[:8]):
        copy = _rec(f"exact-{i}", "  " + r["text"].upper() + "\n", r["split"])
        recs.append(copy)
        planted["exact"].append((copy["id"], r["id"]))
    for i, r in enumerate(long_docs[8:16]):
        near = _rec(f"near-{i}", td.light_edit(r["text"], rng, every=120), r["split"])
        recs.append(near)
        planted["near"].append((near["id"], r["id"]))
    # Benchmark items planted in prose that passes the heuristics, so that decontamination is what drops them.
    piqa = list(benchmark_texts("piqa"))
    hosts = iter(td.textbook_like(60, seed=3))
    for i, (item_id, item_text) in enumerate(piqa[:50:10]):
        while True:
            text = next(hosts)[1] + "\n\n" + item_text
            if apply_heuristics(text, {}, HEURISTICS).keep:
                break
        recs.append(_rec(f"contaminated-{i}", text))
        planted["contaminated"].append((f"contaminated-{i}", item_id))
    rng.shuffle(recs)
    shard_dir = root / "shards"
    train = [r for r in recs if r["split"] == "train"]
    val = [r for r in recs if r["split"] == "validation"]
    records.write_shards(train, shard_dir, "train", 2)
    records.write_shards(val, shard_dir, "validation", 1)

    jsonl = root / "extra.jsonl.gz"
    extra = [{"uid": f"x{i}", "content": t, "url": f"https://example.org/{i}"}
             for i, (_, t) in enumerate(td.textbook_like(60, seed=2)[50:60])]
    td.write_jsonl(str(jsonl), extra + [{"uid": "x-bad"}], gz=True)  # one line without the text field

    tree = root / "src"
    tree.mkdir()
    for path in td.stdlib_files()[:12]:
        with open(path, encoding="utf-8") as f:
            (tree / os.path.basename(path)).write_text(f.read())
    (tree / "blob.py").write_bytes(b"\x00\x01binary\x00" * 100)
    units = len(recs) + len(extra) + 1 + 13
    return {"root": root, "planted": planted, "units": units, "num_records": len(recs)}


def test_end_to_end_multiprocess_reconciles(corpus, tmp_path):
    root = corpus["root"]
    out = str(tmp_path / "curated")
    inputs = [InputSpec(paths=str(root / "shards"), kind="shards"),
              InputSpec(paths=str(root / "extra.jsonl.gz"), kind="jsonl", text_field="content", id_field="uid",
                        source="extra", role="web_raw"),
              f"source:{root / 'src'}"]
    report = curate(inputs=inputs, role="web_filtered", output_dir=out, num_shards={"train": 2, "validation": 1},
                    heuristics=HEURISTICS, exact_dedup=ExactDedupConfig(), near_dedup=MinHashConfig(),
                    decontam=DecontamConfig(benchmarks=("humaneval", "mbpp", "piqa")),
                    runner="DirectRunner", direct_num_workers=2, direct_running_mode="multi_processing",
                    local_max_bundle_bytes=1 << 14)  # stages' inputs cut into many bundles per worker
    assert report["config"]["local_max_bundle_bytes"] == 1 << 14
    rc = report["reconciliation"]
    # Independent count: what the fixture wrote, and what the output folders hold.
    assert rc["units_read"] == corpus["units"]
    kept = list(records.iter_records(out, on_error="raise"))
    dropped = list(records.iter_records(os.path.join(out, "dropped"), on_error="raise"))
    rejects = read_jsonl_files(os.path.join(out, "rejects", "rejects-*.jsonl.gz"))
    assert len(kept) + len(dropped) + len(rejects) == corpus["units"]
    assert (rc["kept"], rc["dropped"], rc["rejected"]) == (len(kept), len(dropped), len(rejects))
    assert rc["balanced"] and all(rc["stages_balanced"].values())
    assert sorted(r["reason"] for r in rejects) == ["binary_file", "missing_field"]
    kept_ids = {r.id for r in kept}
    assert len(kept_ids) == len(kept)  # unique ids in the output

    why = {r.id: (r.meta["curation"]["stage"], r.meta["curation"]["reason"], r.meta["curation"]) for r in dropped}
    planted = corpus["planted"]
    for copy_id, original in planted["exact"]:
        # One of each pair survives (the smallest id), unless the heuristics dropped both first.
        pair = {copy_id, original}
        assert len(pair & kept_ids) <= 1
        if pair & kept_ids:
            loser = (pair - kept_ids).pop()
            assert why[loser][:2] in {("exact_dedup", "exact_duplicate"), ("heuristics", why[loser][1])}
    # Pairs whose both copies the heuristics dropped (they run first) never reach near-dedup.
    reached = [(n, o) for n, o in planted["near"] if not all(why.get(x, ("",))[0] == "heuristics" for x in (n, o))]
    assert len(reached) >= len(planted["near"]) // 2
    near_found = sum(1 for near_id, original in reached
                     if {near_id, original} - kept_ids and any(why.get(x, ("",))[0] == "near_dedup"
                                                               for x in (near_id, original)))
    assert near_found >= len(reached) - 1
    for doc_id, item_id in planted["contaminated"]:
        stage, reason, info = why[doc_id]
        assert (stage, reason) == ("decontam", "benchmark_ngram")
        assert info["match"]["benchmark"] == "piqa" and info["match"]["item_id"] == item_id
    matches = read_jsonl_files(os.path.join(out, "decontam", "matches-*.jsonl.gz"))
    assert {m["id"] for m in matches} >= {d for d, _ in planted["contaminated"]}

    manifest = read_manifest(out)
    assert manifest.num_docs == len(kept) and set(manifest.splits) == {"train", "validation"}
    assert manifest.splits["train"].shards == ["train-00000-of-00002.jsonl.gz", "train-00001-of-00002.jsonl.gz"]
    assert all(r.role == "web_filtered" for r in kept)
    assert any(r.meta.get("curated_from") == "web_raw" for r in kept)

    saved = json.load(open(os.path.join(out, "report", "report.json")))
    assert saved["reconciliation"]["balanced"] and saved["token_unit"].startswith("whitespace")
    stage_names = [s["stage"] for s in saved["stages"]]
    assert stage_names == ["heuristics", "exact_dedup", "near_dedup", "decontam"]
    assert saved["dedup"]["exact_dedup"]["clusters"] >= 1 and saved["decontam"]["by_benchmark"]["piqa"] >= 5
    assert "kept" in saved["samples"] and any(g.startswith("decontam/") for g in saved["samples"])
    assert os.path.exists(os.path.join(out, "report", "funnel.png"))
    md = open(os.path.join(out, "report", "report.md")).read()
    assert "## Stages" in md and "benchmark_ngram" in md and "whitespace tokens" in md


def test_rerun_replaces_own_output_but_not_foreign_shards(corpus, tmp_path):
    out = tmp_path / "foreign"
    records.write_shards([_rec("a", "some text")], out, "train", 1)
    with pytest.raises(FileExistsError, match="not written by curation"):
        curate(inputs=[str(corpus["root"] / "shards")], role="web_filtered", output_dir=str(out),
               direct_running_mode="in_memory", direct_num_workers=1)

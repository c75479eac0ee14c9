"""The near-dedup benchmark corpus (real text, planted near-duplicates, bad documents) and the curation
pipeline on it: DirectRunner in multi-process mode, several bundles per stage, bad input rejected with a reason,
reconciliation balanced, planted duplicates found."""

import json
import os

import pytest

from bench import dedup_corpus
from textbooks.curate.components import ComponentsConfig
from textbooks.curate.dedup import ExactDedupConfig, MinHashConfig
from textbooks.curate.input_specs import InputSpec, ReadConfig
from textbooks.curate.pipeline import Plan, run_plan
from textbooks.data import records

DOCS = 3000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dedup_corpus"))
    meta = dedup_corpus.build(out, DOCS, dup_fraction=0.25, seed=0, files=4, bad_per_kind=2)
    with open(os.path.join(out, "truth.json")) as f:
        truth = json.load(f)
    return out, meta, truth


def test_corpus_counts_rates_and_bad_documents(corpus):
    out, meta, truth = corpus
    assert abs(meta["good_docs"] - DOCS) <= 2 and len(truth) == meta["good_docs"]
    copies = [i for i, base in truth.items() if i != base]
    assert len(copies) == meta["copies"] == meta["good_docs"] - meta["bases"]
    # Every edit kind at a fifth of the copies.
    assert set(meta["copies_by_edit"]) == set(dedup_corpus.EDITS)
    assert max(meta["copies_by_edit"].values()) - min(meta["copies_by_edit"].values()) <= 1
    assert meta["bad_docs"] == {"empty": 4, "10mb": 4, "binary": 4}
    files = sorted(os.listdir(os.path.join(out, "bad", "files")))
    sizes = {name: os.path.getsize(os.path.join(out, "bad", "files", name)) for name in files}
    assert sizes["empty-0.txt"] == 0 and sizes["big-0.txt"] >= 10 * 1024 * 1024
    # The bases are real text of at least 120 words, without exact duplicates among them.
    assert meta["params"]["docs"] == DOCS
    # A second build with the same parameters reuses the files.
    assert dedup_corpus.build(out, DOCS, dup_fraction=0.25, seed=0, files=4, bad_per_kind=2) == meta


def test_edits_keep_documents_near_duplicates():
    import random

    text = "\n\n".join(" ".join(f"w{p}_{i}" for i in range(60)) for p in range(3))
    rng = random.Random(0)
    for kind in dedup_corpus.EDITS:
        new = dedup_corpus.edit(text, kind, rng, donor=" ".join(f"d{i}" for i in range(40)))
        assert new != text, kind
    with pytest.raises(ValueError, match="unknown edit"):
        dedup_corpus.edit(text, "shuffle", rng, donor=text)


def test_multiprocess_pipeline_reconciles_on_big_corpus(corpus, tmp_path):
    out, meta, truth = corpus
    spec = dict(kind="jsonl", id_field="id", meta_fields=(), source="bench", role="web_raw", split="train")
    inputs = [InputSpec(paths=(os.path.join(out, "docs"),), **spec),
              InputSpec(paths=(os.path.join(out, "bad", "bad.jsonl"),), **spec),
              InputSpec(paths=(os.path.join(out, "bad", "files"),), kind="text", source="bench", role="web_raw",
                        split="train", extensions=(".txt",))]
    # Forced distributed components: the rounds run on the multi-process runner too.
    near = MinHashConfig(components=ComponentsConfig(method="distributed", max_rounds=6))
    plan = Plan(inputs=inputs, output_dir=str(tmp_path / "out"), role="web_raw", splits=("train",), num_shards=2,
                read=ReadConfig(), exact_dedup=ExactDedupConfig(), near_dedup=near)
    report = run_plan(plan, direct_num_workers=2, direct_running_mode="multi_processing")
    rc = report["reconciliation"]
    units = meta["good_docs"] + meta["bad_total"]
    assert rc["units_read"] == units and rc["balanced"] and all(rc["stages_balanced"].values())
    assert rc["rejected_by_reason"] == {"empty": 4, "too_large": 4, "invalid_utf8": 2, "binary_file": 2}
    kept = list(records.iter_records(plan.output_dir, on_error="raise"))
    dropped = list(records.iter_records(os.path.join(plan.output_dir, "dropped"), on_error="raise"))
    assert rc["kept"] + rc["dropped"] + rc["rejected"] == units
    assert (len(kept), len(dropped)) == (rc["kept"], rc["dropped"])
    near_stage = next(s for s in report["stages"] if s["stage"] == "near_dedup")
    assert near_stage["other"]["bundles/signatures"] > 1 and near_stage["other"]["bundles/decisions"] > 1
    assert report["dedup"]["near_dedup"]["components"]["method"] == "distributed"
    # Planted copies found; nothing merged across different bases.
    copies = sum(1 for i, base in truth.items() if i != base)
    by_dup = [(r.id, r.meta["curation"].get("duplicate_of")) for r in dropped]
    assert sum(1 for i, d in by_dup if truth[i] == truth[d]) == len(by_dup)
    assert len(by_dup) >= 0.95 * copies

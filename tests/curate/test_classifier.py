"""The educational-value classifier separates held-out textbook-like from noisy web-like documents, and the
curation report carries its metrics."""

import json
import os

import numpy as np
import pytest

import curate_testdata as td
from textbooks.curate import classifier as clf_lib
from textbooks.curate.classifier import ClassifierConfig, ClassifierStageConfig, LabeledExample, QualityClassifier
from textbooks.curate.embeddings import EncoderSpec, get_encoder
from textbooks.curate.pipeline import curate
from textbooks.curate.training import train_classifier
from textbooks.data import records

ENCODER = EncoderSpec(max_length=64, batch_size=32)  # short inputs keep the CPU cost of the tests low
N = 50


def _shards(directory, docs, role):
    recs = [{"id": f"{role}/{i}", "text": t, "role": role, "source": src.split("/")[0], "license": "various",
             "split": "train", "meta": {}} for i, (src, t) in enumerate(docs)]
    records.write_shards(recs, directory, "train", 1)
    return str(directory)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    good = td.textbook_like(N + 10, seed=5)
    noisy = td.web_like_noise(N + 10, seed=5)
    pos = _shards(root / "pos", good[:N], "synthetic_textbooks")
    neg = _shards(root / "neg", noisy[:N], "web_raw")
    out = str(root / "classifier")
    metadata = train_classifier(output_dir=out, label_source="references", positives=[pos], negatives=[neg],
                                name="edu_test", encoder=ENCODER, config=ClassifierConfig(model="logistic"),
                                max_docs_per_class=N)
    return {"root": root, "dir": out, "metadata": metadata, "fresh_good": good[N:], "fresh_noisy": noisy[N:]}


def test_held_out_metrics_and_saved_metadata(trained):
    meta = trained["metadata"]
    held = meta["metrics"]["held_out"]
    assert held["n"] == meta["metrics"]["test_size"] == 20
    assert held["f1"] >= 0.85 and held["precision"] >= 0.8 and held["recall"] >= 0.8, held
    saved = json.load(open(os.path.join(trained["dir"], "classifier.json")))
    assert saved["label_source"] == "references" and saved["encoder"]["kind"] == "minilm"
    assert saved["encoder"]["max_length"] == 64 and saved["threshold"] == 0.5
    assert len(saved["training_fingerprint"]) == 64 and saved["num_examples"] == 2 * N
    labels = list(records.iter_records(os.path.join(trained["dir"], "labels")))
    assert len(labels) == 2 * N and {r.meta["labels"]["edu"] for r in labels} == {0.0, 1.0}
    assert all(r.meta["label_source"] == "references" for r in labels)


def test_loaded_classifier_scores_fresh_documents(trained):
    clf = QualityClassifier.load(trained["dir"])
    good = clf.score_texts([t for _, t in trained["fresh_good"]])
    noisy = clf.score_texts([t for _, t in trained["fresh_noisy"]])
    assert np.mean(good >= 0.5) >= 0.8 and np.mean(noisy < 0.5) >= 0.8, (good, noisy)


def test_random_forest_and_ridge_heads(trained):
    half = N // 2
    examples = [LabeledExample(f"g{i}", t, 1.0) for i, (_, t) in enumerate(td.textbook_like(N, seed=5)[:half])] + \
        [LabeledExample(f"n{i}", t, 0.0) for i, (_, t) in enumerate(td.web_like_noise(N, seed=5)[:half])]
    x = get_encoder(ENCODER).embed([e.text for e in examples])
    rf = clf_lib.fit_classifier(x, examples, config=ClassifierConfig(model="random_forest", n_estimators=100),
                                encoder=ENCODER, label_source="references")
    assert rf.metadata["metrics"]["held_out"]["f1"] >= 0.85
    graded = [LabeledExample(e.id, e.text, 4.0 + (i % 2) if e.label else float(i % 2)) for i, e in enumerate(examples)]
    ridge = clf_lib.fit_classifier(x, graded, config=ClassifierConfig(model="ridge", threshold=3.0), encoder=ENCODER,
                                   label_source="judge")
    held = ridge.metadata["metrics"]["held_out"]
    # Much better than predicting the mean grade.
    assert held["f1"] >= 0.85 and held["mse"] < 0.5 * np.var([e.label for e in graded]), held


def test_fingerprint_depends_on_labels_and_text():
    a = [LabeledExample("1", "text", 1.0), LabeledExample("2", "other", 0.0)]
    assert clf_lib.fingerprint(a) == clf_lib.fingerprint(list(reversed(a)))
    assert clf_lib.fingerprint(a) != clf_lib.fingerprint([LabeledExample("1", "text", 0.0), a[1]])
    assert clf_lib.fingerprint(a) != clf_lib.fingerprint([LabeledExample("1", "texts", 1.0), a[1]])


def test_classifier_stage_in_pipeline_and_report(trained, tmp_path):
    docs = [("good", t) for _, t in trained["fresh_good"]] + [("noisy", t) for _, t in trained["fresh_noisy"]]
    src = _shards(tmp_path / "in", docs, "web_raw")
    out = str(tmp_path / "out")
    report = curate(inputs=[src], role="web_filtered", output_dir=out, splits=("train",), num_shards=1,
                    classifier=ClassifierStageConfig(path=trained["dir"], batch_size=32),
                    direct_running_mode="in_memory", direct_num_workers=1)
    assert report["reconciliation"]["balanced"]
    kept = list(records.iter_records(out))
    assert all("edu_test" in r.meta["scores"] for r in kept)
    kept_sources = [r.source for r in kept]
    assert kept_sources.count("good") >= 8 and kept_sources.count("noisy") <= 2, kept_sources
    assert report["classifier"]["metrics"]["held_out"]["f1"] == trained["metadata"]["metrics"]["held_out"]["f1"]
    assert [h["name"] for h in report["histograms"]] == ["edu_test"] and report["histograms"][0]["n"] == 20
    md = open(os.path.join(out, "report", "report.md")).read()
    assert "## Classifier" in md and "F1" in md and "hist_edu_test.png" in md
    assert os.path.exists(os.path.join(out, "report", "hist_edu_test.png"))

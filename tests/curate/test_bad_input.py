"""Bad input is counted and written to rejects with reasons; the pipeline finishes and nothing else is lost."""

import gzip
import json
import os

import pytest

import curate_testdata as td
from textbooks.curate.input_specs import InputSpec, ReadConfig
from textbooks.curate.pipeline import curate
from textbooks.curate.report import read_jsonl_files
from textbooks.data import records
from textbooks.data.manifest import read_manifest


def _good(i, split="train"):
    return {"id": f"good-{i}", "text": f"Document number {i} is a perfectly fine piece of text.", "role": "web_raw",
            "source": "fixture", "license": "CC0", "split": split, "meta": {"n": i}}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    shards = root / "shards"
    shards.mkdir()
    lines = [json.dumps(_good(i)).encode() for i in range(6)]
    lines += [
        b'{"id": "broken", "text": "unterminated',                                       # malformed_json
        b'{"id": "latin", "text": "caf\xe9 au lait", "role": "r", "source": "s", "license": "l", '
        b'"split": "train", "meta": {}}',                                                 # invalid_utf8
        json.dumps(dict(_good(100), id="empty", text="   \n\t ")).encode(),              # empty
        json.dumps(dict(_good(101), id="huge", text="x" * (10 * 1024 * 1024))).encode(),  # too_large (10 MB line)
        json.dumps(["not", "an", "object"]).encode(),                                     # invalid_record
        json.dumps({"id": "nofields", "text": "missing role and others"}).encode(),       # invalid_record
        json.dumps(dict(_good(103), id="nan", meta={"score": float("nan")})).encode(),   # invalid_record (NaN)
        json.dumps(dict(_good(104), id="srcsurrogate", source="s \ud800")).encode(),  # invalid_record (surrogate)
        b"",                                                                              # blank_line
        json.dumps(_good(7, split="test")).encode(),                                      # unknown_split
        json.dumps(dict(_good(0), text="Same id as good-0 but another text.")).encode(),  # duplicate_id
        json.dumps(dict(_good(102), id="surrogate", text="bad \\ud800 surrogate")).encode().replace(
            b"\\\\ud800", b"\\ud800"),                                                    # invalid_unicode
    ]
    with gzip.open(shards / "train-00000-of-00002.jsonl.gz", "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    good_gz = gzip.compress(b"".join(json.dumps(_good(i)).encode() + b"\n" for i in range(10, 14)))
    (shards / "train-00001-of-00002.jsonl.gz").write_bytes(good_gz[: len(good_gz) // 2])  # truncated gzip

    tree = root / "tree"
    (tree / "pkg").mkdir(parents=True)
    for name in ("json/decoder.py", "json/scanner.py", "colorsys.py"):
        with open(os.path.join(td.STDLIB, name), encoding="utf-8") as f:
            (tree / "pkg" / os.path.basename(name)).write_text(f.read())
    (tree / "pkg" / "blob.py").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)  # binary_file (NUL)
    (tree / "pkg" / "latin1.py").write_bytes("# caf\xe9\nx = 1\n".encode("latin-1"))           # binary_file (not UTF-8)
    (tree / "pkg" / "ctrl.py").write_bytes(b"x = 1\n" + b"\x01\x02\x03\x04\x05\x06\x07\x08" * 50)  # control chars
    (tree / "pkg" / "empty.py").write_bytes(b"")                                                # empty
    (tree / "pkg" / "notes.txt").write_text("not a .py file: not read")

    jsonl = root / "other.jsonl"
    td.write_jsonl(str(jsonl), [{"content": "A JSON line with another text field.", "key": 1},
                                {"body": "no content field here"}])  # missing_field
    return root


EXPECTED_REJECTS = {"malformed_json": 1, "invalid_utf8": 1, "empty": 2, "too_large": 1, "invalid_record": 4,
                    "blank_line": 1, "unknown_split": 1, "duplicate_id": 1, "invalid_unicode": 1, "corrupt_file": 1,
                    "binary_file": 3, "missing_field": 1}


def test_bad_input_is_rejected_with_reasons(bad_inputs, tmp_path):
    out = str(tmp_path / "out")
    inputs = [InputSpec(paths=str(bad_inputs / "shards"), kind="shards"),
              InputSpec(paths=str(bad_inputs / "tree"), kind="source", source="tree"),
              InputSpec(paths=str(bad_inputs / "other.jsonl"), kind="jsonl", text_field="content", source="other")]
    report = curate(inputs=inputs, role="web_filtered", output_dir=out, splits=("train", "validation"),
                    read=ReadConfig(max_doc_bytes=4 * 1024 * 1024), num_shards=1,
                    direct_num_workers=2, direct_running_mode="multi_processing")
    rejects = read_jsonl_files(os.path.join(out, "rejects", "rejects-*.jsonl.gz"))
    reasons = {}
    for r in rejects:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        assert r["detail"] or r["reason"] in ("blank_line", "duplicate_id", "empty")
        assert len(r["raw_prefix"]) <= 200
    assert reasons == EXPECTED_REJECTS
    assert {r["path"].rsplit("/", 1)[-1] for r in rejects if r["reason"] == "binary_file"} == \
        {"blob.py", "latin1.py", "ctrl.py"}
    huge = next(r for r in rejects if r["reason"] == "too_large")
    assert huge["line"] == 10 and "train-00000-of-00002" in huge["path"]
    corrupt = next(r for r in rejects if r["reason"] == "corrupt_file")
    assert corrupt["path"].endswith("train-00001-of-00002.jsonl.gz")

    kept = list(records.iter_records(out, on_error="raise"))
    ids = sorted(r.id for r in kept)
    good_ids = {f"good-{i}" for i in range(6)}
    assert good_ids <= set(ids)
    # Whatever the truncated gzip yielded before the damage is kept; plus 3 stdlib files and 1 JSON line.
    partial = [i for i in ids if i in {f"good-{j}" for j in range(10, 14)}]
    assert len(ids) == 6 + len(partial) + 3 + 1
    rc = report["reconciliation"]
    assert rc["balanced"] and rc["rejected"] == sum(EXPECTED_REJECTS.values()) and rc["kept"] == len(ids)
    assert rc["units_read"] == rc["kept"] + rc["rejected"]
    assert rc["rejected_by_reason"] == EXPECTED_REJECTS
    manifest = read_manifest(out)
    assert manifest.num_docs == len(ids) and manifest.role == "web_filtered"
    assert all(r.role == "web_filtered" for r in kept)
    md = open(os.path.join(out, "report", "report.md")).read()
    assert "too_large" in md and "binary_file" in md and "| yes |" in md

"""The shard format: round trips, byte-for-byte determinism, bad lines with file and line, manifests."""

import gzip
import json
import logging
import os

import gin
import pytest

from textbooks.data import paths, records
from textbooks.data.manifest import Manifest, manifest_from_shards, read_manifest, write_manifest
from textbooks.data.counts import ReadReport, SplitStats
from textbooks.data.records import Record, RecordError, ShardWriter


def _records(n, split="train"):
    return [Record(id=f"doc-{i:03d}", text=f"line one {i}\n\n    indented ünïcode 😀 {i}\t", role="web_raw",
                   source="test-source", license="CC0-1.0", split=split, meta={"z": i, "a": {"y": 1, "b": [1.5]}})
            for i in range(n)]


def _append_raw_lines(path, lines):
    with gzip.open(path, "rb") as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data + b"".join(lines))


def test_round_trip_and_layout(tmp_path):
    recs = _records(11)
    written = records.write_shards(recs, tmp_path, "train", num_shards=3)
    assert [os.path.basename(p) for p in written] == [f"train-0000{i}-of-00003.jsonl.gz" for i in range(3)]
    back = list(records.iter_records(tmp_path))
    assert sorted(back, key=lambda r: r.id) == recs
    # Record i goes to shard i % 3; within a shard the input order is kept.
    first = list(records.iter_records(written[0]))
    assert [r.id for r in first] == [f"doc-{i:03d}" for i in range(0, 11, 3)]
    # Each line is one canonical JSON object with the contract's keys in order.
    with gzip.open(written[0], "rt", encoding="utf-8") as f:
        obj = json.loads(f.readline())
    assert list(obj) == ["id", "text", "role", "source", "license", "split", "meta"]
    assert list(obj["meta"]) == ["a", "z"]


def test_json_round_trip_of_one_record():
    r = _records(1)[0]
    assert Record.from_json(r.to_json()) == r
    assert Record.from_json(r.to_json().encode("utf-8")) == r


def test_writing_is_deterministic(tmp_path):
    recs = _records(25)
    a = records.write_shards(recs, tmp_path / "a", "train", 4)
    b = records.write_shards(list(recs), tmp_path / "b", "train", 4)
    for pa, pb in zip(a, b):
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            assert fa.read() == fb.read()
    with open(a[0], "rb") as f:
        header = f.read(10)
    assert header[4:8] == b"\0\0\0\0"  # gzip mtime 0


def test_bad_lines_are_counted_with_file_and_line(tmp_path, caplog):
    caplog.set_level(logging.WARNING)  # the warning is checked whatever level an earlier test left
    path = records.write_shards(_records(2), tmp_path, "train", 1)[0]
    good = _records(3)[2].to_bytes()
    _append_raw_lines(path, [
        b"this is not json\n",  # line 3
        b'{"id": "bad-utf8", "text": "\xff\xfe"}\n',  # line 4
        b'{"id": "x", "text": "no role"}\n',  # line 5
        b'{"id": "y", "text": 3, "role": "r", "source": "s", "license": "l", "split": "train"}\n',  # line 6
        b"[1, 2]\n",  # line 7
        good,  # line 8
    ])
    report = ReadReport()
    got = list(records.iter_records(path, on_error="skip", report=report))
    assert [r.id for r in got] == ["doc-000", "doc-001", "doc-002"]
    assert report.num_records == 3 and report.num_rejected == 5
    assert [(r.line, r.kind) for r in report.rejected] == [
        (3, "not_json"), (4, "invalid_utf8"), (5, "missing_field"), (6, "wrong_type"), (7, "not_object")]
    assert {r.path for r in report.rejected} == {path}
    assert report.rejected[0].raw_prefix == "this is not json"
    assert "role" in report.rejected[2].reason and "source" in report.rejected[2].reason
    assert report.reasons == {"not_json": 1, "invalid_utf8": 1, "missing_field": 1, "wrong_type": 1,
                              "not_object": 1}
    assert f"{path}:3" in caplog.text

    with pytest.raises(RecordError, match=rf"{path}:3: not JSON"):
        list(records.iter_records(path, on_error="raise"))
    with pytest.raises(ValueError, match="on_error"):
        list(records.iter_records(path, on_error="ignore"))


def test_blank_line_counts_as_bad(tmp_path):
    path = records.write_shards(_records(1), tmp_path, "train")[0]
    _append_raw_lines(path, [b"\n", _records(2)[1].to_bytes()])
    report = ReadReport()
    assert len(list(records.iter_records(path, report=report))) == 2
    assert [(r.line, r.kind) for r in report.rejected] == [(2, "blank_line")]


def test_truncated_gzip_is_reported_not_fatal(tmp_path):
    path = records.write_shards(_records(200), tmp_path, "train")[0]
    other = records.write_shards(_records(3, "validation"), tmp_path, "validation")[0]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    report = ReadReport()
    got = list(records.iter_records([path, other], report=report))
    assert report.num_rejected == 1 and report.rejected[0].kind == "corrupt_file"
    assert report.rejected[0].path == path
    assert 3 <= len(got) < 203


def test_empty_shards_and_missing_paths(tmp_path):
    paths_ = records.write_shards([], tmp_path, "validation", 2)
    assert all(os.path.exists(p) for p in paths_)
    assert list(records.iter_records(tmp_path)) == []
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        list(records.iter_records(missing))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(records.read_split(str(missing), "train"))
    with pytest.raises(FileNotFoundError, match="no files match"):
        list(records.iter_records(str(tmp_path / "train-*.jsonl.gz")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no shard files"):
        list(records.iter_records(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path)


def test_writer_rejects_bad_records_and_leaves_nothing(tmp_path):
    recs = _records(3)
    with pytest.raises(RecordError, match="duplicate record id 'doc-000'"):
        records.write_shards(recs + [recs[0]], tmp_path, "train")
    with pytest.raises(RecordError, match="split 'validation'"):
        records.write_shards(_records(1, "validation"), tmp_path, "train")
    with pytest.raises(RecordError, match="'text' must be a string"):
        records.write_shards([dict(recs[0].to_dict(), text=None)], tmp_path, "train")
    with pytest.raises(RecordError, match="not valid Unicode"):
        records.write_shards([Record("s", "lone \ud800", "r", "s", "l", "train")], tmp_path, "train")
    assert os.listdir(tmp_path) == []


def test_rewrite_with_fewer_shards_removes_stale_ones(tmp_path):
    records.write_shards(_records(10), tmp_path, "train", 4)
    records.write_shards(_records(2, "validation"), tmp_path, "validation", 1)
    records.write_shards(_records(10), tmp_path, "train", 2)
    assert sorted(os.listdir(tmp_path)) == ["train-00000-of-00002.jsonl.gz", "train-00001-of-00002.jsonl.gz",
                                           "validation-00000-of-00001.jsonl.gz"]


def test_manifest_round_trip(tmp_path):
    with ShardWriter(tmp_path, "train", 2) as w:
        for r in _records(5):
            w.write(r)
    val = records.write_shards([], tmp_path, "validation")
    manifest = Manifest(role="web_raw", splits={"train": w.stats, "validation": SplitStats(
        shards=[os.path.basename(p) for p in val])}, stand_in=None, description="test", meta={"k": "v"})
    write_manifest(tmp_path, manifest)
    back = read_manifest(tmp_path)
    assert back == manifest
    assert back.num_docs == 5 and back.sources == {"test-source": 5} and back.licenses == {"CC0-1.0": 5}
    assert back.splits["train"].num_bytes == sum(len(r.text.encode()) for r in _records(5))
    assert back.shard_paths("train") == [str(tmp_path / n) for n in w.stats.shards]
    assert manifest_from_shards(tmp_path, "web_raw", description="test", meta={"k": "v"}) == manifest
    with pytest.raises(KeyError, match="has train, validation"):
        back.shard_paths("test")


def test_gfile_path_with_a_local_folder(tmp_path, monkeypatch):
    import tensorflow  # noqa: F401 - the gfile path below goes through it
    monkeypatch.setenv("TEXTBOOKS_FORCE_GFILE", "1")
    recs = _records(7)
    out = str(tmp_path / "g")
    written = records.write_shards(recs, out, "train", 2)
    assert sorted(records.iter_records(out), key=lambda r: r.id) == recs
    assert len(list(records.iter_records(records.shard_pattern(out, "train")))) == 7
    monkeypatch.delenv("TEXTBOOKS_FORCE_GFILE")
    # The gfile-written files equal the built-in-file ones byte for byte.
    local = records.write_shards(recs, tmp_path / "l", "train", 2)
    for a, b in zip(written, local):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.data_root() == str(tmp_path / ".cache" / "textbooks" / "data")
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "env"))
    assert paths.data_root() == str(tmp_path / "env")
    gin.parse_config(f"textbooks.data.paths.data_root.path = '{tmp_path / 'gin'}'")
    assert paths.data_root() == str(tmp_path / "gin")
    assert paths.role_dir("code_exercises") == str(tmp_path / "gin" / "code_exercises")
    assert paths.role_dir("web_raw", root="gs://bucket/data/") == "gs://bucket/data/web_raw"
    with pytest.raises(ValueError, match="known roles: synthetic_textbooks"):
        paths.role_dir("textbooks")
    assert paths.split_pattern("web_raw", "train", root="gs://bucket/data") == records.shard_pattern(
        "gs://bucket/data/web_raw", "train")

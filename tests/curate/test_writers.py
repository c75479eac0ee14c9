"""The curation writers: gzip JSON Lines at a chosen compression level, read back by the shard reader."""

import glob
import gzip
import json

import apache_beam as beam
import pytest

from textbooks.curate import writers
from textbooks.data import records


def _records(n):
    words = "near duplicate detection keeps one document of every cluster and writes the rest".split()
    return [{"id": f"doc{i:03d}", "text": " ".join(words[(i + k) % len(words)] for k in range(200)),
             "role": "web_raw", "source": "test", "license": "cc0", "split": "train", "meta": {"n": i}}
            for i in range(n)]


def _write(tmp_path, level, recs):
    out = tmp_path / f"level{level}"
    with beam.Pipeline() as p:
        (p | beam.Create(recs) | writers.WriteShards(str(out), "train", num_shards=2, gzip_level=level))
        (p | "Side" >> beam.Create([{"b": 2, "a": 1}])
         | writers.WriteJsonl(str(out / "side" / "items"), gzip_level=level))
    return out


@pytest.mark.parametrize("level", [1, 9])
def test_shards_are_gzip_at_the_level_and_read_back(tmp_path, level):
    recs = _records(50)
    out = _write(tmp_path, level, recs)
    paths = sorted(glob.glob(str(out / "train-*-of-00002.jsonl.gz")))
    assert len(paths) == 2
    for path in paths:
        header = open(path, "rb").read(10)
        assert header[:2] == b"\x1f\x8b"
        # The gzip header's XFL byte (RFC 1952): 4 = fastest (level 1), 2 = maximum compression (level 9).
        assert header[8] == {1: 4, 9: 2}[level]
    back = sorted((r.to_dict() for r in records.iter_records(paths, on_error="raise")), key=lambda r: r["id"])
    assert back == [records.Record.from_dict(r).to_dict() for r in recs]
    side = glob.glob(str(out / "side" / "items-*.jsonl.gz"))
    with gzip.open(side[0], "rt", encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == [{"a": 1, "b": 2}]


def test_higher_level_writes_the_same_lines_smaller(tmp_path):
    recs = _records(200)
    sizes, lines = {}, {}
    for level in (1, 9):
        paths = sorted(glob.glob(str(_write(tmp_path, level, recs) / "train-*.jsonl.gz")))
        sizes[level] = sum(len(open(p, "rb").read()) for p in paths)
        lines[level] = sorted(line for p in paths for line in gzip.open(p).read().splitlines())
    assert lines[1] == lines[9]
    assert sizes[9] < sizes[1]


@pytest.mark.parametrize("level", [0, 10, True, 2.0])
def test_bad_gzip_level_is_refused_with_the_fix(level):
    with pytest.raises(ValueError, match="curate.gzip_level"):
        writers.WriteShards("/tmp/unused", "train", gzip_level=level)

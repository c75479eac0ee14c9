"""Token statistics: exact counts, examples after splitting, caching keyed by data and vocabulary."""

import json
import math
import os

import pytest
import seqio

import mixtures  # noqa: F401
from mixtures import testing
from textbooks.data import records
from textbooks.data.counts import SplitStats
from textbooks.data.manifest import read_manifest, write_manifest
from textbooks.tokens import stats as token_stats


@pytest.fixture()
def role_dir(tmp_path):
    return testing.write_role(str(tmp_path), "web_raw", num_docs={"train": 40, "validation": 5}, mean_chars=900)


def test_counts_match_an_independent_count(role_dir):
    stats = token_stats.get_token_stats("web_raw", "byte", directory=role_dir)
    lengths = [len(r.text.encode("utf-8")) + 1 for r in records.read_split(role_dir, "train")]
    assert stats.num_docs == 40
    assert stats.num_tokens == sum(lengths)
    for length in (64, 500, 4096):
        pieces = sum(math.ceil(n / length) for n in lengths)
        assert stats.num_examples(length) == pieces
        assert stats.mean_tokens_per_example(length) == pytest.approx(sum(lengths) / pieces)
    assert stats.mean_tokens_per_example() == pytest.approx(sum(lengths) / 40)


def test_counts_match_the_task_pipeline(role_dir, monkeypatch):
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", os.path.dirname(role_dir))
    stats = token_stats.get_token_stats("web_raw", "byte")
    task = seqio.TaskRegistry.get("web_raw_byte")
    pieces = list(task.get_dataset({"targets": 128}, split="train", shuffle=False).as_numpy_iterator())
    assert len(pieces) == stats.num_examples(128)
    assert sum(len(p["targets"]) for p in pieces) == stats.num_tokens


def test_cache_is_reused_and_invalidated_when_data_changes(role_dir, monkeypatch):
    first = token_stats.get_token_stats("web_raw", "byte", directory=role_dir)
    cache = os.path.join(role_dir, token_stats.STATS_FILE)
    with open(cache) as f:
        entries = json.load(f)["entries"]
    (key,) = entries
    assert key.startswith("byte@") and entries[key]["train"]["fingerprint"] == first.fingerprint

    calls = []
    real = token_stats.compute_token_stats
    monkeypatch.setattr(token_stats, "compute_token_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert token_stats.get_token_stats("web_raw", "byte", directory=role_dir) == first
    assert not calls  # served from the cache

    more = testing.make_records("web_raw", "train", 60, 900, seed=1)
    records.write_shards(more, role_dir, "train", num_shards=2)
    manifest = read_manifest(role_dir)
    manifest.splits["train"] = SplitStats(shards=["train-00000-of-00002.jsonl.gz",
                                                          "train-00001-of-00002.jsonl.gz"], num_docs=60)
    write_manifest(role_dir, manifest)
    second = token_stats.get_token_stats("web_raw", "byte", directory=role_dir)
    assert calls and second.num_docs == 60
    assert second.fingerprint != first.fingerprint


def test_unwritable_folder_falls_back_to_home_cache(role_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real_store = token_stats._store

    def store(path, data):
        if path.startswith(role_dir):
            raise PermissionError(f"read-only: {path}")
        real_store(path, data)

    monkeypatch.setattr(token_stats, "_store", store)
    stats = token_stats.get_token_stats("web_raw", "byte", directory=role_dir)
    fallback = token_stats.stats_paths(role_dir)[1]
    assert fallback.startswith(str(tmp_path / "home")) and os.path.exists(fallback)
    assert not os.path.exists(os.path.join(role_dir, token_stats.STATS_FILE))
    monkeypatch.setattr(token_stats, "compute_token_stats", lambda *a, **k: pytest.fail("cache not used"))
    assert token_stats.get_token_stats("web_raw", "byte", directory=role_dir) == stats


def test_bad_lines_are_skipped_and_counted(tmp_path):
    directory = str(tmp_path / "web_raw")
    records.write_shards(testing.make_records("web_raw", "train", 5, 100), directory, "train")
    import gzip

    path = os.path.join(directory, "train-00000-of-00001.jsonl.gz")
    with gzip.open(path, "ab") as f:
        f.write(b"not json\n")
    stats = token_stats.compute_token_stats(directory, "byte", role="web_raw")
    assert stats.num_docs == 5 and stats.num_rejected == 1


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        token_stats.get_token_stats("web_raw", "byte", directory=str(tmp_path / "nope"))

"""The benchmark TFDS builds hold the items the benchmark loader gives, in order, with their splits."""

import json

import pytest
import tensorflow_datasets as tfds

from textbooks.evaluate import benchmarks, tfds_benchmarks


@pytest.mark.parametrize("name", ["humaneval", "arc_easy"])
def test_benchmark_builder_matches_the_loader(name, tmp_path):
    want = benchmarks.load_benchmark(name)
    builder = tfds_benchmarks.build_benchmark(name, str(tmp_path))
    split = benchmarks.default_split(name)
    got = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
    got.sort(key=lambda ex: ex["index"])
    assert [ex["id"].decode() for ex in got] == [w["id"] for w in want]
    assert json.loads(got[0]["record"]) == json.loads(json.dumps(want[0], sort_keys=True, default=str))
    assert got[0]["text"].decode() == benchmarks.item_text(want[0])
    if name == "arc_easy":
        assert set(builder.info.splits) == {"test", "validation"}


def test_unknown_benchmark_is_a_clear_error(tmp_path):
    with pytest.raises(benchmarks.BenchmarkError, match="unknown benchmark 'no_such_benchmark'; known: humaneval, "):
        tfds_benchmarks.build_benchmark("no_such_benchmark", str(tmp_path))

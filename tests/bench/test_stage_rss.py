"""The bench's opt-in per-bundle memory log (bench/stage_rss, ``dedup_vs_datatrove.py --stage_rss``): SDK
workers started with it log every bundle, and the summary names the bundles that raised a worker's peak."""

import json
import os
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from bench import dedup_vs_datatrove as bench  # noqa: E402

HERE = os.path.dirname(os.path.abspath(bench.__file__))


def test_workers_log_their_bundles_and_the_summary_reads_them(tmp_path, monkeypatch):
    folder = str(tmp_path / "rss")
    os.makedirs(folder)
    monkeypatch.setenv("BENCH_STAGE_RSS", folder)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.join(HERE, "stage_rss"), os.path.dirname(HERE),
                                                      os.environ.get("PYTHONPATH", "")]))
    options = PipelineOptions(runner="DirectRunner", direct_num_workers=2, direct_running_mode="multi_processing")
    with beam.Pipeline(options=options) as p:
        _ = (p | beam.Create(range(2000)) | "Grow" >> beam.Map(lambda i: (i % 7, bytes(1000)))
             | beam.GroupByKey() | "Sizes" >> beam.MapTuple(lambda k, vs: (k, sum(map(len, vs)))))
    workers = bench.stage_rss_summary(folder)
    assert workers and all(w["bundles"] >= 1 and w["peak_mb"] > 0 for w in workers)
    stages = {s for path in os.listdir(folder) for line in open(os.path.join(folder, path))
              for s in json.loads(line)["stages"]}
    assert {"Grow", "Sizes"} <= {s.split("/")[0] for s in stages}
    assert [w["peak_mb"] for w in workers] == sorted((w["peak_mb"] for w in workers), reverse=True)


def test_trim_mode_logs_what_remains_after_releasing_freed_memory(tmp_path, monkeypatch):
    folder = str(tmp_path / "rss")
    os.makedirs(folder)
    monkeypatch.setenv("BENCH_STAGE_RSS", folder)
    monkeypatch.setenv("BENCH_STAGE_RSS_TRIM", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.join(HERE, "stage_rss"), os.path.dirname(HERE),
                                                      os.environ.get("PYTHONPATH", "")]))
    options = PipelineOptions(runner="DirectRunner", direct_num_workers=2, direct_running_mode="multi_processing")
    with beam.Pipeline(options=options) as p:
        _ = p | beam.Create(range(200)) | "Keep" >> beam.Map(lambda i: bytes(i))
    rows = [json.loads(line) for path in os.listdir(folder) for line in open(os.path.join(folder, path))]
    assert rows and all(isinstance(r["trimmed"], int) and r["trimmed"] > 0 and r["blocks"] > 0 for r in rows)


def test_summary_keeps_the_bundles_that_raised_the_peak(tmp_path):
    rows = [{"start": 2.0, "seconds": 1.0, "rss": [150, 200], "hwm": [150, 210], "stages": ["B"]},
            {"start": 1.0, "seconds": 0.1, "rss": [140, 150], "hwm": [140, 150], "stages": ["A"]},
            {"start": 3.0, "seconds": 0.1, "rss": [190, 195], "hwm": [210, 210], "stages": ["C"]}]
    with open(tmp_path / "123.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(tmp_path / "124.jsonl", "w") as f:
        f.write(json.dumps({"start": 1.0, "seconds": 0.1, "rss": [1, 2], "hwm": [1, 300], "stages": ["D"]}) + "\n")
    workers = bench.stage_rss_summary(str(tmp_path))
    assert [(w["pid"], w["peak_mb"], w["bundles"]) for w in workers] == [(124, 300, 1), (123, 210, 3)]
    assert [r["stages"] for r in workers[1]["raised"]] == [["A"], ["B"]]  # in time order; C raised nothing

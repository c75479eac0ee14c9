"""The local runner's worker processes start with fewer malloc arenas; this process and a value already set
are left alone."""

import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from textbooks.curate.local_workers import ARENAS, WORKER_ARENAS, worker_arenas


def test_set_only_while_the_block_runs_and_only_for_spawned_local_workers(monkeypatch):
    monkeypatch.delenv(ARENAS, raising=False)
    with worker_arenas("DirectRunner", "multi_processing"):
        assert os.environ[ARENAS] == str(WORKER_ARENAS)
    assert ARENAS not in os.environ
    for runner, mode in (("DirectRunner", "in_memory"), ("DirectRunner", "multi_threading"),
                         ("DataflowRunner", "multi_processing")):
        with worker_arenas(runner, mode):
            assert ARENAS not in os.environ


def test_a_value_already_set_wins(monkeypatch):
    monkeypatch.setenv(ARENAS, "7")
    with worker_arenas("DirectRunner", "multi_processing"):
        assert os.environ[ARENAS] == "7"
    assert os.environ[ARENAS] == "7"


def test_worker_processes_see_it(monkeypatch):
    monkeypatch.delenv(ARENAS, raising=False)
    options = PipelineOptions(runner="DirectRunner", direct_num_workers=1, direct_running_mode="multi_processing")
    driver = os.getpid()
    with worker_arenas("DirectRunner", "multi_processing"):
        with beam.Pipeline(options=options) as p:
            seen = p | beam.Create([0]) | beam.Map(lambda _, d=driver: (os.getpid() != d, os.environ.get(ARENAS)))
            assert_that(seen, equal_to([(True, str(WORKER_ARENAS))]))
    assert ARENAS not in os.environ

"""The local runner with bounded bundles: inputs are cut at element boundaries into pieces of at most the bound,
a stage's input reaches the workers in several bounded bundles instead of one per worker, and the results are
those of Beam's own runner."""

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.testing.util import assert_that, equal_to

from textbooks.curate.local_runner import BoundedBundleRunner, cut_elements
from textbooks.curate.local_workers import is_local_runner

CODER = coders.TupleCoder([coders.StrUtf8Coder(), coders.BytesCoder()]).get_impl()


def _encode(elements) -> bytes:
    out = create_OutputStream()
    for e in elements:
        CODER.encode_to_stream(e, out, True)
    return out.get()


def _decode(pieces) -> list:
    return [e for piece in pieces for chunk in piece for e in CODER.decode_all(chunk)]


def test_cut_keeps_every_element_in_order_within_the_bound():
    elements = [(f"k{i}", bytes([i % 251]) * (i % 97)) for i in range(500)]
    chunks = [_encode(elements[:170]), _encode(elements[170:171]), _encode(elements[171:])]
    sizes = [len(_encode([e])) for e in elements]
    for bound in (max(sizes), 300, 1000, 10 ** 6):
        pieces = list(cut_elements(chunks, CODER, bound))
        assert _decode(pieces) == elements
        assert all(sum(map(len, piece)) <= bound for piece in pieces)
        # Greedy: a piece and the next one's first run of elements would not have fitted together.
        for piece, following in zip(pieces, pieces[1:]):
            assert sum(map(len, piece)) + len(following[0]) > bound
    assert len(list(cut_elements(chunks, CODER, 10 ** 6))) == 1


def test_an_element_larger_than_the_bound_is_a_piece_of_its_own():
    elements = [("a", b"x" * 10), ("big", b"y" * 5000), ("b", b"z" * 10), ("c", b"w" * 10)]
    pieces = list(cut_elements([_encode(elements)], CODER, 100))
    assert _decode(pieces) == elements
    assert [len(list(CODER.decode_all(b"".join(p)))) for p in pieces] == [1, 1, 2]
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        list(cut_elements([b""], CODER, 0))


class _BundleSizes(beam.DoFn):
    """Counts the values each bundle of a grouped stage receives, in a distribution metric."""

    def start_bundle(self):
        self.values = 0

    def process(self, kv):
        self.values += len(list(kv[1]))
        yield kv[0], sum(kv[1])

    def finish_bundle(self):
        Metrics.distribution("test", "values_per_bundle").update(self.values)


def _run(runner, keys: int = 400, per_key: int = 25):
    options = PipelineOptions([], direct_num_workers=2, direct_running_mode="multi_threading")
    p = beam.Pipeline(runner=runner, options=options)
    sums = (p | beam.Create([(k, v) for k in range(keys) for v in range(per_key)])
            | beam.Reshuffle() | beam.GroupByKey() | beam.ParDo(_BundleSizes()))
    assert_that(sums, equal_to([(k, sum(range(per_key))) for k in range(keys)]))
    result = p.run()
    result.wait_until_finish()
    [dist] = result.metrics().query(MetricsFilter().with_name("values_per_bundle"))["distributions"]
    return dist.committed, is_local_runner(p)


def test_a_grouped_stage_runs_as_bounded_bundles_with_the_same_results():
    keys, per_key = 400, 25
    beams_own, _ = _run(fn_runner.FnApiRunner(), keys, per_key)
    assert beams_own.count == 2  # one bundle per worker: each worker's share at once
    bounded, local = _run(BoundedBundleRunner(max_bundle_bytes=2000), keys, per_key)
    assert local
    assert bounded.sum == beams_own.sum == keys * per_key
    # 10,000 values of at least one encoded byte each: at least 5 bundles of 2,000 bytes.
    assert bounded.count >= keys * per_key // 2000
    # Every value encodes to at least one byte, so a bundle of at most 2,000 bytes holds at most 2,000 values.
    assert bounded.max <= 2000 < beams_own.max


def test_the_bound_must_be_positive():
    with pytest.raises(ValueError, match="max_bundle_bytes must be positive"):
        BoundedBundleRunner(max_bundle_bytes=0)

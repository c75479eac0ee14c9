"""The local runner with bounded bundles: Beam's FnApiRunner (what the DirectRunner runs batch pipelines on)
with no bundle larger than ``max_bundle_bytes`` of encoded input, so that a worker process's memory does not
grow with the corpus.

Beam's own parallel bundle manager cuts each stage's input into exactly ``direct_num_workers`` parts and sends
each part to a worker as one bundle; after a shuffle each part is one block of bytes, which the worker holds
(and decodes into the grouped values) while the bundle runs. A worker's peak therefore grows with the corpus
on the local runner, while runners that stream a stage's input (Dataflow, Flink, Spark) bound it.
:class:`BoundedBundleRunner` keeps Beam's cut into one part per worker, then cuts every part that is larger
than ``max_bundle_bytes`` into bundles of at most that size (at element boundaries, so that a single element
larger than the bound is a bundle of its own) and runs one part's bundles one after another: at most
``direct_num_workers`` bundles are in flight, and each worker's share of a stage arrives in bounded pieces.
A grouped key's values stay in one element, so a stage that groups everything under one key (the one-worker
union-find) still holds all of it; that is its design, chosen only for small candidate graphs.

It relies on the FnApiRunner's bundle managers (``fn_runner.BundleManager``, ``ParallelBundleManager``),
internals of the pinned Apache Beam (``constraints.txt``); ``tests/curate/test_local_runner.py`` runs the
real runner and checks that bundles are bounded and results unchanged, so an upgrade that changes them fails there.
"""

from __future__ import annotations

import itertools
import logging
from concurrent import futures
from typing import Iterator, Mapping, Sequence

from apache_beam.metrics import monitoring_infos
from apache_beam.portability.api import beam_fn_api_pb2, beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import execution, fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

logger = logging.getLogger(__name__)

DEFAULT_MAX_BUNDLE_BYTES = 1 << 20


def cut_elements(chunks: Sequence[bytes], coder_impl, max_bytes: int) -> Iterator[list[bytes]]:
    """Groups the encoded ``chunks`` of one input into pieces of at most ``max_bytes`` (an element that alone is
    larger is a piece of its own). Whole chunks are kept when they fit; a larger chunk is cut at the element
    boundaries that ``coder_impl`` (the input's data-channel coder) finds when it decodes the chunk."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    piece: list[bytes] = []
    size = 0
    for chunk in chunks:
        for element_run in _runs(chunk, coder_impl, max_bytes):
            if piece and size + len(element_run) > max_bytes:
                yield piece
                piece, size = [], 0
            piece.append(element_run)
            size += len(element_run)
    if piece:
        yield piece


def _runs(chunk: bytes, coder_impl, max_bytes: int) -> Iterator[bytes]:
    """``chunk`` itself when it fits in ``max_bytes``, else consecutive runs of its elements of at most that
    size (one element larger than it is a run of its own)."""
    if len(chunk) <= max_bytes:
        yield chunk
        return
    stream = execution.create_InputStream(chunk)
    start = end = 0
    while stream.size() > 0:
        coder_impl.decode_from_stream(stream, True)
        position = len(chunk) - stream.size()
        if end > start and position - start > max_bytes:
            yield chunk[start:end]
            start = end
        end = position
    if end > start:
        yield chunk[start:end]


def _merge(results: Sequence[beam_fn_api_pb2.InstructionResponse]) -> beam_fn_api_pb2.InstructionResponse:
    """One bundle response from several: their monitoring infos consolidated, their residuals (work a bundle
    deferred) all kept, the first error kept."""
    if len(results) == 1:
        return results[0]
    return beam_fn_api_pb2.InstructionResponse(
        process_bundle=beam_fn_api_pb2.ProcessBundleResponse(
            monitoring_infos=monitoring_infos.consolidate(itertools.chain.from_iterable(
                r.process_bundle.monitoring_infos for r in results)),
            residual_roots=[root for r in results for root in r.process_bundle.residual_roots]),
        error=next((r.error for r in results if r.error), ""))


class BoundedBundleManager(fn_runner.ParallelBundleManager):
    """Beam's parallel bundle manager, with each worker's part of a stage's input run as bundles of at most
    ``max_bundle_bytes``, one after another."""

    def __init__(self, bundle_context_manager: execution.BundleContextManager, progress_frequency=None,
                 cache_token_generator=None, *, max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES, **kwargs) -> None:
        super().__init__(bundle_context_manager, progress_frequency,
                         cache_token_generator=cache_token_generator, **kwargs)
        self._max_bundle_bytes = max_bundle_bytes

    def _bundles(self, part: Mapping[str, list[bytes]]) -> list[dict[str, list[bytes]]]:
        """One worker's part of the inputs, as a list of bundles' inputs (each input cut on its own)."""
        if sum(len(chunk) for chunks in part.values() for chunk in chunks) <= self._max_bundle_bytes:
            return [dict(part)]
        pieces = {name: list(cut_elements(chunks, self.bundle_context_manager.get_input_coder_impl(name),
                                          self._max_bundle_bytes)) for name, chunks in part.items()}
        count = max(len(p) for p in pieces.values())
        return [{name: (p[i] if i < len(p) else []) for name, p in pieces.items()} for i in range(count)]

    def process_bundle(self, inputs, expected_outputs, fired_timers, expected_output_timers, dry_run=False):
        parts: list[dict[str, list[bytes]]] = [{} for _ in range(self._num_workers)]
        for name, buffer in inputs.items():
            for ix, chunks in enumerate(buffer.partition(self._num_workers)):
                parts[ix][name] = chunks
        stage = self.bundle_context_manager.stage.name

        def run_part(ix: int):
            bundles = self._bundles(parts[ix])
            if len(bundles) > 1:
                logger.debug("stage %s: worker part %d runs as %d bundles of at most %d bytes",
                             stage, ix, len(bundles), self._max_bundle_bytes)
            results, splits = [], []
            for j, bundle in enumerate(bundles):
                manager = fn_runner.BundleManager(self.bundle_context_manager, self._progress_frequency,
                                                  cache_token_generator=self._cache_token_generator)
                result, split = manager.process_bundle(bundle, expected_outputs,
                                                       fired_timers if ix == 0 and j == 0 else {},
                                                       expected_output_timers, dry_run)
                results.append(result)
                splits.extend(split)
            return results, splits

        results: list[beam_fn_api_pb2.InstructionResponse] = []
        split_results: list[beam_fn_api_pb2.ProcessBundleSplitResponse] = []
        with futures.ThreadPoolExecutor(max_workers=self._num_workers, thread_name_prefix="bundle") as pool:
            for part_results, part_splits in pool.map(run_part, range(self._num_workers)):
                results.extend(part_results)
                split_results.extend(part_splits)
        return _merge(results), split_results


class BoundedBundleRunner(fn_runner.FnApiRunner):
    """The FnApiRunner with bounded bundles (:class:`BoundedBundleManager`) wherever it runs a stage's input on
    several workers; other stages (one worker, stateful ones) run as Beam runs them."""

    def __init__(self, max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES, **kwargs) -> None:
        if max_bundle_bytes <= 0:
            raise ValueError(f"max_bundle_bytes must be positive, got {max_bundle_bytes}")
        super().__init__(**kwargs)
        self.max_bundle_bytes = max_bundle_bytes

    def run_pipeline(self, pipeline, options):
        # As the DirectRunner does: the workers get the pipeline options (log level, main session, ...).
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        self._provision_info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return super().run_pipeline(pipeline, options)

    def _get_bundle_manager(self, bundle_context_manager: execution.BundleContextManager):
        manager = super()._get_bundle_manager(bundle_context_manager)
        if type(manager) is not fn_runner.ParallelBundleManager:
            return manager
        return BoundedBundleManager(bundle_context_manager, self._progress_frequency,
                                    cache_token_generator=manager._cache_token_generator,
                                    max_bundle_bytes=self.max_bundle_bytes)

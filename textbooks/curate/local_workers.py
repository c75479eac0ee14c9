"""The local runners (:func:`is_local_runner`) and the environment of their worker processes: how many malloc
arenas glibc gives each one.

Beam's SDK worker runs each bundle beside several gRPC threads, and glibc gives threads their own heaps
("arenas", up to 8 per core by default). Memory that one stage frees in one arena is not reused by the next
stage's allocations in another, so a worker's resident memory climbs stage by stage. With
``MALLOC_ARENA_MAX=2`` the near dedup's largest worker peaked about 30-40 MB lower (2 workers, DirectRunner
in multi-processing mode, runs alternated on a busy machine: 250-255 against 289-291 MB at 50k documents,
278-302 against 319-338 MB at 100k), in no more time.

The setting is read by glibc when a process starts, so it is put in the environment that the runner hands to
the worker processes it starts (:func:`worker_arenas`), never changed for this process, and a value that is
already set wins. It does nothing on other C libraries and other runners (Dataflow, Flink and Spark set their
workers' environment themselves).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import apache_beam

LOCAL_RUNNERS = ("SwitchingDirectRunner", "DirectRunner", "BundleBasedDirectRunner", "FnApiRunner",
                 "BoundedBundleRunner")
ARENAS = "MALLOC_ARENA_MAX"
WORKER_ARENAS = 2
_SPAWNING_MODES = ("multi_processing",)


def is_local_runner(pipeline: "apache_beam.Pipeline") -> bool:
    """Whether ``pipeline`` (a ``beam.Pipeline``) runs on one of Beam's local runners (the DirectRunner, the
    FnApiRunner and its bounded-bundle form), whose driver holds every stage's input in memory."""
    return type(pipeline.runner).__name__ in LOCAL_RUNNERS


@contextlib.contextmanager
def worker_arenas(runner: str, running_mode: str, arenas: int = WORKER_ARENAS) -> Iterator[None]:
    """While the block runs, worker processes that the DirectRunner starts in ``running_mode`` (multi-processing)
    get ``MALLOC_ARENA_MAX=arenas`` unless the environment already sets it; restored afterwards."""
    if runner not in ("DirectRunner", "direct") or running_mode not in _SPAWNING_MODES or ARENAS in os.environ:
        yield
        return
    os.environ[ARENAS] = str(arenas)
    try:
        yield
    finally:
        os.environ.pop(ARENAS, None)

"""Opt-in per-bundle memory log of Beam's SDK workers, for ``bench/dedup_vs_datatrove.py --stage_rss DIR``.

With ``BENCH_STAGE_RSS=<dir>`` in the environment and this folder on ``PYTHONPATH``, every process that loads
Beam's bundle processor (the SDK workers) appends one JSON line per bundle to ``<dir>/<pid>.jsonl``: its
VmRSS and VmHWM (MB) before and after, the seconds it took and the user transforms it ran (the first three
parts of each ParDo's name). With ``BENCH_STAGE_RSS_TRIM=1`` too, the worker returns the C heap's free pages
to the system after each bundle (a full garbage collection, then glibc ``malloc_trim(0)``) and logs its VmRSS after that (``trimmed``):
what a stage frees but the allocator keeps. ``blocks`` is the count of live Python allocator blocks
(``sys.getallocatedblocks()``). It wraps ``BundleProcessor.process_bundle``: a bench probe, never loaded by the
library.
"""

import importlib.abc
import importlib.util
import json
import os
import sys
import time

_DIR = os.environ.get("BENCH_STAGE_RSS")
_TRIM = os.environ.get("BENCH_STAGE_RSS_TRIM") == "1"


def _trim() -> None:
    """Returns the C heap's free pages to the system (glibc ``malloc_trim(0)``), where there is one."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
_TARGET = "apache_beam.runners.worker.bundle_processor"


def _memory() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) // 1024
    return out


def _stages(descriptor) -> list:
    names = {"/".join(t.unique_name.split("/")[:3]) for t in descriptor.transforms.values()
             if t.unique_name and t.spec.urn == "beam:transform:pardo:v1"
             and not t.unique_name.startswith(("ref_", "fn/"))}
    return sorted(names) or sorted(t.unique_name for t in descriptor.transforms.values() if t.unique_name)


def _patch(module) -> None:
    original = module.BundleProcessor.process_bundle

    def process_bundle(self, instruction_id, *args, **kwargs):
        before, start = _memory(), time.time()
        try:
            return original(self, instruction_id, *args, **kwargs)
        finally:
            after = _memory()
            trimmed = None
            if _TRIM:
                import gc

                gc.collect()
                _trim()
                trimmed = _memory()["VmRSS"]
            row = {"trimmed": trimmed, "blocks": sys.getallocatedblocks(), "start": round(start, 3), "seconds": round(time.time() - start, 3),
                   "rss": [before["VmRSS"], after["VmRSS"]], "hwm": [before["VmHWM"], after["VmHWM"]],
                   "stages": _stages(self.process_bundle_descriptor)}
            with open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")

    module.BundleProcessor.process_bundle = process_bundle


class _Finder(importlib.abc.MetaPathFinder):
    """Patches the bundle processor once it is imported."""

    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if _DIR:
    sys.meta_path.insert(0, _Finder())

"""The compiled XLA:CPU kernels of decoding (``kernels/*.cc``): built on first use with the system compiler and
registered as XLA FFI targets.

A decode step feeds one token per sequence through the model, so it is bound by memory traffic, and two of
its parts run faster as small C++ kernels than as XLA:CPU ops: cached attention, which should read each row's
own cache prefix once (:mod:`textbooks.model.cpu_attention`), and the weight products of a few rows, which
should stream the weights on every core (:mod:`textbooks.model.cpu_matmul`); a greedy step's argmax over the
vocabulary is a third (:mod:`textbooks.model.cpu_greedy`). The sources are compiled into one library per
version of the sources, jaxlib and CPU, kept in ``$TEXTBOOKS_KERNEL_CACHE`` (default
``~/.cache/textbooks/kernels``) and built with ``$CXX`` (default ``g++``). :func:`status` says whether the
kernels are usable and, if not, why (no compiler, compile error, not a CPU backend, ``TEXTBOOKS_CPU_KERNELS=0``);
callers then keep the XLA formulation, which computes the same thing.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from typing import NamedTuple

import jax

logger = logging.getLogger(__name__)

KERNELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
SOURCES = ("decode_attention.cc", "greedy.cc", "small_matmul.cc")
HEADERS = ("vector16.h",)  # included by the sources: part of what a built library is made from
# FFI target name -> the handler symbol the library exports.
TARGETS = {"textbooks_decode_attention": "TextbooksDecodeAttention",
           "textbooks_small_matmul": "TextbooksSmallMatmul",
           "textbooks_matmul_nt": "TextbooksSmallMatmulNT",
           "textbooks_packed_matmul": "TextbooksPackedMatmul",
           "textbooks_packed_swiglu": "TextbooksPackedSwiglu",
           "textbooks_greedy": "TextbooksGreedy"}


class KernelStatus(NamedTuple):
    """Whether the kernels are registered (``ok``) and, if not, why (``reason``); ``library``: the built .so."""

    ok: bool
    reason: str
    library: str | None = None


def _cache_dir() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "textbooks", "kernels")
    return os.environ.get("TEXTBOOKS_KERNEL_CACHE", default)


def _cpu_signature() -> str:
    """The CPU's feature flags (the build uses -march=native, so a library is only reused on the same kind)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()


def _build(compiler: str) -> str:
    """Compiles the kernels if no library for these sources, jaxlib and CPU exists; returns the library path."""
    import jaxlib

    sources = [os.path.join(KERNELS, name) for name in SOURCES]
    digest = hashlib.sha256()
    for path in sources + [os.path.join(KERNELS, name) for name in HEADERS]:
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(jaxlib.__version__.encode() + _cpu_signature().encode() + compiler.encode())
    library = os.path.join(_cache_dir(), f"textbooks_kernels-{digest.hexdigest()[:16]}.so")
    if os.path.exists(library):
        return library
    os.makedirs(_cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as tmp:
        out = os.path.join(tmp, "kernels.so")
        cmd = [compiler, "-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-w",
               "-I", jax.ffi.include_dir(), *sources, "-o", out]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr[-1500:]}")
        os.replace(out, library)  # atomic: concurrent builders leave one complete library
    return library


@functools.lru_cache(maxsize=1)
def status() -> KernelStatus:
    """Builds (once) and registers the kernels; returns whether they can be used in this process."""
    if os.environ.get("TEXTBOOKS_CPU_KERNELS", "1") == "0":
        return KernelStatus(False, "disabled by TEXTBOOKS_CPU_KERNELS=0")
    if jax.default_backend() != "cpu":
        return KernelStatus(False, f"the default backend is {jax.default_backend()}, not cpu")
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return KernelStatus(False, f"no C++ compiler: `{compiler}` is not on PATH (set CXX or install g++)")
    try:
        library = _build(compiler)
        handle = ctypes.cdll.LoadLibrary(library)
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, symbol)), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as e:
        logger.warning("CPU decode kernels unavailable, using XLA ops: %s", e)
        return KernelStatus(False, f"build or load failed: {e}")
    return KernelStatus(True, "built and registered", library)


def require(what: str) -> None:
    """Raises ValueError naming ``what`` when the kernels are unavailable."""
    kernels = status()
    if not kernels.ok:
        raise ValueError(f"{what} needs the compiled CPU kernels, which are unavailable ({kernels.reason}); "
                         "use the XLA formulation (Decoder(kernels='auto') picks by itself)")

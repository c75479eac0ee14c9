"""Decode attention on XLA:CPU as a compiled C++ kernel (XLA FFI), built on first use with the system compiler.

During decoding each new query attends over its row's cache. Written as XLA ops that is two batched
matrix-vector products over the whole cache window plus a masked softmax: every row reads as many slots as the
longest row, and the scores go through memory between several small ops. ``kernels/decode_attention.cc`` does
the same computation in one pass per (row, query, head) over that row's own slots, on XLA's intra-op thread
pool; on a 2-core machine that halves the time of attention at a batch of 16 and more when rows differ in
length (continuous batching). Results equal the XLA formulation up to float rounding (tests compare them).

The kernel is compiled once per source, jaxlib version and CPU into ``$TEXTBOOKS_KERNEL_CACHE`` (default
``~/.cache/textbooks/kernels``) with ``$CXX`` (default ``g++``), and registered as an FFI target.
:func:`status` says whether it is usable and, if not, why (no compiler, compile error, not a CPU backend,
``TEXTBOOKS_CPU_KERNELS=0``); callers then keep the XLA formulation, which computes the same thing.
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
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

TARGET = "textbooks_decode_attention"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "decode_attention.cc")


class KernelStatus(NamedTuple):
    """Whether the kernel is registered (``ok``) and, if not, why (``reason``); ``library``: the built .so."""

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
    """Compiles the kernel if no library for this source, jaxlib and CPU exists; returns the library path."""
    import jaxlib

    with open(SOURCE, "rb") as f:
        source = f.read()
    key = hashlib.sha256(source + jaxlib.__version__.encode() + _cpu_signature().encode()
                         + compiler.encode()).hexdigest()[:16]
    library = os.path.join(_cache_dir(), f"decode_attention-{key}.so")
    if os.path.exists(library):
        return library
    os.makedirs(_cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_cache_dir()) as tmp:
        out = os.path.join(tmp, "kernel.so")
        cmd = [compiler, "-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-w",
               "-I", jax.ffi.include_dir(), SOURCE, "-o", out]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr[-1500:]}")
        os.replace(out, library)  # atomic: concurrent builders leave one complete library
    return library


@functools.lru_cache(maxsize=1)
def status() -> KernelStatus:
    """Builds (once) and registers the kernel; returns whether it can be used in this process."""
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
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handle.TextbooksDecodeAttention), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as e:
        logger.warning("decode attention kernel unavailable, using XLA ops: %s", e)
        return KernelStatus(False, f"build or load failed: {e}")
    return KernelStatus(True, "built and registered", library)


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, start: jax.Array, scale: float) -> jax.Array:
    """Attention of cached queries over their rows' cache prefixes (float32).

    Args:
        q: ``[batch, queries, heads, head_dim]``; query t of row b sits at cache slot ``start[b] + t``.
        k, v: the cache, ``[batch, heads, slots, head_dim]``, already holding the queries' own keys/values.
        start: ``[batch]`` int32 slot of each row's first query.
        scale: factor on the dot products (``head_dim ** -0.5``).

    Returns:
        ``[batch, queries, heads, head_dim]`` float32: softmax over slots ``[0, start[b] + t]`` of the scaled
        scores, applied to the values (the XLA formulation in :mod:`textbooks.model.phi`, without its mask
        materialized).

    Raises:
        ValueError: the kernel is unavailable (see :func:`status`).
    """
    kernel = status()
    if not kernel.ok:
        raise ValueError(f"decode_attention='cpu_kernel' but the kernel is unavailable ({kernel.reason}); "
                         "use decode_attention='xla' (Decoder(attention='auto') picks by itself)")
    f32 = jnp.float32
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(q.shape, f32), vmap_method="sequential")
    return call(q.astype(f32), k.astype(f32), v.astype(f32), start.astype(jnp.int32), scale=np.float32(scale))


def xla_decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, start: jax.Array, scale: float) -> jax.Array:
    """What :func:`decode_attention` computes, as XLA ops over the whole cache (any backend): its reference."""
    slots = start[:, None] + jnp.arange(q.shape[1])[None]
    mask = (jnp.arange(k.shape[2])[None, None, :] <= slots[:, :, None])[:, None]
    scores = jnp.einsum("bqhd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), -1)
    return jnp.einsum("bhqk,bhkd->bqhd", probs, v.astype(jnp.float32))

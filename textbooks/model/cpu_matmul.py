"""Weight products of a decode step on XLA:CPU as a compiled C++ kernel (XLA FFI; built by
:mod:`textbooks.model.cpu_kernels`).

A decode step multiplies a few rows (one token per sequence) by each weight matrix: it reads every weight once
and does little arithmetic with it, so its speed is the memory bandwidth it reaches. XLA:CPU runs products of
this size on one thread; ``kernels/small_matmul.cc`` splits the weight columns among the cores (the calling
thread and XLA's intra-op pool), which on a 2-core machine makes a decode step of ``phi-cpu-7m`` about a tenth
faster. Results equal ``x @ w + b`` up to float rounding (tests compare them).

A tied LM head multiplies by the transposed embedding table ``[vocab, hidden]``: :func:`small_matmul_nt` reads
it as stored, each row contiguous and read once per step for every row of ``x`` (on SmolLM2-135M the head is a
fifth of a decode step's weight bytes).

Reading a column panel of ``w [K, N]`` means K short stretches of memory N floats apart, which one core reads
at well under half its speed on consecutive memory. :func:`pack_columns` stores each 48-column panel as one
consecutive block (``[ceil(N / 48), K, 48]``, done once per weight) and :func:`packed_matmul` multiplies by
that layout, so a decode step streams every weight sequentially; at 16 rows on SmolLM2-135M's shapes that
about halves the time of the weight products (a copy of the projection weights is the price).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from textbooks.model import cpu_kernels

TARGET = "textbooks_small_matmul"
TARGET_NT = "textbooks_matmul_nt"
TARGET_PACKED = "textbooks_packed_matmul"
PANEL = 48  # columns per panel of the packed layout (kPacked in kernels/small_matmul.cc)


def small_matmul(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``x @ w + b`` in float32 on the compiled kernel.

    Args:
        x: ``[..., K]``.
        w: ``[K, N]``.
        b: ``[N]``.

    Returns:
        ``[..., N]`` float32.

    Raises:
        ValueError: shapes that do not fit, or the kernel is unavailable (see
            :func:`textbooks.model.cpu_kernels.status`).
    """
    if w.ndim != 2 or x.shape[-1] != w.shape[0] or b.shape != (w.shape[1],):
        raise ValueError(f"small_matmul: x {x.shape}, w {w.shape} and b {b.shape} do not fit x @ w + b")
    cpu_kernels.require("DecodeKernels(projections='cpu_kernel')")
    f32 = jnp.float32
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(x.shape[:-1] + (w.shape[1],), f32),
                            vmap_method="sequential")
    return call(x.astype(f32), w.astype(f32), b.astype(f32))


def small_matmul_nt(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w.T`` in float32 on the compiled kernel, reading ``w [N, K]`` row by row (a tied LM head: the
    embedding table as it is stored, no transposed copy).

    Args:
        x: ``[..., K]``.
        w: ``[N, K]``.

    Returns:
        ``[..., N]`` float32.

    Raises:
        ValueError: shapes that do not fit, or the kernel is unavailable.
    """
    if w.ndim != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"small_matmul_nt: x {x.shape} and w {w.shape} do not fit x @ w.T")
    cpu_kernels.require("DecodeKernels(projections='cpu_kernel')")
    f32 = jnp.float32
    call = jax.ffi.ffi_call(TARGET_NT, jax.ShapeDtypeStruct(x.shape[:-1] + (w.shape[0],), f32),
                            vmap_method="sequential")
    return call(x.astype(f32), w.astype(f32))


def pack_columns(w: jax.Array) -> jax.Array:
    """``w [K, N]`` in the packed layout of :func:`packed_matmul`: ``[ceil(N / PANEL), K, PANEL]`` float32, panel
    ``p`` holding columns ``[p * PANEL, (p + 1) * PANEL)`` row by row (the last panel padded with zero columns)."""
    if w.ndim != 2:
        raise ValueError(f"pack_columns: w must be [K, N], got {w.shape}")
    k, n = w.shape
    panels = -(-n // PANEL)
    padded = jnp.pad(w.astype(jnp.float32), ((0, 0), (0, panels * PANEL - n)))
    return padded.reshape(k, panels, PANEL).transpose(1, 0, 2)


def packed_matmul(x: jax.Array, packed: jax.Array, b: jax.Array) -> jax.Array:
    """``x @ w + b`` in float32 on the compiled kernel, ``w`` given as ``pack_columns(w)``.

    Args:
        x: ``[..., K]``.
        packed: ``[ceil(N / PANEL), K, PANEL]`` from :func:`pack_columns`.
        b: ``[N]`` (its length is N).

    Returns:
        ``[..., N]`` float32.

    Raises:
        ValueError: shapes that do not fit, or the kernel is unavailable.
    """
    n = b.shape[0] if b.ndim == 1 else -1
    if packed.ndim != 3 or packed.shape[2] != PANEL or packed.shape[0] != -(-n // PANEL) or \
            x.shape[-1] != packed.shape[1]:
        raise ValueError(f"packed_matmul: x {x.shape}, packed w {packed.shape} and b {b.shape} do not fit "
                         f"x @ w + b with w packed as [ceil(N / {PANEL}), K, {PANEL}]")
    cpu_kernels.require("DecodeKernels(projections='cpu_kernel')")
    f32 = jnp.float32
    call = jax.ffi.ffi_call(TARGET_PACKED, jax.ShapeDtypeStruct(x.shape[:-1] + (n,), f32), vmap_method="sequential")
    return call(x.astype(f32), packed.astype(f32), b.astype(f32))

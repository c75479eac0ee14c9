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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from textbooks.model import cpu_kernels

TARGET = "textbooks_small_matmul"
TARGET_NT = "textbooks_matmul_nt"


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

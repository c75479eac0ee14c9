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

The packed products also take what surrounds them in a pre-norm block (``norm_scale``/``eps``: an RMSNorm of
``x``'s rows before the product; ``residual``: added to the output), so that a decode step does not run those
as separate small XLA ops (:func:`rms_norm` is what the kernel's norm computes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from textbooks.model import cpu_kernels

TARGET = "textbooks_small_matmul"
TARGET_NT = "textbooks_matmul_nt"
TARGET_PACKED = "textbooks_packed_matmul"
TARGET_SWIGLU = "textbooks_packed_swiglu"
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


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """``x * (scale / sqrt(mean(x ** 2, -1) + eps))`` in float32 (flax's ``nn.RMSNorm``): the norm the packed
    kernels apply to their input when given ``norm_scale``, as XLA ops (their reference and fallback)."""
    x = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
    return x * (inv * scale.astype(jnp.float32))


def _extras(x: jax.Array, k: int, n: int, norm_scale: jax.Array | None,
            residual: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The kernel operands for an optional norm scale ``[K]`` and residual ``[..., N]`` (empty when absent)."""
    f32 = jnp.float32
    if norm_scale is not None and norm_scale.shape != (k,):
        raise ValueError(f"norm_scale {norm_scale.shape} must be [K] = ({k},) for x {x.shape}")
    if residual is not None and residual.shape != x.shape[:-1] + (n,):
        raise ValueError(f"residual {residual.shape} must be x's rows by N: {x.shape[:-1] + (n,)}")
    empty = jnp.zeros((0,), f32)
    return (empty if norm_scale is None else norm_scale.astype(f32),
            empty if residual is None else residual.astype(f32))


def packed_matmul(x: jax.Array, packed: jax.Array, b: jax.Array, *, norm_scale: jax.Array | None = None,
                  eps: float = 1e-6, residual: jax.Array | None = None) -> jax.Array:
    """``[residual +] rms_norm(x) @ w + b`` in float32 on the compiled kernel, ``w`` given as ``pack_columns(w)``.

    Args:
        x: ``[..., K]``.
        packed: ``[ceil(N / PANEL), K, PANEL]`` from :func:`pack_columns`.
        b: ``[N]`` (its length is N).
        norm_scale: ``[K]``: normalize ``x``'s rows first (:func:`rms_norm` with ``eps``); None: ``x`` as it is.
        eps: the norm's epsilon.
        residual: ``[..., N]`` added to the output, or None.

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
    scale, res = _extras(x, packed.shape[1], n, norm_scale, residual)
    cpu_kernels.require("DecodeKernels(projections='cpu_kernel')")
    f32 = jnp.float32
    call = jax.ffi.ffi_call(TARGET_PACKED, jax.ShapeDtypeStruct(x.shape[:-1] + (n,), f32), vmap_method="sequential")
    return call(x.astype(f32), scale, packed.astype(f32), b.astype(f32), res, eps=np.float32(eps))


def pack_swiglu(gate: jax.Array, up: jax.Array, down: jax.Array, gate_bias: jax.Array | None = None,
                up_bias: jax.Array | None = None, down_bias: jax.Array | None = None) -> dict[str, jax.Array]:
    """A SwiGLU MLP's weights in the layout of :func:`packed_swiglu`.

    Args:
        gate, up: ``[K, F]``; down: ``[F, D]``; biases ``[F]``, ``[F]``, ``[D]`` (zeros when None).

    Returns:
        ``{'gate_up': [P, K, PANEL], 'gate_up_bias': [P * PANEL], 'down': [ceil(D / PANEL), P * PANEL / 2, PANEL],
        'down_bias': [D]}`` float32 with ``P = ceil(F / (PANEL / 2))``: panel ``p`` of ``gate_up`` holds gate
        columns ``[p * PANEL / 2, (p + 1) * PANEL / 2)`` then the same columns of up, so one panel's product gives
        a strip of ``silu(g) * u``; F is padded with zero columns of gate and up and zero rows of down, which add
        exact zeros.
    """
    if gate.ndim != 2 or gate.shape != up.shape or down.ndim != 2 or down.shape[0] != gate.shape[1]:
        raise ValueError(f"pack_swiglu: gate {gate.shape} and up {up.shape} must be [K, F] and down {down.shape} "
                         "[F, D]")
    k, f = gate.shape
    d = down.shape[1]
    half = PANEL // 2
    panels = -(-f // half)
    pad = panels * half - f
    f32 = jnp.float32

    def bias(b, n):
        return jnp.zeros((n,), f32) if b is None else b.reshape(n).astype(f32)

    def halves(w):  # [rows, F] -> [rows, panels, half], zero columns past F
        return jnp.pad(w.astype(f32), ((0, 0), (0, pad))).reshape(w.shape[0], panels, half)

    gate_up = jnp.concatenate([halves(gate), halves(up)], axis=-1)  # [K, panels, PANEL]
    gate_up_bias = jnp.concatenate([halves(bias(gate_bias, f)[None]), halves(bias(up_bias, f)[None])], axis=-1)
    return {"gate_up": gate_up.transpose(1, 0, 2), "gate_up_bias": gate_up_bias.reshape(-1),
            "down": pack_columns(jnp.pad(down.astype(f32), ((0, pad), (0, 0)))), "down_bias": bias(down_bias, d)}


def packed_swiglu(x: jax.Array, packed: dict[str, jax.Array], *, norm_scale: jax.Array | None = None,
                  eps: float = 1e-6, residual: jax.Array | None = None) -> jax.Array:
    """``[residual +] (silu(x @ gate + gate_bias) * (x @ up + up_bias)) @ down + down_bias`` in float32 in one
    call of the compiled kernel, on weights from :func:`pack_swiglu`, ``x`` normalized first when given
    ``norm_scale``.

    Args:
        x: ``[..., K]``.
        packed: :func:`pack_swiglu`'s dict.
        norm_scale, eps, residual: as in :func:`packed_matmul` (the residual is ``[..., D]``).

    Returns:
        ``[..., D]`` float32.

    Raises:
        ValueError: shapes that do not fit, or the kernel is unavailable.
    """
    gate_up, gate_up_bias = packed["gate_up"], packed["gate_up_bias"]
    down, down_bias = packed["down"], packed["down_bias"]
    d = down_bias.shape[0] if down_bias.ndim == 1 else -1
    if gate_up.ndim != 3 or gate_up.shape[2] != PANEL or x.shape[-1] != gate_up.shape[1] or \
            gate_up_bias.shape != (gate_up.shape[0] * PANEL,) or down.ndim != 3 or \
            down.shape != (-(-d // PANEL), gate_up.shape[0] * PANEL // 2, PANEL):
        raise ValueError(f"packed_swiglu: x {x.shape} does not fit the packed MLP (gate_up {gate_up.shape}, "
                         f"gate_up_bias {gate_up_bias.shape}, down {down.shape}, down_bias {down_bias.shape}); "
                         "pack the weights with pack_swiglu")
    scale, res = _extras(x, gate_up.shape[1], d, norm_scale, residual)
    cpu_kernels.require("DecodeKernels(projections='cpu_kernel')")
    f32 = jnp.float32
    call = jax.ffi.ffi_call(TARGET_SWIGLU, jax.ShapeDtypeStruct(x.shape[:-1] + (d,), f32), vmap_method="sequential")
    return call(x.astype(f32), scale, gate_up.astype(f32), gate_up_bias.astype(f32), down.astype(f32),
                down_bias.astype(f32), res, eps=np.float32(eps))

"""Greedy next tokens (argmax over each row of logits) on XLA:CPU as a compiled C++ kernel (XLA FFI; built by
:mod:`textbooks.model.cpu_kernels`).

A greedy decode step ends with an argmax over the vocabulary for every row. XLA:CPU reduces each row on one
thread without wide vectors (:func:`textbooks.model.sampling.greedy_tokens`, two reductions); on SmolLM2's 49,152
logits at 16 rows ``kernels/greedy.cc`` (vector maxima, then a vector scan for the first position of the maximum)
takes under half as long. Same result: the first index of the maximum, the first NaN's when a row holds one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from textbooks.model import cpu_kernels

TARGET = "textbooks_greedy"


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """``argmax(logits, -1)`` as int32 on the compiled kernel (as :func:`textbooks.model.sampling.greedy_tokens`).

    Args:
        logits: ``[..., vocab]``, vocab >= 1 (cast to float32).

    Returns:
        ``[...]`` int32: the first index of each row's maximum (of its first NaN, if any).

    Raises:
        ValueError: an empty vocabulary axis, or the kernel is unavailable (see
            :func:`textbooks.model.cpu_kernels.status`).
    """
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"greedy_tokens: logits must be [..., vocab] with vocab >= 1, got {logits.shape}")
    cpu_kernels.require("greedy tokens on the CPU kernel")
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(logits.shape[:-1], jnp.int32), vmap_method="sequential")
    return call(logits.astype(jnp.float32))

"""Decode-step (and prefill) products on weights packed once for the compiled kernel (the ``'packed'`` collection).

:func:`textbooks.model.cpu_matmul.packed_matmul` reads each weight as consecutive 48-column panels, which a
decoder prepares once: the layers keep them in the ``'packed'`` variable collection, filled by running one
decode step with that collection mutable (:func:`textbooks.model.kv_cache.pack_weights`) and passed with
the parameters to every later step. Projections of the same input share one packed matrix (their columns side
by side: q, k and v of attention; gate and up of a Llama MLP), so a step makes one kernel call for them and the
cores split the union of their columns. A tied LM head is packed too (the transposed embedding table: a
second copy of the table, read sequentially instead of row by row with 16 horizontal sums per block). Without
the collection the layers fall back to their own products. A Llama MLP packs its three matrices as one
variable (:func:`packed_swiglu`): gate, up, ``silu(g) * u`` and down are one kernel call. A pre-norm block
hands the products its norm (``norm_scale``: the kernel normalizes the input rows) and its residual (added to
the output), which then are no separate ops of the step. A prefill given the collection runs its projections
on the same packed weights, all of its rows in one call per product (:func:`applies` says where); it never
makes them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from textbooks.model import cpu_matmul

COLLECTION = "packed"


def applies(module: Any, decode: bool, x: jax.Array, name: str | None = None) -> bool:
    """Whether ``module``'s products of ``x [batch, length, ...]`` run on the packed kernels: in decode mode on the
    CPU kernels, for one token per row (packed weights made now when the collection is mutable, else the
    module's own fallback), or for several (a prefill into the cache) when the decoder passed the packed weights
    (``name``: the module's own variable; None: any of the module's subtree), which a prefill never makes."""
    if not decode or module.kernels.projections != "cpu_kernel":
        return False
    if x.shape[1] == 1:
        return True
    return module.has_variable(COLLECTION, name) if name else COLLECTION in module.variables


def _rows(x: jax.Array) -> jax.Array:
    """``x [batch, length, ...]`` as ``[batch * length, features]`` (a row-major reshape: no copy)."""
    return x.reshape(x.shape[0] * x.shape[1], -1)


def _flat(projection: Any) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
    """A projection's kernel as ``[K, N]``, its bias (zeros without one) as ``[N]``, and its output axes."""
    outputs = len(projection.equation.split("->")[1]) - 2  # output axes after batch and length
    out_shape = tuple(projection.kernel_shape[len(projection.kernel_shape) - outputs:])
    kernel, bias = projection.weights()
    n = math.prod(out_shape)
    flat_bias = jnp.zeros((n,), jnp.float32) if bias is None else bias.reshape(n).astype(jnp.float32)
    return kernel.reshape(-1, n), flat_bias, out_shape


def _extras(module: Any, norm_scale: jax.Array | None, residual: jax.Array | None, rows: int) -> dict[str, Any]:
    """The packed kernels' norm and residual arguments: the config's epsilon, the residual as ``[rows, N]``."""
    return {"norm_scale": norm_scale, "eps": module.config.layer_norm_eps,
            "residual": None if residual is None else residual.reshape(rows, -1)}


def packed_product(module: Any, name: str, weights: Callable[[], tuple[jax.Array, jax.Array]],
                   x: jax.Array, **extras: Any) -> jax.Array | None:
    """``x [rows, K] @ w + b`` on ``module``'s packed variable ``name``, made from ``weights() -> (w [K, N],
    b [N])`` when the ``'packed'`` collection is mutable; None when it is absent and cannot be made now.
    ``extras``: :func:`textbooks.model.cpu_matmul.packed_matmul`'s ``norm_scale``, ``eps`` and ``residual``."""
    if not module.has_variable(COLLECTION, name):
        if not module.is_mutable_collection(COLLECTION):
            return None
        w, b = weights()  # setup-style modules cannot declare variables in calls: put_variable can
        module.put_variable(COLLECTION, name, {"w": cpu_matmul.pack_columns(w), "b": b.astype(jnp.float32)})
    packed = module.get_variable(COLLECTION, name)
    return cpu_matmul.packed_matmul(x, packed["w"], packed["b"], **extras)


def packed_outputs(module: Any, name: str, projections: Sequence[Any], x: jax.Array,
                   norm_scale: jax.Array | None = None, residual: jax.Array | None = None) -> list[jax.Array] | None:
    """The outputs of ``projections`` (submodules of ``module`` reading the same ``x [batch, length, ...]``) from one
    packed product (:func:`packed_product`: their kernels side by side, and their biases), or None when
    ``module`` holds no packed weights ``name`` and cannot make them now. ``norm_scale``: the input is
    normalized first (an RMSNorm with the config's epsilon); ``residual``: added to the output (one projection,
    shaped like its output)."""
    flats = [_flat(p) for p in projections]

    def weights():
        return jnp.concatenate([w for w, _, _ in flats], axis=1), jnp.concatenate([b for _, b, _ in flats])

    extras = _extras(module, norm_scale, residual, x.shape[0] * x.shape[1])
    y = packed_product(module, name, weights, _rows(x), **extras)
    if y is None:
        return None
    dtype = jnp.dtype(module.config.dtype)
    outs, start = [], 0
    for w, _, out_shape in flats:
        outs.append(y[:, start:start + w.shape[1]].reshape(x.shape[:2] + out_shape).astype(dtype))
        start += w.shape[1]
    return outs


def packed_swiglu(module: Any, name: str, gate: Any, up: Any, down: Any, x: jax.Array,
                  norm_scale: jax.Array | None = None, residual: jax.Array | None = None) -> jax.Array | None:
    """``down(silu(gate(x)) * up(x))`` for ``x [batch, length, K]`` (projections: submodules of ``module``) in one call
    of :func:`textbooks.model.cpu_matmul.packed_swiglu` on ``module``'s packed variable ``name``, made when the
    ``'packed'`` collection is mutable; None when it is absent and cannot be made now. Returns
    ``[batch, length, D]`` in the config's dtype. ``norm_scale`` and ``residual`` as in :func:`packed_outputs`."""
    if not module.has_variable(COLLECTION, name):
        if not module.is_mutable_collection(COLLECTION):
            return None
        (wg, bg, _), (wu, bu, _), (wd, bd, _) = (_flat(p) for p in (gate, up, down))
        module.put_variable(COLLECTION, name, cpu_matmul.pack_swiglu(wg, wu, wd, bg, bu, bd))
    y = cpu_matmul.packed_swiglu(_rows(x), module.get_variable(COLLECTION, name),
                                 **_extras(module, norm_scale, residual, x.shape[0] * x.shape[1]))
    return y.reshape(x.shape[:2] + (-1,)).astype(jnp.dtype(module.config.dtype))

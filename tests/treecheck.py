"""Comparisons of parameter trees for the tests: structure first, then values, with tolerances that follow
from what is compared rather than from what one CPU happened to give.

Structure means the tree's paths, and each leaf's shape and dtype: ``zip`` over two leaf lists lets a
truncated or reordered tree pass, so every comparison here checks the structure before any value.

Tolerances. Two float32 computations of the same quantity that differ only in the order of a sum of ``n``
terms differ by at most about ``n * eps * sum(|terms|)`` (``eps`` = 2**-23, float32's machine epsilon). The
callers say which reduction is the longest in what they compare (tokens in a batch, a contraction dimension);
the bound is taken relative to the leaf's largest magnitude, which stands in for ``sum(|terms|) / n``. XLA:CPU
picks different kernels, and so different summation orders, on different CPU models: these bounds hold on any
of them, where a tolerance tuned on one machine may not.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

EPS32 = float(np.finfo(np.float32).eps)


def _leaves(tree: Any) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def assert_same_structure(actual: Any, expected: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Both trees have the same paths, and each leaf the same shape and dtype; returns the leaves by path."""
    a, b = _leaves(actual), _leaves(expected)
    missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    assert not missing and not extra, f"tree paths differ: missing {missing[:5]}, unexpected {extra[:5]}"
    for path in b:
        assert a[path].shape == b[path].shape, f"{path}: shape {a[path].shape} != {b[path].shape}"
        assert a[path].dtype == b[path].dtype, f"{path}: dtype {a[path].dtype} != {b[path].dtype}"
    return a, b


def assert_trees_equal(actual: Any, expected: Any) -> None:
    """Same structure and bit-identical values (for claims of exactness: resume, round trips)."""
    a, b = assert_same_structure(actual, expected)
    for path in b:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def reduction_tolerance(reduction_length: int, slack: float = 1.0) -> float:
    """The relative bound ``slack * n * eps`` for two orders of a float32 sum of ``n`` terms."""
    return slack * reduction_length * EPS32


def assert_trees_close(actual: Any, expected: Any, *, reduction_length: int, slack: float = 1.0) -> None:
    """Same structure, and every leaf within ``slack * n * eps`` of the expected leaf's largest magnitude.

    Args:
        actual, expected: the trees to compare.
        reduction_length: ``n``, the longest sum whose order may differ between the two computations.
        slack: a small factor for several such sums chained (say so at the call site).
    """
    a, b = assert_same_structure(actual, expected)
    rel = reduction_tolerance(reduction_length, slack)
    for path in b:
        scale = float(np.abs(b[path]).max()) if b[path].size else 0.0
        np.testing.assert_allclose(a[path], b[path], rtol=0, atol=max(rel * scale, np.finfo(np.float32).tiny),
                                   err_msg=f"{path} (n={reduction_length}, tolerance {rel:.1e} x {scale:.3g})")


def gradient_recorder() -> optax.GradientTransformation:
    """An optimizer whose state is the last gradient it saw and whose update is zero.

    A train step built with it returns, in ``state.opt_state``, the gradient the step computed, before any
    optimizer arithmetic: that is where rounding is bounded by ``n * eps`` (Adam's first update moves every
    weight by about the learning rate whatever its gradient, so near-zero gradients amplify rounding).
    """

    def init(params):
        return jax.tree_util.tree_map(lambda p: jax.numpy.zeros(p.shape, jax.numpy.float32), params)

    def update(grads, state, params=None):
        del state, params
        return jax.tree_util.tree_map(jax.numpy.zeros_like, grads), grads

    return optax.GradientTransformation(init, update)

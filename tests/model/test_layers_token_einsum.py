"""layers.token_einsum: the projections' products with batch and length merged into one token axis equal the
einsum of the original equation, and their weight gradients compile without a transposed copy of the output
gradient (what XLA:CPU inserted when autodiff contracted batch and length as two axes); the stacked q/k/v
product's own kernel gradient (layers._stacked_product) equals autodiff's and avoids that copy too."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from textbooks.model.layers import _stacked_product, token_einsum

B, L, D, H, K, M = 2, 16, 32, 4, 8, 64

CASES = [
    ("bld,dm->blm", (B, L, D), (D, M)),  # fc1
    ("blm,md->bld", (B, L, M), (M, D)),  # fc2
    ("bld,dhk->blhk", (B, L, D), (D, H, K)),  # q / k / v
    ("blhk,hkd->bld", (B, L, H, K), (H, K, D)),  # attention output
    ("bld,dShk->blShk", (B, L, D), (D, 3, H, K)),  # stacked q, k, v
]


@pytest.mark.parametrize("equation,x_shape,k_shape", CASES)
def test_token_einsum_is_the_einsum(equation, x_shape, k_shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(k_shape).astype(np.float32)
    got = np.asarray(token_einsum(equation, jnp.asarray(x), jnp.asarray(kernel)))
    want = np.einsum(equation, x.astype(np.float64), kernel.astype(np.float64))
    reduction = int(np.prod(x_shape[2:]))
    # float32 products summed over `reduction` terms, in any order: each term's rounding (eps |x||k|) adds up.
    bound = reduction * np.finfo(np.float32).eps * np.einsum(equation, np.abs(x), np.abs(kernel))
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= bound)


def test_token_einsum_rejects_equations_without_leading_batch_and_length():
    with pytest.raises(ValueError, match="batch, length"):
        token_einsum("ld,dm->lm", jnp.ones((L, D)), jnp.ones((D, M)))


def _output_gradient_copies(equation, x_shape, k_shape, product):
    """Copies or transposes of the [tokens, out] output gradient in the compiled weight gradient."""
    x = jnp.ones(x_shape, jnp.float32)
    kernel = jnp.ones(k_shape, jnp.float32)
    out_size = B * L * int(np.prod(k_shape[len(x_shape) - 2:]))

    def loss(kernel, x):  # a non-linearity between the product and the sum makes the gradient an activation
        return jnp.sum(jnp.tanh(product(equation, x, kernel)))

    text = jax.jit(jax.grad(loss)).lower(kernel, x).compile().as_text()
    entry = text[text.index("ENTRY"):]
    copies = []
    for line in entry.splitlines():
        m = re.match(r"\s*%(\S+) = f32\[([\d,]*)\]\S* (fusion|copy|transpose)\(", line)
        if m and ("copy" in m.group(1) or "transpose" in m.group(1) or m.group(3) != "fusion"):
            size = int(np.prod([int(d) for d in m.group(2).split(",") if d]))
            if size == out_size:
                copies.append(line.strip()[:120])
    return copies


@pytest.mark.parametrize("equation,x_shape,k_shape", CASES[:2])
def test_weight_gradient_reads_the_output_gradient_as_it_lies(equation, x_shape, k_shape):
    assert _output_gradient_copies(equation, x_shape, k_shape, token_einsum) == []


def test_stacked_kernel_gradient_reads_the_output_gradient_as_it_lies():
    equation, x_shape, k_shape = CASES[4]
    assert _output_gradient_copies(equation, x_shape, k_shape, token_einsum) != []  # what autodiff compiles to
    assert _output_gradient_copies(equation, x_shape, k_shape, _stacked_product) == []


def test_stacked_product_gradients_are_autodiffs():
    equation, x_shape, k_shape = CASES[4]
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(x_shape).astype(np.float32))
    kernel = jnp.asarray(rng.standard_normal(k_shape).astype(np.float32))
    dy = jnp.asarray(rng.standard_normal(x_shape[:2] + k_shape[1:]).astype(np.float32))

    def grads(product, x, kernel, dy):
        return jax.grad(lambda x, k: jnp.sum(product(equation, x, k) * dy), argnums=(0, 1))(x, kernel)

    got = grads(_stacked_product, x, kernel, dy)
    want = grads(token_einsum, x, kernel, dy)
    magnitude = grads(token_einsum, jnp.abs(x), jnp.abs(kernel), jnp.abs(dy))  # sums of |terms|
    for g, w, m, reduction in zip(got, want, magnitude, (np.prod(k_shape[1:]), B * L)):
        # two float32 sums of the same `reduction` products, in possibly different orders
        bound = 2 * reduction * np.finfo(np.float32).eps * np.asarray(m)
        assert np.all(np.abs(np.asarray(g) - np.asarray(w)) <= bound)

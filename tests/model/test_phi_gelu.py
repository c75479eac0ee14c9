"""phi's MLP activation ("gelu_new", the tanh approximation) and its hand-written gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from textbooks.model.phi import gelu_tanh

EPS = np.finfo(np.float32).eps


def _gelu_new64(x):
    """transformers' NewGELUActivation in float64."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def test_values_are_jax_gelu_and_the_gradient_matches_float64_differences():
    x = np.concatenate([np.linspace(-8, 8, 2001), np.random.default_rng(0).standard_normal(1000) * 3])
    x = x.astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(gelu_tanh)(x)), np.asarray(jax.jit(lambda v: jax.nn.gelu(v, approximate=True))(x)))

    got = np.asarray(jax.jit(jax.vmap(jax.grad(gelu_tanh)))(x))
    x64, h = x.astype(np.float64), 1e-6
    expected = (_gelu_new64(x64 + h) - _gelu_new64(x64 - h)) / (2 * h)
    # The float32 slope takes about ten roundings of terms bounded by max(1, |x|^3 * 0.13): a few eps each.
    tol = 16 * EPS * np.maximum(1.0, 0.2 * np.abs(x64) ** 3)
    assert np.all(np.abs(got - expected) <= tol + 1e-9), np.max(np.abs(got - expected) - tol)
    # The same gradient as autodiff of the formula (float32), up to rounding.
    autodiff = np.asarray(jax.jit(jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=True))))(x))
    np.testing.assert_allclose(got, autodiff, atol=float(tol.max()), rtol=0)


def test_gradient_scales_the_cotangent_elementwise():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8)), jnp.float32)
    _, vjp = jax.vjp(gelu_tanh, x)
    slope = jax.vmap(jax.vmap(jax.grad(gelu_tanh)))(x)
    np.testing.assert_allclose(np.asarray(vjp(g)[0]), np.asarray(g * slope), rtol=4 * EPS, atol=0)

"""The compiled CPU decode kernels (attention, small weight products) against their XLA formulations and in the
decoder."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from phi_testing import greedy_by_recomputing, random_params

from textbooks.model import cpu_attention, cpu_greedy, cpu_kernels, cpu_matmul
from textbooks.model import decode as decode_lib
from textbooks.model import token_loop
from textbooks.model import get_preset
from textbooks.model.kv_cache import init_cache
from textbooks.model.causal_lm import CausalLM, head_logits
from textbooks.model.layers import DecodeKernels
from textbooks.model.sampling import greedy_tokens
from textbooks.model.slots import SlotDecoder


@pytest.fixture(scope="module")
def kernel():
    status = cpu_kernels.status()
    if not status.ok:
        pytest.skip(f"CPU decode kernels unavailable: {status.reason}")
    return status


@pytest.mark.parametrize("queries", [1, 5])
@pytest.mark.parametrize("kv_heads", [6, 2])  # one query head per KV head, or groups of 3 (GQA)
@pytest.mark.parametrize("dim", [16, 64])  # 64: the kernel's value sums in registers (SmolLM2's head size)
def test_kernel_equals_the_masked_softmax(kernel, queries, kv_heads, dim):
    rng = np.random.default_rng(queries)
    batch, heads, slots = 6, 6, 40
    q = rng.standard_normal((batch, queries, heads, dim), np.float32)
    k = rng.standard_normal((batch, kv_heads, slots, dim), np.float32)
    v = rng.standard_normal((batch, kv_heads, slots, dim), np.float32)
    # Rows at the first slot, in the middle, at the end, and past it (writes were dropped: all slots visible).
    start = np.array([0, 3, 17, slots - queries, slots - 1, slots + 4], np.int32)
    got = jax.jit(cpu_attention.decode_attention, static_argnums=4)(q, k, v, start, dim ** -0.5)
    want = cpu_attention.xla_decode_attention(q, k, v, start, dim ** -0.5)
    # Float32 rounding over the dot products (dim terms) and the softmax sums (slots terms), on outputs of the
    # size of the values.
    tolerance = np.finfo(np.float32).eps * (dim + slots) * np.abs(v).max()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=tolerance)
    # A row reads nothing past its own slots: changing them changes nothing.
    k2, v2 = k.copy(), v.copy()
    k2[1, :, 3 + queries:] = 1e4
    v2[1, :, 3 + queries:] = np.nan
    again = jax.jit(cpu_attention.decode_attention, static_argnums=4)(q, k2, v2, start, dim ** -0.5)
    np.testing.assert_array_equal(np.asarray(again)[1], np.asarray(got)[1])


def _attention_float64(q, k, v, start, scale):
    """Decode attention in float64 numpy, row by row over each query's visible slots: the reference."""
    batch, queries, heads, dim = q.shape
    group = heads // k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for b in range(batch):
        for t in range(queries):
            n = min(start[b] + t, k.shape[2] - 1) + 1
            for h in range(heads):
                kh, vh = k[b, h // group, :n].astype(np.float64), v[b, h // group, :n].astype(np.float64)
                scores = kh @ q[b, t, h].astype(np.float64) * scale
                weights = np.exp(scores - scores.max())
                out[b, t, h] = weights @ vh / weights.sum()
    return out


@pytest.mark.parametrize("queries", [1, 2])
@pytest.mark.parametrize("peak", [1.0, 4.0])  # 4: sharp softmaxes whose running maximum moves between blocks
def test_kernel_at_smollm2_heads_equals_float64_attention(kernel, queries, peak):
    rng = np.random.default_rng(7)
    batch, heads, kv_heads, dim, slots = 8, 9, 3, 64, 100
    q = (peak * rng.standard_normal((batch, queries, heads, dim))).astype(np.float32)
    k = rng.standard_normal((batch, kv_heads, slots, dim)).astype(np.float32)
    k *= np.linspace(0.5, 1.5, slots, dtype=np.float32)[:, None]  # later slots score further from 0
    v = rng.standard_normal((batch, kv_heads, slots, dim)).astype(np.float32)
    # Lengths 1, 16, 17 and others off the 16-slot blocks; the last slot; a row past the cache's end.
    start = np.array([0, 15, 16, 33, 70, slots - queries, slots - 1, slots + 3], np.int32)
    scale = dim ** -0.5
    got = np.asarray(jax.jit(cpu_attention.decode_attention, static_argnums=4)(q, k, v, start, scale))
    want = _attention_float64(q, k, v, start, scale)
    # Float32 rounding of the dot products (dim terms, of the scores' size; a score's error is a relative error of
    # its weight) and of the softmax sums (slots terms), on outputs of the values' size.
    scores = np.abs(np.einsum("bthd,bjsd->bths", q.astype(np.float64), k.astype(np.float64))).max() * scale
    tolerance = np.finfo(np.float32).eps * (dim * max(scores, 1.0) + slots) * np.abs(v).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)


@pytest.mark.parametrize("rows", [1, 3, 5, 16, 21])
@pytest.mark.parametrize("k,n", [(256, 768), (7, 64), (33, 100), (5, 3), (64, 16)])
def test_small_matmul_equals_x_w_plus_b(kernel, rows, k, n):
    rng = np.random.default_rng(rows * 1000 + n)
    x = rng.standard_normal((rows, k), np.float32)
    w = rng.standard_normal((k, n), np.float32)
    b = rng.standard_normal((n,), np.float32)
    got = np.asarray(jax.jit(cpu_matmul.small_matmul)(x, w, b))
    want = x.astype(np.float64) @ w.astype(np.float64) + b  # 100 columns: a 64-column panel, two of 16, 4 alone
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


def test_small_matmul_keeps_leading_axes_and_rejects_shapes_that_do_not_fit(kernel):
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    w = np.ones((4, 5), np.float32)
    got = np.asarray(cpu_matmul.small_matmul(x, w, np.zeros(5, np.float32)))
    np.testing.assert_array_equal(got, np.broadcast_to(x.sum(-1, keepdims=True), (2, 3, 5)))
    with pytest.raises(ValueError, match="do not fit"):
        cpu_matmul.small_matmul(x, np.ones((5, 4), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="do not fit"):
        cpu_matmul.small_matmul(x, w, np.zeros(4, np.float32))


def test_prefill_attends_with_xla_and_fills_the_cache_the_kernel_would(tiny_model):
    """A decoder on the kernels prefills a prompt into a cache of its own length with XLA attention (a block of
    queries), into a longer one with the kernel; both caches hold what the kernel's attention gives."""
    config, params = tiny_model
    decoder = decode_lib.Decoder(params, config, kernels="cpu_kernel")
    assert decoder.prefill_kernels == DecodeKernels(attention="xla", projections="cpu_kernel")
    request = decode_lib.GenerationRequest(prompt=np.random.RandomState(3).randint(0, config.vocab_size, 30).tolist(),
                                           max_new_tokens=1)
    own, _ = decoder.prefill([request])  # 29 tokens in a cache of their padded length
    longer, _ = decoder.prefill([request], cache_len=64)
    length = decoder.prompt_bucket(29)
    tokens, segments, _, _ = decode_lib.batch_arrays([request], 1, length)
    with_kernel = decode_lib._prefill(decoder._config, decoder.model_kernels, decoder.params, tokens, segments, length)
    for got, want, long in zip(jax.tree.leaves(own), jax.tree.leaves(with_kernel), jax.tree.leaves(longer)):
        if got.ndim < 4:  # the write index
            assert np.array_equal(got, want) and np.array_equal(long, want)
            continue
        # float32 sums over head_dim and the prompt, through the layers: a few ulps of the values' scale
        tol = 8 * np.finfo(np.float32).eps * length * float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, atol=tol, rtol=0)
        np.testing.assert_allclose(long[..., :length, :], want, atol=tol, rtol=0)
    assert decoder.prefill_shapes == {(1, length, length), (1, length, 64)}


@pytest.mark.parametrize("rows", [1, 3, 4, 16, 21])
@pytest.mark.parametrize("k,n", [(576, 960), (64, 48), (33, 100), (7, 5), (0, 7)])
def test_packed_matmul_equals_x_w_plus_b_and_the_unpacked_kernel(kernel, rows, k, n):
    """x @ w + b on the packed layout (48-column panels; N not a multiple of 48 pads the last one, whose columns
    take the 16-column and scalar paths) against the float64 product: a float32 sum of the k products and the
    bias is within (k + 1) * eps * (sum|x_i w_i| + |b|) of the exact one. Each output is summed in the same
    order as the unpacked kernel's, so the two agree exactly."""
    rng = np.random.default_rng(rows * 1000 + n + k)
    x = rng.standard_normal((rows, k), np.float32)
    w = rng.standard_normal((k, n), np.float32)
    b = rng.standard_normal((n,), np.float32)
    packed = cpu_matmul.pack_columns(w)
    assert packed.shape == (-(-n // cpu_matmul.PANEL), k, cpu_matmul.PANEL)
    got = np.asarray(jax.jit(cpu_matmul.packed_matmul)(x, packed, b))
    exact = x.astype(np.float64) @ w.astype(np.float64) + b
    bound = (k + 1) * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ np.abs(w) + np.abs(b))
    assert got.shape == (rows, n)
    np.testing.assert_array_less(np.abs(got - exact), bound + np.finfo(np.float32).tiny)
    np.testing.assert_array_equal(got, np.asarray(jax.jit(cpu_matmul.small_matmul)(x, w, b)))
    np.testing.assert_array_equal(np.asarray(cpu_matmul.packed_matmul(x[None], packed, b)), got[None])
    with pytest.raises(ValueError, match="do not fit"):
        cpu_matmul.packed_matmul(x, packed, np.zeros(n + cpu_matmul.PANEL, np.float32))


def test_packed_matmul_rows_do_not_depend_on_the_other_rows(kernel):
    """Every block shape (single rows, blocks of 4 and of 8 rows) sums a row's products in the same order, so a
    row's output is bit for bit the same whatever rows share its call: a request decodes the same tokens in any
    batch (a kernel change that sums some rows in another order, e.g. split accumulators, fails here)."""
    rng = np.random.default_rng(7)
    k, n = 100, 96 + 16 + 3  # two full panels, a 16-column stretch and 3 single columns
    x = rng.standard_normal((21, k), np.float32)
    w, b = rng.standard_normal((k, n), np.float32), rng.standard_normal((n,), np.float32)
    packed = cpu_matmul.pack_columns(w)
    full = np.asarray(cpu_matmul.packed_matmul(x, packed, b))
    for rows in range(1, 21):
        np.testing.assert_array_equal(np.asarray(cpu_matmul.packed_matmul(x[21 - rows:], packed, b)),
                                      full[21 - rows:], err_msg=f"{rows} rows")


def exact_rms_norm(x: np.ndarray, scale: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm of x's rows in float64, and a bound on the float32 kernel's error: the mean of k squares within
    k * eps relative, halved by the square root, then the epsilon, the division, the root and two products (a few
    eps more)."""
    x64 = x.astype(np.float64)
    normed = x64 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + eps) * scale
    return normed, (x.shape[-1] / 2 + 8) * np.finfo(np.float32).eps * np.abs(normed)


@pytest.mark.parametrize("rows", [1, 3, 16, 21])
@pytest.mark.parametrize("k,n", [(576, 960), (33, 100), (7, 5)])
def test_packed_matmul_normalizes_its_input_and_adds_the_residual(kernel, rows, k, n):
    """r + rms_norm(x) @ w + b (a pre-norm block's norm and residual inside the product) against float64: the
    normalized input's error (:func:`exact_rms_norm`) carried through the product, the product's own bound, and
    one rounding of the residual sum."""
    rng = np.random.default_rng(rows * 100 + k)
    x = 3 * rng.standard_normal((rows, k), np.float32)
    w, b = rng.standard_normal((k, n), np.float32), rng.standard_normal((n,), np.float32)
    scale, r = rng.standard_normal((k,), np.float32), 10 * rng.standard_normal((rows, n), np.float32)
    got = np.asarray(jax.jit(cpu_matmul.packed_matmul, static_argnames="eps")(
        x, cpu_matmul.pack_columns(w), b, norm_scale=scale, eps=1e-5, residual=r))
    normed, dnormed = exact_rms_norm(x, scale, 1e-5)
    product = normed @ w + b
    f32 = np.finfo(np.float32).eps
    bound = dnormed @ np.abs(w) + (k + 1) * f32 * ((np.abs(normed) + dnormed) @ np.abs(w) + np.abs(b))
    bound += f32 * (np.abs(r) + np.abs(product) + bound)
    np.testing.assert_array_less(np.abs(got - (r + product)), bound + np.finfo(np.float32).tiny)
    with pytest.raises(ValueError, match="norm_scale"):
        cpu_matmul.packed_matmul(x, cpu_matmul.pack_columns(w), b, norm_scale=scale[:-1])
    with pytest.raises(ValueError, match="residual"):
        cpu_matmul.packed_matmul(x, cpu_matmul.pack_columns(w), b, residual=r[:, :-1])


@pytest.mark.parametrize("fused", [False, True])  # True: an RMSNorm of x first and a residual added
@pytest.mark.parametrize("rows", [1, 3, 16, 21])
@pytest.mark.parametrize("k,f,d", [(576, 1536, 576), (64, 224, 64), (7, 5, 50), (33, 100, 17)])
def test_packed_swiglu_equals_the_mlp_in_float64(kernel, rows, k, f, d, fused):
    """(silu(x @ wg + bg) * (x @ wu + bu)) @ wd + bd in one kernel call (F not a multiple of 24 pads the last
    panel; D not one of 48 takes the 16-column and scalar paths) against float64, within the float32 error
    carried through: each product of length n within n * eps * (sum|x_i w_i| + |b|) of its exact value, silu's
    slope at most 1.1 in magnitude, a few eps of |h| for the exponential (2 ulp), the division and the products,
    then the down product's own bound plus the error of h it sums. Fused: x normalized (its float32 error,
    :func:`exact_rms_norm`, carried into the gate and up products) and one rounding of the residual sum."""
    rng = np.random.default_rng(rows * 1000 + f)
    x = rng.standard_normal((rows, k), np.float32)
    wg, wu = (rng.standard_normal((k, f), np.float32) / np.sqrt(k) for _ in range(2))
    wd = rng.standard_normal((f, d), np.float32) / np.sqrt(f)
    bg, bu, bd = (rng.standard_normal((n,), np.float32) for n in (f, f, d))
    packed = cpu_matmul.pack_swiglu(wg, wu, wd, bg, bu, bd)
    eps = np.finfo(np.float32).eps
    x64, dx = x.astype(np.float64), np.zeros((rows, k))
    r, extras = np.zeros((rows, d), np.float32), {}
    if fused:
        scale, r = rng.standard_normal((k,), np.float32), 5 * rng.standard_normal((rows, d), np.float32)
        x64, dx = exact_rms_norm(x, scale, 1e-5)
        extras = {"norm_scale": scale, "eps": 1e-5, "residual": r}
    got = np.asarray(jax.jit(functools.partial(cpu_matmul.packed_swiglu, **extras))(x, packed))
    ax = np.abs(x64) + dx
    g, u = x64 @ wg + bg, x64 @ wu + bu
    silu = g / (1 + np.exp(-g))
    h = silu * u
    dg = dx @ np.abs(wg) + (k + 1) * eps * (ax @ np.abs(wg) + np.abs(bg))
    du = dx @ np.abs(wu) + (k + 1) * eps * (ax @ np.abs(wu) + np.abs(bu))
    dh = 1.1 * dg * (np.abs(u) + du) + np.abs(silu) * du + 8 * eps * np.abs(h)
    bound = dh @ np.abs(wd) + (f + 1) * eps * ((np.abs(h) + dh) @ np.abs(wd) + np.abs(bd))
    bound += eps * (np.abs(r) + np.abs(h @ wd + bd) + bound)  # the residual's sum (zero unless fused)
    assert got.shape == (rows, d)
    np.testing.assert_array_less(np.abs(got - (r + h @ wd + bd)), bound + np.finfo(np.float32).tiny)
    if fused:
        extras["residual"] = r[None]
    np.testing.assert_array_equal(np.asarray(cpu_matmul.packed_swiglu(x[None], packed, **extras)), got[None])
    with pytest.raises(ValueError, match="does not fit"):
        cpu_matmul.packed_swiglu(x[:, :-1], packed)


def test_greedy_kernel_is_the_first_index_of_the_maximum(kernel):
    """The kernel's argmax is the first index of the maximum (of the first NaN when a row holds one, as
    jnp.argmax) on rows of many lengths (the 64-wide vector steps, their remainder, rows shorter
    than one step), with ties, infinities and NaNs; on rows without NaN it equals the XLA formulation's."""
    def first_of_maximum(row):  # numpy's own vectorized argmax is not this in every case (an -inf row, a NaN)
        nan = np.flatnonzero(np.isnan(row))
        return nan[0] if len(nan) else np.flatnonzero(row == row.max())[0]

    rng = np.random.default_rng(3)
    for vocab in (1, 5, 16, 63, 64, 65, 200, 49152):
        logits = rng.standard_normal((9, vocab)).astype(np.float32)
        logits[1] = 2.0  # all tied: index 0
        logits[2, vocab // 2:] = 7.0  # tied from the middle on
        logits[3] = -np.inf
        logits[4, -1] = np.inf
        logits[5, vocab // 3] = np.nan
        logits[6, [vocab // 2, vocab - 1]] = np.nan
        logits[7, :] = -np.inf
        logits[7, -1] = np.nan
        got = np.asarray(jax.jit(cpu_greedy.greedy_tokens)(logits))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, [first_of_maximum(row) for row in logits], err_msg=f"vocab {vocab}")
        # XLA's max can drop a NaN (an -inf row ending in one at 49,152): compare the NaN-free rows with it.
        np.testing.assert_array_equal(got[:5], np.asarray(jax.jit(greedy_tokens)(logits[:5])), err_msg=f"{vocab}")
    three = rng.standard_normal((2, 3, 40)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(cpu_greedy.greedy_tokens(three)), np.argmax(three, axis=-1))  # no NaN
    with pytest.raises(ValueError, match="vocab >= 1"):
        cpu_greedy.greedy_tokens(np.zeros((2, 0), np.float32))


def test_token_loop_takes_greedy_tokens_from_the_kernel_with_the_product_kernel(kernel, tiny_model):
    config, params = tiny_model
    rows = decode_lib.batch_arrays([decode_lib.GenerationRequest([1], 4)] * 2, 2, 0)[3]

    def loop(kernels):
        return jax.jit(token_loop.token_loop, static_argnums=(0, 1, 6, 7)).lower(
            config, kernels, params, init_cache(config, 2, 32), np.ones(2, np.int32), rows, 8, 0).as_text()

    assert loop(DecodeKernels(attention="cpu_kernel", projections="cpu_kernel")).count(cpu_greedy.TARGET) == 1
    assert cpu_greedy.TARGET not in loop(DecodeKernels(attention="cpu_kernel", projections="xla"))


@pytest.mark.parametrize("family", ["phi", "llama"])
def test_decoder_packs_the_weights_once_and_its_steps_use_them(kernel, tiny_model, family):
    """A decoder on the kernels packs every block's projections (q, k and v side by side, the output projection,
    each MLP matrix; in Llama the MLP's three as one variable of four arrays) and a tied head: its token loop
    makes four packed products per block in phi, two and one fused MLP call in Llama (one block body when the
    layers are scanned), plus the tied head's, no unpacked one, and decodes the tokens of XLA's ops, as a
    decoder that does not pack does."""
    config, params = tiny_model
    if family == "llama":
        config = get_preset("llama-cpu-1m").replace(vocab_size=64, max_len=64, tie_word_embeddings=True,
                                                    scan_layers=True)
        params = random_params(config, seed=1, scale=0.3)
    fast = decode_lib.Decoder(params, config, kernels="cpu_kernel")
    tied = int(config.family == "llama" and config.tie_word_embeddings)
    assert len(jax.tree.leaves(fast.packed)) == 2 * (4 * (1 if config.scan_layers else config.num_layers) + tied)
    rows = decode_lib.batch_arrays([decode_lib.GenerationRequest([1], 4)] * 2, 2, 0)[3]
    loop = jax.jit(token_loop.token_loop, static_argnums=(0, 1, 6, 7)).lower(
        config, fast.model_kernels, fast.params, init_cache(config, 2, 32), np.ones(2, np.int32), rows, 8, 0,
        packed=fast.packed).as_text()
    blocks = 1 if config.scan_layers else config.num_layers
    fused = int(config.family == "llama")
    assert loop.count(cpu_matmul.TARGET_PACKED) == (4 - 2 * fused) * blocks + tied
    assert loop.count(cpu_matmul.TARGET_SWIGLU) == fused * blocks
    if fused:  # the blocks' norms are inside the products: the final norm is the loop's only one
        assert loop.count("stablehlo.rsqrt") == 1
    assert cpu_matmul.TARGET + '"' not in loop and cpu_matmul.TARGET_NT not in loop
    requests = [decode_lib.GenerationRequest(prompt=[3, 9, 27][:n], max_new_tokens=m) for n, m in [(1, 9), (3, 5)]]
    got = fast.generate(requests)
    assert got == decode_lib.Decoder(params, config, kernels="xla").generate(requests)
    unpacked = decode_lib.Decoder(params, config, kernels="cpu_kernel", pack_weights=False)
    assert unpacked.packed == {} and unpacked.generate(requests) == got


@pytest.mark.parametrize("rows", [1, 3, 4, 16, 21])
@pytest.mark.parametrize("k,n", [(576, 1024), (64, 48), (20, 37), (7, 5)])
def test_transposed_matmul_equals_the_xla_dot(kernel, rows, k, n):
    """x @ w.T on the kernel (16-row blocks of w; w rows past them, and K not a multiple of 16, take the row
    path) against XLA's dot. Each result is a sum of k products: float32 summation in any order is within
    k * eps * sum|x_i w_i| of the exact sum, so two of them differ by at most twice that."""
    rng = np.random.default_rng(rows * 1000 + n)
    x = rng.standard_normal((rows, k), np.float32)
    w = rng.standard_normal((n, k), np.float32)
    got = np.asarray(jax.jit(cpu_matmul.small_matmul_nt)(x, w))
    want = np.asarray(jax.jit(lambda x, w: jnp.dot(x, w.T))(x, w))
    assert got.shape == want.shape == (rows, n)
    bound = 2 * k * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T)
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - want), bound + np.finfo(np.float32).tiny)
    # Leading axes are kept; shapes that do not fit x @ w.T are refused.
    np.testing.assert_array_equal(np.asarray(cpu_matmul.small_matmul_nt(x[None], w)), got[None])
    with pytest.raises(ValueError, match="do not fit"):
        cpu_matmul.small_matmul_nt(x, w.T)


def test_tied_head_of_decode_steps_uses_the_transposed_kernel(kernel):
    """A tied Llama head: single-token decode steps compute the logits on the kernel, prefill keeps XLA's dot,
    and the step's logits are the XLA head's (:func:`head_logits`) of the same hidden states, within the float32
    summation bound of a dot product of length hidden_size (twice k * eps * sum|h_i e_i|, as above)."""
    config = get_preset("llama-cpu-1m").replace(vocab_size=80, max_len=64, tie_word_embeddings=True)
    params = random_params(config, seed=2, scale=0.3)
    cache = init_cache(config, 3, 32)
    tokens = np.array([[5], [17], [63]], np.int32)
    both = DecodeKernels(attention="cpu_kernel", projections="cpu_kernel")

    def step(params, cache, tokens, head=True):
        out, _ = CausalLM(config, both).apply({"params": params, "cache": cache}, tokens, decode=True, head=head,
                                              mutable=["cache"])
        return out

    assert cpu_matmul.TARGET_NT in jax.jit(step).lower(params, cache, tokens).as_text()
    assert cpu_matmul.TARGET_NT not in jax.jit(step).lower(params, cache, np.ones((3, 8), np.int32)).as_text()
    got = np.asarray(jax.jit(step)(params, cache, tokens))
    hidden = np.asarray(jax.jit(step, static_argnums=3)(params, cache, tokens, False))
    want = np.asarray(head_logits(config, params, hidden))
    table = np.abs(np.asarray(params["embed_tokens"]["embedding"], np.float64))
    bound = 2 * config.hidden_size * np.finfo(np.float32).eps * (np.abs(hidden).astype(np.float64) @ table.T)
    assert got.shape == want.shape == (3, 1, config.vocab_size)
    np.testing.assert_array_less(np.abs(got - want), bound + np.finfo(np.float32).tiny)


@pytest.mark.parametrize("family", ["phi", "llama"])
def test_prefill_runs_on_the_packed_weights_and_fills_the_cache_xla_products_would(kernel, tiny_model, family):
    """With packed weights a prefill's projections (a prompt, and a rest after a reused beginning) are the packed
    kernel's products, several rows per call (in Llama the norms and residual adds inside them too); the caches
    hold what XLA's products give, up to float32 rounding."""
    config, params = tiny_model
    if family == "llama":
        config = get_preset("llama-cpu-1m").replace(vocab_size=64, max_len=64, tie_word_embeddings=True)
        params = random_params(config, seed=1, scale=0.3)
    decoder = decode_lib.Decoder(params, config, kernels="cpu_kernel")
    prompt = np.random.RandomState(5).randint(0, config.vocab_size, 30).tolist()
    request = decode_lib.GenerationRequest(prompt=prompt, max_new_tokens=1)
    length = decoder.prompt_bucket(29)
    tokens, segments, _, _ = decode_lib.batch_arrays([request], 1, length)
    args = (decoder._config, decoder.prefill_kernels, decoder.params, tokens, segments, length)
    program = jax.jit(decode_lib._prefill, static_argnums=(0, 1, 5)).lower(*args, decoder.packed).as_text()
    fused = int(config.family == "llama")
    # The cache needs every block's keys and values but not the last block's output (nor the head's)
    assert program.count(cpu_matmul.TARGET_PACKED) == (4 - 2 * fused) * (config.num_layers - 1) + 1
    assert program.count(cpu_matmul.TARGET_SWIGLU) == fused * (config.num_layers - 1)
    assert cpu_matmul.TARGET + '"' not in program

    def close(got, want, positions):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            if g.ndim < 4:  # the write index
                assert np.array_equal(g, w)
                continue
            # float32 sums over the hidden and MLP widths and the prompt, through the layers: a few ulps of scale
            tol = 8 * np.finfo(np.float32).eps * max(positions, config.intermediate_size) * float(np.max(np.abs(w)))
            np.testing.assert_allclose(g, w, atol=tol, rtol=0)

    got, _ = decoder.prefill([request])
    close(got, decode_lib._prefill(*args), length)  # without packed weights: XLA's products
    prefix = decoder.prefill_prefix(prompt[:12])
    rest, _ = decoder.prefill_after(prefix, request, 10)
    rest_tokens, rest_segments, _, _ = decode_lib.batch_arrays([dataclasses.replace(request, prompt=prompt[10:])], 1,
                                                               decoder.prompt_bucket(19))
    want = decode_lib._prefill_after(decoder._config, decoder.prefill_kernels, decoder.params, prefix, np.int32(10),
                                     rest_tokens, rest_segments)
    close(rest, want, 12 + decoder.prompt_bucket(19))


def test_decode_steps_use_both_kernels_and_prefill_does_not(kernel, tiny_model):
    config, params = tiny_model
    fast = decode_lib.Decoder(params, config, kernels="auto")
    assert fast.model_kernels == DecodeKernels(attention="cpu_kernel", projections="cpu_kernel")
    model = CausalLM(config, fast.model_kernels)
    cache = init_cache(config, 2, 32)

    def hlo(length):
        def run(params, cache, tokens):
            return model.apply({"params": params, "cache": cache}, tokens, decode=True, mutable=["cache"])
        return jax.jit(run).lower(params, cache, np.ones((2, length), np.int32)).as_text()

    step, prefill = hlo(1), hlo(8)
    assert step.count(cpu_matmul.TARGET) == 6 * config.num_layers  # q, k, v, dense, fc1, fc2 in every block
    assert step.count(cpu_attention.TARGET) == config.num_layers
    assert cpu_matmul.TARGET not in prefill


def test_decoder_uses_the_kernels_and_decodes_the_same_tokens(kernel, tiny_model):
    config, params = tiny_model
    fast = decode_lib.Decoder(params, config, kernels="auto")
    plain = decode_lib.Decoder(params, config, kernels="xla")
    assert fast.kernels == "cpu_kernel" and plain.kernels == "xla"
    rng = np.random.default_rng(0)
    requests = [decode_lib.GenerationRequest(prompt=rng.integers(1, config.vocab_size, n).tolist(), max_new_tokens=m)
                for n, m in [(3, 20), (11, 7), (1, 30), (25, 12)]]
    got = fast.generate(requests)
    assert got == plain.generate(requests)
    mixed = decode_lib.Decoder(params, config, kernels=DecodeKernels(attention="cpu_kernel", projections="xla"))
    assert mixed.kernels == "attention=cpu_kernel,projections=xla" and mixed.generate(requests) == got
    for r, out in zip(requests, got):
        assert out.tokens == greedy_by_recomputing(config, params, [r.prompt], r.max_new_tokens)[0]


def test_continuous_batching_with_the_kernel_stops_when_a_slot_frees(kernel, tiny_model):
    config, params = tiny_model
    slots = SlotDecoder(params, config, num_slots=4, kernels="cpu_kernel")
    requests = [decode_lib.GenerationRequest(prompt=[5, 9, 2][:n], max_new_tokens=m) for n, m in [(1, 3), (2, 20), (3, 9)]]
    slots.admit(requests)
    first = slots.step(16, until_free=True)  # ends when the 3-token request ends, not after 16 tokens
    assert [len(first[s][0] if isinstance(first[s], tuple) else first[s].tokens) for s in sorted(first)] == [3, 3, 3]
    assert isinstance(first[0], decode_lib.GenerationOutput) and slots.active_slots == [1, 2]
    got = {0: first[0].tokens, 1: list(first[1][0]), 2: list(first[2][0])}
    while slots.active_slots:
        for s, out in slots.step(16).items():
            got[s] += out.tokens if isinstance(out, decode_lib.GenerationOutput) else out[0]
    for s, r in enumerate(requests):
        assert got[s] == greedy_by_recomputing(config, params, [r.prompt], r.max_new_tokens)[0]


def test_unavailable_kernel_is_reported_not_used(tiny_model, monkeypatch):
    config, params = tiny_model
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    assert decode_lib.choose_kernels(bf16, params)[0] == "xla"
    with pytest.raises(ValueError, match="cpu_kernel.*unavailable.*float32"):
        decode_lib.Decoder(params, bf16, kernels="cpu_kernel")
    with pytest.raises(ValueError, match="kernels must be"):
        decode_lib.Decoder(params, config, kernels="flash")
    monkeypatch.setenv("TEXTBOOKS_CPU_KERNELS", "0")
    cpu_kernels.status.cache_clear()
    try:
        name, reason = decode_lib.choose_kernels(config, params)
        assert name == "xla" and "TEXTBOOKS_CPU_KERNELS=0" in reason
        with pytest.raises(ValueError, match="unavailable.*TEXTBOOKS_CPU_KERNELS=0"):
            cpu_matmul.small_matmul(np.ones((1, 2), np.float32), np.ones((2, 2), np.float32), np.ones(2, np.float32))
    finally:
        monkeypatch.delenv("TEXTBOOKS_CPU_KERNELS")
        cpu_kernels.status.cache_clear()

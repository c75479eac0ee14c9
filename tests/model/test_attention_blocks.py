"""Causal attention of whole sequences computed a block of queries at a time (``attention.causal_attention``).

Checked against a NumPy softmax attention written out per query (packed segments, padding, grouped heads),
with and without blocks; its written-out gradient against autodiff of the plain softmax attention over the
whole square and of the same blocked forward pass; and at the model level against transformers at a length
that several blocks cover.
"""

import jax
import jax.numpy as jnp
import numpy as np
from phi_testing import HF_CONFIGS, hf_logits, make_hf_model, our_logits

from textbooks.model import attention, load_hf_checkpoint

EPS = np.finfo(np.float32).eps
LENGTH, KV_HEADS, GROUP, HEAD_DIM = 32, 2, 2, 16
# Two packed documents, then padding (segment 0) in the second row.
SEGMENTS = np.array([[1] * 20 + [2] * 12, [1] * 9 + [2] * 15 + [0] * 8], np.int32)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, LENGTH, KV_HEADS, GROUP, HEAD_DIM)).astype(np.float32)
    k, v = (rng.standard_normal((2, LENGTH, KV_HEADS, HEAD_DIM)).astype(np.float32) for _ in range(2))
    return q, k, v


def _reference(q, k, v, segments, scale):
    """Each real query's softmax over the real keys at or before it in its own segment, in float64."""
    out = np.zeros(q.shape, np.float64)
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            if segments[b, t] == 0:
                continue
            keys = [s for s in range(t + 1) if segments[b, s] == segments[b, t]]
            for j in range(KV_HEADS):
                for g in range(GROUP):
                    scores = scale * (k[b, keys, j].astype(np.float64) @ q[b, t, j, g].astype(np.float64))
                    p = np.exp(scores - scores.max())
                    out[b, t, j, g] = (p / p.sum()) @ v[b, keys, j].astype(np.float64)
    return out


def _attend(q, k, v, block, autodiff=False):
    """The blocked attention; ``autodiff``: through its dropout path (an identity dropout, not deterministic),
    whose gradient is autodiff's of the same blocked forward pass instead of the written-out one."""
    return attention.causal_attention(q, k, v, jnp.asarray(SEGMENTS), HEAD_DIM ** -0.5,
                                      lambda x, deterministic: x, not autodiff, block=block)


def _grad_tolerance(w, q, k, v):
    """Each gradient entry sums at most LENGTH * HEAD_DIM products of terms bounded by the inputs' magnitude
    (probabilities <= 1), each off by a few float32 eps relative."""
    scale = np.abs(w).max() * max(np.abs(x).max() for x in (q, k, v)) ** 2
    return 4 * EPS * LENGTH * HEAD_DIM * scale


def test_blocks_of_queries_match_a_per_query_softmax():
    q, k, v = _inputs()
    expected = _reference(q, k, v, SEGMENTS, HEAD_DIM ** -0.5)
    real = SEGMENTS != 0
    # float32 rounding: the scores sum HEAD_DIM products, the outputs LENGTH weighted values (|p| <= 1), and a
    # score's error moves its probability by about that error relative; a few eps per term, summed linearly.
    scores_bound = HEAD_DIM ** -0.5 * np.abs(q).max() * np.abs(k).max() * HEAD_DIM
    tol = 4 * EPS * (LENGTH + HEAD_DIM * (1 + scores_bound)) * np.abs(v).max()
    for block in (0, 8, 16, 5):  # 0 and 5 (not a divisor): the whole length at once
        got = np.asarray(jax.jit(_attend, static_argnums=3)(q, k, v, block))
        np.testing.assert_allclose(got[real], expected[real], atol=tol, rtol=0, err_msg=f"block {block}")


def test_blocks_give_the_gradients_of_the_whole_square():
    """The written-out gradient (both block settings) against autodiff of the plain softmax attention over the
    whole ``L x L`` square; the outputs' gradient is zero at padding, whose rows the two define differently."""
    q, k, v = _inputs(1)
    w = np.random.default_rng(2).standard_normal(q.shape).astype(np.float32) * (SEGMENTS != 0)[..., None, None, None]
    segments = jnp.asarray(SEGMENTS)

    def loss(q, k, v, block):
        if block is None:
            return jnp.sum(attention.reference_attention(q, k, v, segments, HEAD_DIM ** -0.5) * w)
        return jnp.sum(_attend(q, k, v, block) * w)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    expected = grad(q, k, v, None)
    tol = _grad_tolerance(w, q, k, v)
    for block in (0, 8):
        for name, a, b in zip("qkv", expected, grad(q, k, v, block)):
            assert np.abs(np.asarray(a)).max() > 0.1, name  # the gradient is not trivially zero
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=tol, rtol=0, err_msg=f"d{name}, block {block}")


def test_written_out_gradient_is_autodiffs_of_the_blocked_forward_pass():
    """With a gradient at padding rows too (their uniform probabilities reach v), both block settings."""
    q, k, v = _inputs(3)
    w = np.random.default_rng(4).standard_normal(q.shape).astype(np.float32)

    def loss(q, k, v, block, autodiff):
        return jnp.sum(_attend(q, k, v, block, autodiff) * w)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=(3, 4))
    tol = _grad_tolerance(w, q, k, v)
    for block in (0, 8):
        for name, a, b in zip("qkv", grad(q, k, v, block, True), grad(q, k, v, block, False)):
            assert np.abs(np.asarray(a)).max() > 0.1, name
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=tol, rtol=0, err_msg=f"d{name}, block {block}")


def test_model_matches_transformers_over_several_query_blocks(tmp_path):
    """A sequence of several query blocks (2 x ``attention.QUERY_BLOCK``, four of the CPU's blocks): the same logits
    as transformers' eager attention, through the default block size and the written-out gradient's forward pass."""
    fields = dict(HF_CONFIGS["phi_like"], max_position_embeddings=2 * attention.QUERY_BLOCK)
    hf_model = make_hf_model(**fields)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    config, params = load_hf_checkpoint(str(tmp_path))
    ids = np.random.RandomState(3).randint(0, fields["vocab_size"], (1, 2 * attention.QUERY_BLOCK))
    expected = hf_logits(hf_model, ids)
    # As in test_phi_parity: (layers + 1) chained float32 contractions of length <= 256, each off by about
    # sqrt(n) * eps * |logit|: 4 * 16 * 1.2e-7 * |logits| (<= ~5 here) ~ 4e-5; 1e-4 leaves margin.
    np.testing.assert_allclose(our_logits(config, params, ids), expected, atol=1e-4, rtol=0)

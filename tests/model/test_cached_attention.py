"""A prefill's attention over a KV cache, a block of queries at a time (``attention.cached_attention``).

Checked against a NumPy softmax written out per query in float64: row ``b``'s query ``t`` at slot
``decode_index[b] + t`` sees every slot up to its own, for caches as long as the chunk and longer (slots before
the chunk: earlier tokens; after it: stale values that must not be read), rows starting at different slots, and
blocks that divide the chunk, do not, or cover it whole; also through the dropout path (an identity dropout).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from textbooks.model import attention

EPS = np.finfo(np.float32).eps
KV_HEADS, GROUP, HEAD_DIM = 2, 3, 16
SCALE = HEAD_DIM ** -0.5


def _inputs(length, slots, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, length, KV_HEADS, GROUP, HEAD_DIM)).astype(np.float32)
    k, v = (rng.standard_normal((2, KV_HEADS, slots, HEAD_DIM)).astype(np.float32) for _ in range(2))
    return q, k, v


def _reference(q, k, v, decode_index):
    """Each query's softmax over the slots up to its own, in float64."""
    out = np.zeros(q.shape, np.float64)
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            seen = decode_index[b] + t + 1
            for j in range(KV_HEADS):
                for g in range(GROUP):
                    scores = SCALE * (k[b, j, :seen].astype(np.float64) @ q[b, t, j, g].astype(np.float64))
                    p = np.exp(scores - scores.max())
                    out[b, t, j, g] = (p / p.sum()) @ v[b, j, :seen].astype(np.float64)
    return out


def _tolerance(q, k, v, slots):
    """A score sums HEAD_DIM products (each off by an eps relative), which moves the probabilities by as much
    relative to the score's magnitude; the output sums up to ``slots`` probability-weighted values."""
    score = SCALE * HEAD_DIM * np.abs(q).max() * np.abs(k).max()
    return 4 * EPS * np.abs(v).max() * (score + slots)


@pytest.mark.parametrize("length,slots,decode_index,block", [
    (40, 40, (0, 0), 16),  # a prefill into a cache of its own length, blocks that divide it
    (40, 40, (0, 0), 64),  # one block
    (40, 40, (0, 0), 24),  # a shorter last block
    (24, 56, (32, 20), 16),  # after earlier tokens, rows at different slots, stale slots after the chunk
])
def test_blocks_match_a_per_query_softmax_over_the_cache(length, slots, decode_index, block):
    q, k, v = _inputs(length, slots)
    index = np.array(decode_index, np.int32)
    out = attention.cached_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(index), SCALE,
                                     block=block)
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, index), rtol=0,
                               atol=_tolerance(q, k, v, slots))


def test_dropout_path_matches_the_same_softmax():
    q, k, v = _inputs(24, 56, seed=1)
    index = np.array([32, 20], np.int32)
    out = attention.cached_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(index), SCALE,
                                     lambda p, deterministic: p, False, block=16)
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, index), rtol=0, atol=_tolerance(q, k, v, 56))

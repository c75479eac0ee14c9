"""The LM head and the token cross-entropy in one pass over chunks of positions, the gradient computed alongside.

``logits = hidden @ kernel (+ bias)`` is ``[batch, length, vocab]``: at the CPU presets' width it is the largest
tensor of the step (64 MiB for 2,048 tokens of an 8k vocabulary). Computed whole, it costs passes over memory
besides the head's three products (the bias add, max and exp-sum, the target gather and its scatter in the
backward, the softmax gradient, the bias gradient's reduction, layout copies): on XLA:CPU the head and the
loss took a third of the ``phi-cpu-7m`` step (``bench/train_profile.py``). :func:`head_loss_sums` instead
walks ``chunk`` positions of every row at a time (``lax.scan``): each chunk's logits stay in cache while it
computes the log-partition ``log Z``, the target logit, the probabilities and, from them, the chunk's share of
the gradients of ``hidden``, ``kernel`` and ``bias``. The full logits never exist, which also bounds the
memory on accelerators.

The gradient is that of the *summed* weighted loss, ``sum_t w_t (log Z_t - logit_t[y_t] + z log Z_t^2)``: it
is computed in the forward pass (the matmul FLOPs are the usual three products of the head) and scaled by the
scalar cotangent in the backward pass. The per-token outputs (for the per-role sums) carry no gradient.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def chunk_positions(batch: int, length: int, vocab: int, budget: int = 1 << 20) -> int:
    """Positions per chunk: the largest divisor of ``length`` whose logits (``batch x positions x vocab``
    floats) fit ``budget`` elements (4 MiB of float32 by default, a cache-sized tile), at least 1."""
    positions = max(1, min(length, budget // max(batch * vocab, 1)))
    while length % positions:
        positions -= 1
    return positions


def _chunk_pass(h: Array, kernel: Array, bias: Array | None, targets: Array, weights: Array, z_loss: float):
    """One chunk ``h [R, D]``: per-token weighted losses and ``log Z``, and the gradients of their weighted sum
    with respect to ``h``, ``kernel`` and ``bias``."""
    dtype = kernel.dtype
    logits = jnp.dot(h, kernel, preferred_element_type=jnp.float32).astype(dtype)
    if bias is not None:
        logits = logits + bias
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    onehot = jnp.arange(logits.shape[-1], dtype=jnp.int32)[None, :] == targets[:, None]
    target_logit = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
    token_loss = (log_z - target_logit) * weights
    # d/dlogits of w (log Z - logit[y] + z log Z^2) = w (1 + 2 z log Z) softmax - w onehot.
    coef = weights * (1.0 + 2.0 * z_loss * log_z) if z_loss else weights
    dlogits = coef[:, None] * jnp.exp(logits - log_z[:, None]) - jnp.where(onehot, weights[:, None], 0.0)
    dl = dlogits.astype(dtype)
    dh = jnp.dot(dl, kernel.T, preferred_element_type=jnp.float32)
    dkernel = jnp.dot(h.T, dl, preferred_element_type=jnp.float32)
    dbias = jnp.sum(dlogits, axis=0) if bias is not None else None
    return token_loss, log_z, dh, dkernel, dbias


def _forward(hidden, kernel, bias, targets, weights, z_loss, chunk):
    # Chunks cut the length axis, so each holds every row of the batch: a batch split over data-parallel
    # devices stays split the same way inside the scan.
    batch, length, width = hidden.shape
    n = length // chunk

    def split(x):  # [batch, length, ...] -> [n, batch, chunk, ...]
        return jnp.swapaxes(x.reshape((batch, n, chunk) + x.shape[2:]), 0, 1)

    def merge(x):  # the inverse of split
        return jnp.swapaxes(x, 0, 1).reshape((batch, length) + x.shape[3:])

    def body(carry, xs):
        dkernel, dbias = carry
        h, t, w = (x.reshape((batch * chunk,) + x.shape[2:]) for x in xs)
        token_loss, log_z, dh, dk, db = _chunk_pass(h, kernel, bias, t, w, z_loss)
        carry = (dkernel + dk, None if bias is None else dbias + db)
        return carry, tuple(x.reshape((batch, chunk) + x.shape[1:]) for x in (token_loss, log_z, dh))

    # The gradient accumulators are sharded like the head's parameters (a no-op without a mesh).
    zero = (nn.with_logical_constraint(jnp.zeros(kernel.shape, jnp.float32), ("embed", "vocab")),
            None if bias is None else nn.with_logical_constraint(jnp.zeros(bias.shape, jnp.float32), ("vocab",)))
    (dkernel, dbias), outs = jax.lax.scan(body, zero, (split(hidden), split(targets), split(weights)))
    token_loss, log_z, dh = (merge(x) for x in outs)
    loss_sum = jnp.sum(token_loss)
    if z_loss:
        loss_sum = loss_sum + z_loss * jnp.sum(jnp.square(log_z) * weights)
    return (loss_sum, token_loss, log_z), (dh, dkernel, dbias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _head_loss(hidden, kernel, bias, targets, weights, z_loss, chunk):
    return _forward(hidden, kernel, bias, targets, weights, z_loss, chunk)[0]


def _head_loss_fwd(hidden, kernel, bias, targets, weights, z_loss, chunk):
    out, (dh, dkernel, dbias) = _forward(hidden, kernel, bias, targets, weights, z_loss, chunk)
    dbias = None if bias is None else dbias.astype(bias.dtype)
    return out, (dh.astype(hidden.dtype), dkernel.astype(kernel.dtype), dbias)


def _head_loss_bwd(z_loss, chunk, residuals, cotangents):
    dh, dkernel, dbias = residuals
    g = cotangents[0]  # only the summed loss is differentiable

    def scale(x):
        return None if x is None else (g * x).astype(x.dtype)

    return scale(dh), scale(dkernel), scale(dbias), None, None


_head_loss.defvjp(_head_loss_fwd, _head_loss_bwd)


def head_loss_sums(hidden: Array, kernel: Array, bias: Array | None, targets: Array, weights: Array,
                   z_loss: float = 0.0, chunk: int | None = None) -> tuple[Array, Array, Array]:
    """The LM head's weighted cross-entropy without materializing the logits.

    Args:
        hidden: final-norm outputs ``[batch, length, D]`` in the model's compute dtype.
        kernel: head kernel ``[D, V]`` (for tied embeddings, the embedding transposed), compute dtype.
        bias: head bias ``[V]`` or None.
        targets: integer targets ``[batch, length]``.
        weights: loss weights ``[batch, length]``.
        z_loss: coefficient of the ``log(Z)^2`` auxiliary loss (0 disables it).
        chunk: positions per chunk (default :func:`chunk_positions`); must divide ``length``.

    Returns:
        ``(loss_sum, token_loss, log_z)``: the summed weighted loss (z-loss included; differentiable in
        ``hidden``, ``kernel`` and ``bias``), the per-token weighted cross-entropy and ``log Z`` (float32,
        shaped like ``targets``; no gradient).
    """
    batch, length = targets.shape
    chunk = chunk or chunk_positions(batch, length, kernel.shape[-1])
    if length % chunk:
        raise ValueError(f"head_loss_sums: chunk {chunk} does not divide the length {length}")
    loss_sum, token_loss, log_z = _head_loss(hidden, kernel, bias, targets.astype(jnp.int32),
                                             weights.astype(jnp.float32), float(z_loss), chunk)
    return loss_sum, jax.lax.stop_gradient(token_loss), jax.lax.stop_gradient(log_z)

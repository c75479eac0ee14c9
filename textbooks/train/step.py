"""The loss and the compiled train and eval steps.

Loss: token cross-entropy summed over real tokens (``decoder_loss_weights``) divided by the number of real
tokens of the whole (packed) global batch, so a step's loss does not depend on how the batch is split over
devices or microbatches. Per-component sums use ``decoder_role_ids``.

Gradient accumulation scans over ``k`` microbatches inside the step, summing loss numerators and gradients of
the summed loss, and divides once by the total token count: it is the same step as the large batch (up to
float rounding). A non-finite loss or gradient leaves the state unchanged (only ``step`` advances) and is
reported in the metrics; the trainer then stops or goes on as configured.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from textbooks import partitioning
from textbooks.train.optimizer import global_norm
from textbooks.train.state import TrainState

Batch = dict[str, jax.Array]


def loss_sums(logits: jax.Array, batch: Batch, num_roles: int, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """Summed token losses of one batch: total, per role, and their token counts.

    Args:
        logits: ``[B, L, V]`` float32.
        batch: with ``decoder_target_tokens``, ``decoder_loss_weights`` and (optional) ``decoder_role_ids``.
        num_roles: length of the per-role vectors (role ids outside ``[0, num_roles)`` count in no role).
        z_loss: coefficient of the ``log(Z)^2`` auxiliary loss (0 disables it).

    Returns:
        ``loss_sum`` (what gradients are taken of, z-loss included), ``ce_sum`` (cross-entropy only),
        ``weight_sum``, ``role_loss_sum [R]``, ``role_weight_sum [R]``.
    """
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    token_loss = (log_z - target_logit) * weights
    ce_sum = jnp.sum(token_loss)
    loss_sum = ce_sum + (z_loss * jnp.sum(jnp.square(log_z) * weights) if z_loss else 0.0)
    roles = batch.get("decoder_role_ids")
    if roles is None:
        roles = jnp.zeros(targets.shape, jnp.int32)
    one_hot = jax.nn.one_hot(roles, num_roles, dtype=jnp.float32)
    return {
        "loss_sum": loss_sum,
        "ce_sum": ce_sum,
        "weight_sum": jnp.sum(weights),
        "role_loss_sum": jnp.einsum("bl,blr->r", token_loss, one_hot),
        "role_weight_sum": jnp.einsum("bl,blr->r", weights, one_hot),
    }


def _forward_sums(model: nn.Module, params: Any, batch: Batch, rng: jax.Array, num_roles: int, z_loss: float,
                  deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits = model.apply({"params": params}, batch["decoder_input_tokens"],
                         segment_ids=batch.get("decoder_segment_ids"), positions=batch.get("decoder_positions"),
                         deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
    sums = loss_sums(logits, batch, num_roles, z_loss)
    return sums["loss_sum"], sums


def _split_microbatches(batch: Batch, k: int) -> Batch:
    """``[B, ...] -> [k, B/k, ...]`` taking rows ``j, j+k, ...`` for microbatch ``j``.

    Strided rows keep every microbatch spread over all data-parallel devices (each device's block of rows
    holds an equal share of every microbatch), so no resharding is needed.
    """
    def split(x):
        b = x.shape[0]
        if b % k:
            raise ValueError(f"batch of {b} rows cannot be split into {k} microbatches")
        y = x.reshape((b // k, k) + x.shape[1:])
        y = jnp.swapaxes(y, 0, 1)
        names = (None, "batch") + ("length",) * (x.ndim > 1) + (None,) * max(x.ndim - 2, 0)
        return nn.with_logical_constraint(y, names)

    return jax.tree_util.tree_map(split, batch)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    num_roles: int, microbatches: int = 1, z_loss: float = 0.0,
                    rules: partitioning.LogicalRules = partitioning.DEFAULT_LOGICAL_AXIS_RULES,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns the (uncompiled) train step ``(state, batch) -> (state, metrics)``.

    Metrics are scalars except ``role_loss_sum`` / ``role_weight_sum`` (``[num_roles]``): ``loss``,
    ``loss_sum``, ``weight_sum``, ``grad_norm``, ``learning_rate``, ``nonfinite`` (1.0 if the update was
    skipped).
    """
    deterministic = not any(getattr(model.config, n, 0.0) for n in ("embd_dropout", "attn_dropout",
                                                                      "resid_dropout"))

    def grads_and_sums(params, batch, rng):
        grad_fn = jax.grad(_forward_sums, argnums=1, has_aux=True)
        if microbatches == 1:
            return grad_fn(model, params, batch, rng, num_roles, z_loss, deterministic)
        micro = _split_microbatches(batch, microbatches)

        def body(carry, xs):
            acc_grads, acc_sums = carry
            index, mb = xs
            grads, sums = grad_fn(model, params, mb, jax.random.fold_in(rng, index), num_roles, z_loss,
                                  deterministic)
            acc_grads = jax.tree_util.tree_map(jnp.add, acc_grads, grads)
            acc_sums = jax.tree_util.tree_map(jnp.add, acc_sums, sums)
            return (acc_grads, acc_sums), None

        zero_grads = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        zero_sums = {"loss_sum": jnp.zeros(()), "ce_sum": jnp.zeros(()), "weight_sum": jnp.zeros(()),
                     "role_loss_sum": jnp.zeros((num_roles,)), "role_weight_sum": jnp.zeros((num_roles,))}
        (grads, sums), _ = jax.lax.scan(body, (zero_grads, zero_sums),
                                        (jnp.arange(microbatches), micro))
        return grads, sums

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        with nn.logical_axis_rules(list(rules)):
            rng = jax.random.fold_in(state.rng, state.step)
            grads, sums = grads_and_sums(state.params, batch, rng)
            denom = jnp.maximum(sums["weight_sum"], 1.0)
            grads = jax.tree_util.tree_map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
            grad_norm = global_norm(grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            loss = sums["ce_sum"] / denom
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(sums["loss_sum"])
            keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
            new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                                      opt_state=keep(opt_state, state.opt_state))
            metrics = {
                "loss": loss,
                "loss_sum": sums["ce_sum"],
                "weight_sum": sums["weight_sum"],
                "role_loss_sum": sums["role_loss_sum"],
                "role_weight_sum": sums["role_weight_sum"],
                "grad_norm": grad_norm,
                "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
                "nonfinite": 1.0 - finite.astype(jnp.float32),
            }
            return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module, *, num_roles: int,
                   rules: partitioning.LogicalRules = partitioning.DEFAULT_LOGICAL_AXIS_RULES,
                   ) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Returns ``(params, batch) -> loss sums`` (see :func:`loss_sums`), dropout off."""

    def eval_step(params: Any, batch: Batch) -> dict[str, jax.Array]:
        with nn.logical_axis_rules(list(rules)):
            logits = model.apply({"params": params}, batch["decoder_input_tokens"],
                                 segment_ids=batch.get("decoder_segment_ids"),
                                 positions=batch.get("decoder_positions"), deterministic=True)
            return loss_sums(logits, batch, num_roles)

    return eval_step


def compile_train_step(train_step: Callable, state_shardings: TrainState, mesh: Mesh,
                       rules: partitioning.LogicalRules, donate: bool = True,
                       compiler_options: dict[str, Any] | None = None) -> Callable:
    """``jax.jit`` of ``train_step`` with the state's shardings in and out, the batch split along ``batch``
    and the state's buffers donated; ``compiler_options`` are passed to XLA."""
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, partitioning.replicated(mesh)),
                   donate_argnums=(0,) if donate else (), compiler_options=compiler_options)

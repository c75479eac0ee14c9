"""The loss and the compiled train and eval steps.

Loss: token cross-entropy summed over real tokens (``decoder_loss_weights``) divided by the number of real
tokens of the whole (packed) global batch, so a step's loss does not depend on how the batch is split over
devices or microbatches. Per-component sums use ``decoder_role_ids``.

Gradient accumulation scans over ``k`` microbatches inside the step, summing loss numerators and gradients of
the summed loss, and divides once by the total token count: it is the same step as the large batch (up to
float rounding). A non-finite loss or gradient leaves the state unchanged (only ``step`` advances) and is
reported in the metrics; the trainer then stops or goes on as configured. The guard is a ``lax.cond`` around
the optimizer update rather than a select between new and old values: with a select, XLA computes each Adam
moment's new value twice (for the parameter update and for the select) and so copies every donated moment at
entry to keep its old value alive; inside the ``cond`` the state is updated in place.

Batch layout: every microbatch is split evenly over the data-parallel devices, so ``batch_size`` must be a
multiple of ``microbatches`` x the data-parallel mesh size (:func:`check_batch_layout` says which values would
work). Hardware gin files size microbatches per device (:func:`microbatches_for`, MaxText's per-device batch)
rather than as a fixed count, so one hardware file fits run files of any batch size and any host count.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from textbooks import partitioning
from textbooks.model.causal_lm import head_weights
from textbooks.train.head_loss import head_loss_sums
from textbooks.train.optimizer import global_norm
from textbooks.train.state import TrainState, check_training_precision

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
    loss_sum = jnp.sum(token_loss) + (z_loss * jnp.sum(jnp.square(log_z) * weights) if z_loss else 0.0)
    return _sums(loss_sum, token_loss, weights, batch, num_roles)


def _sums(loss_sum: jax.Array, token_loss: jax.Array, weights: jax.Array, batch: Batch,
          num_roles: int) -> dict[str, jax.Array]:
    """:func:`loss_sums`' dictionary from the summed loss and the weighted per-token cross-entropy."""
    targets = batch["decoder_target_tokens"]
    roles = batch.get("decoder_role_ids")
    if roles is None:
        roles = jnp.zeros(targets.shape, jnp.int32)
    one_hot = jax.nn.one_hot(roles, num_roles, dtype=jnp.float32)
    return {
        "loss_sum": loss_sum,
        "ce_sum": jnp.sum(token_loss),
        "weight_sum": jnp.sum(weights),
        "role_loss_sum": jnp.einsum("bl,blr->r", token_loss, one_hot),
        "role_weight_sum": jnp.einsum("bl,blr->r", weights, one_hot),
    }


def _forward_sums(model: nn.Module, params: Any, batch: Batch, rng: jax.Array, num_roles: int, z_loss: float,
                  deterministic: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The model up to its final norm, then the head and the loss fused over chunks of positions
    (:mod:`textbooks.train.head_loss`: the same sums as :func:`loss_sums` of the logits, which never exist)."""
    hidden = model.apply({"params": params}, batch["decoder_input_tokens"],
                         segment_ids=batch.get("decoder_segment_ids"), positions=batch.get("decoder_positions"),
                         deterministic=deterministic, rngs=None if deterministic else {"dropout": rng}, head=False)
    kernel, bias = head_weights(model.config, params)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    loss_sum, token_loss, _ = head_loss_sums(hidden.astype(kernel.dtype), kernel, bias,
                                             batch["decoder_target_tokens"], weights, z_loss)
    sums = _sums(loss_sum, token_loss, weights, batch, num_roles)
    return sums["loss_sum"], sums


def check_batch_layout(batch_size: int, microbatches: int, mesh_shape: Mapping[str, int]) -> None:
    """Checks that ``batch_size`` splits into ``microbatches`` microbatches each spread evenly over the
    data-parallel axes of a mesh of ``mesh_shape`` (``{'replica': .., 'data': .., 'fsdp': .., 'tensor': ..}``).

    Raises:
        ValueError: naming the gin keys (``train.batch_size`` / ``BATCH_SIZE``, ``train.microbatches``, the
            ``PartitioningConfig`` sizes), the numbers, and the microbatch counts that would work.
    """
    data_axes = {a: mesh_shape[a] for a in partitioning.DATA_AXES}
    data_parallel = math.prod(data_axes.values())
    layout = " x ".join(f"{a}={n}" for a, n in data_axes.items())
    if batch_size % data_parallel:
        raise ValueError(
            f"train.batch_size (BATCH_SIZE = {batch_size}) is not divisible by the {data_parallel} data-parallel "
            f"devices ({layout}): no train.microbatches value can work. Choose a batch that is a multiple of "
            f"{data_parallel}, or fewer devices / hosts (a hardware gin file's HOSTS), or move devices to "
            f"PartitioningConfig.tensor")
    rows = batch_size // data_parallel
    if microbatches < 1 or rows % microbatches:
        valid = [k for k in range(1, rows + 1) if rows % k == 0]
        raise ValueError(
            f"train.batch_size (BATCH_SIZE = {batch_size}) on {data_parallel} data-parallel devices ({layout}) "
            f"gives {rows} rows per device, which train.microbatches = {microbatches} cannot split evenly. "
            f"Valid train.microbatches: {', '.join(map(str, valid))}; or let the hardware gin file size them "
            f"(train.microbatches = @microbatches_for(), with HOSTS set to the host count)")


@gin.configurable
def microbatches_for(batch_size: int = gin.REQUIRED, rows_per_device: int = gin.REQUIRED,
                     devices_per_host: int = gin.REQUIRED, hosts: int = 1, tensor: int = 1) -> int:
    """The fewest microbatches that give each data-parallel device at most ``rows_per_device`` sequences at a
    time (gin: ``train.microbatches = @microbatches_for()``; MaxText's per-device batch size).

    Args:
        batch_size: the global batch in sequences (``%BATCH_SIZE``).
        rows_per_device: sequences one device holds per microbatch (what its memory allows).
        devices_per_host: accelerators per host.
        hosts: hosts of the run (``%HOSTS``).
        tensor: the tensor-parallel axis size (devices that share the same batch rows).

    Returns:
        ``k``, the smallest divisor of the per-device rows with ``rows / k <= rows_per_device``.

    Raises:
        ValueError: the batch cannot be spread evenly over the data-parallel devices (the message says what to
            change).
    """
    if min(rows_per_device, devices_per_host, hosts, tensor) < 1:
        raise ValueError(f"microbatches_for: rows_per_device ({rows_per_device}), devices_per_host "
                         f"({devices_per_host}), hosts ({hosts}) and tensor ({tensor}) must be positive")
    devices = hosts * devices_per_host
    if devices % tensor:
        raise ValueError(f"microbatches_for: {devices} devices ({hosts} host(s) x {devices_per_host}) are not "
                         f"divisible by tensor = {tensor}")
    data_parallel = devices // tensor
    if batch_size % data_parallel:
        raise ValueError(f"microbatches_for: BATCH_SIZE ({batch_size}) is not divisible by the {data_parallel} "
                         f"data-parallel devices of {hosts} host(s) x {devices_per_host} devices (tensor {tensor}); "
                         f"use a batch that is a multiple of {data_parallel}, or fewer hosts (HOSTS)")
    rows = batch_size // data_parallel
    k = -(-rows // rows_per_device)
    while rows % k:
        k += 1
    return k


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


def _apply_update(tx: optax.GradientTransformation) -> Callable:
    """``(grads, params, opt_state) -> (params, opt_state)`` after one optimizer update."""

    def apply(grads, params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return apply


def _skip_update(grads, params, opt_state):
    """The state unchanged (a non-finite step)."""
    del grads
    return params, opt_state


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    num_roles: int, microbatches: int = 1, z_loss: float = 0.0,
                    rules: partitioning.LogicalRules = partitioning.DEFAULT_LOGICAL_AXIS_RULES,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns the (uncompiled) train step ``(state, batch) -> (state, metrics)``.

    Metrics are scalars except ``role_loss_sum`` / ``role_weight_sum`` (``[num_roles]``): ``loss``,
    ``loss_sum``, ``weight_sum``, ``grad_norm``, ``learning_rate``, ``nonfinite`` (1.0 if the update was
    skipped).

    Raises:
        ValueError: the model computes in float16 (see :func:`textbooks.train.state.check_training_precision`).
    """
    check_training_precision(model.config)
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
            loss = sums["ce_sum"] / denom
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(sums["loss_sum"])
            params, opt_state = jax.lax.cond(finite, _apply_update(tx), _skip_update,
                                             grads, state.params, state.opt_state)
            new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
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

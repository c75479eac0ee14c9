"""The train state (step, parameters, optimizer state, base rng) and its shardings over a mesh.

Parameters are created directly in their shards: the state is first traced abstractly (nothing allocated),
its logical partition specs are read from the model's ``nn.with_logical_partitioning`` metadata, mapped to
``NamedSharding``s with the run's rules, and the initializer is compiled with those as output shardings.
Optimizer-state leaves that mirror a parameter (Adam's moments) take that parameter's sharding; the rest
(counts) are replicated.

Precision: float32 master weights (``param_dtype``) with float32 or bfloat16 compute. float16 compute is refused
for training (:func:`check_training_precision`): its 5-bit exponent underflows small gradients unless the loss
is scaled, and the train step has no loss scaling. bfloat16 keeps float32's exponent range, needs no scaling,
and is what TPUs and A100/H100 GPUs run natively; it is this project's stand-in for the phi papers' fp16
(DeepSpeed ZeRO-2, whose fp16 mode scales the loss dynamically).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from textbooks import partitioning


class TrainState(flax.struct.PyTreeNode):
    """Everything a training step reads and writes.

    Attributes:
        step: optimizer steps taken so far (int32 scalar).
        params: model parameters (float32 master weights).
        opt_state: optax state.
        rng: base PRNG key (raw uint32[2]); step ``s`` uses ``fold_in(rng, s)`` so runs resume exactly.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


TRAINING_DTYPES = ("float32", "bfloat16")


def check_training_precision(config: Any) -> None:
    """Refuses a model config whose compute dtype cannot be trained here.

    Args:
        config: the model's :class:`~textbooks.model.config.ModelConfig`.

    Raises:
        ValueError: ``model_config.dtype`` is 'float16' (or another dtype than float32 / bfloat16); the message
            names the gin key and the fix.
    """
    dtype = str(getattr(config, "dtype", "float32"))
    if dtype not in TRAINING_DTYPES:
        raise ValueError(
            f"model_config.dtype = {dtype!r} cannot be trained: float16 needs loss scaling (its smallest normal "
            "value is 6e-5, so small gradients flush to zero) and the train step does none. Set "
            "model_config.dtype = 'bfloat16' in the gin file (float32's exponent range, the native type of TPUs "
            "and A100/H100 GPUs, no loss scaling needed) or 'float32'. float16 stays available for evaluation "
            "and serving.")


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, seq_len: int) -> Callable[[jax.Array], TrainState]:
    def init(rng: jax.Array) -> TrainState:
        param_rng, base_rng = jax.random.split(rng)
        # No activation constraints while initializing: the dummy batch of one row cannot be split.
        with nn.logical_axis_rules(()):
            variables = model.init({"params": param_rng}, jnp.zeros((1, seq_len), jnp.int32))
        params = nn.unbox(variables["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=base_rng)

    return init


def param_logical_specs(model: nn.Module, seq_len: int = 8) -> Any:
    """The model's parameters' logical ``PartitionSpec``s, traced abstractly."""
    def init(rng):
        with nn.logical_axis_rules(()):
            return model.init({"params": rng}, jnp.zeros((1, seq_len), jnp.int32))

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    return nn.get_partition_spec(abstract)["params"]


def state_logical_specs(model: nn.Module, tx: optax.GradientTransformation, seq_len: int = 8) -> TrainState:
    """A ``TrainState`` of logical ``PartitionSpec``s: parameters' specs, mirrored into the optimizer state."""
    param_specs = param_logical_specs(model, seq_len)
    abstract = jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.PRNGKey(0))
    opt_specs = optax.tree_map_params(
        tx, lambda _, spec: spec, abstract.opt_state, param_specs,
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: isinstance(x, PartitionSpec))
    return TrainState(step=PartitionSpec(), params=param_specs, opt_state=opt_specs, rng=PartitionSpec())


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, seq_len: int = 8) -> TrainState:
    """The ``TrainState`` of ``jax.ShapeDtypeStruct``s (nothing allocated)."""
    return jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.PRNGKey(0))


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: partitioning.LogicalRules) -> TrainState:
    """The ``TrainState`` of ``NamedSharding``s for ``mesh`` under ``rules``.

    Raises:
        ValueError: the model's compute dtype cannot be trained (see :func:`check_training_precision`), or a
            parameter does not split evenly on ``mesh``.
    """
    check_training_precision(model.config)
    specs = state_logical_specs(model, tx)
    shardings = partitioning.logical_to_sharding(specs, mesh, rules)
    partitioning.check_divisible(abstract_state(model, tx).params, shardings.params)
    return shardings


def sharded_abstract_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                           rules: partitioning.LogicalRules) -> TrainState:
    """``jax.ShapeDtypeStruct``s carrying their shardings: the restore target of a checkpoint."""
    shapes = abstract_state(model, tx)
    shardings = state_shardings(model, tx, mesh, rules)
    return jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  shapes, shardings)


def init_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, rules: partitioning.LogicalRules,
               seed: int, compiler_options: dict[str, Any] | None = None) -> TrainState:
    """Initializes the train state from ``seed`` with every array created in its own shards.

    ``compiler_options`` are XLA options for this compilation (see ``jax.jit``).
    """
    shardings = state_shardings(model, tx, mesh, rules)
    init = jax.jit(_init_fn(model, tx, 8), out_shardings=shardings, compiler_options=compiler_options)
    with jax.set_mesh(mesh):
        return init(jax.random.PRNGKey(seed))

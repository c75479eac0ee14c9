"""The train state (step, parameters, optimizer state, base rng) and its shardings over a mesh.

Parameters are created directly in their shards: the state is first traced abstractly (nothing allocated),
its logical partition specs are read from the model's ``nn.with_logical_partitioning`` metadata, mapped to
``NamedSharding``s with the run's rules, and the initializer is compiled with those as output shardings.
Optimizer-state leaves that mirror a parameter (Adam's moments) take that parameter's sharding; the rest
(counts) are replicated.
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
    """The ``TrainState`` of ``NamedSharding``s for ``mesh`` under ``rules``."""
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

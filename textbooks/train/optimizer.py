"""The optimizer of a run: AdamW with the phi papers' settings, learning-rate schedules and clipping.

Defaults follow the phi-1.5 report: Adam(W) with beta1 0.9, beta2 0.98, epsilon 1e-7, weight decay 0.1 and a
constant learning rate of 2e-4. phi-1 used a linear warmup (750 steps) and linear decay from 1e-3: set
``schedule='linear'``. Cosine and warmup-stable-decay ("WSD", constant then a short linear cool-down) are
there for sweeps. Biases and LayerNorm parameters get no weight decay (selected by parameter path).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "linear", "cosine", "wsd")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW, its learning-rate schedule and gradient clipping.

    Attributes:
        learning_rate: peak learning rate.
        schedule: 'constant' (after the warmup), 'linear' (warmup then linear decay to
            ``final_learning_rate_fraction * learning_rate`` at the last step), 'cosine' (warmup then cosine
            decay to the same floor) or 'wsd' (warmup, constant, then a linear decay over the last
            ``decay_fraction`` of the steps).
        warmup_steps: linear warmup from 0 to ``learning_rate``.
        final_learning_rate_fraction: the learning rate at the last step, as a fraction of the peak.
        decay_fraction: share of the steps that the 'wsd' cool-down takes.
        b1, b2, eps: Adam moments' decay rates and epsilon.
        weight_decay: decoupled weight decay (AdamW), multiplied by the learning rate.
        max_grad_norm: clip gradients to this global norm (None or 0: no clipping).
        no_decay_patterns: regular expressions searched in each parameter's path (``'a/b/kernel'``, lower
            case); matching parameters get no weight decay.
    """

    learning_rate: float = 2e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    final_learning_rate_fraction: float = 0.0
    decay_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-7
    weight_decay: float = 0.1
    max_grad_norm: float | None = 1.0
    no_decay_patterns: tuple[str, ...] = (r"(^|/)bias$", r"norm", r"(^|/)scale$")

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimizerConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimizerConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.final_learning_rate_fraction <= 1.0:
            raise ValueError("OptimizerConfig.final_learning_rate_fraction must be in [0, 1], got "
                             f"{self.final_learning_rate_fraction}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"OptimizerConfig.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        object.__setattr__(self, "no_decay_patterns", tuple(self.no_decay_patterns))


def make_schedule(config: OptimizerConfig, train_steps: int) -> optax.Schedule:
    """Returns ``step -> learning rate`` for a run of ``train_steps`` optimizer steps.

    Raises:
        ValueError: the warmup is longer than the run for a decaying schedule.
    """
    peak, warmup = config.learning_rate, config.warmup_steps
    floor = peak * config.final_learning_rate_fraction
    if config.schedule != "constant" and warmup >= train_steps:
        raise ValueError(f"schedule {config.schedule!r}: warmup_steps ({warmup}) must be below train_steps "
                         f"({train_steps})")
    if config.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif config.schedule == "linear":
        after = optax.linear_schedule(peak, floor, train_steps - warmup)
    elif config.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, train_steps - warmup, alpha=config.final_learning_rate_fraction)
    else:  # Warmup-stable-decay: the cool-down is the last decay_fraction of the run.
        decay_steps = max(1, int(round(train_steps * config.decay_fraction)))
        stable = max(0, train_steps - decay_steps - warmup)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, train_steps - warmup - stable)],
            [stable])
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def param_path(path: Sequence[Any]) -> str:
    """``'layers_0/self_attn/q_proj/kernel'`` for a ``jax.tree_util`` key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def decay_mask(params: Any, patterns: Sequence[str]) -> Any:
    """A tree of bools like ``params``: True where weight decay applies (no pattern matches the path)."""
    compiled = [re.compile(p) for p in patterns]

    def decays(path, _):
        name = param_path(path).lower()
        return not any(c.search(name) for c in compiled)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig, train_steps: int) -> tuple[optax.GradientTransformation,
                                                                         optax.Schedule]:
    """Builds clipping + AdamW for ``train_steps`` steps.

    Returns:
        (the optax transformation, its learning-rate schedule).
    """
    schedule = make_schedule(config, train_steps)
    parts = []
    if config.max_grad_norm:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay,
                             mask=lambda params: decay_mask(params, config.no_decay_patterns)))
    return optax.chain(*parts), schedule


def global_norm(tree: Any) -> jax.Array:
    """The global L2 norm of a tree of arrays, accumulated in float32."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))

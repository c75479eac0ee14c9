"""``TokenMixture``: a seqio Mixture whose rates are fractions of tokens, realized exactly.

seqio mixes examples, but documents of different roles differ in length by 10x or more, so equal example rates
are very unequal token rates. A TokenMixture takes token fractions and offers two ways to realize them:

* ``mixing='rows'`` (default): each component is packed on its own into rows of exactly the sequence length
  (:func:`textbooks.tokens.packing.pack_rows`, no padding), and rows are interleaved with the token fractions
  as rates. Every row holds the same number of tokens, so example rates are token rates. With the default
  ``schedule='stratified'`` the order of components is a smooth weighted round-robin (with a seeded random
  phase): after ``n`` rows each component has had ``n * fraction`` rows give or take one, so the realized
  token fractions match the request to within one row per component at any point of training.
* ``mixing='documents'``: seqio's classic scheme. Document pieces (documents split at the sequence length)
  are sampled with example rates ``fraction / mean tokens per piece`` (token counts from
  :mod:`textbooks.tokens.stats`) and packed together afterwards, so rows mix roles. The token fractions
  are right in expectation; how close a given stretch comes depends on the spread of document lengths.

Read mixtures through :class:`textbooks.inputs.converters.LMPackingFeatureConverter` (the input pipeline does):
it passes the packed rows through with their segments and role ids, whereas seqio's ``DecoderFeatureConverter``
would take each packed row for one document.

``get_rate`` answers with example rates (the seqio meaning), computed lazily from token statistics, so tools
that read seqio rates see consistent numbers. With a ``temperature`` the fractions become
``(weight * size) ** (1 / T)`` normalized, where ``size`` is a component's train tokens.

Repetition caps. ``max_epochs`` with a token budget (registered, or the input pipeline's ``train_steps x batch x
length``) caps every component at ``max_epochs x its train tokens``: a component whose requested share would
exceed that gets exactly its cap, and the excess is given to the components with room in proportion to their
requested fractions, repeated until none is over (:func:`cap_fractions`). This follows the data-constrained
scaling results of Muennighoff et al. 2023, "Scaling Data-Constrained Language Models" (NeurIPS): up to about
4 epochs repeated tokens are worth almost as much as new ones, beyond that the returns vanish, so tokens past
the cap are better spent on other components. When even every component at its cap cannot fill the budget,
the mixture says by how much the budget exceeds the data and mixes in proportion to the capacities (every
component then repeats equally often, above the cap). The requested and capped fractions are logged and kept
in :attr:`TokenMixture.fraction_report`; the per-component epochs in :attr:`TokenMixture.repetition_report`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from mixtures import roles, sources
from textbooks.data import paths
from textbooks.tokens import packing, stats as token_stats

logger = logging.getLogger(__name__)

MIXING_MODES = ("rows", "documents")
SCHEDULES = ("stratified", "random")
DEFAULT_STATS_LENGTH = 2048


def stratified_choices(weights: Sequence[float], seed: Optional[int] = None) -> tf.data.Dataset:
    """An endless dataset of component indices with frequencies ``weights`` and bounded deviation.

    Smooth weighted round-robin: each step every component earns its weight in credit, the richest is chosen
    and pays 1. The count of component ``i`` after ``n`` steps stays within about one of ``n * w_i``. The seed
    sets the initial credits (the phase), so different seeds give different but equally balanced orders.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    w = w / w.sum()
    init = np.random.default_rng(seed).random(len(w))
    init = (init - init.mean()) * 0.5
    wt = tf.constant(w, tf.float64)
    k = len(w)

    @tf.autograph.experimental.do_not_convert
    def step(credit, _):
        credit = credit + wt
        i = tf.argmax(credit, output_type=tf.int64)
        return credit - tf.one_hot(i, k, dtype=tf.float64), i

    return tf.data.Dataset.range(2**62).scan(tf.constant(init, tf.float64), step)


def cap_fractions(fractions: Mapping[str, float], component_tokens: Mapping[str, float], token_budget: float,
                  max_epochs: float) -> tuple[dict[str, float], list[str], float]:
    """Token fractions with no component read more than ``max_epochs`` times within ``token_budget`` tokens.

    A component over its cap (``max_epochs * component_tokens / token_budget`` of the budget) is set to the cap
    and its excess share is spread over the components with room, in proportion to their fractions; this is
    repeated until no component is over (water-filling).

    Returns:
        ``(capped fractions, capped roles, excess tokens)``. The excess is 0 unless the budget exceeds every
        component at its cap: then it is ``token_budget - sum(max_epochs * tokens)`` and the fractions are
        proportional to the capacities (all components equally repeated, above the cap).
    """
    if not (token_budget > 0 and max_epochs > 0):
        raise ValueError(f"token_budget ({token_budget}) and max_epochs ({max_epochs}) must be positive")
    active = {r: float(f) for r, f in fractions.items() if f > 0}
    caps = {r: max_epochs * float(component_tokens[r]) / token_budget for r in active}
    capacity = sum(caps.values())
    if capacity < 1.0:
        even = {r: caps[r] / capacity if capacity else 1.0 / len(caps) for r in active}
        return even, sorted(active), token_budget * (1.0 - capacity)
    fixed: dict[str, float] = {}
    free = dict(active)
    while True:
        scale = (1.0 - sum(fixed.values())) / sum(free.values())
        over = [r for r, f in free.items() if f * scale > caps[r] * (1 + 1e-12)]
        if not over:
            break
        for r in over:
            fixed[r] = caps[r]
            del free[r]
    out = {r: fixed[r] if r in fixed else f * scale for r, f in active.items()}
    return out, sorted(fixed), 0.0


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    """What defines a TokenMixture (compared when a name is registered again)."""

    weights: tuple[tuple[str, float], ...]  # (role, weight) in role order, zero weights dropped
    temperature: Optional[float] = None
    vocabulary: Optional[str] = None  # None: the default vocabulary (alias tasks)
    source: str = "shards"
    mixing: str = "rows"
    schedule: str = "stratified"

    def task_names(self) -> list[str]:
        return [roles.task_name(r, self.vocabulary, self.source) for r, _ in self.weights]


class TokenMixture(seqio.Mixture):
    """A seqio Mixture over role tasks whose weights are token fractions (see the module docstring).

    Args:
        name: the mixture name.
        spec: roles, weights and options.
        max_epochs: read no component more often than this within the token budget (see the module docstring).
        token_budget: planned training tokens (steps x global batch x length) for the cap; the input pipeline
            passes its own (``get_dataset(token_budget=...)``), which wins.
    """

    def __init__(self, name: str, spec: MixtureSpec, *, max_epochs: Optional[float] = None,
                 token_budget: Optional[int] = None, source_info: Optional[seqio.SourceInfo] = None):
        if spec.mixing not in MIXING_MODES:
            raise ValueError(f"mixing must be one of {MIXING_MODES}, got {spec.mixing!r}")
        if spec.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {spec.schedule!r}")
        self.spec = spec
        self.max_epochs = max_epochs
        self.token_budget = token_budget
        self.repetition_report: Optional[list[dict]] = None
        self.fraction_report: Optional[dict] = None
        self._stats_length = DEFAULT_STATS_LENGTH
        tasks = [roles.get_role_task(r, spec.vocabulary, spec.source) for r, _ in spec.weights]
        super().__init__(name, [(t.name, self._example_rate) for t in tasks], source_info=source_info)

    # ---------------------------------------------------------------------------------------------------
    # Rates.

    @property
    def weights(self) -> dict[str, float]:
        """Requested weights by role (normalized when ``temperature`` is None)."""
        return dict(self.spec.weights)

    def _task_of(self, role: str) -> roles.RoleTask:
        return roles.get_role_task(role, self.spec.vocabulary, self.spec.source)

    def component_stats(self, role: str, split: str = "train") -> token_stats.TokenStats:
        """Token stats of a component under the vocabulary in use (computed once, then cached)."""
        task = self._task_of(role).resolve()
        source = roles.get_role_task(role, task.vocabulary_name, "shards").source
        directory = source.directory if isinstance(source, sources.ShardDataSource) else paths.role_dir(role)
        return token_stats.get_token_stats(role, task.vocabulary_name, split, directory=directory)

    def token_fractions(self) -> dict[str, float]:
        """Token fraction of each role (sums to 1); uses train token counts when there is a temperature."""
        w = self.weights
        if self.spec.temperature is not None:
            t = self.spec.temperature
            w = {r: (v * self.component_stats(r).num_tokens) ** (1.0 / t) for r, v in w.items()}
        total = sum(w.values())
        if not total > 0:
            raise ValueError(f"mixture {self.name!r}: all components have zero tokens or weight")
        return {r: v / total for r, v in w.items()}

    def realized_fractions(self, token_budget: Optional[int] = None) -> dict[str, float]:
        """The token fractions sampled: :meth:`token_fractions` capped by ``max_epochs`` within ``token_budget``
        (default the registered budget); the requested fractions when either is missing."""
        budget = token_budget or self.token_budget
        if not budget or self.max_epochs is None:
            return self.token_fractions()
        sizes = {r: self.component_stats(r).num_tokens for r, f in self.token_fractions().items() if f > 0}
        return cap_fractions(self.token_fractions(), sizes, budget, self.max_epochs)[0]

    def example_rates(self, sequence_length: Optional[int] = None,
                      token_budget: Optional[int] = None) -> dict[str, float]:
        """seqio example rates by role: realized token fraction / mean tokens per example after splitting."""
        length = sequence_length or self._stats_length
        fractions = self.realized_fractions(token_budget)
        return {r: f / self.component_stats(r).mean_tokens_per_example(length) for r, f in fractions.items()}

    def _example_rate(self, task: seqio.Task) -> float:
        return self.example_rates()[task.role]

    # ---------------------------------------------------------------------------------------------------
    # Repetition.

    def check_repetition(self, token_budget: int, *, max_epochs: Optional[float] = None,
                         split: str = "train") -> list[dict]:
        """Epochs of each component within ``token_budget`` training tokens, requested and capped.

        With a cap (``max_epochs``, default the mixture's) a component over it is capped and its excess
        redistributed (:func:`cap_fractions`); each capped component is logged with a warning, and a budget that
        exceeds every component at its cap is logged with the tokens it lacks.

        Returns:
            One dict per role: ``role, fraction, budget_tokens, component_tokens, epochs, over_cap`` (as
            requested) and ``capped_fraction, capped_budget_tokens, capped_epochs`` (as sampled). Also kept in
            :attr:`repetition_report`; the fractions in :attr:`fraction_report`.
        """
        cap = self.max_epochs if max_epochs is None else max_epochs
        fractions = self.token_fractions()
        sizes = {r: self.component_stats(r, split).num_tokens for r in fractions}
        capped, capped_roles, excess = (cap_fractions(fractions, sizes, token_budget, cap) if cap is not None
                                        else (dict(fractions), [], 0.0))
        report = []
        for role, fraction in fractions.items():
            size = sizes[role]
            need, got = fraction * token_budget, capped.get(role, 0.0) * token_budget
            epochs = need / size if size else math.inf
            report.append({"role": role, "fraction": fraction, "budget_tokens": int(need),
                           "component_tokens": size, "epochs": epochs, "over_cap": cap is not None and epochs > cap,
                           "capped_fraction": capped.get(role, 0.0), "capped_budget_tokens": int(got),
                           "capped_epochs": got / size if size else math.inf})
            if report[-1]["over_cap"] and not excess:
                logger.warning("mixture %s: component %s would be repeated %.2f times (%d of its %d tokens "
                               "planned), more than max_epochs=%s; capped at %.4g of the tokens (was %.4g), the "
                               "excess goes to the other components in proportion to their rates", self.name, role,
                               epochs, int(need), size, cap, capped[role], fraction)
        if excess:
            capacity = token_budget - excess
            logger.warning("mixture %s: the token budget (%d) exceeds all of its data at max_epochs=%s (%d tokens) "
                           "by %d tokens (%.2fx); every component will be repeated %.2f times. Add data, lower the "
                           "budget or raise max_epochs", self.name, token_budget, cap, int(capacity), int(excess),
                           token_budget / capacity if capacity else math.inf,
                           cap * token_budget / capacity if capacity else math.inf)
        self.repetition_report = report
        self._record_fractions(fractions, capped, capped_roles, cap, token_budget, excess)
        return report

    def _record_fractions(self, requested: Mapping[str, float], capped: Mapping[str, float],
                          capped_roles: Sequence[str], max_epochs: Optional[float], token_budget: Optional[int],
                          excess: float) -> None:
        self.fraction_report = {"requested": dict(requested), "capped": dict(capped),
                                "capped_roles": list(capped_roles), "max_epochs": max_epochs,
                                "token_budget": None if token_budget is None else int(token_budget),
                                "budget_over_capacity_tokens": int(excess)}
        logger.info("mixture %s: token fractions requested %s, capped %s", self.name,
                    {r: round(f, 6) for r, f in requested.items()}, {r: round(f, 6) for r, f in capped.items()})

    # ---------------------------------------------------------------------------------------------------
    # Datasets.

    def get_dataset(self, sequence_length: Optional[Mapping[str, int]] = None, split: str = "train",
                    use_cached: Optional[bool] = False, shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, num_epochs: Optional[int] = None,
                    copy_pretokenized: bool = False, compute_stats_empirically: bool = False,
                    log_mixing_proportions: bool = True, passthrough_features: Optional[Sequence[str]] = None,
                    trim_output_features: bool = True, try_in_mem_cache: bool = True, *,
                    mixing: Optional[str] = None, schedule: Optional[str] = None,
                    token_budget: Optional[int] = None) -> tf.data.Dataset:
        """The mixed dataset (seqio's signature; ``use_cached=None`` reads caches where they exist).

        On the train split with ``max_epochs`` and a token budget (``token_budget``, default the registered one)
        the components are mixed at their capped fractions (:meth:`check_repetition`).

        With ``mixing='rows'`` the elements are packed rows (``targets``, ``targets_segment_ids``,
        ``targets_positions``, ``targets_role_ids``) that :class:`~textbooks.inputs.converters.
        LMPackingFeatureConverter` passes through; with ``'documents'`` they are document pieces
        (``targets``, ``role_id``).

        Raises:
            ValueError: ``mixing='rows'`` without ``sequence_length['targets']``, or no component has ``split``.
        """
        mixing = mixing or self.spec.mixing
        schedule = schedule or self.spec.schedule
        if mixing not in MIXING_MODES or schedule not in SCHEDULES:
            raise ValueError(f"mixing must be one of {MIXING_MODES} and schedule one of {SCHEDULES}; got "
                             f"{mixing!r}, {schedule!r}")
        length = (sequence_length or {}).get("targets")
        if mixing == "rows" and not length:
            raise ValueError(f"mixture {self.name!r} packs rows per component and needs sequence_length"
                             f"['targets']; pass it, or use mixing='documents'")
        if length:
            self._stats_length = int(length)
        self._check_compatible_features()
        fractions = self.token_fractions()
        active = [r for r, f in fractions.items() if f > 0]
        missing = [r for r in active if split not in self._task_of(r).splits]
        if missing:
            raise ValueError(f"mixture {self.name!r}: component(s) {', '.join(missing)} have no {split!r} split")
        budget = token_budget or self.token_budget
        if budget and self.max_epochs is not None and split == "train":
            self.check_repetition(budget)
            fractions = self.fraction_report["capped"]
        else:
            budget = None
            if split == "train":
                self._record_fractions(fractions, fractions, [], self.max_epochs, None, 0.0)
        weights = [fractions[r] for r in active] if mixing == "rows" else \
            [self.example_rates(length, budget)[r] for r in active]

        datasets = []
        for role in active:
            task = self._task_of(role)
            ds = task.get_dataset(sequence_length, split=split, use_cached=use_cached, shuffle=shuffle, seed=seed,
                                  shard_info=shard_info, num_epochs=num_epochs,
                                  trim_output_features=trim_output_features, try_in_mem_cache=try_in_mem_cache)
            ds = ds.map(lambda ex: {"targets": ex["targets"], "role_id": ex["role_id"]},
                        num_parallel_calls=tf.data.AUTOTUNE)
            if mixing == "rows":
                ds = packing.pack_rows(ds, int(length), pad_last=num_epochs is not None)
            datasets.append(ds)
        if len(datasets) == 1:
            return datasets[0]
        sample_seed = seed if seed is not None else (None if shuffle else 42)
        if schedule == "stratified":
            return tf.data.Dataset.choose_from_datasets(datasets, stratified_choices(weights, sample_seed),
                                                        stop_on_empty_dataset=True)
        return tf.data.Dataset.sample_from_datasets(datasets, weights, seed=sample_seed,
                                                    stop_on_empty_dataset=True)

    def __repr__(self) -> str:
        return f"TokenMixture(name={self.name!r}, spec={self.spec})"

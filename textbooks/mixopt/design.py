"""Sweep designs: which mixture ratios the proxy runs try.

Three designs, each returning a list of ratio dicts over the sweep's components (every dict on the simplex):

- :func:`grid_design`: every point of the simplex grid with step ``1/divisions`` (Data Mixing Laws style).
- :func:`dirichlet_design`: seeded Dirichlet samples around a prior, ``alpha = concentration * prior``
  (RegMix / Olmix "swarm" style); a large concentration keeps samples near the prior.
- :func:`explicit_design`: points written out in gin.

All three honour per-component ``bounds`` ``{component: (low, high)}`` and are validated by
:func:`validate_ratios`, whose errors name the point and the key at fault.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import gin
import numpy as np

# Ratios are rounded to this many decimals so that trial ids do not depend on the last float bits.
DECIMALS = 6
SUM_TOLERANCE = 1e-6

Bounds = Mapping[str, Sequence[float]]


class DesignError(ValueError):
    """A sweep design or a mixture point is invalid; the message names the point and the key."""


def check_components(components: Sequence[str]) -> tuple[str, ...]:
    """Returns ``components`` as a tuple after checking they are distinct non-empty names.

    Raises:
        DesignError: empty list, a non-string or empty name, or a duplicate.
    """
    comps = tuple(components)
    if not comps:
        raise DesignError("a sweep needs at least one component (data role); got none")
    for c in comps:
        if not isinstance(c, str) or not c:
            raise DesignError(f"component names must be non-empty strings; got {c!r} in {list(comps)}")
    dupes = sorted({c for c in comps if comps.count(c) > 1})
    if dupes:
        raise DesignError(f"duplicate component(s) {dupes} in {list(comps)}")
    return comps


def bounds_arrays(components: Sequence[str], bounds: Bounds | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-component ``(low, high)`` arrays from ``{component: (low, high)}`` (missing: ``(0, 1)``).

    Raises:
        DesignError: a bound names an unknown component, is not a pair within [0, 1] with low <= high, or the
            bounds leave no point on the simplex (sum of lows > 1 or sum of highs < 1).
    """
    comps = check_components(components)
    lo, hi = np.zeros(len(comps)), np.ones(len(comps))
    for key, pair in (bounds or {}).items():
        if key not in comps:
            raise DesignError(f"bounds name unknown component {key!r}; components are {list(comps)}")
        try:
            low, high = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise DesignError(f"bounds[{key!r}] must be a (low, high) pair; got {pair!r}") from None
        if not (0.0 <= low <= high <= 1.0) or math.isnan(low) or math.isnan(high):
            raise DesignError(f"bounds[{key!r}] = ({low}, {high}) must satisfy 0 <= low <= high <= 1")
        i = comps.index(key)
        lo[i], hi[i] = low, high
    if lo.sum() > 1.0 + SUM_TOLERANCE:
        raise DesignError(f"lower bounds sum to {lo.sum():.6g} > 1: no mixture satisfies them; lower some of "
                          f"{dict(zip(comps, lo.tolist()))}")
    if hi.sum() < 1.0 - SUM_TOLERANCE:
        raise DesignError(f"upper bounds sum to {hi.sum():.6g} < 1: no mixture satisfies them; raise some of "
                          f"{dict(zip(comps, hi.tolist()))}")
    return lo, hi


def validate_ratios(ratios: Mapping[str, Any], components: Sequence[str], *, where: str = "point",
                    bounds: Bounds | None = None, tolerance: float = SUM_TOLERANCE) -> dict[str, float]:
    """Checks one mixture point and returns it as ``{component: ratio}`` over all components (missing -> 0).

    Args:
        ratios: ``{component: ratio}``.
        components: the sweep's components, in order.
        where: how to name the point in errors, e.g. ``"point 3"``.
        bounds: optional per-component ``(low, high)``.
        tolerance: allowed deviation of the sum from 1.

    Raises:
        DesignError: not a mapping, an unknown component, a non-numeric, NaN, infinite or negative ratio, a
            sum different from 1, or a ratio outside its bounds. The message names ``where`` and the key.
    """
    comps = check_components(components)
    if not isinstance(ratios, Mapping):
        raise DesignError(f"{where}: ratios must be a mapping {{component: ratio}}; got {type(ratios).__name__}")
    unknown = [k for k in ratios if k not in comps]
    if unknown:
        raise DesignError(f"{where}: unknown component {unknown[0]!r}; the sweep's components are {list(comps)}")
    out = {}
    for c in comps:
        v = ratios.get(c, 0.0)
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise DesignError(f"{where}: ratio for {c!r} is not a number: {v!r}") from None
        if math.isnan(x) or math.isinf(x):
            raise DesignError(f"{where}: ratio for {c!r} is {x}; ratios must be finite numbers in [0, 1]")
        if x < 0:
            raise DesignError(f"{where}: ratio for {c!r} is negative ({x}); ratios must be >= 0")
        out[c] = x
    total = sum(out.values())
    if abs(total - 1.0) > tolerance:
        raise DesignError(f"{where}: ratios sum to {total:.9g}, not 1 (tolerance {tolerance:g}); got {out}. "
                          "Normalise the point so that its ratios add up to 1.")
    if bounds:
        lo, hi = bounds_arrays(comps, bounds)
        for i, c in enumerate(comps):
            if out[c] < lo[i] - tolerance or out[c] > hi[i] + tolerance:
                raise DesignError(f"{where}: ratio for {c!r} is {out[c]:.6g}, outside its bounds "
                                  f"[{lo[i]:.6g}, {hi[i]:.6g}]")
    return out


def round_ratios(values: Sequence[float], decimals: int = DECIMALS) -> np.ndarray:
    """Rounds a simplex point to ``decimals`` and puts the rounding residue on its largest entry."""
    x = np.round(np.asarray(values, dtype=np.float64), decimals)
    x[int(np.argmax(x))] += round(1.0 - float(x.sum()), decimals)
    return np.round(np.clip(x, 0.0, 1.0), decimals)


def as_vector(ratios: Mapping[str, float], components: Sequence[str]) -> np.ndarray:
    """``{component: ratio}`` -> array in ``components`` order (missing components -> 0)."""
    return np.array([float(ratios.get(c, 0.0)) for c in components], dtype=np.float64)


def as_dict(vector: Sequence[float], components: Sequence[str]) -> dict[str, float]:
    """Array in ``components`` order -> ``{component: ratio}``."""
    return {c: float(v) for c, v in zip(components, vector)}


def _within(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    return bool(np.all(x >= lo - SUM_TOLERANCE) and np.all(x <= hi + SUM_TOLERANCE))


@gin.configurable
def grid_design(components: Sequence[str] = gin.REQUIRED, divisions: int = 4,
                bounds: Bounds | None = None) -> list[dict[str, float]]:
    """All points of the simplex grid with step ``1/divisions`` that satisfy ``bounds``.

    With M components there are ``C(divisions + M - 1, M - 1)`` grid points before bounds (15 for M=3,
    divisions=4), ordered lexicographically.

    Raises:
        DesignError: ``divisions < 1``, bad bounds, or no grid point within the bounds.
    """
    comps = check_components(components)
    if int(divisions) != divisions or divisions < 1:
        raise DesignError(f"grid_design.divisions must be a positive integer; got {divisions!r}")
    k, m = int(divisions), len(comps)
    lo, hi = bounds_arrays(comps, bounds)
    points = []
    # Stars and bars: choose the m-1 bar positions among k+m-1 slots.
    for bars in itertools.combinations(range(k + m - 1), m - 1):
        edges = (-1,) + bars + (k + m - 1,)
        counts = [edges[i + 1] - edges[i] - 1 for i in range(m)]
        x = np.array(counts, dtype=np.float64) / k
        if _within(x, lo, hi):
            points.append(as_dict(round_ratios(x), comps))
    if not points:
        raise DesignError(f"no point of the 1/{k} simplex grid lies within bounds {dict(bounds or {})}; "
                          "use more divisions or wider bounds")
    return points


def _prior_vector(components: Sequence[str], prior: Mapping[str, float] | None) -> np.ndarray:
    if prior is None:
        return np.full(len(components), 1.0 / len(components))
    p = as_vector(validate_ratios(prior, components, where="prior"), components)
    if np.any(p <= 0):
        zero = [c for c, v in zip(components, p) if v <= 0]
        raise DesignError(f"prior: ratio for {zero[0]!r} is 0; Dirichlet sampling needs a positive prior for "
                          "every component (give it a small positive weight or drop the component)")
    return p


@gin.configurable
def dirichlet_design(components: Sequence[str] = gin.REQUIRED, num_points: int = 16,
                     prior: Mapping[str, float] | None = None, concentration: float = 3.0, seed: int = 0,
                     bounds: Bounds | None = None, include_prior: bool = True, min_separation: float = 0.0,
                     max_draws: int = 100_000) -> list[dict[str, float]]:
    """Seeded Dirichlet samples around ``prior``: ``r ~ Dir(concentration * prior * M)``.

    The concentration is per component relative to uniform: with a uniform prior and ``concentration=1``
    the samples are uniform on the simplex; larger values concentrate them near the prior, smaller values
    push them towards the corners (RegMix / Olmix use both regimes).

    Args:
        components: the sweep's components.
        num_points: how many points to return (the prior counts as one when ``include_prior``).
        prior: ``{component: ratio}`` centre of the samples (default: uniform).
        concentration: Dirichlet concentration relative to uniform (> 0).
        seed: numpy Generator seed; the same arguments always give the same points.
        bounds: per-component ``(low, high)``; samples outside are rejected.
        include_prior: put the prior itself first.
        min_separation: reject samples closer than this (L1) to an accepted point.
        max_draws: give up after this many draws.

    Raises:
        DesignError: bad arguments, or fewer than ``num_points`` acceptable samples in ``max_draws`` draws.
    """
    comps = check_components(components)
    if int(num_points) != num_points or num_points < 1:
        raise DesignError(f"dirichlet_design.num_points must be a positive integer; got {num_points!r}")
    if not (concentration > 0) or math.isinf(concentration):
        raise DesignError(f"dirichlet_design.concentration must be a positive number; got {concentration!r}")
    lo, hi = bounds_arrays(comps, bounds)
    p = _prior_vector(comps, prior)
    alpha = concentration * p * len(comps)
    rng = np.random.default_rng(seed)
    accepted: list[np.ndarray] = []
    seen: set[tuple[float, ...]] = set()

    def accept(x: np.ndarray) -> None:
        key = tuple(x.tolist())
        if key in seen or not _within(x, lo, hi):
            return
        if min_separation > 0 and any(np.abs(x - a).sum() < min_separation for a in accepted):
            return
        seen.add(key)
        accepted.append(x)

    if include_prior:
        accept(round_ratios(p))
    draws = 0
    while len(accepted) < num_points and draws < max_draws:
        batch = rng.dirichlet(alpha, size=min(1024, max_draws - draws))
        draws += len(batch)
        for x in batch:
            accept(round_ratios(x))
            if len(accepted) == num_points:
                break
    if len(accepted) < num_points:
        raise DesignError(f"dirichlet_design: only {len(accepted)} of {num_points} samples satisfied the bounds "
                          f"{dict(bounds or {})} and min_separation={min_separation} after {draws} draws; widen "
                          "the bounds, lower min_separation or change the prior/concentration")
    return [as_dict(x, comps) for x in accepted]


@gin.configurable
def explicit_design(points: Sequence[Mapping[str, float]] = gin.REQUIRED,
                    components: Sequence[str] = gin.REQUIRED,
                    bounds: Bounds | None = None) -> list[dict[str, float]]:
    """Points written out by hand, validated (missing components are 0).

    Raises:
        DesignError: an invalid point (the message names its index and key) or a duplicate point.
    """
    comps = check_components(components)
    out, seen = [], {}
    for i, pt in enumerate(points):
        r = validate_ratios(pt, comps, where=f"point {i}", bounds=bounds)
        key = tuple(round_ratios(as_vector(r, comps)).tolist())
        if key in seen:
            raise DesignError(f"point {i} repeats point {seen[key]} ({r}); use seeds for repeats")
        seen[key] = i
        out.append(as_dict(np.array(key), comps))
    if not out:
        raise DesignError("explicit_design.points is empty")
    return out


def validate_design(points: Sequence[Mapping[str, float]], components: Sequence[str],
                    bounds: Bounds | None = None) -> list[dict[str, float]]:
    """Validates every point of a design (any origin) and returns them rounded, in order.

    Raises:
        DesignError: the first invalid point, named by its index and key, or an empty design.
    """
    comps = check_components(components)
    if not points:
        raise DesignError("the design has no points")
    out = []
    for i, pt in enumerate(points):
        r = validate_ratios(pt, comps, where=f"point {i}", bounds=bounds)
        out.append(as_dict(round_ratios(as_vector(r, comps)), comps))
    return out


def expand_trials(points: Sequence[Mapping[str, float]],
                  seeds: Sequence[int]) -> list[tuple[int, dict[str, float], int]]:
    """``(point_index, ratios, seed)`` for every point and seed, point-major.

    Raises:
        DesignError: no seeds, a non-integer seed or a repeated seed.
    """
    seeds = list(seeds)
    if not seeds:
        raise DesignError("a sweep needs at least one seed")
    for s in seeds:
        if isinstance(s, bool) or int(s) != s:
            raise DesignError(f"seeds must be integers; got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise DesignError(f"repeated seed in {seeds}")
    return [(i, dict(p), int(s)) for i, p in enumerate(points) for s in seeds]

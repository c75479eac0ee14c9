"""The best mixture under constraints, from a fitted law.

Constraints (:class:`ProposalConstraints`):

- the simplex: ratios are >= 0 and sum to 1;
- per-component bounds ``(low, high)``;
- repetition caps: a component with ``T_j`` tokens, seen at most ``E_j`` times (epochs) in a run of ``B``
  planned tokens, can take at most ``r_j <= E_j * T_j / B`` of the mixture (phi-1.5 repeats its synthetic
  data; caps keep a proposal from repeating a small component beyond what the user allows);
- a trust region around the prior (the mixture the sweep was centred on): ``L1(r, prior) <= delta`` or
  ``KL(r || prior) <= delta``: the law was fitted near the sweep's points and should not be extrapolated far.

:func:`propose` solves ``min (or max) law(r)`` with ``scipy.optimize.minimize(method='SLSQP')`` from several
starts (the L1 ball is written with auxiliary variables so that every constraint is smooth), and runs a
dense candidate search (Dirichlet samples and a simplex grid, pulled into the feasible set along the segment
from a feasible anchor) that also serves laws without useful gradients (LightGBM). The best feasible point of
both wins; every constraint is checked on the returned point.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import gin
import numpy as np

from textbooks.mixopt import design as design_lib

TOL = 1e-6


class ProposalError(ValueError):
    """The constraints leave no feasible mixture, or are malformed (the message says which and why)."""


@gin.configurable
@dataclasses.dataclass
class ProposalConstraints:
    """Constraints on a proposed mixture.

    Attributes:
        bounds: per-component ``(low, high)``.
        max_epochs: most passes over each component's tokens: one number for all, or ``{component: E}``.
        component_tokens: tokens available per component (``{component: T}``); needed with ``max_epochs``.
        token_budget: planned training tokens of the run the proposal is for; needed with ``max_epochs``.
        prior: centre of the trust region (default: the sweep's prior).
        distance: ``'l1'`` or ``'kl'`` (KL(r || prior)); None for no trust region.
        max_distance: the trust region's radius ``delta``.
    """

    bounds: Mapping[str, Sequence[float]] | None = None
    max_epochs: float | Mapping[str, float] | None = None
    component_tokens: Mapping[str, float] | None = None
    token_budget: float | None = None
    prior: Mapping[str, float] | None = None
    distance: str | None = None
    max_distance: float | None = None


def repetition_caps(components: Sequence[str], constraints: ProposalConstraints) -> dict[str, float]:
    """Upper bounds on each ratio from the repetition caps (``E_j T_j / B``, at most 1); empty without caps.

    Raises:
        ProposalError: caps requested without token counts or budget, or a component without a token count.
    """
    if constraints.max_epochs is None:
        return {}
    if not constraints.token_budget or constraints.token_budget <= 0:
        raise ProposalError("max_epochs needs token_budget (the planned training tokens, > 0)")
    tokens = dict(constraints.component_tokens or {})
    epochs = constraints.max_epochs
    caps = {}
    for c in components:
        e = epochs.get(c) if isinstance(epochs, Mapping) else epochs
        if e is None:
            continue
        if c not in tokens:
            raise ProposalError(f"max_epochs caps {c!r} but component_tokens has no token count for it; give "
                                f"component_tokens for {list(components)}")
        if tokens[c] < 0 or e < 0:
            raise ProposalError(f"component_tokens[{c!r}] and max_epochs must be >= 0")
        caps[c] = min(1.0, float(e) * float(tokens[c]) / float(constraints.token_budget))
    return caps


def distances(R: np.ndarray, p: np.ndarray, kind: str) -> np.ndarray:
    """L1 distance or KL(r || p) of each row of ``R`` from ``p`` (KL is ``inf`` where r > 0 = p)."""
    R = np.atleast_2d(R)
    if kind == "l1":
        return np.abs(R - p).sum(axis=1)
    if kind == "kl":
        mask = R > 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(mask, R * np.log(np.where(mask, R, 1.0) / p), 0.0)
        out = terms.sum(axis=1)
        return np.where(np.any(mask & (p <= 0), axis=1), np.inf, out)
    raise ProposalError(f"unknown distance {kind!r}; use 'l1' or 'kl'")


def distance(r: np.ndarray, p: np.ndarray, kind: str) -> float:
    """L1 distance or KL(r || p) of one mixture from ``p``."""
    return float(distances(r, p, kind)[0])


def project_capped_simplex(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``p`` onto ``{r: lo <= r <= hi, sum r = 1}`` (bisection on the shift)."""
    a, b = float(np.min(p - hi)) - 1.0, float(np.max(p - lo)) + 1.0
    for _ in range(200):
        tau = 0.5 * (a + b)
        if np.clip(p - tau, lo, hi).sum() > 1.0:
            a = tau
        else:
            b = tau
    return np.clip(p - 0.5 * (a + b), lo, hi)


@dataclasses.dataclass
class Proposal:
    """A proposed mixture and how it was found.

    Attributes:
        ratios: ``{component: ratio}``.
        predicted: the law's prediction there.
        method: ``'slsqp'`` or ``'candidates'`` (which search found the returned point).
        lower, upper: effective per-component bounds (bounds and caps combined).
        caps: the repetition caps.
        prior: the trust region's centre.
        distance_kind, max_distance, distance_to_prior: the trust region and the proposal's distance.
        predicted_at_prior: the law at the prior (None if the prior is infeasible).
        num_candidates: candidates evaluated.
    """

    ratios: dict[str, float]
    predicted: float
    method: str
    lower: dict[str, float]
    upper: dict[str, float]
    caps: dict[str, float]
    prior: dict[str, float]
    distance_kind: str | None
    max_distance: float | None
    distance_to_prior: float | None
    predicted_at_prior: float | None
    num_candidates: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Problem:
    def __init__(self, model: Any, components: Sequence[str], constraints: ProposalConstraints,
                 prior: Mapping[str, float] | None, maximize: bool):
        self.model, self.comps, self.sign = model, list(components), -1.0 if maximize else 1.0
        c = constraints
        self.lo, self.hi = design_lib.bounds_arrays(self.comps, c.bounds)
        self.caps = repetition_caps(self.comps, c)
        for i, comp in enumerate(self.comps):
            if comp in self.caps:
                self.hi[i] = min(self.hi[i], self.caps[comp])
        if self.lo.sum() > 1 + TOL or self.hi.sum() < 1 - TOL or np.any(self.lo > self.hi + TOL):
            raise ProposalError(
                    "no mixture satisfies the bounds and repetition caps: upper bounds "
                    f"{design_lib.as_dict(self.hi, self.comps)} sum to {self.hi.sum():.4g} (must be >= 1), lower "
                    f"bounds sum to {self.lo.sum():.4g}; raise max_epochs, add tokens or lower the token budget")
        prior_d = c.prior or prior or {k: 1.0 / len(self.comps) for k in self.comps}
        self.p = design_lib.as_vector(design_lib.validate_ratios(prior_d, self.comps, where="prior"), self.comps)
        self.kind = c.distance
        self.delta = c.max_distance
        if (self.kind is None) != (self.delta is None):
            raise ProposalError("give both distance ('l1' or 'kl') and max_distance, or neither")
        if self.kind is not None:
            if self.kind not in ("l1", "kl"):
                raise ProposalError(f"unknown distance {self.kind!r}; use 'l1' or 'kl'")
            if not self.delta >= 0:
                raise ProposalError(f"max_distance must be >= 0; got {self.delta}")
            if self.kind == "kl":
                self.hi = np.where(self.p <= 0, 0.0, self.hi)  # KL(r||p) is infinite where p = 0 < r.
        self.anchor = project_capped_simplex(self.p, self.lo, self.hi)
        if self.kind is not None and distance(self.anchor, self.p, self.kind) > self.delta + TOL:
            raise ProposalError(
                    f"the trust region {self.kind} <= {self.delta} around the prior contains no mixture within the "
                    f"bounds and caps: the nearest one is at {self.kind} = "
                    f"{distance(self.anchor, self.p, self.kind):.4g}; raise max_distance or relax the caps")

    def objective(self, R: np.ndarray) -> np.ndarray:
        return self.sign * np.asarray(self.model.predict(np.atleast_2d(R)), dtype=np.float64).reshape(-1)

    def feasible_rows(self, R: np.ndarray, tol: float = 1e-5) -> np.ndarray:
        R = np.atleast_2d(R)
        ok = ((np.abs(R.sum(axis=1) - 1.0) <= tol) & np.all(R >= self.lo - tol, axis=1)
              & np.all(R <= self.hi + tol, axis=1) & np.all(R >= -tol, axis=1))
        if self.kind is not None:
            ok &= distances(np.clip(R, 0, None), self.p, self.kind) <= self.delta + tol
        return ok

    def feasible(self, r: np.ndarray, tol: float = 1e-5) -> bool:
        return bool(self.feasible_rows(r, tol)[0])

    def pull_in(self, X: np.ndarray) -> np.ndarray:
        """Moves each row from the anchor towards itself as far as the constraints allow.

        The feasible set is convex and holds the anchor, so along each segment it is an interval [0, lam*]:
        the box gives lam* in closed form, the trust region by (vectorized) bisection.
        """
        a = self.anchor
        d = X - a
        with np.errstate(divide="ignore", invalid="ignore"):
            up = np.where(d > 0, (self.hi - a) / d, np.inf)
            down = np.where(d < 0, (self.lo - a) / d, np.inf)
        lam = np.clip(np.minimum(np.min(up, axis=1), np.min(down, axis=1)), 0.0, 1.0)
        if self.kind is not None:
            inside = distances(a + lam[:, None] * d, self.p, self.kind) <= self.delta
            lo_l, hi_l = np.zeros_like(lam), lam.copy()
            for _ in range(40):
                mid = 0.5 * (lo_l + hi_l)
                ok = distances(a + mid[:, None] * d, self.p, self.kind) <= self.delta
                lo_l, hi_l = np.where(ok, mid, lo_l), np.where(ok, hi_l, mid)
            lam = np.where(inside, lam, lo_l)
        return a + lam[:, None] * d

    def candidates(self, num: int, seed: int) -> np.ndarray:
        m = len(self.comps)
        rng = np.random.default_rng(seed)
        parts = [self.anchor[None], np.eye(m)]
        per = max(1, num // 6)
        base = np.clip(self.anchor, 1e-3, None)
        base = base / base.sum()
        for conc in (0.3, 1.0, 3.0, 10.0, 30.0):
            parts.append(rng.dirichlet(conc * base * m, size=per))
        divisions = next((k for k in (40, 20, 10, 6, 4, 3, 2) if math.comb(k + m - 1, m - 1) <= num // 6), 1)
        if divisions > 1:
            parts.append(np.array([design_lib.as_vector(g, self.comps)
                                   for g in design_lib.grid_design(self.comps, divisions)]))
        return self.pull_in(np.concatenate(parts))

    def slsqp(self, start: np.ndarray) -> np.ndarray | None:
        from scipy.optimize import minimize

        m = len(self.comps)
        l1 = self.kind == "l1"
        n = 2 * m if l1 else m
        cons = [{"type": "eq", "fun": lambda x: np.sum(x[:m]) - 1.0,
                 "jac": lambda x: np.r_[np.ones(m), np.zeros(n - m)]}]
        bounds = list(zip(self.lo, self.hi))
        if l1:
            bounds += [(0.0, None)] * m
            eye = np.eye(m)
            cons += [{"type": "ineq", "fun": lambda x: x[m:] - (x[:m] - self.p),
                      "jac": lambda x: np.c_[-eye, eye]},
                     {"type": "ineq", "fun": lambda x: x[m:] + (x[:m] - self.p),
                      "jac": lambda x: np.c_[eye, eye]},
                     {"type": "ineq", "fun": lambda x: self.delta - np.sum(x[m:]),
                      "jac": lambda x: np.r_[np.zeros(m), -np.ones(m)]}]
            x0 = np.r_[start, np.abs(start - self.p)]
        else:
            x0 = start.copy()
        if self.kind == "kl":
            pos = self.p > 0

            def kl_margin(x: np.ndarray) -> float:
                r = np.clip(x[:m], 1e-12, None)
                return self.delta - float(np.sum(r[pos] * np.log(r[pos] / self.p[pos])))

            cons.append({"type": "ineq", "fun": kl_margin})
        try:
            res = minimize(lambda x: float(self.objective(x[:m])[0]), x0, method="SLSQP", bounds=bounds,
                           constraints=cons, options={"maxiter": 300, "ftol": 1e-12})
        except (ValueError, FloatingPointError):
            return None
        r = np.clip(res.x[:m], self.lo, self.hi)
        return r if self.feasible(r) else None


def propose(model: Any, components: Sequence[str], constraints: ProposalConstraints | None = None, *,
            prior: Mapping[str, float] | None = None, maximize: bool = False, num_candidates: int = 20_000,
            num_starts: int = 5, seed: int = 0) -> Proposal:
    """The mixture that minimizes (or maximizes) ``model.predict`` under ``constraints``.

    Args:
        model: anything with ``predict(R: [n, components]) -> [n]``.
        components: the components, in the model's column order.
        constraints: bounds, caps and trust region (default: the simplex only).
        prior: the trust region's centre when ``constraints.prior`` is not set (the sweep's prior).
        maximize: maximize instead of minimize (accuracies).
        num_candidates: size of the dense candidate search.
        num_starts: SLSQP starts (the best candidates and the anchor).
        seed: candidate sampling seed.

    Raises:
        ProposalError: infeasible or malformed constraints, or no feasible point found.
    """
    pb = _Problem(model, components, constraints or ProposalConstraints(), prior, maximize)
    cand = pb.candidates(num_candidates, seed)
    cand = cand[pb.feasible_rows(cand)]
    if not len(cand):
        raise ProposalError("the candidate search found no feasible mixture; check the constraints")
    values = pb.objective(cand)
    order = np.argsort(values, kind="stable")
    best_r, best_v, method = cand[order[0]], float(values[order[0]]), "candidates"
    for start in [cand[i] for i in order[:num_starts]] + [pb.anchor]:
        r = pb.slsqp(start)
        if r is not None:
            v = float(pb.objective(r)[0])
            if v < best_v - 1e-12:
                best_r, best_v, method = r, v, "slsqp"
    rounded = design_lib.round_ratios(best_r)
    if pb.feasible(rounded, tol=1e-7):
        best_r = rounded
    if not pb.feasible(best_r):
        raise ProposalError("the optimizer returned an infeasible point; this is a bug, please report the "
                            f"constraints: {constraints}")
    at_prior = float(pb.sign * pb.objective(pb.p)[0]) if pb.feasible(pb.p) else None
    return Proposal(ratios=design_lib.as_dict(best_r, pb.comps), predicted=float(pb.sign * pb.objective(best_r)[0]),
                    method=method, lower=design_lib.as_dict(pb.lo, pb.comps),
                    upper=design_lib.as_dict(pb.hi, pb.comps), caps=pb.caps,
                    prior=design_lib.as_dict(pb.p, pb.comps), distance_kind=pb.kind, max_distance=pb.delta,
                    distance_to_prior=distance(best_r, pb.p, pb.kind) if pb.kind else None,
                    predicted_at_prior=at_prior, num_candidates=int(len(values)))

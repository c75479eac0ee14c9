"""Proposals: known optima, and every constraint (simplex, bounds, repetition caps, trust region) holds."""

import numpy as np
import pytest

from textbooks.mixopt import propose as P

COMPS = ["a", "b", "c"]


class Quadratic:
    """||r - target||^2: convex, its constrained minimum is the projection of ``target``."""

    def __init__(self, target):
        self.target = np.asarray(target, dtype=float)

    def predict(self, R):
        return ((np.atleast_2d(R) - self.target) ** 2).sum(axis=1)


class Linear:
    def __init__(self, w):
        self.w = np.asarray(w, dtype=float)

    def predict(self, R):
        return np.atleast_2d(R) @ self.w


class Step:
    """Piecewise constant (like a tree ensemble): zero gradient everywhere, one good region."""

    def predict(self, R):
        R = np.atleast_2d(R)
        return np.where((R[:, 0] > 0.7) & (R[:, 1] < 0.2), 0.0, 1.0)


def _vec(p):
    return np.array([p.ratios[c] for c in COMPS])


def _check_simplex(r):
    assert r.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(r >= -1e-9)


def test_interior_optimum_is_found():
    p = P.propose(Quadratic([0.6, 0.3, 0.1]), COMPS)
    np.testing.assert_allclose(_vec(p), [0.6, 0.3, 0.1], atol=1e-4)


def test_repetition_cap_gives_the_known_constrained_optimum():
    c = P.ProposalConstraints(max_epochs=2.0, component_tokens={"a": 1e9, "b": 5e9, "c": 5e9}, token_budget=5e9)
    assert P.repetition_caps(COMPS, c) == {"a": pytest.approx(0.4), "b": 1.0, "c": 1.0}
    p = P.propose(Quadratic([0.6, 0.3, 0.1]), COMPS, c)
    r = _vec(p)
    _check_simplex(r)
    assert r[0] <= 0.4 + 1e-6
    # KKT: a sits on its cap, the excess 0.2 spreads equally over b and c.
    np.testing.assert_allclose(r, [0.4, 0.4, 0.2], atol=1e-4)
    assert p.upper["a"] == pytest.approx(0.4)


def test_l1_trust_region_moves_half_the_radius_from_worst_to_best():
    prior = {"a": 0.3, "b": 0.3, "c": 0.4}
    c = P.ProposalConstraints(distance="l1", max_distance=0.2, prior=prior)
    p = P.propose(Linear([1.0, 2.0, 3.0]), COMPS, c)
    r = _vec(p)
    _check_simplex(r)
    assert np.abs(r - [0.3, 0.3, 0.4]).sum() <= 0.2 + 1e-6
    np.testing.assert_allclose(r, [0.4, 0.3, 0.3], atol=1e-4)
    assert p.distance_to_prior == pytest.approx(0.2, abs=1e-5)
    maxed = _vec(P.propose(Linear([1.0, 2.0, 3.0]), COMPS, c, maximize=True))
    np.testing.assert_allclose(maxed, [0.2, 0.3, 0.5], atol=1e-4)


def test_kl_trust_region_and_bounds_hold():
    prior = {"a": 0.2, "b": 0.5, "c": 0.3}
    c = P.ProposalConstraints(distance="kl", max_distance=0.05, prior=prior, bounds={"b": (0.45, 0.9)})
    p = P.propose(Linear([1.0, 0.0, -1.0]), COMPS, c)
    r = _vec(p)
    _check_simplex(r)
    q = np.array([0.2, 0.5, 0.3])
    mask = r > 0
    assert np.sum(r[mask] * np.log(r[mask] / q[mask])) <= 0.05 + 1e-6
    assert r[1] >= 0.45 - 1e-9
    assert p.predicted < p.predicted_at_prior  # it improved on the prior within the region


def test_candidate_search_handles_flat_gradients():
    p = P.propose(Step(), COMPS, num_candidates=5000)
    r = _vec(p)
    assert r[0] > 0.7 and r[1] < 0.2 and p.predicted == 0.0


def test_infeasible_constraints_are_explained():
    caps = P.ProposalConstraints(max_epochs=1.0, component_tokens={"a": 1e8, "b": 1e8, "c": 1e8}, token_budget=1e9)
    with pytest.raises(P.ProposalError, match=r"sum to 0.3 \(must be >= 1\).*raise max_epochs"):
        P.propose(Linear([1, 2, 3]), COMPS, caps)
    tight = P.ProposalConstraints(distance="l1", max_distance=0.1, prior={"a": 0.8, "b": 0.1, "c": 0.1},
                                  bounds={"a": (0.0, 0.5)})
    with pytest.raises(P.ProposalError, match="contains no mixture .* nearest one is at l1 = 0.6"):
        P.propose(Linear([1, 2, 3]), COMPS, tight)
    with pytest.raises(P.ProposalError, match="token_budget"):
        P.propose(Linear([1, 2, 3]), COMPS, P.ProposalConstraints(max_epochs=2.0))
    with pytest.raises(P.ProposalError, match="give both distance"):
        P.propose(Linear([1, 2, 3]), COMPS, P.ProposalConstraints(distance="l1"))


def test_projection_onto_capped_simplex():
    lo, hi = np.zeros(3), np.array([0.4, 1.0, 1.0])
    np.testing.assert_allclose(P.project_capped_simplex(np.array([0.6, 0.3, 0.1]), lo, hi), [0.4, 0.4, 0.2],
                               atol=1e-9)

"""Sweep designs: simplex grids, Dirichlet samples, bounds, validation errors and trial identity."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textbooks.mixopt import design, trials

COMPS = ["web_filtered", "code_filtered", "synthetic_textbooks"]


def _vec(points):
    return np.array([[p[c] for c in COMPS] for p in points])


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_grid_is_the_whole_simplex_grid(k):
    pts = design.grid_design(COMPS, divisions=k)
    X = _vec(pts)
    assert len(pts) == math.comb(k + 2, 2)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(X >= 0)
    np.testing.assert_allclose(X * k, np.round(X * k), atol=1e-5)  # multiples of 1/k (6 decimals kept)
    assert len({tuple(r) for r in X.tolist()}) == len(pts)


def test_grid_bounds_filter_and_empty_error():
    bounds = {"code_filtered": (0.25, 0.5), "web_filtered": (0.0, 0.5)}
    X = _vec(design.grid_design(COMPS, divisions=4, bounds=bounds))
    assert len(X) and np.all((X[:, 1] >= 0.25 - 1e-9) & (X[:, 1] <= 0.5 + 1e-9) & (X[:, 0] <= 0.5 + 1e-9))
    # The full grid has exactly these points inside the bounds (counted independently).
    full = _vec(design.grid_design(COMPS, divisions=4))
    inside = (full[:, 1] >= 0.25) & (full[:, 1] <= 0.5) & (full[:, 0] <= 0.5)
    assert len(X) == int(inside.sum())
    with pytest.raises(design.DesignError, match="no point of the 1/2 simplex grid"):
        design.grid_design(COMPS, divisions=2, bounds={"code_filtered": (0.3, 0.4)})


def test_dirichlet_is_seeded_on_simplex_and_within_bounds():
    kw = dict(num_points=20, prior={"web_filtered": 0.4, "code_filtered": 0.2, "synthetic_textbooks": 0.4},
              concentration=2.0, bounds={"code_filtered": (0.05, 0.6)}, min_separation=0.05)
    a = design.dirichlet_design(COMPS, seed=3, **kw)
    b = design.dirichlet_design(COMPS, seed=3, **kw)
    c = design.dirichlet_design(COMPS, seed=4, **kw)
    assert a == b and a != c
    X = _vec(a)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-9)
    assert np.all(X[:, 1] >= 0.05) and np.all(X[:, 1] <= 0.6)
    assert a[0] == kw["prior"]  # include_prior puts the prior first
    d = np.abs(X[:, None, :] - X[None, :, :]).sum(-1) + np.eye(len(X)) * 9
    assert d.min() >= 0.05


def test_dirichlet_concentrates_around_the_prior():
    prior = {"web_filtered": 0.5, "code_filtered": 0.3, "synthetic_textbooks": 0.2}
    X = _vec(design.dirichlet_design(COMPS, num_points=400, prior=prior, concentration=40.0, seed=0,
                                     include_prior=False))
    # Dir(alpha) has mean alpha / sum(alpha) = the prior, and variance p(1-p)/(sum(alpha)+1).
    np.testing.assert_allclose(X.mean(axis=0), [0.5, 0.3, 0.2], atol=0.02)
    np.testing.assert_allclose(X.var(axis=0), [p * (1 - p) / (40 * 3 + 1) for p in (0.5, 0.3, 0.2)], rtol=0.3)


def test_dirichlet_impossible_bounds_fail_clearly():
    with pytest.raises(design.DesignError, match="only .* of 10 samples"):
        design.dirichlet_design(COMPS, num_points=10, concentration=50.0, seed=0, max_draws=2000,
                                bounds={"code_filtered": (0.9, 1.0)})
    with pytest.raises(design.DesignError, match="lower bounds sum to 1.2"):
        design.dirichlet_design(COMPS, bounds={"code_filtered": (0.6, 1.0), "web_filtered": (0.6, 1.0)})


@pytest.mark.parametrize("bad,message", [
    ({"web_filtered": -0.1, "code_filtered": 0.6, "synthetic_textbooks": 0.5},
     "point 2: ratio for 'web_filtered' is negative"),
    ({"web_filtered": float("nan"), "code_filtered": 0.5, "synthetic_textbooks": 0.5},
     "point 2: ratio for 'web_filtered' is nan"),
    ({"web_filtered": 0.5, "code_filtered": 0.6}, "point 2: ratios sum to 1.1"),
    ({"web_filtered": 0.5, "web_raw": 0.5}, "point 2: unknown component 'web_raw'"),
    ({"web_filtered": "half", "code_filtered": 0.5}, "point 2: ratio for 'web_filtered' is not a number"),
])
def test_invalid_points_name_the_point_and_key(bad, message):
    points = [{"web_filtered": 1.0}, {"code_filtered": 0.5, "synthetic_textbooks": 0.5}, bad]
    with pytest.raises(design.DesignError, match=message.replace("(", r"\(").replace(".", r"\.")):
        design.explicit_design(points, COMPS)


def test_explicit_design_fills_missing_components_and_refuses_repeats():
    pts = design.explicit_design([{"web_filtered": 0.25, "code_filtered": 0.75}], COMPS)
    assert pts == [{"web_filtered": 0.25, "code_filtered": 0.75, "synthetic_textbooks": 0.0}]
    with pytest.raises(design.DesignError, match="point 1 repeats point 0"):
        design.explicit_design([{"web_filtered": 1.0}, {"web_filtered": 1.0, "code_filtered": 0.0}], COMPS)
    with pytest.raises(design.DesignError, match="outside its bounds"):
        design.explicit_design([{"web_filtered": 1.0}], COMPS, bounds={"web_filtered": (0.0, 0.5)})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=3, max_size=3).filter(lambda v: sum(v) > 1e-3))
def test_validation_accepts_normalised_and_rejects_scaled_points(v):
    total = sum(v)
    point = {c: x / total for c, x in zip(COMPS, v)}
    assert design.validate_ratios(point, COMPS) == pytest.approx(point)
    with pytest.raises(design.DesignError, match="sum to"):
        design.validate_ratios({c: x * 1.01 for c, x in point.items()}, COMPS)


def test_expand_trials_and_seed_validation():
    pts = design.grid_design(COMPS, divisions=1)
    out = design.expand_trials(pts, [0, 1])
    assert [(i, s) for i, _, s in out] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    with pytest.raises(design.DesignError, match="repeated seed"):
        design.expand_trials(pts, [1, 1])
    with pytest.raises(design.DesignError, match="at least one seed"):
        design.expand_trials(pts, [])


def test_trial_ids_are_deterministic_and_separate_configs():
    r = {"web_filtered": 0.5, "code_filtered": 0.5}
    tid = trials.trial_id("fp1", r, 0)
    assert tid == trials.trial_id("fp1", dict(reversed(list(r.items()))), 0)
    assert tid == trials.trial_id("fp1", {**r, "synthetic_textbooks": 0.0}, 0)
    assert tid == trials.trial_id("fp1", {"web_filtered": 0.5 + 1e-12, "code_filtered": 0.5 - 1e-12}, 0)
    others = {trials.trial_id("fp2", r, 0), trials.trial_id("fp1", r, 1),
              trials.trial_id("fp1", {"web_filtered": 0.4, "code_filtered": 0.6}, 0)}
    assert tid not in others and len(others) == 3
    assert trials.config_fingerprint({"a": 1, "b": [1, 2]}) == trials.config_fingerprint({"b": [1, 2], "a": 1})
    assert trials.config_fingerprint({"a": 1}) != trials.config_fingerprint({"a": 2})

"""Regressions from ratios to a metric recover known laws; cross-validation ranks held-out runs."""

import importlib.util

import numpy as np
import pytest
from scipy import stats

from textbooks.mixopt import design, fit

COMPS = ["web_filtered", "code_filtered", "synthetic_textbooks"]


def _points(n, seed, concentration=1.0):
    pts = design.dirichlet_design(COMPS, num_points=n, concentration=concentration, seed=seed, include_prior=False)
    return np.array([[p[c] for c in COMPS] for p in pts])


def _law(X, c, k, t):
    return c + k * np.exp(X @ np.asarray(t))


@pytest.mark.parametrize("c,k,t", [(1.5, 2.0, [-1.0, 0.6, 0.2]),    # a loss: decreasing k > 0
                                   (0.8, -0.5, [0.9, -0.4, 0.1])])   # an accuracy: k < 0
def test_mixing_law_recovers_its_parameters(c, k, t):
    rng = np.random.default_rng(0)
    X = _points(30, seed=1)
    y = _law(X, c, k, t) + rng.normal(0.0, 0.002, len(X))
    got = fit.make_model("mixing_law").fit(X, y).params()
    # On the simplex k and a shift of t are one degree of freedom; compare canonical forms (sum t = 0).
    want = fit.canonical_mixing_law(c, k, t)
    assert got["c"] == pytest.approx(want["c"], abs=0.02)
    assert got["k"] == pytest.approx(want["k"], rel=0.05)
    np.testing.assert_allclose(got["t"], want["t"], atol=0.05)


def test_canonical_form_is_the_same_function():
    X = _points(10, seed=2)
    can = fit.canonical_mixing_law(1.0, 2.0, [0.3, -0.2, 1.1])
    np.testing.assert_allclose(_law(X, 1.0, 2.0, [0.3, -0.2, 1.1]), _law(X, can["c"], can["k"], can["t"]))
    assert sum(can["t"]) == pytest.approx(0.0, abs=1e-12)


def test_loglinear_law_recovers_floor_and_exponents():
    rng = np.random.default_rng(1)
    X = _points(25, seed=3)
    t = np.array([0.4, -1.2, 0.8])
    y = 2.2 + np.exp(X @ t) + rng.normal(0.0, 0.002, len(X))
    p = fit.make_model("loglinear").fit(X, y).params()
    assert p["c"] == pytest.approx(2.2, abs=0.03)
    np.testing.assert_allclose(p["t"], t, atol=0.08)


@pytest.mark.parametrize("name", ["loglinear", "mixing_law", "linear"])
def test_held_out_runs_are_ranked_correctly(name):
    rng = np.random.default_rng(2)
    X, Xh = _points(24, seed=4), _points(15, seed=5)
    truth = dict(c=1.2, k=1.5, t=[-0.8, 0.9, 0.1])
    y = _law(X, **truth) + rng.normal(0.0, 0.005, len(X))
    model = fit.make_model(name).fit(X, y)
    rho = stats.spearmanr(model.predict(Xh), _law(Xh, **truth)).statistic
    assert rho > 0.95
    cv = fit.cross_validate(name, X, y, num_folds=5)
    assert cv.spearman > 0.9 and cv.num_folds == 5
    assert np.all(np.isfinite(cv.oof))


def test_cross_validation_fails_on_noise_and_keeps_seeds_together():
    rng = np.random.default_rng(3)
    X = np.repeat(_points(12, seed=6), 2, axis=0)  # two seeds per mixture
    y = rng.normal(0.0, 1.0, len(X)) + 3.0
    cv = fit.cross_validate("linear", X, y, num_folds=4, seed=0)
    assert cv.spearman < 0.6  # nothing to learn: the held-out ranking is poor
    for i in range(0, len(X), 2):
        assert cv.folds[i] == cv.folds[i + 1]
    # The pooled statistic is scipy's Spearman of the held-out predictions.
    assert cv.spearman == pytest.approx(stats.spearmanr(cv.oof, y).statistic)


def test_errors():
    X = _points(4, seed=7)
    with pytest.raises(fit.FitError, match="unknown model 'cubic'"):
        fit.make_model("cubic")
    with pytest.raises(fit.FitError, match="needs at least 5 runs"):
        fit.make_model("mixing_law").fit(X, np.ones(4))
    with pytest.raises(fit.FitError, match="at least 3 distinct mixture points"):
        fit.cross_validate("linear", np.repeat(X[:2], 3, axis=0), np.arange(6.0))
    with pytest.raises(fit.FitError, match="positive metric"):
        fit.make_model("loglinear").fit(_points(8, seed=8), -np.ones(8))


def test_lightgbm_is_optional():
    if importlib.util.find_spec("lightgbm") is None:
        with pytest.raises(fit.FitError, match="pip install lightgbm"):
            fit.make_model("lightgbm")
        return
    rng = np.random.default_rng(4)
    X, Xh = _points(80, seed=9), _points(20, seed=10)
    y = _law(X, 1.0, 1.0, [-1.0, 1.0, 0.0]) + rng.normal(0, 0.01, len(X))
    model = fit.make_model("lightgbm").fit(X, y)
    assert stats.spearmanr(model.predict(Xh), _law(Xh, 1.0, 1.0, [-1.0, 1.0, 0.0])).statistic > 0.8

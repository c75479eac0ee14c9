"""Regressions from mixture ratios to a target metric, and their K-fold cross-validation.

Models (``make_model(name)``), each with ``fit(X, y)``, ``predict(X)``, ``params()`` and ``formula()``; X is
``[runs, components]`` ratios, y the metric:

- ``linear`` (RegMix's linear regression): ``y = b + sum_j w_j r_j`` (ridge with a tiny penalty, since the
  ratios sum to 1 and the intercept is otherwise not identifiable).
- ``loglinear`` (Olmix's log-linear law): ``y = exp(a) + exp(sum_j t_j r_j)``: an irreducible floor ``exp(a)``
  plus a reducible part log-linear in the ratios (a constant factor is absorbed by ``t`` on the simplex).
- ``mixing_law`` (Data Mixing Laws, Ye et al. 2024): ``y = c + k exp(sum_j t_j r_j)`` with ``c`` and ``k`` of
  either sign (``k < 0`` for metrics that grow, like accuracy). On the simplex ``k`` and a shift of all
  ``t_j`` are interchangeable, so parameters are reported in the canonical form ``sum_j t_j = 0``.
- ``lightgbm`` (RegMix's LightGBM regressor): only when ``lightgbm`` is installed.

Exponential laws are fitted with ``scipy.optimize.least_squares`` (Huber loss, as in Data Mixing Laws),
started from a grid over the constant with the log-linear part solved by least squares at each, then from
seeded random restarts; the best fit wins.

:func:`cross_validate` groups runs by mixture point (seeds of one mixture never straddle train and test),
pools the out-of-fold predictions and reports their Spearman rank correlation with the actual values
(``scipy.stats.spearmanr``), plus Pearson, RMSE and MAE and the per-fold Spearman.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import Any, Callable, Sequence

import numpy as np

MODEL_NAMES = ("linear", "loglinear", "mixing_law", "lightgbm")


class FitError(ValueError):
    """The data cannot support the requested fit (too few runs, non-finite targets, ...)."""


def _check_xy(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise FitError(f"X must be [runs, components] and y [runs]; got {X.shape} and {y.shape}")
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(y)):
        raise FitError("X and y must be finite; drop runs with missing metrics first")
    return X, y


class LinearLaw:
    """RegMix linear regression ``y = b + w . r``."""

    name = "linear"

    def __init__(self, alpha: float = 1e-6):
        self.alpha = alpha

    def fit(self, X: Any, y: Any) -> "LinearLaw":
        from sklearn.linear_model import Ridge

        X, y = _check_xy(X, y)
        if len(y) < 2:
            raise FitError(f"the linear law needs at least 2 runs; got {len(y)}")
        self._model = Ridge(alpha=self.alpha).fit(X, y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return self._model.predict(np.atleast_2d(np.asarray(X, dtype=np.float64)))

    def params(self) -> dict[str, Any]:
        return {"intercept": float(self._model.intercept_), "weights": self._model.coef_.tolist()}

    def formula(self) -> str:
        return "y = b + sum_j w_j r_j"


def _exp_design(X: np.ndarray, y: np.ndarray, c: float, sign: float) -> tuple[np.ndarray, float] | None:
    """Least-squares ``t`` of ``log(sign * (y - c)) = X t`` for a fixed constant; None if y - c has bad sign."""
    z = sign * (y - c)
    if np.any(z <= 0):
        return None
    t, *_ = np.linalg.lstsq(X, np.log(z), rcond=None)
    resid = y - (c + sign * np.exp(X @ t))
    return t, float(resid @ resid)


class _ExpLaw:
    """Shared fitting of ``y = c + s * exp(X u)`` for a fixed sign ``s``."""

    name = "exp"

    def __init__(self, restarts: int = 6, seed: int = 0, huber_scale: float | None = None):
        self.restarts, self.seed, self.huber_scale = restarts, seed, huber_scale

    def _constants(self, y: np.ndarray, sign: float) -> np.ndarray:
        span = float(np.ptp(y)) or abs(float(np.mean(y))) or 1.0
        edge = float(np.min(y)) if sign > 0 else float(np.max(y))
        gaps = span * np.array([1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
        return np.concatenate([edge - sign * gaps, [1e-9 * edge, 0.5 * edge, 0.9 * edge]])

    def _fit_sign(self, X: np.ndarray, y: np.ndarray, sign: float, c_bounds: tuple[float, float],
                  c_transform: Callable[[float], float], c_inverse: Callable[[float], float],
                  quick: bool = False):
        """Best ``(sse, params)`` over the starts for one sign (``quick``: the best grid start only)."""
        from scipy.optimize import least_squares

        m = X.shape[1]
        starts = []
        for c in self._constants(y, sign):
            if not (c_bounds[0] < c < c_bounds[1]):
                continue
            sol = _exp_design(X, y, c, sign)
            if sol is not None:
                starts.append((sol[1], np.concatenate([[c_inverse(c)], sol[0]])))
        starts.sort(key=lambda s: s[0])
        inits = [s[1] for s in starts[:1 if quick else 4]]
        rng = np.random.default_rng(self.seed)
        scale = float(np.std(y)) or 1.0
        for _ in range(0 if quick and inits else self.restarts):
            c0 = float(np.min(y) if sign > 0 else np.max(y)) - sign * scale * rng.uniform(0.05, 2.0)
            if not (c_bounds[0] < c0 < c_bounds[1]):
                c0 = float(np.clip(c0, c_bounds[0] + 1e-6, c_bounds[1] - 1e-6))
            inits.append(np.concatenate([[c_inverse(c0)], rng.normal(0.0, 1.0, m)]))
        f_scale = self.huber_scale or max(1e-8, 0.1 * scale)

        def residuals(p: np.ndarray) -> np.ndarray:
            z = np.clip(X @ p[1:], -50.0, 50.0)
            return c_transform(p[0]) + sign * np.exp(z) - y

        def jacobian(p: np.ndarray) -> np.ndarray:
            e = sign * np.exp(np.clip(X @ p[1:], -50.0, 50.0))
            h = 1e-7 * max(1.0, abs(p[0]))
            dc = (c_transform(p[0] + h) - c_transform(p[0] - h)) / (2 * h)
            return np.column_stack([np.full(len(y), dc), e[:, None] * X])

        best = None
        for p0 in inits:
            try:
                res = least_squares(residuals, p0, jac=jacobian, loss="huber", f_scale=f_scale,
                                    max_nfev=100 if quick else 500)
            except (ValueError, FloatingPointError):
                continue
            sse = float(np.sum(residuals(res.x) ** 2))
            if np.isfinite(sse) and (best is None or sse < best[0]):
                best = (sse, res.x)
        return best

    def predict(self, X: Any) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        return self._c + self._sign * np.exp(np.clip(X @ self._u, -50.0, 50.0))


class LogLinearLaw(_ExpLaw):
    """Olmix log-linear law ``y = exp(a) + exp(t . r)``."""

    name = "loglinear"

    def fit(self, X: Any, y: Any) -> "LogLinearLaw":
        X, y = _check_xy(X, y)
        if len(y) < X.shape[1] + 2:
            raise FitError(f"the log-linear law has {X.shape[1] + 1} parameters and needs at least "
                           f"{X.shape[1] + 2} runs; got {len(y)}")
        if np.min(y) <= 0:
            raise FitError("the log-linear law models a positive metric (a loss); the target has values <= 0 "
                           "(use mixing_law)")
        best = self._fit_sign(X, y, 1.0, (0.0, float(np.min(y))), np.exp, lambda c: math.log(max(c, 1e-12)))
        if best is None:
            raise FitError("the log-linear law did not converge from any start")
        self._c, self._sign, self._u = float(np.exp(best[1][0])), 1.0, best[1][1:]
        return self

    def params(self) -> dict[str, Any]:
        return {"a": math.log(self._c), "c": self._c, "t": self._u.tolist()}

    def formula(self) -> str:
        return "y = exp(a) + exp(sum_j t_j r_j)"


class MixingLaw(_ExpLaw):
    """Data Mixing Laws ``y = c + k exp(t . r)``, canonical ``sum_j t_j = 0``."""

    name = "mixing_law"

    def fit(self, X: Any, y: Any) -> "MixingLaw":
        X, y = _check_xy(X, y)
        if len(y) < X.shape[1] + 2:
            raise FitError(f"the mixing law has {X.shape[1] + 1} free parameters and needs at least "
                           f"{X.shape[1] + 2} runs; got {len(y)}")
        identity = lambda c: c  # noqa: E731
        # A quick fit of each sign of k picks the orientation; the full multi-start fit then refines it.
        quick = [(b[0], sign) for sign in (1.0, -1.0)
                 if (b := self._fit_sign(X, y, sign, (-np.inf, np.inf), identity, identity, quick=True))]
        if not quick:
            raise FitError("the mixing law did not converge from any start")
        sign = min(quick)[1]
        best = self._fit_sign(X, y, sign, (-np.inf, np.inf), identity, identity)
        if best is None:
            raise FitError("the mixing law did not converge from any start")
        p = best[1]
        self._c, self._sign, self._u = float(p[0]), sign, p[1:]
        return self

    def params(self) -> dict[str, Any]:
        """Canonical parameters: ``c``, ``k`` (signed) and ``t`` with ``sum(t) = 0``."""
        shift = float(np.mean(self._u))
        return {"c": self._c, "k": self._sign * math.exp(shift), "t": (self._u - shift).tolist()}

    def formula(self) -> str:
        return "y = c + k exp(sum_j t_j r_j)"


def canonical_mixing_law(c: float, k: float, t: Sequence[float]) -> dict[str, Any]:
    """The canonical form (``sum(t) = 0``) of ``c + k exp(t . r)`` on the simplex, for comparisons."""
    t = np.asarray(t, dtype=np.float64)
    shift = float(np.mean(t))
    return {"c": float(c), "k": float(k) * math.exp(shift), "t": (t - shift).tolist()}


class LightGBMLaw:
    """RegMix's LightGBM regressor on the ratios (requires the ``lightgbm`` package)."""

    name = "lightgbm"

    def __init__(self, seed: int = 0, n_estimators: int = 500, learning_rate: float = 0.03):
        if importlib.util.find_spec("lightgbm") is None:
            raise FitError("model 'lightgbm' needs the lightgbm package (`pip install lightgbm`); or use "
                           "loglinear, mixing_law or linear")
        self.seed, self.n_estimators, self.learning_rate = seed, n_estimators, learning_rate

    def fit(self, X: Any, y: Any) -> "LightGBMLaw":
        import lightgbm

        X, y = _check_xy(X, y)
        if len(y) < 4:
            raise FitError(f"lightgbm needs at least 4 runs; got {len(y)}")
        self._model = lightgbm.LGBMRegressor(
                n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=8,
                min_child_samples=max(2, len(y) // 10), random_state=self.seed, verbose=-1, deterministic=True,
                force_row_wise=True)
        self._model.fit(X, y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return self._model.predict(np.atleast_2d(np.asarray(X, dtype=np.float64)))

    def params(self) -> dict[str, Any]:
        return {"n_estimators": self.n_estimators, "learning_rate": self.learning_rate,
                "feature_importance": self._model.feature_importances_.tolist()}

    def formula(self) -> str:
        return "y = GBDT(r)"


def make_model(name: str, seed: int = 0):
    """A fresh, unfitted model by name.

    Raises:
        FitError: unknown name (lists the known ones) or lightgbm not installed.
    """
    if name == "linear":
        return LinearLaw()
    if name == "loglinear":
        return LogLinearLaw(seed=seed)
    if name == "mixing_law":
        return MixingLaw(seed=seed)
    if name == "lightgbm":
        return LightGBMLaw(seed=seed)
    raise FitError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


@dataclasses.dataclass
class CVResult:
    """K-fold cross-validation of a model on a sweep.

    Attributes:
        spearman: Spearman rank correlation of pooled out-of-fold predictions with the actual values.
        spearman_p: its p-value.
        pearson: Pearson correlation of the same.
        rmse, mae: errors of the out-of-fold predictions.
        fold_spearman: Spearman per fold (NaN for folds with fewer than 3 runs or constant values).
        oof: out-of-fold prediction of every run (same order as y).
        folds: fold index of every run.
        num_folds: K.
    """

    spearman: float
    spearman_p: float
    pearson: float
    rmse: float
    mae: float
    fold_spearman: list[float]
    oof: np.ndarray
    folds: np.ndarray
    num_folds: int

    def summary(self) -> dict[str, Any]:
        finite = [s for s in self.fold_spearman if np.isfinite(s)]
        return {"spearman": self.spearman, "spearman_p": self.spearman_p, "pearson": self.pearson,
                "rmse": self.rmse, "mae": self.mae, "num_folds": self.num_folds,
                "fold_spearman": self.fold_spearman,
                "mean_fold_spearman": float(np.mean(finite)) if finite else float("nan")}


def cross_validate(name: str, X: Any, y: Any, groups: Sequence[Any] | None = None, num_folds: int = 5,
                   seed: int = 0) -> CVResult:
    """K-fold cross-validation grouped by mixture point.

    Args:
        name: model name (see :func:`make_model`).
        X: ``[runs, components]`` ratios.
        y: ``[runs]`` target.
        groups: group label per run (default: identical rows of X form a group, i.e. the seeds of a point).
        num_folds: K (reduced to the number of groups when there are fewer).
        seed: shuffling seed of the folds and the models' restarts.

    Raises:
        FitError: fewer than 3 groups.
    """
    from scipy import stats
    from sklearn.model_selection import GroupKFold

    X, y = _check_xy(X, y)
    if groups is None:
        _, groups = np.unique(np.round(X, 6), axis=0, return_inverse=True)
    groups = np.asarray(groups).reshape(-1)
    k = min(int(num_folds), len(np.unique(groups)))
    if k < 3:
        raise FitError(f"cross-validation needs at least 3 distinct mixture points; got {k}")
    oof = np.full(len(y), np.nan)
    folds = np.full(len(y), -1)
    fold_rho = []
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (train, test) in enumerate(splitter.split(X, y, groups)):
        model = make_model(name, seed=seed).fit(X[train], y[train])
        oof[test] = model.predict(X[test])
        folds[test] = f
        if len(test) >= 3 and np.ptp(y[test]) > 0 and np.ptp(oof[test]) > 0:
            fold_rho.append(float(stats.spearmanr(oof[test], y[test]).statistic))
        else:
            fold_rho.append(float("nan"))
    varied = np.ptp(oof) > 0 and np.ptp(y) > 0  # a rank correlation of a constant is undefined
    rho = stats.spearmanr(oof, y) if varied else None
    pearson = float(np.corrcoef(oof, y)[0, 1]) if varied else float("nan")
    err = oof - y
    return CVResult(spearman=float(rho.statistic) if varied else float("nan"),
                    spearman_p=float(rho.pvalue) if varied else float("nan"), pearson=pearson,
                    rmse=float(np.sqrt(np.mean(err ** 2))), mae=float(np.mean(np.abs(err))),
                    fold_spearman=fold_rho, oof=oof, folds=folds, num_folds=k)


def r_squared(y: Any, pred: Any) -> float:
    """Coefficient of determination of ``pred`` against ``y``."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")

"""Figures of a sweep and its fit (matplotlib, Agg backend; PNG files).

- :func:`loss_curves`: each run's training curve from its metrics JSONL, coloured by one component's ratio.
- :func:`metric_vs_ratio`: the target against each component's ratio.
- :func:`ternary`: for three components, the fitted law as a filled contour over the simplex (barycentric
  coordinates, ``tricontourf``), the runs coloured by their measured value, the prior and the proposal.
- :func:`predicted_vs_actual`: out-of-fold predictions against measured values, with the Spearman rho.
- :func:`proposal_bars`: the proposal next to the prior and the best run.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

SQRT3_2 = math.sqrt(3.0) / 2.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def barycentric_to_xy(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps 3-component ratios to the plane: vertex 0 at (0, 0), vertex 1 at (1, 0), vertex 2 at the top."""
    R = np.atleast_2d(R)
    return R[:, 1] + 0.5 * R[:, 2], SQRT3_2 * R[:, 2]


def loss_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]], colour_by: Mapping[str, float],
                key: str, path: str, colour_label: str = "") -> str | None:
    """Plots ``key`` against ``step`` for each run; returns the path, or None when no run has that key."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("viridis")
    drawn = 0
    for tid, recs in curves.items():
        pts = [(r["step"], r[key]) for r in recs
               if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), (int, float))]
        if not pts:
            continue
        steps, vals = zip(*sorted(pts))
        ax.plot(steps, vals, color=cmap(float(colour_by.get(tid, 0.0))), alpha=0.8, lw=1.2)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{key} per run ({drawn} runs)")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, label=colour_label)
    return _save(fig, path)


def metric_vs_ratio(X: np.ndarray, y: np.ndarray, components: Sequence[str], target: str, path: str) -> str:
    """One panel per component: the target against that component's ratio."""
    plt = _pyplot()
    m = len(components)
    fig, axes = plt.subplots(1, m, figsize=(3.3 * m, 3.2), sharey=True, squeeze=False)
    for j, (ax, comp) in enumerate(zip(axes[0], components)):
        ax.scatter(X[:, j], y, s=18, alpha=0.8)
        ax.set_xlabel(f"ratio of {comp}")
        ax.set_xlim(-0.03, 1.03)
        if j == 0:
            ax.set_ylabel(target)
    fig.suptitle(f"{target} against each ratio")
    return _save(fig, path)


def ternary(model: Any, X: np.ndarray, y: np.ndarray, components: Sequence[str], target: str, path: str,
            proposal: Sequence[float] | None = None, prior: Sequence[float] | None = None,
            resolution: int = 60) -> str:
    """The fitted law over the 3-component simplex with the runs, the prior and the proposal.

    Raises:
        ValueError: not exactly three components.
    """
    if len(components) != 3:
        raise ValueError(f"a ternary plot needs exactly 3 components; got {len(components)}")
    plt = _pyplot()
    import matplotlib.tri as mtri

    k = resolution
    grid = np.array([(i / k, j / k, (k - i - j) / k) for i in range(k + 1) for j in range(k + 1 - i)])
    gx, gy = barycentric_to_xy(grid)
    z = np.asarray(model.predict(grid), dtype=np.float64)
    lo = float(min(np.min(z), np.min(y)))
    hi = float(max(np.max(z), np.max(y)))
    levels = np.linspace(lo, hi if hi > lo else lo + 1e-9, 16)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    tcf = ax.tricontourf(mtri.Triangulation(gx, gy), z, levels=levels, cmap="viridis")
    px, py = barycentric_to_xy(X)
    ax.scatter(px, py, c=y, cmap="viridis", vmin=levels[0], vmax=levels[-1], edgecolors="white", linewidths=1.2,
               s=46, label="runs (measured)", zorder=3, clip_on=False)
    if prior is not None:
        qx, qy = barycentric_to_xy(np.asarray(prior))
        ax.scatter(qx, qy, marker="s", s=70, facecolors="none", edgecolors="red", lw=1.5, label="prior", zorder=4,
                   clip_on=False)
    if proposal is not None:
        qx, qy = barycentric_to_xy(np.asarray(proposal))
        ax.scatter(qx, qy, marker="*", s=220, c="red", edgecolors="black", label="proposal", zorder=5,
                   clip_on=False)
    ax.plot([0, 1, 0.5, 0], [0, 0, SQRT3_2, 0], color="black", lw=1)
    for (vx, vy), name, ha in zip([(0, 0), (1, 0), (0.5, SQRT3_2)], components, ("right", "left", "center")):
        ax.annotate(name, (vx, vy), xytext=(0, -16 if vy == 0 else 8), textcoords="offset points", ha=ha,
                    fontsize=9, annotation_clip=False)
    ax.set_xlim(-0.2, 1.2)
    ax.set_ylim(-0.1, SQRT3_2 + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.colorbar(tcf, ax=ax, label=f"{target} (fitted law)", shrink=0.8)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    ax.set_title(f"{target} over the simplex", pad=14)
    return _save(fig, path)


def predicted_vs_actual(y: np.ndarray, pred: np.ndarray, target: str, spearman: float, path: str,
                        folds: np.ndarray | None = None) -> str:
    """Held-out (out-of-fold) predictions against measured values, with the y = x line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.scatter(y, pred, c=folds if folds is not None else None, cmap="tab10", s=24, alpha=0.9)
    lo, hi = float(min(np.min(y), np.min(pred))), float(max(np.max(y), np.max(pred)))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", ls="--", lw=1)
    ax.set_xlabel(f"measured {target}")
    ax.set_ylabel(f"predicted {target} (held out)")
    ax.set_title(f"cross-validated fit: Spearman rho = {spearman:.3f}")
    return _save(fig, path)


def proposal_bars(components: Sequence[str], series: Mapping[str, Sequence[float]], path: str) -> str:
    """Grouped bars of several mixtures (e.g. prior, best run, proposal)."""
    plt = _pyplot()
    m, n = len(components), len(series)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(1.6 * m + 2, 3.6))
    for i, (label, vals) in enumerate(series.items()):
        ax.bar(np.arange(m) + (i - (n - 1) / 2) * width, vals, width, label=label)
    ax.set_xticks(np.arange(m))
    ax.set_xticklabels(components, rotation=15)
    ax.set_ylabel("ratio")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("mixtures")
    return _save(fig, path)

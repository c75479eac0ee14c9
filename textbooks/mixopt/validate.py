"""Validation of a proposal: train it and the sweep's best and median mixtures again with fresh seeds.

A law fitted on a sweep proposes a mixture; whether that mixture is better is a measurement, not a prediction.
:func:`validate` runs a small sweep into ``<mixopt output>/validation`` with the sweep's own trial runner (same
base config, same downstream subset), three mixtures (the proposal, the sweep mixture with the best mean target
and the one with the median mean) and seeds the sweep did not use, then reports each mixture's target on those
fresh seeds with a Student-t confidence interval, and the difference proposal - best with Welch's interval.
Files: ``validation.json`` and ``validation.md`` next to the fit.

gin: ``validate.seeds``, ``validate.confidence``, ``validate.local`` (the executor settings of the runs).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import gin
import numpy as np

from textbooks.mixopt import design as design_lib
from textbooks.mixopt import dispatch
from textbooks.mixopt import results as results_lib
from textbooks.mixopt import sweep as sweep_lib
from textbooks.mixopt import targets as targets_lib
from textbooks.mixopt import trials as trials_lib

LABELS = ("proposal", "sweep best", "sweep median")


class ValidationError(ValueError):
    """The validation cannot run (seeds the sweep used, no finished runs); the message says what to change."""


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Mean, sample SD and the Student-t interval of the mean (NaN bounds for fewer than 2 values)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean()) if len(v) else math.nan
    if len(v) < 2:
        return {"n": int(len(v)), "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1)) * sd / math.sqrt(len(v))
    return {"n": int(len(v)), "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """mean(a) - mean(b) with Welch's t interval (NaN bounds when either has fewer than 2 values)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "low": math.nan, "high": math.nan}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "low": diff, "high": diff}
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return {"diff": diff, "low": diff - half, "high": diff + half}


def reference_mixtures(rows: Sequence[Mapping[str, Any]], components: Sequence[str], target: str,
                       composites: Mapping[str, Mapping[str, float]], maximize: bool
                       ) -> dict[str, dict[str, Any]]:
    """The sweep's best and median mixtures by their mean target over seeds: ``{label: {ratios, point, sweep_mean}}``."""
    done = [r for r in rows if r.get("status") == "done"]
    vals = targets_lib.values(done, target, composites)
    by_point: dict[int, list[float]] = {}
    ratios: dict[int, dict[str, float]] = {}
    for r, v in zip(done, vals):
        if math.isfinite(v) and r.get("point") is not None:
            by_point.setdefault(int(r["point"]), []).append(float(v))
            ratios[int(r["point"])] = {c: float(r[results_lib.RATIO_PREFIX + c]) for c in components}
    if not by_point:
        raise ValidationError(f"no finished run of the sweep has a value of {target!r}")
    order = sorted(by_point, key=lambda p: np.mean(by_point[p]), reverse=maximize)  # best first
    pick = {"sweep best": order[0], "sweep median": order[(len(order) - 1) // 2]}
    return {label: {"point": p, "ratios": ratios[p], "sweep_mean": float(np.mean(by_point[p])),
                    "sweep_n": len(by_point[p])} for label, p in pick.items()}


@dataclasses.dataclass
class ValidationResult:
    """What :func:`validate` measured: per mixture (label) the fresh-seed target values and their interval."""

    target: str
    seeds: list[int]
    mixtures: dict[str, dict[str, Any]]
    proposal_minus_best: dict[str, float]
    out_dir: str
    files: dict[str, str]


@gin.configurable
def validate(sweep_dir: str, target: str, proposal: Mapping[str, float], out_dir: str, *,
             maximize: bool | None = None, composites: Mapping[str, Mapping[str, float]] | None = None,
             seeds: Sequence[int] = (1000, 1001, 1002), confidence: float = 0.95,
             local: dispatch.LocalSettings | None = None, predicted: float | None = None) -> ValidationResult:
    """Trains the proposal and the sweep's best and median mixtures with fresh seeds and reports the target.

    Args:
        sweep_dir: the sweep the law was fitted on.
        target: the column or composite (see :mod:`textbooks.mixopt.targets`).
        proposal: the proposed ratios.
        out_dir: where ``validation/`` (the runs), ``validation.json`` and ``validation.md`` go.
        maximize: the target's direction (None: from its name).
        composites: gin composites, as for ``mixopt``.
        seeds: fresh seeds (none of them may be a seed of the sweep).
        confidence: level of the intervals.
        local: executor settings of the runs (local processes).
        predicted: the law's prediction for the proposal (shown beside the measurement).

    Raises:
        ValidationError: a seed the sweep used, or no finished run with the target.
    """
    sweep = trials_lib.SweepDir(sweep_dir)
    manifest = sweep.manifest()
    comps = list(manifest["components"])
    rows = results_lib.gather(sweep)
    composites = targets_lib.all_composites(results_lib.metric_names(rows, comps), composites)
    maximize = targets_lib.higher_is_better(target) if maximize is None else bool(maximize)
    used = sorted({int(r["seed"]) for r in rows if r.get("seed") is not None})
    if set(map(int, seeds)) & set(used) or not seeds:
        raise ValidationError(f"validate.seeds {list(seeds)} must be non-empty and fresh; the sweep used {used}")
    refs = reference_mixtures(rows, comps, target, composites, maximize)
    mixtures = {"proposal": {"ratios": design_lib.validate_ratios(proposal, comps, where="proposal")}, **refs}
    points = [m["ratios"] for m in mixtures.values()]
    spec = trials_lib.read_json(os.path.join(sweep.root, sweep_lib.RUNNER_JSON))
    if spec is None:
        raise ValidationError(f"{sweep.root} has no {sweep_lib.RUNNER_JSON}; it was not started by `textbooks sweep`")
    run_dir = os.path.join(out_dir, "validation")
    outcome = sweep_lib.sweep(sweep_dir=run_dir, components=comps, points=_unique(points), seeds=list(seeds),
                              runner=sweep_lib.runner_from_spec(spec), prior=manifest.get("prior"),
                              executor="local", local=local or dispatch.LocalSettings(), name="validation")
    done = [r for r in outcome.rows if r["status"] == "done"]
    vals = targets_lib.values(done, target, composites)
    for label, m in mixtures.items():
        got = [float(v) for r, v in zip(done, vals) if math.isfinite(v) and _same(r, m["ratios"], comps)]
        m.update(values=got, **t_interval(got, confidence))
    diff = welch_interval(mixtures["proposal"]["values"], mixtures["sweep best"]["values"], confidence)
    if not maximize:  # report "proposal better than best" with a positive sign either way
        diff = {"diff": -diff["diff"], "low": -diff["high"], "high": -diff["low"]}
    files = {"json": os.path.join(out_dir, "validation.json"), "markdown": os.path.join(out_dir, "validation.md")}
    clean = {k: {kk: (None if isinstance(vv, float) and not math.isfinite(vv) else vv) for kk, vv in m.items()}
             for k, m in mixtures.items()}
    trials_lib.write_json_atomic(files["json"], {"target": target, "maximize": maximize, "seeds": list(seeds),
                                                 "confidence": confidence, "predicted": predicted,
                                                 "mixtures": clean, "improvement_over_best": diff,
                                                 "failures": outcome.failures})
    with open(files["markdown"], "w") as f:
        f.write(_markdown(target, maximize, list(seeds), confidence, mixtures, diff, predicted, comps,
                          outcome.failures))
    return ValidationResult(target, list(seeds), mixtures, diff, out_dir, files)


def _unique(points: Sequence[Mapping[str, float]]) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    for p in points:
        if not any(all(abs(p[c] - q[c]) < 10 ** -design_lib.DECIMALS for c in p) for q in out):
            out.append(dict(p))
    return out


def _same(row: Mapping[str, Any], ratios: Mapping[str, float], comps: Sequence[str]) -> bool:
    return all(abs(float(row[results_lib.RATIO_PREFIX + c]) - ratios[c]) < 10 ** -design_lib.DECIMALS for c in comps)


def _markdown(target, maximize, seeds, confidence, mixtures, diff, predicted, comps, failures) -> str:
    pct = f"{confidence * 100:g}%"
    lines = [f"# Validation of the proposal on {target} ({'higher' if maximize else 'lower'} is better)", "",
             f"Fresh seeds {seeds}; each mixture trained with the sweep's base config. Interval: {pct} Student-t "
             "of the mean over the fresh seeds.", "",
             "| mixture | " + " | ".join(comps) + f" | mean | {pct} interval | n | in the sweep |",
             "|---|" + "---|" * len(comps) + "---|---|---|---|"]
    for label, m in mixtures.items():
        sweep_val = f"{m['sweep_mean']:.4g} (point {m['point']}, n={m['sweep_n']})" if "sweep_mean" in m else (
            f"predicted {predicted:.4g}" if predicted is not None else "")
        lines.append(f"| {label} | " + " | ".join(f"{m['ratios'][c]:.3f}" for c in comps)
                     + f" | {m['mean']:.4g} | [{m['low']:.4g}, {m['high']:.4g}] | {m['n']} | {sweep_val} |")
    verdict = ("better than the sweep's best" if diff["low"] > 0 else "worse than the sweep's best"
               if diff["high"] < 0 else "not distinguishable from the sweep's best")
    lines += ["", f"Improvement of the proposal over the sweep's best (positive = better): {diff['diff']:.4g}, "
                  f"{pct} Welch interval [{diff['low']:.4g}, {diff['high']:.4g}]: **{verdict}** at these seeds.", ""]
    lines += [f"- FAILED {f['trial_id']}: {f['error']} (log: {f['log']})" for f in failures]
    return "\n".join(lines) + "\n"

"""What ``mixopt`` fits: a recorded column or a weighted composite of columns, and whether it is worth fitting.

Targets:

* any numeric column of the results table (``valid/loss/web_filtered``, ``bench/piqa/bpb``, ...);
* a composite named in gin (``mixopt.composites = {'commonsense_bpb': {'bench/piqa/bpb': 1, ...}}``): the weighted
  mean of its columns (weights normalized to sum 1), defined for a run only when every column is;
* the phi-1.5 report's table groups, built in for each metric of the downstream subset: ``bench/common_sense/<m>``
  (WinoGrande, ARC-Easy, ARC-Challenge, BoolQ, SIQA), ``bench/language/<m>`` (PIQA, HellaSwag, MMLU, OpenBookQA,
  SQuAD) and ``bench/reasoning/<m>`` (GSM8K, HumanEval, MBPP), each the equal-weight mean of the member tasks
  the sweep recorded, and ``bench/code/bpb`` (HumanEval, MBPP: the phi-1 target).

Is a target rankable at this scale? :func:`rankability` compares the seed-to-seed noise (pooled standard
deviation between the seeds of one mixture) with the spread across mixtures (the standard deviation of the
mixtures' means, less the part the noise itself puts into those means: ``var(means) - noise^2 / seeds``), and
:func:`assess` adds the held-out ranking (grouped K-fold CV Spearman of a law). A target whose signal-to-noise
ratio is under ``min_snr`` is flagged "not rankable at this scale"; ``mixopt`` then refuses to fit it unless
told to (``mixopt.allow_unrankable``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from textbooks.evaluate.report import GROUPS

# The phi-1.5 report's table groups, by the names of textbooks eval's suites.
GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "common_sense": GROUPS["Common sense reasoning"],
    "language": GROUPS["Language understanding and knowledge"],
    "reasoning": GROUPS["Multi-step reasoning"],
    "code": ("humaneval", "mbpp"),
}
GROUP_METRICS = ("bpb", "p_correct", "acc")
# Metrics that grow with quality (mixopt maximizes them unless told otherwise).
HIGHER_IS_BETTER = ("acc", "acc_norm", "p_correct", "accuracy", "exact_match", "f1")
NOT_RANKABLE = "not rankable at this scale"
# Targets are float64 means and weighted sums of means over at most a few thousand terms: values that differ by
# less than eps64 x 4096 of their magnitude differ only by summation order (an accuracy of 0 on every item,
# averaged in another order), not by anything the mixture did.
ROUNDING = 4096 * float(np.finfo(np.float64).eps)


class TargetError(ValueError):
    """A target or composite is unknown or malformed (the message names it and lists what exists)."""


def higher_is_better(target: str) -> bool:
    """True for accuracies and probabilities (the last path element), False for losses and bits per byte."""
    last = target.rsplit("/", 1)[-1]
    return last in HIGHER_IS_BETTER or last.startswith("pass@")


def group_composites(columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """The built-in group composites that ``columns`` can support (at least one member task recorded)."""
    present = set(columns)
    out = {}
    for group, tasks in GROUP_NAMES.items():
        for metric in GROUP_METRICS:
            members = [f"bench/{t}/{metric}" for t in tasks if f"bench/{t}/{metric}" in present]
            if members:
                out[f"bench/{group}/{metric}"] = {m: 1.0 for m in members}
    return out


def check_composites(composites: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    """Validated gin composites: non-empty ``{column: weight}`` with finite, non-negative weights summing > 0.

    Raises:
        TargetError: names the composite and the bad entry.
    """
    out = {}
    for name, parts in (composites or {}).items():
        if not isinstance(parts, Mapping) or not parts:
            raise TargetError(f"mixopt.composites[{name!r}] must be a non-empty {{column: weight}} dict, got {parts!r}")
        for col, w in parts.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                raise TargetError(f"mixopt.composites[{name!r}][{col!r}]: weight must be a finite number >= 0, "
                                  f"got {w!r}")
        if sum(parts.values()) <= 0:
            raise TargetError(f"mixopt.composites[{name!r}]: the weights sum to 0")
        out[str(name)] = {str(c): float(w) for c, w in parts.items()}
    return out


def all_composites(columns: Sequence[str], composites: Mapping[str, Mapping[str, float]] | None
                   ) -> dict[str, dict[str, float]]:
    """Built-in group composites plus gin composites (a gin name overrides a built-in one)."""
    return {**group_composites(columns), **check_composites(composites)}


def describe(target: str, composites: Mapping[str, Mapping[str, float]]) -> str:
    """``target`` itself for a column; the normalized weighted mean for a composite."""
    parts = composites.get(target)
    if not parts:
        return target
    total = sum(parts.values())
    return f"{target} = " + " + ".join(f"{w / total:.3g}*{c}" for c, w in parts.items())


def _number(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str) and v.strip():
        try:
            return float(v)
        except ValueError:
            return math.nan
    return math.nan


def values(rows: Sequence[Mapping[str, Any]], target: str, composites: Mapping[str, Mapping[str, float]],
           _seen: tuple[str, ...] = ()) -> np.ndarray:
    """The target of every row (NaN where a column, or any column of a composite, is missing). A composite may
    name other composites (e.g. a blend of the group composites).

    Raises:
        TargetError: a composite that names itself, directly or through others.
    """
    parts = composites.get(target)
    if not parts:
        return np.array([_number(r.get(target)) for r in rows], dtype=np.float64)
    if target in _seen:
        raise TargetError(f"composite {target!r} names itself (through {' -> '.join(_seen)})")
    total = sum(parts.values())
    cols = np.stack([values(rows, c, composites, (*_seen, target)) for c in parts], axis=1) if rows else \
        np.zeros((0, len(parts)))
    return cols @ (np.array(list(parts.values())) / total)


def _unrounded(y: Any) -> np.ndarray:
    """``y`` as float64, with values equal up to rounding (:data:`ROUNDING`) made exactly equal."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) and np.ptp(y) <= ROUNDING * max(1.0, float(np.max(np.abs(y)))):
        return np.full_like(y, y[0])
    return y


def rankability(y: Any, groups: Any) -> dict[str, Any]:
    """Seed-to-seed noise against the spread across mixtures.

    Args:
        y: the target of each run.
        groups: the mixture point of each run (the seeds of one mixture share it).

    Returns:
        ``noise`` (pooled within-mixture standard deviation, from mixtures with 2+ seeds), ``spread`` (standard
        deviation of the mixtures' means), ``signal`` (``sqrt(max(0, spread^2 - noise^2 / mean seeds))``),
        ``snr`` (``signal / noise``; inf when the seeds agree exactly, NaN without repeated seeds),
        ``num_points`` and ``num_repeated`` (mixtures with 2+ seeds).
    """
    y = _unrounded(y)
    groups = np.asarray(groups).reshape(-1)
    labels = list(dict.fromkeys(groups.tolist()))
    members = [y[groups == g] for g in labels]
    means = np.array([m.mean() for m in members])
    repeated = [m for m in members if len(m) >= 2]
    dof = sum(len(m) - 1 for m in repeated)
    noise = math.sqrt(sum(float(((m - m.mean()) ** 2).sum()) for m in repeated) / dof) if dof else math.nan
    # np.std of equal means is not exactly 0 (its mean of them is rounded): equal means have no spread.
    spread = (float(np.std(means, ddof=1)) if np.ptp(means) > 0 else 0.0) if len(means) >= 2 else math.nan
    seeds = float(np.mean([len(m) for m in members])) if members else math.nan
    signal = math.sqrt(max(0.0, spread ** 2 - noise ** 2 / seeds)) if math.isfinite(noise) else math.nan
    if not math.isfinite(noise):
        snr = math.nan
    elif noise == 0:
        snr = math.inf if spread > 0 else math.nan
    else:
        snr = signal / noise
    return {"noise": noise, "spread": spread, "signal": signal, "snr": snr, "num_points": len(labels),
            "num_repeated": len(repeated)}


def assess(target: str, X: Any, y: Any, groups: Any, *, model: str = "linear", num_folds: int = 5, seed: int = 0,
           min_snr: float = 1.0) -> dict[str, Any]:
    """:func:`rankability` plus the held-out ranking (grouped CV Spearman of ``model``) and the verdict.

    Returns:
        The rankability fields plus ``target``, ``num_runs``, ``cv_model``, ``cv_spearman`` (NaN when the fit
        fails), ``rankable`` (False when ``snr < min_snr``; None when no mixture has two seeds, so the noise is
        unknown) and ``verdict``.
    """
    from textbooks.mixopt import fit as fit_lib  # deferred: scipy and scikit-learn

    y = _unrounded(y)
    out: dict[str, Any] = {"target": target, "num_runs": int(len(y)), **rankability(y, groups), "cv_model": model}
    try:
        out["cv_spearman"] = fit_lib.cross_validate(model, X, y, groups, num_folds=num_folds, seed=seed).spearman
    except (fit_lib.FitError, ValueError, np.linalg.LinAlgError) as e:
        out["cv_spearman"], out["cv_error"] = math.nan, str(e)
    snr = out["snr"]
    if not out["num_repeated"]:
        out.update(rankable=None, verdict="noise not measured (no mixture has 2+ seeds)")
    elif math.isnan(snr):
        out.update(rankable=False, verdict=f"{NOT_RANKABLE} (the same value in every run)")
    elif snr < min_snr:
        out.update(rankable=False, verdict=f"{NOT_RANKABLE} (signal-to-noise {snr:.2f} < {min_snr:g})")
    else:
        out.update(rankable=True, verdict="rankable")
    return out


def candidates(columns: Sequence[str], composites: Mapping[str, Mapping[str, float]], target: str) -> list[str]:
    """The targets worth assessing: ``target``, the composites, every ``bench/`` and ``valid/loss/`` column."""
    names = [target, *composites]
    names += sorted(c for c in columns if c.startswith("bench/") or c.startswith("valid/loss/"))
    return list(dict.fromkeys(names))


def table_markdown(assessments: Sequence[Mapping[str, Any]], chosen: str) -> list[str]:
    """Markdown lines of the candidates' table (the chosen target in bold)."""
    lines = ["| target | runs | mixtures | seed noise (SD) | spread across mixtures (SD) | signal-to-noise | "
             "held-out Spearman | verdict |", "|---|---|---|---|---|---|---|---|"]
    for a in assessments:
        name = f"**{a['target']}**" if a["target"] == chosen else a["target"]
        lines.append(f"| {name} | {a['num_runs']} | {a['num_points']} | {a['noise']:.4g} | {a['spread']:.4g} | "
                     f"{a['snr']:.2f} | {a['cv_spearman']:.3f} | {a['verdict']} |")
    return lines

"""Evaluation reports: 95% intervals, the JSON record, a markdown table in the phi-1.5 layout, and a plot.

Intervals:
  * accuracies (acc, acc_norm, exact match, GSM8K accuracy) - Wilson score interval for a binomial
    proportion over the n items (well-behaved near 0 and 1 and for small n, unlike the normal approximation);
  * means of continuous per-item values (bits per byte, p(correct), pass@k over problems) - percentile
    bootstrap over items (1,000 resamples, fixed seed).

The markdown groups tasks as the phi-1.5 report's tables: common sense reasoning (WinoGrande, ARC-Easy,
ARC-Challenge, BoolQ, SIQA), language understanding and knowledge (PIQA, HellaSwag, MMLU, OpenBookQA, SQuAD),
multi-step reasoning (GSM8K, HumanEval, MBPP). Each row shows the task's headline metric (the report's: ``acc``
for the multiple-choice tasks, see :mod:`textbooks.evaluate.multiple_choice`) and, in its own column, the second
metric (``acc_norm``; SQuAD's F1). SQuAD is labelled as the 1,000-question subset it is scored on.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 1000
CI_METHODS = {
    "wilson": "Wilson score interval (binomial, 95%)",
    "bootstrap": f"percentile bootstrap over items ({BOOTSTRAP_RESAMPLES} resamples, 95%)",
}

GROUPS: dict[str, tuple[str, ...]] = {
    "Common sense reasoning": ("winogrande", "arc_easy", "arc_challenge", "boolq", "siqa"),
    "Language understanding and knowledge": ("piqa", "hellaswag", "mmlu", "openbookqa", "squad"),
    "Multi-step reasoning": ("gsm8k", "humaneval", "mbpp"),
}
DISPLAY = {"winogrande": "WinoGrande", "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge",
           "boolq": "BoolQ", "siqa": "SIQA", "piqa": "PIQA", "hellaswag": "HellaSwag", "mmlu": "MMLU",
           "openbookqa": "OpenBookQA", "squad": "SQuAD (subset of 1,000)", "gsm8k": "GSM8K", "humaneval": "HumanEval",
           "mbpp": "MBPP"}


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``; (nan, nan) for n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = center - half, center + half
    return (0.0 if lo < 1e-12 else lo), (1.0 if hi > 1 - 1e-12 else hi)


def bootstrap_interval(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def metric_entry(values: Sequence[float], method: str) -> dict[str, Any]:
    """{'value', 'ci_low', 'ci_high', 'ci_method', 'n'} for per-item ``values`` (0/1 for 'wilson')."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    mean = float(np.mean(vals)) if n else float("nan")
    if method == "wilson":
        lo, hi = wilson_interval(sum(vals), n)
    elif method == "bootstrap":
        lo, hi = bootstrap_interval(vals)
    else:
        raise ValueError(f"unknown interval method {method!r}; use 'wilson' or 'bootstrap'")
    return {"value": mean, "ci_low": lo, "ci_high": hi, "ci_method": method, "n": n}


# ----------------------------------------------------------------------------------------------------------


def _fmt(x: float | None, scale: float = 100.0, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x * scale:.{digits}f}"


def _row(task: str, entry: Mapping[str, Any]) -> str:
    name = DISPLAY.get(task, task)
    if entry.get("error"):
        return f"| {name} | - | - | - | - | - | - | failed: {str(entry['error']).splitlines()[0][:80]} |"
    primary, secondary = entry.get("primary"), entry.get("secondary")
    metrics = entry.get("metrics", {})
    m = metrics.get(primary) if primary else None
    value = f"{_fmt(m['value'])}" if m else "-"
    ci = f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]" if m else "-"
    o = metrics.get(secondary) if secondary else None
    other = f"{secondary} {_fmt(o['value'])} [{_fmt(o['ci_low'])}, {_fmt(o['ci_high'])}]" if o else "-"
    bpb = metrics.get("bpb")
    bpb_text = f"{bpb['value']:.3f} [{bpb['ci_low']:.3f}, {bpb['ci_high']:.3f}]" if bpb else "-"
    chance = _fmt(entry.get("chance")) if entry.get("chance") is not None else "-"
    notes = [f"n={entry.get('n', 0)}", f"{entry.get('num_fewshot', 0)}-shot"] + \
        ([entry["subset"]] if entry.get("subset") else [])
    return (f"| {name} | {primary or '-'} | {value} | {ci} | {other} | {bpb_text} | {chance} | "
            f"{', '.join(notes)} |")


def markdown_table(results: Mapping[str, Any]) -> str:
    """The results as markdown tables grouped like the phi-1.5 report (values in %, intervals 95%)."""
    tasks = results.get("tasks", {})
    lines = [f"# Evaluation of {results.get('checkpoint') or 'model'}", ""]
    if results.get("step") is not None:
        lines.append(f"Step {results['step']}. ")
    lines += [f"Intervals: accuracies - {CI_METHODS['wilson']}; means - {CI_METHODS['bootstrap']}.",
              "Values in %, bits per byte (bpb) of the gold answer in bits. Metric: the phi-1.5 report's "
              "(zero-shot acc for multiple choice, MMLU 2-shot); the second metric is shown beside it.", ""]
    header = ["| Task | Metric | Score | 95% CI | Second metric [95% CI] | bpb (gold) [95% CI] | Chance | Notes |",
              "|---|---|---|---|---|---|---|---|"]
    seen = set()
    for group, members in GROUPS.items():
        present = [t for t in members if t in tasks]
        if not present:
            continue
        lines += [f"## {group}", ""] + header
        lines += [_row(t, tasks[t]) for t in present]
        lines.append("")
        seen.update(present)
    others = [t for t in tasks if t not in seen]
    if others:
        lines += ["## Other", ""] + header + [_row(t, tasks[t]) for t in others] + [""]
    iso = results.get("sandbox")
    if iso:
        lines += ["Code execution sandbox: " + "; ".join(f"{k}: {v}" for k, v in iso.items()), ""]
    return "\n".join(lines)


def plot(results: Mapping[str, Any], path: str) -> str | None:
    """Bar chart of each task's primary metric with its 95% interval and chance level; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [(t, e) for t, e in results.get("tasks", {}).items()
             if not e.get("error") and e.get("primary") in e.get("metrics", {})]
    if not tasks:
        return None
    names = [DISPLAY.get(t, t) for t, _ in tasks]
    vals = np.array([e["metrics"][e["primary"]]["value"] * 100 for _, e in tasks])
    lo = np.array([e["metrics"][e["primary"]]["ci_low"] * 100 for _, e in tasks])
    hi = np.array([e["metrics"][e["primary"]]["ci_high"] * 100 for _, e in tasks])
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(tasks) + 2), 4))
    x = np.arange(len(tasks))
    ax.bar(x, vals, yerr=[np.maximum(vals - lo, 0), np.maximum(hi - vals, 0)], capsize=3, color="#4C72B0")
    for i, (_, e) in enumerate(tasks):
        if e.get("chance") is not None:
            ax.hlines(e["chance"] * 100, i - 0.4, i + 0.4, colors="#C44E52", linestyles="--")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("score (%), dashed: chance")
    ax.set_title(f"{results.get('checkpoint') or 'model'} - 95% intervals")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: Mapping[str, Any], out_dir: str,
                 per_item: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> dict[str, str]:
    """Writes results.json, results.md, results.png and items/<task>.jsonl; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "markdown": os.path.join(out_dir, "results.md")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(_finite(results), f, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
        f.write("\n")
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown_table(results) + "\n")
    png = plot(results, os.path.join(out_dir, "results.png"))
    if png:
        paths["plot"] = png
    if per_item:
        item_dir = os.path.join(out_dir, "items")
        os.makedirs(item_dir, exist_ok=True)
        for task, records in per_item.items():
            p = os.path.join(item_dir, f"{task}.jsonl")
            with open(p, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(_finite(r), default=_json_default, allow_nan=False) + "\n")
        paths["items"] = item_dir
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _finite(o: Any) -> Any:
    """Replaces NaN/inf floats by None so that the JSON is standard."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, Mapping):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o

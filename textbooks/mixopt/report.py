"""The markdown report of a mixture fit: the sweep, the runs, the law, its held-out accuracy, the proposal.

Written by :func:`textbooks.mixopt.optimize.mixopt` to ``<out_dir>/report.md`` with its PNG figures beside it
(see :mod:`textbooks.mixopt.plots`). Failed and missing runs are listed with their error and log path.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from textbooks.mixopt import plots
from textbooks.mixopt import results as results_lib
from textbooks.mixopt import trials as trials_lib


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"
    if x is None:
        return ""
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return out


def _curves(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[dict]], list[str]]:
    """Per-step records of each finished run, and notes for runs whose files are missing."""
    curves, notes = {}, []
    for r in rows:
        run_dir = r.get("run_dir")
        if not run_dir or not os.path.isdir(str(run_dir)):
            notes.append(f"{r['trial_id']}: run folder {run_dir} is missing; no curve")
            continue
        files = results_lib.find_metrics_files(str(run_dir), results_lib.CURVE_FILES)
        if not files:
            notes.append(f"{r['trial_id']}: no metrics JSONL under {run_dir}; no curve")
            continue
        curves[r["trial_id"]] = results_lib.read_metrics_jsonl(files[0])
    return curves, notes


def write_report(result: Any, sweep: trials_lib.SweepDir, law: Any, X: np.ndarray, y: np.ndarray, cv: Any,
                 rows: Sequence[Mapping[str, Any]], components: Sequence[str], command: str | None,
                 curve_key: str = "loss") -> str:
    """Draws the figures and writes ``report.md``; returns its path."""
    out = result.out_dir
    target = result.target
    figs: dict[str, str] = {}
    curves, curve_notes = _curves(rows)
    first = components[0]
    colour = {r["trial_id"]: float(r.get(f"ratio/{first}", 0.0)) for r in rows}
    path = plots.loss_curves(curves, colour, curve_key, os.path.join(out, "loss_curves.png"),
                             colour_label=f"ratio of {first}")
    if path:
        figs["Training curves"] = path
    figs["Metric against each ratio"] = plots.metric_vs_ratio(X, y, components, target,
                                                              os.path.join(out, "metric_vs_ratio.png"))
    prop = np.array([result.proposal.ratios[c] for c in components])
    prior = np.array([result.proposal.prior[c] for c in components])
    if len(components) == 3:
        figs["Fitted law over the simplex"] = plots.ternary(law, X, y, components, target,
                                                            os.path.join(out, "ternary.png"), proposal=prop,
                                                            prior=prior)
    figs["Fitted law against held-out runs"] = plots.predicted_vs_actual(
            y, cv.oof, target, cv.spearman, os.path.join(out, "predicted_vs_actual.png"), folds=cv.folds)
    best = int(np.argmax(y) if result.maximize else np.argmin(y))
    series = {"prior": prior.tolist(), f"best run ({_fmt(float(y[best]))})": X[best].tolist(),
              f"proposal ({_fmt(result.proposal.predicted)} predicted)": prop.tolist()}
    figs["Proposal"] = plots.proposal_bars(components, series, os.path.join(out, "proposal.png"))

    manifest = sweep.manifest()
    all_rows = results_lib.gather(sweep)
    counts = results_lib.summarize(all_rows)
    lines = [f"# Mixture fit: {target} ({'maximized' if result.maximize else 'minimized'})", "",
             f"Sweep `{sweep.root}` (base config `{manifest['fingerprint']}`), components "
             f"{', '.join(components)}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ". "
             f"The fit uses {result.num_runs} finished runs at {result.num_points} mixtures.", ""]
    a = result.assessment
    lines += ["## Target", "", f"`{result.target_formula}`: seed-to-seed noise {_fmt(a['noise'])} (SD), spread "
              f"across mixtures {_fmt(a['spread'])} (SD), signal-to-noise {_fmt(a['snr'])}, held-out Spearman "
              f"({a['cv_model']} law) {_fmt(a['cv_spearman'])}: **{a['verdict']}**. Every candidate target: "
              f"`{os.path.basename(result.files.get('targets_md', 'targets.md'))}`.", ""]
    p = result.proposal
    lines += ["## Proposal", ""]
    lines += _table(["component", "proposal", "prior", "best run", "lower", "upper", "repetition cap"],
                    [[c, p.ratios[c], p.prior[c], float(X[best][j]), p.lower[c], p.upper[c], p.caps.get(c)]
                     for j, c in enumerate(components)])
    lines += ["", f"- predicted {target}: **{_fmt(p.predicted)}** (at the prior: {_fmt(p.predicted_at_prior)}; "
                  f"best run measured: {_fmt(float(y[best]))})",
              f"- found by: {p.method} ({p.num_candidates} candidates searched)"]
    if p.distance_kind:
        lines.append(f"- trust region: {p.distance_kind} <= {p.max_distance}; the proposal is at "
                     f"{_fmt(p.distance_to_prior)}")
    lines.append(f"- registered mixture: `{result.mixture_name or 'not registered'}`; gin: "
                 f"`{os.path.basename(result.files['gin'])}`")
    if command:
        lines += ["", "Train it with the sweep's base config:", "", "```", command, "```"]
    lines += ["", "## Fitted law", "", f"`{result.formula}` ({result.model})", ""]
    for k, v in result.params.items():
        shown = ", ".join(f"{c}: {_fmt(float(x))}" for c, x in zip(components, v)) if isinstance(v, list) and \
            len(v) == len(components) else _fmt(v)
        lines.append(f"- {k}: {shown}")
    cvs = result.cv
    lines += ["", f"In-sample R^2: {_fmt(result.r2)}. {cvs['num_folds']}-fold cross-validation grouped by "
                  f"mixture (seeds of a mixture stay together): Spearman rho of held-out predictions "
                  f"**{_fmt(cvs['spearman'])}** (p = {_fmt(cvs['spearman_p'])}), Pearson {_fmt(cvs['pearson'])}, "
                  f"RMSE {_fmt(cvs['rmse'])}, MAE {_fmt(cvs['mae'])}; per fold: "
                  + ", ".join(_fmt(s, 3) for s in cvs["fold_spearman"]) + ".", ""]
    for title, fig in figs.items():
        lines += [f"### {title}", "", f"![{title}]({os.path.relpath(fig, out)})", ""]
    if len(components) != 3:
        lines += ["(The simplex heat map is drawn for three components only.)", ""]
    order = np.argsort(-y if result.maximize else y)
    lines += ["## Runs", ""]
    lines += _table(["trial", "point", "seed", *components, target, "held-out prediction"],
                    [[rows[i]["trial_id"], rows[i].get("point"), rows[i].get("seed"),
                      *[float(X[i][j]) for j in range(len(components))], float(y[i]), float(cv.oof[i])]
                     for i in order])
    bad = [r for r in all_rows if r["status"] in ("failed", "missing")]
    if bad or curve_notes:
        lines += ["", "## Problems", ""]
        lines += [f"- {r['trial_id']} ({r['status']}): {r.get('error')} (log: {r.get('log')})" for r in bad]
        lines += [f"- {n}" for n in curve_notes]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path

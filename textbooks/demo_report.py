"""The demo's report: markdown + PNG plots + JSON comparing the trained mixture variants.

Reads each run's ``metrics/train.jsonl`` and ``metrics/eval.jsonl`` (written by the trainer) and the benchmark
results (written by the evaluator); computes realized token proportions from the per-role token counts the
trainer logs at every step.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from textbooks import demo_sections  # noqa: E402
from textbooks.train.metrics import read_jsonl  # noqa: E402


def _metrics(model_dir: str, split: str) -> list[dict]:
    path = os.path.join(model_dir, "metrics", f"{split}.jsonl")
    return read_jsonl(path) if os.path.exists(path) else []


def realized_tokens(train_rows: list[dict]) -> dict[str, float]:
    """Trained tokens per role over all logged steps (sums of ``tokens/<role>``; needs log_every=1).

    A resumed run logs the steps after its checkpoint again; the last record of a step counts, once.
    """
    by_step = {row["step"]: row for row in train_rows}
    totals: dict[str, float] = {}
    for row in by_step.values():
        for key, value in row.items():
            if key.startswith("tokens/"):
                totals[key[len("tokens/"):]] = totals.get(key[len("tokens/"):], 0.0) + float(value)
    return totals


def realized_proportions(train_rows: list[dict]) -> dict[str, float]:
    """Token share per role over all logged steps (see :func:`realized_tokens`)."""
    totals = realized_tokens(train_rows)
    total = sum(totals.values())
    return {k: v / total for k, v in sorted(totals.items())} if total else {}


def requested_proportions(mixture: str) -> dict[str, float]:
    """The token fractions a paper mixture asks for."""
    # deferred: importing mixtures registers its seqio tasks (TensorFlow, ~6 s); the plots and tables need none
    from mixtures import phi

    return dict(phi.MIXTURES.get(mixture, {}))


def curation_reconciliation(curation: Mapping[str, Any]) -> dict | None:
    """Documents into curation = kept + dropped (by stage and reason) + rejected (unreadable, by reason).

    Returns None when the curation summary has no reconciliation (curation skipped).
    """
    report = curation.get("report") or {}
    rec = report.get("reconciliation")
    if not rec:
        return None
    dropped = {f"{row['stage']}/{reason}": n for row in report.get("stages", [])
               for reason, n in sorted(row.get("dropped_by_reason", {}).items())}
    rejected = dict(rec.get("rejected_by_reason", {}))
    balanced = rec["units_read"] == rec["kept"] + sum(dropped.values()) + sum(rejected.values())
    return {"documents_in": rec["units_read"], "kept": rec["kept"], "dropped_by_reason": dropped,
            "rejected_by_reason": rejected, "balanced": balanced and bool(rec.get("balanced", True))}


def reconciliation_line(rec: Mapping[str, Any]) -> str:
    """One markdown line: ``documents in N = kept K + dropped D (reasons) + rejected R (reasons): balanced``."""
    def reasons(counts: Mapping[str, int]) -> str:
        return f" ({', '.join(f'{k} {v}' for k, v in counts.items())})" if counts else ""

    dropped, rejected = rec["dropped_by_reason"], rec["rejected_by_reason"]
    return (f"Reconciliation: documents in {rec['documents_in']} = kept {rec['kept']} + dropped "
            f"{sum(dropped.values())}{reasons(dropped)} + rejected {sum(rejected.values())}{reasons(rejected)}: "
            f"{'balanced' if rec['balanced'] else 'NOT BALANCED'}")


def benchmark_table(runs: Mapping[str, Any]) -> dict[str, dict[str, dict]]:
    """Per variant and task: the metric values (``{metric: value}``), or ``{'error': message}``."""
    table: dict[str, dict[str, dict]] = {}
    for name, run in runs.items():
        table[name] = {}
        for task, entry in sorted(run.get("eval", {}).get("tasks", {}).items()):
            table[name][task] = ({"error": entry["error"]} if entry.get("error") else
                                 {m: v["value"] for m, v in entry.get("metrics", {}).items()})
    return table


def _plot_loss_curves(runs: Mapping[str, Any], path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in runs.items():
        rows = _metrics(run["model_dir"], "train")
        steps = [r["step"] for r in rows if "loss" in r]
        losses = [r["loss"] for r in rows if "loss" in r]
        if steps:
            axes[0].plot(steps, losses, label=name, alpha=0.8)
        ev = _metrics(run["model_dir"], "eval")
        key = "loss" if any("loss" in r for r in ev) else None
        if key:
            axes[1].plot([r["step"] for r in ev if key in r], [r[key] for r in ev if key in r], marker="o",
                         label=name)
    axes[0].set(title="training loss (mixture)", xlabel="step", ylabel="loss (nats/token)")
    axes[1].set(title="validation loss (common held-out set)", xlabel="step", ylabel="loss (nats/token)")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _final_component_losses(model_dir: str) -> dict[str, float]:
    ev = _metrics(model_dir, "eval")
    if not ev:
        return {}
    last = ev[-1]
    return {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith("loss/")}


def _plot_component_losses(table: Mapping[str, Mapping[str, float]], path: str) -> None:
    roles = sorted({r for losses in table.values() for r in losses})
    if not roles:
        return
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(1, len(table))
    for i, (name, losses) in enumerate(table.items()):
        xs = [j + i * width for j in range(len(roles))]
        ax.bar(xs, [losses.get(r, math.nan) for r in roles], width=width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(roles))], roles, rotation=15)
    ax.set(ylabel="validation loss (nats/token)", title="per-component validation loss at the last step")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def write_report(out_dir: str, *, config: Mapping[str, Any], corpora: list, curation: Mapping[str, Any],
                 runs: Mapping[str, Any], timings: Mapping[str, float], teacher: Mapping[str, Any] | None = None,
                 heldout_roles: Sequence[str] = ()) -> dict:
    """Writes ``report.md``, ``report.json`` and the PNGs into ``out_dir``; returns paths and tables.

    ``teacher`` is the teacher stage's summary (:func:`textbooks.demo_teacher.synthesize`); ``heldout_roles`` the
    roles of the common held-out set each run's ``heldout`` entry scores.
    """
    loss_png = os.path.join(out_dir, "loss_curves.png")
    comp_png = os.path.join(out_dir, "component_loss.png")
    _plot_loss_curves(runs, loss_png)
    components = {name: _final_component_losses(run["model_dir"]) for name, run in runs.items()}
    _plot_component_losses(components, comp_png)

    lines = ["# The phi-1.5 ablation at CPU size", ""]
    lines += [f"Model `{config['preset']}`, vocabulary `{config['vocabulary']}`, {config['steps']} steps × "
              f"{config['batch_size']} × {config['seq_len']} tokens per variant, seed {config['seed']}; "
              f"total {timings.get('total', 0) / 60:.1f} min.", ""]
    data_lines, data_json = demo_sections.teacher_section(corpora, teacher or {"skipped": True})
    lines += data_lines
    if curation.get("skipped"):
        lines += ["Curation was skipped: `web_filtered` is the corpora builder's heuristic selection.", ""]
    else:
        rec = curation_reconciliation(curation)
        lines += ["`web_filtered` = `web_raw` curated on Apache Beam (Gopher/C4 heuristics, exact + MinHash "
                  "dedup, 13-gram decontamination, MiniLM + logistic educational-value classifier).", "",
                  reconciliation_line(rec) if rec else "Reconciliation: missing from the curation summary.", ""]

    lines += ["## Token proportions (requested vs realized in training)", "",
              "| variant | mixture | role | requested | realized |", "|---|---|---|---|---|"]
    proportions = {}
    for name, run in runs.items():
        req = requested_proportions(run["mixture"])
        train_rows = _metrics(run["model_dir"], "train")
        real = realized_proportions(train_rows)
        proportions[name] = {"requested": req, "realized": real,
                             "tokens": sum(realized_tokens(train_rows).values())}
        for role in sorted(set(req) | set(real)):
            lines.append(f"| {name} | `{run['mixture']}` | {role} | {_fmt(req.get(role, 0.0))} | "
                         f"{_fmt(real.get(role, 0.0))} |")
    lines += ["", "Repetition: epochs over each role's train tokens, planned by the mixture for the token budget "
              "and realized in training (a small teacher writes few tokens, so synthetic roles repeat):", ""]
    for name, run in runs.items():
        trained = realized_tokens(_metrics(run["model_dir"], "train"))
        for r in run.get("repetition", []):
            r["realized_epochs"] = (trained.get(r["role"], 0.0) / r["component_tokens"] if r["component_tokens"]
                                    else None)
        cells = [f"{r['role']} {r['epochs']:.1f} planned / {r['realized_epochs']:.1f} realized"
                 for r in run.get("repetition", []) if r["realized_epochs"] is not None]
        if cells:
            lines.append(f"- {name}: " + ", ".join(cells))
    heldout_lines, heldout_json = demo_sections.heldout_section(runs, heldout_roles)
    lines += ["", *heldout_lines]
    lines += ["## Losses", "", "Validation curves and per-component losses are on the common held-out set "
              "(the first validation batches of each of its roles, identical for every variant).", "",
              "![loss curves](loss_curves.png)", "", "![per-component loss](component_loss.png)", ""]
    roles = sorted({r for c in components.values() for r in c})
    lines += ["| variant | final train loss | tokens/s | " + " | ".join(f"val {r}" for r in roles) + " |",
              "|---|---|---|" + "---|" * len(roles)]
    for name, run in runs.items():
        tr = run.get("train", {})
        lines.append(f"| {name} | {_fmt(tr.get('final_loss'))} | {_fmt(tr.get('tokens_per_second'), 0)} | "
                     + " | ".join(_fmt(components[name].get(r)) for r in roles) + " |")

    lines += ["", "## Benchmarks (seeded subset; continuous metrics rank mixtures at this size)", ""]
    tasks = sorted({t for run in runs.values() for t in run.get("eval", {}).get("tasks", {})})
    lines += ["| task | metric | " + " | ".join(runs) + " |", "|---|---|" + "---|" * len(runs)]
    for task in tasks:
        for metric in ("acc", "acc_norm", "p_correct", "bpb"):
            cells = []
            for run in runs.values():
                m = run.get("eval", {}).get("tasks", {}).get(task, {}).get("metrics", {}).get(metric)
                cells.append(f"{_fmt(m['value'])} [{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]"
                             if m else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    benchmarks = benchmark_table(runs)
    errors = [f"{name}/{task}: {entry['error']}" for name, tasks_ in benchmarks.items()
              for task, entry in tasks_.items() if "error" in entry]
    if errors:
        lines += ["", "Failed tasks: " + "; ".join(errors)]
    lines += ["", "Accuracies of models this small sit at chance; 95% intervals in brackets.", ""]

    lines += ["## Samples (temperature 0.8, top-k 40, seed 0; KV-cache decoding)", ""]
    for name, run in runs.items():
        lines += [f"### {name}", ""]
        for prompt, text in run.get("samples", {}).items():
            lines += ["```", prompt + text, "```", ""]
    lines += ["## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]

    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    report = {"markdown": md_path, "plots": [loss_png, comp_png], "config": dict(config),
              "proportions": proportions, "component_loss": components, "timings": dict(timings),
              "curation": curation_reconciliation(curation), "benchmarks": benchmarks, "data": data_json,
              "heldout": heldout_json,
              "runs": {n: {k: v for k, v in r.items() if k != "eval"} for n, r in runs.items()}}
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    return report

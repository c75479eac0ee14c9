"""Sections of the demo's report about its data: where each role came from (the teacher's statistics, or the
stand-in it still is) and the common held-out set every variant is scored on.

:func:`teacher_section` and :func:`heldout_section` return markdown lines and a JSON-ready dict;
:mod:`textbooks.demo_report` places them in ``report.md`` and ``report.json``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

GENERATED_ROLES = ("synthetic_textbooks", "code_textbooks", "code_exercises")
# What each role stands for in the papers, and what the demo has in its place when it is not generated.
PAPER_ROLES = {
    "synthetic_textbooks": "phi-1.5's ~20B tokens of GPT-3.5-written common-sense and world-knowledge textbooks",
    "code_textbooks": "phi-1's <1B tokens of GPT-3.5-written Python textbooks",
    "code_exercises": "phi-1's ~180M tokens of GPT-3.5-written docstring -> function exercises (fine-tuning)",
    "code_filtered": "phi-1's ~6B tokens of The Stack and StackOverflow kept by a GPT-4-labelled classifier",
    "web_filtered": "phi-1.5-web's ~88B tokens of Falcon RefinedWeb kept by the educational-value classifier",
}
LOCAL_STAND_INS = {
    "code_filtered": "the CPython standard library's source (real code, not classifier-filtered at web scale)",
    "web_filtered": "the local web and Wikipedia excerpts curated here by our classifier (thousands of documents, "
                    "not billions)",
}


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def teacher_label(teacher: Mapping[str, Any]) -> str:
    """``name (135M parameters, Q4_1 weights)``, as much as is known."""
    info = teacher.get("teacher") or {}
    parts = []
    if info.get("parameters"):
        parts.append(f"{info['parameters'] / 1e6:.0f}M parameters")
    if info.get("quantization"):
        main = next(iter(info["quantization"]))
        parts.append(f"{main} weights (GGUF; " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in
                                                            info["quantization"].items()) + ")")
    if info.get("endpoint"):
        parts.append(f"at {info['endpoint']}")
    return f"`{info.get('name', '?')}`" + (f" ({'; '.join(parts)})" if parts else "")


def data_sources(corpora: Sequence[Mapping[str, Any]], teacher: Mapping[str, Any]) -> list[dict]:
    """One row per trained role: what it holds here, what it stands for in the papers, stand-in or not."""
    written = set(GENERATED_ROLES) - set(teacher.get("stand_in_roles") or {}) \
        if teacher.get("status") in ("generated", "partial") else set()
    rows = []
    for c in corpora:
        role = c["role"]
        if role not in PAPER_ROLES:
            continue
        if role in written:
            holds, stand_in = f"written by the teacher {teacher_label(teacher)}", None
        elif c.get("stand_in"):
            holds, stand_in = c["stand_in"], c["stand_in"]
        else:
            holds = stand_in = LOCAL_STAND_INS.get(role)
        rows.append({"role": role, "holds": holds, "paper": PAPER_ROLES[role], "stand_in": stand_in})
    return rows


def teacher_section(corpora: Sequence[Mapping[str, Any]], teacher: Mapping[str, Any]) -> tuple[list[str], dict]:
    """The data-sources table, then the teacher's statistics, pass rates, diversity and samples (or a loud note
    that the teacher stage failed or was skipped)."""
    rows = data_sources(corpora, teacher)
    lines = ["## Data: what each role holds", "", "| role | here | in the papers | stand-in? |", "|---|---|---|---|"]
    lines += [f"| `{r['role']}` | {r['holds'] or 'real local text'} | {r['paper']} | "
              f"{'**stand-in**' if r['stand_in'] else 'no'} |" for r in rows]
    lines.append("")
    status = teacher.get("status")
    if teacher.get("skipped"):
        lines += ["**The teacher stage was skipped** (`DemoConfig.teacher = False`): the synthetic roles hold the "
                  "stand-ins named above.", ""]
        return lines, {"sources": rows, "status": "skipped"}
    if status not in ("generated", "partial"):
        lines += ["> **WARNING: THE TEACHER STAGE FAILED** "
                  f"({teacher.get('error', 'no reason recorded')}). `synthetic_textbooks`, `code_textbooks` and "
                  "`code_exercises` hold the corpora's STAND-INS in this run, not teacher outputs. Rerun the same "
                  "command to retry: answers already received are kept.", ""]
        return lines, {"sources": rows, "status": status or "failed", "error": teacher.get("error"),
                       "teacher": teacher.get("teacher")}
    if status == "partial":
        lines += ["> **WARNING: THE TEACHER WROTE NO USABLE TEXT FOR SOME ROLES**; they hold the corpora's "
                  "STAND-INS in this run: " + "; ".join(f"`{role}`: {why}" for role, why in
                                                        teacher["stand_in_roles"].items()), ""]
    usage = teacher.get("usage", {})
    gen_s = teacher.get("generation_s") or 0.0
    lines += ["## The teacher", "",
              f"Teacher {teacher_label(teacher)}"
              + (f", served on 127.0.0.1 by `textbooks serve` (ready in {teacher['server_start_s']:.0f} s)"
                 if teacher.get("server_start_s") is not None else "") + ".", "",
              "| run | prompts | answered | from cache | failed | prompt tokens | completion tokens | seconds | "
              "loops trimmed |", "|---|---|---|---|---|---|---|---|---|"]
    for name, run in teacher.get("runs", {}).items():
        u = run.get("usage", {})
        lines.append(f"| {name} | {run['prompts']} | {run['completed']} | {run['cached']} | {run['failed']} | "
                     f"{u.get('prompt_tokens', 0)} | {u.get('completion_tokens', 0)} | {run['elapsed_s']:.0f} | "
                     f"{(run.get('postprocess') or {}).get('trimmed_loops', 0)} |")
    tps = teacher.get("tokens_per_s")
    lines += ["", f"Total: {usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion "
              f"tokens in {gen_s:.0f} s of generation ({_fmt(tps, 1)} completion tokens/s, all requests "
              f"together; a rerun answers from the cache).", ""]
    lines += ["| role | prompts | kept (train + validation) | rejected by reason |", "|---|---|---|---|"]
    for role in GENERATED_ROLES:
        s = teacher.get("role_stats", {}).get(role, {})
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.get("rejected", {}).items())) or "none"
        lines.append(f"| `{role}` | {s.get('prompts', 0)} | {s.get('train', 0)} + {s.get('validation', 0)} | "
                     f"{reasons} |")
    ex = teacher.get("exercises", {})
    lines += ["", f"Exercises in the sandbox: {ex.get('passed', 0)} of {ex.get('executed', 0)} passed their own "
              f"`check()` asserts or doctests (pass rate {_fmt(ex.get('pass_rate'), 2)}); kept ones by test kind: "
              f"{ex.get('kept_by_test_kind') or {}}; not run (rejected before): {ex.get('not_run') or {}}.", ""]
    lines += ["### Diversity", "", "| run | docs | topics | subjects | audiences | styles | web seeds | distinct-1 | "
              "distinct-2 | distinct-3 | near-duplicate rate |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in teacher.get("runs", {}).items():
        d = run.get("diversity_report") or {}
        distinct, dn = d.get("distinct", {}), d.get("distinct_n", {})
        lines.append(f"| {name} | {d.get('num_docs', 0)} | {distinct.get('topics', 0)} | "
                     f"{distinct.get('subjects', 0)} | {distinct.get('slot:audience', 0)} | "
                     f"{distinct.get('slot:style', 0)} | {distinct.get('seed_texts', 0)} | "
                     f"{_fmt(dn.get('distinct_1'))} | {_fmt(dn.get('distinct_2'))} | {_fmt(dn.get('distinct_3'))} | "
                     f"{_fmt((d.get('near_duplicates') or {}).get('near_duplicate_rate'))} |")
    lines += ["", "Diversity is measured on the outputs that passed the per-sample filters, before near-dedup and "
              "decontamination (which then drop what the tables above list).", "", "### Generated samples", ""]
    for role, texts in teacher.get("samples", {}).items():
        lines += [f"#### `{role}`", ""]
        for text in texts:
            lines += ["```", text.strip()[:1500], "```", ""]
    return lines, {"sources": rows, "status": status, "stand_in_roles": teacher.get("stand_in_roles") or {},
                   "teacher": teacher.get("teacher"),
                   "usage": usage, "generation_s": gen_s, "tokens_per_s": tps,
                   "exercises": ex, "role_stats": teacher.get("role_stats")}


def heldout_section(runs: Mapping[str, Any], roles: Sequence[str]) -> tuple[list[str], dict]:
    """Loss and bits per byte of the common held-out set per variant and role, and whether every variant was
    scored on identical documents (equal fingerprints per role)."""
    fingerprints = {role: {name: (run.get("heldout") or {}).get("roles", {}).get(role, {}).get("fingerprint")
                           for name, run in runs.items()} for role in roles}
    identical = {role: len(set(fp.values())) == 1 and None not in fp.values() for role, fp in fingerprints.items()}
    lines = ["## The common held-out set", "",
             "Every variant is scored on the same documents: the validation split of every role "
             f"({', '.join(f'`{r}`' for r in roles)}), whatever its own mixture. Bits per byte (lower is better) "
             "compare across roles; the mean is over roles.", "",
             "| variant | " + " | ".join(f"{r} bpb" for r in roles) + " | mean bpb |",
             "|---|" + "---|" * (len(roles) + 1)]
    table = {}
    for name, run in runs.items():
        held = run.get("heldout") or {}
        per = {r: held.get("roles", {}).get(r, {}).get("bpb") for r in roles}
        table[name] = {**per, "mean": held.get("mean_bpb")}
        lines.append(f"| {name} | " + " | ".join(_fmt(per[r]) for r in roles) + f" | {_fmt(held.get('mean_bpb'))} |")
    docs = {r: next(iter((run.get("heldout") or {}).get("roles", {}).get(r, {}).get("documents")
                         for run in runs.values()), None) for r in roles}
    lines += ["", "Documents per role: " + ", ".join(f"{r} {docs[r]}" for r in roles) + ". Identical documents "
              "for every variant (sha256 fingerprints equal): "
              + ("yes" if all(identical.values()) else
                 "**NO** for " + ", ".join(r for r, ok in identical.items() if not ok)) + ".", ""]
    return lines, {"roles": list(roles), "bpb": table, "documents": docs, "identical": identical,
                   "fingerprints": fingerprints}

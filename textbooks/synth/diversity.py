"""Diversity report of a generation run (markdown + JSON + plot).

Measures what the phi papers and Cosmopedia worry about: whether the prompts spread over topics, templates,
audiences and styles, and whether the outputs are varied. Metrics:

* coverage: distinct topics, subjects, templates and values of every slot (audience, style, ...) used, with
  their counts;
* distinct-n (n = 1, 2, 3): distinct word n-grams / all word n-grams over the whole set (Li et al., 2016);
* near-duplicate rate: the fraction of documents that nearly duplicate an earlier one (MinHash over word
  5-grams, Jaccard >= threshold), and the number of clusters they form;
* length statistics in words.
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from textbooks.synth import minhash

_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return _WORD_RE.findall(text.lower())


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (0.0 when there are none)."""
    total, seen = 0, set()
    for text in texts:
        toks = tokenize(text)
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i:i + n]))
            total += 1
    return len(seen) / total if total else 0.0


def near_duplicate_stats(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128) -> dict:
    """Near-duplicate rate and clusters (see :func:`textbooks.synth.minhash.near_duplicate_clusters`)."""
    reps = minhash.near_duplicate_clusters(list(texts), threshold=threshold, num_perm=num_perm)
    dups = sum(r != i for i, r in enumerate(reps))
    sizes = collections.Counter(reps)
    return {"near_duplicates": dups, "near_duplicate_rate": dups / len(texts) if texts else 0.0,
            "clusters_with_duplicates": sum(1 for n in sizes.values() if n > 1),
            "largest_cluster": max(sizes.values()) if sizes else 0, "threshold": threshold}


def diversity_report(docs: Sequence[Mapping[str, Any]], *, threshold: float = 0.8) -> dict:
    """Computes the report.

    Args:
        docs: ``{"text": str, "meta": {...}}`` mappings (records or record dicts); ``meta`` as written by the
            generation run (template_id, topic_id, topic_path, slots, ...).
        threshold: near-duplicate Jaccard threshold.

    Returns:
        A JSON-serializable dict.
    """
    docs = [d if isinstance(d, Mapping) else {"text": d.text, "meta": d.meta} for d in docs]
    texts = [d["text"] for d in docs]
    metas = [d.get("meta") or {} for d in docs]
    templates = collections.Counter(m.get("template_id", "?") for m in metas)
    topics = collections.Counter(m["topic_id"] for m in metas if m.get("topic_id"))
    subjects = collections.Counter(m["topic_path"][0] for m in metas if m.get("topic_path"))
    seeds = collections.Counter(m["seed_text_id"] for m in metas if m.get("seed_text_id"))
    slots: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for m in metas:
        for slot, value in (m.get("slots") or {}).items():
            slots[slot][value] += 1
    lengths = sorted(len(t.split()) for t in texts)
    report = {
        "num_docs": len(docs),
        "distinct": {"templates": len(templates), "topics": len(topics), "subjects": len(subjects),
                     "seed_texts": len(seeds), **{f"slot:{k}": len(v) for k, v in sorted(slots.items())}},
        "counts": {"templates": dict(templates.most_common()), "subjects": dict(subjects.most_common()),
                   **{f"slot:{k}": dict(v.most_common()) for k, v in sorted(slots.items())}},
        "distinct_n": {f"distinct_{n}": round(distinct_n(texts, n), 6) for n in (1, 2, 3)},
        "near_duplicates": near_duplicate_stats(texts, threshold) if texts else
        {"near_duplicates": 0, "near_duplicate_rate": 0.0, "clusters_with_duplicates": 0, "largest_cluster": 0,
         "threshold": threshold},
        "length_words": ({"mean": round(sum(lengths) / len(lengths), 2), "min": lengths[0],
                          "median": lengths[len(lengths) // 2], "max": lengths[-1]} if lengths else {}),
    }
    return report


def _markdown(report: Mapping[str, Any], title: str, plot_name: str | None) -> str:
    lines = [f"# {title}", "", f"Documents: **{report['num_docs']}**", "", "## Coverage", "",
             "| what | distinct |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["distinct"].items()]
    lines += ["", "## Output diversity", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in report["distinct_n"].items()]
    nd = report["near_duplicates"]
    lines += [f"| near-duplicate rate (Jaccard >= {nd['threshold']}) | {nd['near_duplicate_rate']:.4f} |",
              f"| near duplicates | {nd['near_duplicates']} |",
              f"| clusters with duplicates | {nd['clusters_with_duplicates']} |",
              f"| largest cluster | {nd['largest_cluster']} |"]
    if report["length_words"]:
        lw = report["length_words"]
        lines += [f"| length in words (min / median / mean / max) | {lw['min']} / {lw['median']} / {lw['mean']} / "
                  f"{lw['max']} |"]
    for name, counts in report["counts"].items():
        if not counts:
            continue
        lines += ["", f"## {name}", "", "| value | docs |", "|---|---|"]
        items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        lines += [f"| {k} | {v} |" for k, v in items[:30]]
        if len(items) > 30:
            lines.append(f"| ... {len(items) - 30} more | |")
    if plot_name:
        lines += ["", f"![distributions]({plot_name})"]
    return "\n".join(lines) + "\n"


def _plot(report: Mapping[str, Any], docs_lengths: Sequence[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, v) for k, v in report["counts"].items() if v][:5]
    cols = 3
    rows = (len(panels) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (name, counts) in zip(flat, panels):
        items = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:20]
        ax.barh([str(k)[:28] for k, _ in items][::-1], [v for _, v in items][::-1], color="#4c72b0")
        ax.set_title(f"{name} ({len(counts)} distinct)")
        ax.tick_params(axis="y", labelsize=7)
    ax = flat[len(panels)]
    ax.hist(docs_lengths or [0], bins=30, color="#55a868")
    ax.set_title("length (words)")
    for ax in flat[len(panels) + 1:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: Mapping[str, Any], out_dir: str, *, name: str = "diversity", title: str = "Diversity report",
                 lengths: Sequence[int] | None = None, plot: bool = True) -> dict[str, str]:
    """Writes ``<name>.json``, ``<name>.md`` and (if ``plot``) ``<name>.png`` into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{name}.json"), "markdown": os.path.join(out_dir, f"{name}.md")}
    plot_name = None
    if plot:
        paths["plot"] = os.path.join(out_dir, f"{name}.png")
        _plot(report, list(lengths or []), paths["plot"])
        plot_name = os.path.basename(paths["plot"])
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(_markdown(report, title, plot_name))
    return paths

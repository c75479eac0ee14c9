"""The curation report: counts per stage and reason, reconciliation, score histograms, clusters, samples.

Inputs are the Beam counters of the finished pipeline (namespace ``textbooks.curate``, see
:mod:`textbooks.curate.stages`) and the small side files the pipeline wrote under ``<output_dir>/report``
(score histograms, samples of kept and dropped documents), ``dedup/`` (clusters) and ``decontam/``
(matches). The result is ``report/report.json`` and ``report/report.md`` with PNG plots (matplotlib, Agg).

Tokens are **whitespace tokens** (``len(text.split())``), counted in every stage.

Reconciliation: every input unit (a JSONL line, a Parquet row, a file) ends in exactly one place, so
``units read = documents kept + documents dropped (all stages and reasons) + rejected`` must hold exactly;
the report says whether it does and each stage's ``docs_in = docs_kept + docs_dropped``.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Any, Iterable

import apache_beam as beam

from textbooks.curate import stages
from textbooks.curate.textnorm import stable_hash64
from textbooks.data import records as rec

TOKEN_UNIT = "whitespace tokens (len(text.split()))"
SAMPLE_CHARS = 600


# ----------------------------------------------------------------------------------------------------------
# Beam side: histograms and samples.


class HistogramFn(beam.CombineFn):
    """Fixed-bin histogram of ``float`` values in ``[lo, hi]`` (out-of-range values go to the end bins)."""

    def __init__(self, lo: float = 0.0, hi: float = 1.0, bins: int = 20):
        self.lo, self.hi, self.bins = float(lo), float(hi), int(bins)

    def create_accumulator(self):
        return {"counts": [0] * self.bins, "n": 0, "sum": 0.0, "min": None, "max": None}

    def add_input(self, acc, value):
        value = float(value)
        i = int((value - self.lo) / (self.hi - self.lo) * self.bins) if self.hi > self.lo else 0
        acc["counts"][min(max(i, 0), self.bins - 1)] += 1
        acc["n"] += 1
        acc["sum"] += value
        acc["min"] = value if acc["min"] is None else min(acc["min"], value)
        acc["max"] = value if acc["max"] is None else max(acc["max"], value)
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            out["counts"] = [x + y for x, y in zip(out["counts"], a["counts"])]
            out["n"] += a["n"]
            out["sum"] += a["sum"]
            for k, f in (("min", min), ("max", max)):
                if a[k] is not None:
                    out[k] = a[k] if out[k] is None else f(out[k], a[k])
        return out

    def extract_output(self, acc):
        return dict(acc, lo=self.lo, hi=self.hi, bins=self.bins)


class ScoreHistograms(beam.PTransform):
    """``(score name, value)`` pairs -> one histogram dict per name (ranges per name, default [0, 1])."""

    def __init__(self, ranges: dict[str, tuple[float, float]] | None = None, bins: int = 20):
        super().__init__()
        self.ranges = dict(ranges or {})
        self.bins = bins

    def expand(self, pairs):
        outs = []
        names = sorted(self.ranges)
        for name in names:
            lo, hi = self.ranges[name]
            outs.append(pairs
                        | f"Only_{name}" >> beam.Filter(lambda kv, n=name: kv[0] == n)
                        | f"Values_{name}" >> beam.Map(lambda kv: kv[1])
                        | f"Hist_{name}" >> beam.CombineGlobally(HistogramFn(lo, hi, self.bins)).without_defaults()
                        | f"Name_{name}" >> beam.Map(lambda h, n=name: dict(h, name=n)))
        others = (pairs
                  | "Others" >> beam.Filter(lambda kv, known=tuple(names): kv[0] not in known)
                  | "HistOthers" >> beam.CombinePerKey(HistogramFn(0.0, 1.0, self.bins))
                  | "NameOthers" >> beam.Map(lambda kv: dict(kv[1], name=kv[0])))
        return tuple(outs + [others]) | "AllHists" >> beam.Flatten()


def _sample_view(record: dict) -> dict:
    meta = record.get("meta") or {}
    info = meta.get("curation") or {}
    return {"id": record["id"], "source": record.get("source"), "stage": info.get("stage"),
            "reason": info.get("reason"), "detail": {k: v for k, v in info.items() if k not in ("stage", "reason")},
            "scores": meta.get("scores") or {}, "chars": len(record["text"]), "text": record["text"][:SAMPLE_CHARS]}


class Samples(beam.PTransform):
    """Up to ``k`` documents per group (``kept`` or ``<stage>/<reason>``): those with the smallest id hash."""

    def __init__(self, group: str | None, k: int = 5):
        super().__init__()
        self.group = group
        self.k = k

    def expand(self, records):
        def key(r, fixed=self.group):
            if fixed is not None:
                g = fixed
            else:
                stage, reason = stages.drop_reason(r)
                g = f"{stage}/{reason}"
            return g, (stable_hash64(r["id"]), _sample_view(r))

        return (records
                | "Key" >> beam.Map(key)
                | "Smallest" >> beam.combiners.Top.SmallestPerKey(self.k)
                | "Flat" >> beam.FlatMap(lambda kv: [dict(v, group=kv[0]) for _, v in kv[1]]))


# ----------------------------------------------------------------------------------------------------------
# Driver side.


def counters_from_result(result) -> dict[str, int]:
    """Sums the pipeline's counters in :data:`stages.NAMESPACE` over steps (committed, else attempted)."""
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(stages.NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def read_jsonl_files(pattern: str) -> list[dict]:
    """All JSON lines of the gzip files matching ``pattern`` (empty when none)."""
    from apache_beam.io.filesystems import FileSystems

    items = []
    for m in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        with FileSystems.open(m.path, compression_type="uncompressed") as f:
            data = f.read()
        for line in gzip.decompress(data).decode("utf-8").splitlines():
            if line.strip():
                items.append(json.loads(line))
    return items


def stage_table(counters: dict[str, int], stage_names: Iterable[str]) -> list[dict]:
    """Per stage: documents and tokens in/kept/dropped and the drops by reason."""
    rows = []
    for name in stage_names:
        c = {k[len(name) + 1:]: v for k, v in counters.items() if k.startswith(name + "/")}
        rows.append({
            "stage": name, "docs_in": c.get("docs_in", 0), "docs_kept": c.get("docs_kept", 0),
            "docs_dropped": c.get("docs_dropped", 0), "tokens_in": c.get("tokens_in", 0),
            "tokens_kept": c.get("tokens_kept", 0), "tokens_dropped": c.get("tokens_dropped", 0),
            "tokens_removed_in_kept_docs": c.get("tokens_removed", 0), "docs_modified": c.get("docs_modified", 0),
            "dropped_by_reason": {k[len("dropped/"):]: v for k, v in c.items() if k.startswith("dropped/")},
            "tokens_dropped_by_reason": {k[len("tokens_dropped/"):]: v for k, v in c.items()
                                         if k.startswith("tokens_dropped/")},
            "other": {k: v for k, v in c.items() if not k.startswith(("docs_", "tokens_", "dropped/"))
                      and k != "tokens_removed"},
        })
    return rows


def reconcile(counters: dict[str, int], table: list[dict]) -> dict:
    """Checks units read = kept + dropped + rejected, and each stage's balance."""
    units = counters.get("read/units", 0)
    rejected = {}
    for k, v in counters.items():
        for prefix in ("read/rejected/", "ids/rejected/"):
            if k.startswith(prefix):
                rejected[k[len(prefix):]] = rejected.get(k[len(prefix):], 0) + v
    dropped = sum(row["docs_dropped"] for row in table)
    kept = counters.get("output/docs", 0)
    stage_ok = {row["stage"]: row["docs_in"] == row["docs_kept"] + row["docs_dropped"] for row in table}
    return {"units_read": units, "kept": kept, "dropped": dropped, "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(sorted(rejected.items())),
            "balanced": units == kept + dropped + sum(rejected.values()) and all(stage_ok.values()),
            "stages_balanced": stage_ok}


def plot_histograms(histograms: list[dict], directory: str) -> list[str]:
    """One PNG per score histogram; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for h in histograms:
        edges = [h["lo"] + (h["hi"] - h["lo"]) * i / h["bins"] for i in range(h["bins"] + 1)]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(edges[:-1], h["counts"], width=(h["hi"] - h["lo"]) / h["bins"], align="edge", edgecolor="black")
        ax.set_xlabel(f"score '{h['name']}'")
        ax.set_ylabel("documents")
        ax.set_title(f"{h['name']}: n={h['n']}, mean={h['sum'] / max(h['n'], 1):.3f}")
        fig.tight_layout()
        name = f"hist_{h['name']}.png"
        _save_fig(fig, directory, name)
        plt.close(fig)
        names.append(name)
    return names


def plot_funnel(table: list[dict], directory: str) -> str:
    """Bar chart of documents in and kept per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [row["stage"] for row in table]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [row["docs_in"] for row in table], width=0.4, label="in")
    ax.bar([i + 0.2 for i in x], [row["docs_kept"] for row in table], width=0.4, label="kept")
    ax.set_xticks(list(x), names, rotation=20)
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    _save_fig(fig, directory, "funnel.png")
    plt.close(fig)
    return "funnel.png"


def _save_fig(fig, directory: str, name: str) -> None:
    import io as _io

    from apache_beam.io.filesystems import FileSystems

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    with FileSystems.create(rec.join(directory, name)) as f:
        f.write(buf.getvalue())


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    """The report as Markdown (tables, plots, samples)."""
    rc = report["reconciliation"]
    out = [f"# Curation report: {report['role']}", "",
           f"Output: `{report['output_dir']}`. Tokens are {report['token_unit']}.", "",
           "## Totals", "",
           _md_table(["units read", "kept", "dropped", "rejected", "reconciled"],
                     [[rc["units_read"], rc["kept"], rc["dropped"], rc["rejected"],
                       "yes" if rc["balanced"] else "NO"]]),
           "", "Output splits: " + ", ".join(f"{k}: {v['docs']} docs / {v['tokens']} tokens"
                                             for k, v in report["output"].items()), ""]
    if rc["rejected_by_reason"]:
        out += ["## Rejected input", "", _md_table(["reason", "count"], [[k, v] for k, v in
                                                                        rc["rejected_by_reason"].items()]), ""]
    out += ["## Stages", "", "![funnel](funnel.png)", "",
            _md_table(["stage", "docs in", "kept", "dropped", "modified", "tokens in", "tokens kept", "tokens dropped",
                       "tokens cut from kept docs"],
                      [[r["stage"], r["docs_in"], r["docs_kept"], r["docs_dropped"], r["docs_modified"], r["tokens_in"],
                        r["tokens_kept"], r["tokens_dropped"], r["tokens_removed_in_kept_docs"]]
                       for r in report["stages"]]), "", "### Drops by reason", "",
            _md_table(["stage", "reason", "docs", "tokens"],
                      [[r["stage"], k, v, r["tokens_dropped_by_reason"].get(k, 0)] for r in report["stages"]
                       for k, v in sorted(r["dropped_by_reason"].items())]), ""]
    if report.get("histograms"):
        out += ["## Scores", ""]
        for h, png in zip(report["histograms"], report["plots"]["histograms"]):
            out += [f"**{h['name']}**: n={h['n']}, min={h['min']}, max={h['max']}, "
                    f"mean={h['sum'] / max(h['n'], 1):.3f}", "", f"![{h['name']}]({png})", ""]
    if report.get("classifier"):
        c = report["classifier"]
        held = c.get("metrics", {}).get("held_out", {})
        out += ["## Classifier", "",
                f"`{c.get('name')}` ({c.get('model')}, encoder {c.get('encoder', {}).get('kind')}, labels from "
                f"{c.get('label_source')}, threshold {c.get('threshold')}, training data "
                f"`{str(c.get('training_fingerprint'))[:16]}`)", "",
                _md_table(["precision", "recall", "F1", "accuracy", "ROC-AUC", "held-out n"],
                          [[f"{held.get('precision', 0):.3f}", f"{held.get('recall', 0):.3f}",
                            f"{held.get('f1', 0):.3f}", f"{held.get('accuracy', 0):.3f}",
                            f"{held.get('roc_auc', float('nan')):.3f}", held.get("n")]]), ""]
    for name, d in report.get("dedup", {}).items():
        out += [f"## Dedup: {name}", "", f"{d['clusters']} clusters, {d['documents_in_clusters']} documents; sizes: "
                f"{d['size_histogram']}", ""]
        if d.get("components"):
            comp = d["components"]
            out += [f"Connected components: {comp['method']} over {comp['candidate_edges']} distinct candidate "
                    f"edges" + (f", {comp['rounds']} rounds" if comp["method"] == "distributed" else ""), ""]
        if d["largest"]:
            out += [_md_table(["kept", "size", "members"], [[c["keeper"], c["size"], ", ".join(c["members"][:5])]
                                                            for c in d["largest"]]), ""]
    if report.get("decontam"):
        d = report["decontam"]
        out += ["## Decontamination", "", f"index: {d.get('index')}", "",
                _md_table(["benchmark", "documents removed"], [[k, v] for k, v in d["by_benchmark"].items()]
                          or [["(none)", 0]]), ""]
        if d["examples"]:
            out += [_md_table(["document", "benchmark", "item", "method", "evidence"],
                              [[m["id"], m["benchmark"], m["item_id"], m["method"],
                                m.get("ngram") or f"cos {m.get('embedding_similarity')}, ast {m.get('ast_similarity')}"]
                               for m in d["examples"]]), ""]
    out += ["## Samples", ""]
    for group, items in report["samples"].items():
        out += [f"### {group}", ""]
        for s in items:
            text = s["text"].replace("```", "'''")
            out += [f"- `{s['id']}` ({s['chars']} chars) {json.dumps(s['detail'])[:300] if s['detail'] else ''}",
                    "", "```", text, "```", ""]
    return "\n".join(out)


def components_summary(counters: dict[str, int], stage: str = "near_dedup") -> dict:
    """Which connected-components method ran in a near-dedup stage (``union_find``, ``distributed`` or None
    when the stage never resolved components), its rounds and the distinct candidate edges."""
    methods = [m for m in ("union_find", "distributed") if counters.get(f"{stage}/components_{m}")]
    return {"method": methods[0] if methods else None, "rounds": counters.get(f"{stage}/components_rounds", 0),
            "candidate_edges": counters.get(f"{stage}/candidate_edges_distinct", 0)}


def build_report(*, output_dir: str, role: str, counters: dict[str, int], stage_names: list[str],
                 splits: Iterable[str], config: dict, classifier: dict | None = None,
                 decontam_index: dict | None = None) -> dict:
    """Assembles ``report/report.json`` and ``report/report.md`` (with PNGs) from counters and side files."""
    from apache_beam.io.filesystems import FileSystems

    report_dir = rec.join(output_dir, "report")
    rec.makedirs(report_dir)
    table = stage_table(counters, stage_names)
    histograms = sorted(read_jsonl_files(rec.join(report_dir, "histograms-*.jsonl.gz")), key=lambda h: h["name"])
    samples: dict[str, list] = {}
    for s in read_jsonl_files(rec.join(report_dir, "samples-*.jsonl.gz")):
        samples.setdefault(s.pop("group"), []).append(s)
    dedup = {}
    for name in ("exact_dedup", "near_dedup"):
        if name not in stage_names:
            continue
        clusters = [c for c in read_jsonl_files(rec.join(output_dir, "dedup", "clusters-*.jsonl.gz"))
                    if c["stage"] == name]
        sizes: dict[int, int] = {}
        for c in clusters:
            sizes[c["size"]] = sizes.get(c["size"], 0) + 1
        dedup[name] = {"clusters": len(clusters), "documents_in_clusters": sum(c["size"] for c in clusters),
                       "size_histogram": dict(sorted(sizes.items())),
                       "largest": sorted(clusters, key=lambda c: (-c["size"], c["keeper"]))[:10]}
        if name == "near_dedup":
            dedup[name]["components"] = components_summary(counters, name)
    decontam = None
    if "decontam" in stage_names:
        matches = read_jsonl_files(rec.join(output_dir, "decontam", "matches-*.jsonl.gz"))
        by_bench: dict[str, int] = {}
        for m in matches:
            by_bench[m["benchmark"]] = by_bench.get(m["benchmark"], 0) + 1
        decontam = {"index": decontam_index, "by_benchmark": dict(sorted(by_bench.items())),
                    "examples": sorted(matches, key=lambda m: m["id"])[:20]}
    output = {s: {"docs": counters.get(f"output/docs/{s}", 0), "tokens": counters.get(f"output/tokens/{s}", 0)}
              for s in splits}
    report = {"role": role, "output_dir": output_dir, "token_unit": TOKEN_UNIT,
              "reconciliation": reconcile(counters, table), "stages": table, "output": output,
              "input": {"files": counters.get("read/files", 0), "units": counters.get("read/units", 0),
                        "documents": counters.get("read/docs_out", 0), "tokens": counters.get("read/tokens_out", 0)},
              "histograms": histograms, "dedup": dedup, "decontam": decontam, "classifier": classifier,
              "samples": dict(sorted(samples.items())), "counters": counters, "config": config}
    report["plots"] = {"funnel": plot_funnel(table, report_dir) if table else None,
                       "histograms": plot_histograms(histograms, report_dir)}
    with FileSystems.create(rec.join(report_dir, "report.json")) as f:
        f.write((json.dumps(report, indent=2, sort_keys=False, default=str) + "\n").encode())
    with FileSystems.create(rec.join(report_dir, "report.md")) as f:
        f.write(render_markdown(report).encode())
    return report


def format_summary(report: dict) -> str:
    """A few lines for the console."""
    rc = report["reconciliation"]
    lines = [f"curation of role {report['role']!r} -> {report['output_dir']}",
             f"  units read {rc['units_read']} = kept {rc['kept']} + dropped {rc['dropped']} + rejected "
             f"{rc['rejected']}: {'reconciled' if rc['balanced'] else 'NOT RECONCILED'}"]
    for r in report["stages"]:
        lines.append(f"  {r['stage']:<12} in {r['docs_in']:>8} kept {r['docs_kept']:>8} dropped {r['docs_dropped']:>8}"
                     + (f"  {dict(sorted(r['dropped_by_reason'].items()))}" if r["dropped_by_reason"] else ""))
    lines.append(f"  report: {os.path.join(report['output_dir'], 'report', 'report.md')}")
    return "\n".join(lines)

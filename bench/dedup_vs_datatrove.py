"""MinHash near-dedup at scale: textbooks.curate (Apache Beam) vs datatrove, same real-sized corpus.

    python bench/dedup_vs_datatrove.py [--sizes 50000 100000] [--workers 2] [--corpus_dir /tmp/dedup_corpus]
                                       [--components auto] [--decisions {auto,join,side_input,reread}] [--gzip_level 1]
                                       [--wait_quiet 0] [--settle 150] [--out dedup_vs_datatrove.json]
                                       [--stage_rss DIR] [--ours_only]

Corpus (:mod:`bench.dedup_corpus`, built once per size and cached under ``--corpus_dir``): real text chunked
into documents (web and Wikipedia excerpts, the Python docs, the standard library, the installed packages'
sources) without natural near-duplicates, plus planted near-duplicates (insertions, deletions, paragraph
reordering, boilerplate headers and footers, word substitutions, each at a fifth of the copies), as four gzip
JSON Lines files; and bad documents (0 bytes, 10 MB, binary) in their own files.

Both sides compute 5-gram MinHash signatures in 14 bands of 8 rows, find candidate pairs, resolve clusters and
write the kept documents as gzip JSON Lines at the same gzip level (``--gzip_level``, default: our writers'
default, ``textbooks.curate.writers.DEFAULT_GZIP_LEVEL``; ours adds the shard record fields, datatrove's
``id, text, metadata``), with ``--workers`` worker processes:

* ours: ``textbooks.curate`` with only the near-dedup stage (``ReadInputs → NearDedup → WriteShards`` plus
  the report), DirectRunner in multi-processing mode; it also reads the bad documents, which must be rejected
  with a reason and reconcile (units in = kept + dropped + rejected); ``--decisions`` picks how drop decisions
  reach the records (``MinHashConfig.decisions``: ``join``, a CoGroupByKey on the id, ``side_input``, a table
  of them every worker holds, ``reread``, the same table applied to the records read again from the input
  files so that no text is shuffled, or ``auto``, the default, which is ``reread`` here: near dedup is the
  only stage and ids are not checked);
* datatrove 0.10.1: its four MinHash steps (signatures, buckets, clustering, filtering) with
  ``LocalPipelineExecutor``, with the same tokenization (lowercased ``\\w+`` runs, after datatrove's own text
  simplification) and its dependency-free SHA-1 hashing (64-bit); it reads only the good documents (its
  reader has no rejection of bad input), with two small json-module steps (its JsonlReader needs orjson).

Each side runs in its own Python process; a sampler (psutil, every 0.2 s) records the peak RSS of that process
(the driver: for Beam's DirectRunner it also holds the shuffled data) and of the largest of its descendants
(the workers). Reported per size: documents per second (good documents / wall clock, end to end), the ratio
ours / datatrove (goal >= 1.5x), the peak RSS figures, pairwise precision/recall/F1 of "same cluster" pairs
against the planted pairs and against datatrove's clusters, the connected-components method our run chose,
the decisions path that ran (from its counters), and the reconciliation. With ``--stage_rss DIR`` our SDK
workers also log their memory per bundle (:mod:`bench.stage_rss`, under ``DIR/docs<size>``), and the result
names the bundles that raised each worker's peak (``ours.stage_rss``), largest worker first (with
``BENCH_STAGE_RSS_TRIM=1`` in the environment the workers also release freed memory after each bundle and log
what remains). ``--ours_only`` runs only our side: memory and speed across sizes, without a ratio. Cluster membership comes from the
cluster summaries (at most 20 members listed; the count of larger clusters is reported).

The timed runs form one round of :mod:`bench.machine` per size (date, CPU, load before/after, cores used by
other processes); each side's process adopts its orphaned descendants (``PR_SET_CHILD_SUBREAPER``) and waits
for them before it exits, so Beam's SDK workers (started under ``/bin/sh -c``) count as the bench's own CPU
time and in its RSS figures even when their shell exits first; the last line is the headline ratio at the largest size, marked ``NOT A HEADLINE`` when the
machine was busy.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

try:
    from bench import dedup_corpus, machine
except ImportError:  # run as a script: python bench/dedup_vs_datatrove.py
    import dedup_corpus
    import machine

GOAL = 1.5
HERE = os.path.dirname(os.path.abspath(__file__))


class PeakRSS:
    """Samples the RSS of this process and of each of its descendants; keeps the peaks."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.driver = 0
        self.workers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                self.driver = max(self.driver, self.me.memory_info().rss)
                for child in self.me.children(recursive=True):
                    try:
                        self.workers[child.pid] = max(self.workers.get(child.pid, 0), child.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"driver_peak_rss_mb": round(self.driver / 2**20, 1),
                "largest_worker_peak_rss_mb": round(max(self.workers.values(), default=0) / 2**20, 1),
                "worker_processes": len(self.workers)}


def run_ours(corpus: str, out_dir: str, workers: int, components: str = "auto", decisions: str = "auto",
             gzip_level: int | None = None) -> dict:
    from textbooks.curate.components import ComponentsConfig
    from textbooks.curate.dedup import DECISIONS, MinHashConfig
    from textbooks.curate.input_specs import InputSpec, ReadConfig
    from textbooks.curate.pipeline import Plan, run_plan
    from textbooks.curate.writers import DEFAULT_GZIP_LEVEL

    inputs = [InputSpec(paths=(os.path.join(corpus, "docs"),), kind="jsonl", id_field="id", meta_fields=(),
                        source="bench", role="web_raw", split="train"),
              InputSpec(paths=(os.path.join(corpus, "bad", "bad.jsonl"),), kind="jsonl", id_field="id",
                        meta_fields=(), source="bench", role="web_raw", split="train"),
              InputSpec(paths=(os.path.join(corpus, "bad", "files"),), kind="text", source="bench",
                        role="web_raw", split="train", extensions=(".txt",))]
    # num_shards=0: files per bundle; a fixed count groups each file's records on one worker.
    plan = Plan(inputs=inputs, output_dir=out_dir, role="web_raw", splits=("train",), num_shards=0,
                read=ReadConfig(check_unique_ids=False), near_dedup=MinHashConfig(
                    shingle_size=5, num_bands=14, rows_per_band=8, components=ComponentsConfig(method=components),
                    decisions=decisions),
                write_dropped=False, gzip_level=DEFAULT_GZIP_LEVEL if gzip_level is None else gzip_level)
    start = time.perf_counter()
    report = run_plan(plan, direct_num_workers=workers, direct_running_mode="multi_processing", overwrite=True)
    elapsed = time.perf_counter() - start
    clusters = [c["members"] for c in _read_jsonl(os.path.join(out_dir, "dedup", "clusters-*.jsonl.gz"))]
    large = sum(1 for c in _read_jsonl(os.path.join(out_dir, "dedup", "clusters-*.jsonl.gz")) if c["size"] > 20)
    near = next(s for s in report["stages"] if s["stage"] == "near_dedup")["other"]
    ran = [path for path in DECISIONS if near.get(f"decisions_{path}")]
    if len(ran) != 1 or decisions not in ("auto", ran[0]):
        raise RuntimeError(f"near-dedup decisions: asked for {decisions!r}, the counters say {ran}")
    return {"seconds": elapsed, "clusters": clusters, "clusters_over_20": large,
            "components": report["dedup"]["near_dedup"]["components"], "decisions": ran[0],
            "reconciliation": report["reconciliation"]}


def _read_jsonl(pattern: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(pattern)):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out


def run_datatrove(input_dir: str, work: str, workers: int, files: int,
                  gzip_level: int = 9) -> tuple[float, list[list[str]]]:
    import struct

    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWordTokenizer(WordTokenizer):
        """Lowercased ``\\w+`` runs: the tokenization our MinHash uses (no spaCy/NLTK needed)."""

        def word_tokenize(self, text):
            return re.findall(r"\w+", text.lower())

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    class ReadJsonl(PipelineStep):
        """Our gzip JSON Lines, one file per rank (datatrove's JsonlReader needs orjson, not installed)."""

        name = "read jsonl"

        def run(self, data=None, rank: int = 0, world_size: int = 1):
            for path in sorted(glob.glob(os.path.join(input_dir, "*.jsonl.gz")))[rank::world_size]:
                with gzip.open(path, "rt", encoding="utf-8") as f:
                    for line in f:
                        obj = json.loads(line)
                        yield Document(text=obj["text"], id=obj["id"], metadata={})

    class WriteJsonl(PipelineStep):
        name = "write jsonl"

        def run(self, data, rank: int = 0, world_size: int = 1):
            os.makedirs(os.path.join(work, "kept"), exist_ok=True)
            with gzip.open(os.path.join(work, "kept", f"{rank:05d}.jsonl.gz"), "wt", encoding="utf-8",
                           compresslevel=gzip_level) as f:
                for doc in data:
                    f.write(json.dumps({"id": doc.id, "text": doc.text, "metadata": doc.metadata}) + "\n")
                    yield doc

    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    tok = RegexWordTokenizer()
    logs = os.path.join(work, "logs")
    start = time.perf_counter()
    stage1 = LocalPipelineExecutor(pipeline=[ReadJsonl(), MinhashDedupSignature(os.path.join(work, "sigs"),
                                                                                 config=config, language=tok)],
                                   tasks=files, workers=workers, logging_dir=os.path.join(logs, "1"))
    stage2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(os.path.join(work, "sigs"),
                                                                 os.path.join(work, "buckets"), config=config)],
                                   tasks=config.num_buckets, workers=workers, logging_dir=os.path.join(logs, "2"),
                                   depends=stage1)
    stage3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(os.path.join(work, "buckets"),
                                                                 os.path.join(work, "remove"), config=config,
                                                                 save_cluster_id=True)],
                                   tasks=1, logging_dir=os.path.join(logs, "3"), depends=stage2)
    stage4 = LocalPipelineExecutor(pipeline=[ReadJsonl(), MinhashDedupFilter(os.path.join(work, "remove")),
                                             WriteJsonl()],
                                   tasks=files, workers=workers, logging_dir=os.path.join(logs, "4"), depends=stage3)
    stage4.run()
    elapsed = time.perf_counter() - start
    # Clusters from datatrove's <rank>.clusters files: (document index in the rank's input, cluster id).
    groups: dict[int, list[str]] = {}
    inputs = sorted(glob.glob(os.path.join(input_dir, "*.jsonl.gz")))
    for rank in range(files):
        path = os.path.join(work, "remove", f"{rank:06d}.clusters")
        if not os.path.exists(path):
            continue
        with gzip.open(inputs[rank], "rt", encoding="utf-8") as f:
            ids = [json.loads(line)["id"] for line in f]
        data = open(path, "rb").read()
        for doc, cid in struct.iter_unpack("<II", data):
            groups.setdefault(cid, []).append(ids[doc])
    return elapsed, list(groups.values())


def pairs(groups) -> set:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def agreement(pred, ref) -> dict:
    a, b = pairs(pred), pairs(ref)
    both = len(a & b)
    p = both / len(a) if a else 1.0
    r = both / len(b) if b else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "pairs": len(a),
            "reference_pairs": len(b)}


def stage_rss_summary(folder: str) -> list[dict]:
    """Per worker of a ``--stage_rss`` run, largest peak first: its peak (MB) and the bundles that raised it
    by 1 MB or more (stages, seconds, VmHWM before and after), in order."""
    workers = []
    for path in glob.glob(os.path.join(folder, "*.jsonl")):
        with open(path) as f:
            rows = sorted((json.loads(line) for line in f), key=lambda r: r["start"])
        if rows:
            raised = [{"stages": r["stages"], "seconds": r["seconds"], "hwm_mb": r["hwm"]} for r in rows
                      if r["hwm"][1] - r["hwm"][0] >= 1]
            workers.append({"pid": int(os.path.basename(path).split(".")[0]), "peak_mb": rows[-1]["hwm"][1],
                            "bundles": len(rows), "raised": raised})
    return sorted(workers, key=lambda w: -w["peak_mb"])


def run_side(side: str, corpus: str, work: str, workers: int, components: str = "auto",
             decisions: str = "auto", gzip_level: int = 1) -> dict:
    """One side in this process, under the RSS sampler (called in a fresh process by :func:`side_process`);
    descendants that outlive their parents are adopted and waited for (:func:`machine.adopt_orphans`)."""
    import logging

    adopted = machine.adopt_orphans()

    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    from loguru import logger as loguru_logger

    loguru_logger.remove()
    with PeakRSS() as rss:
        if side == "ours":
            result = run_ours(corpus, work, workers, components, decisions, gzip_level)
        else:
            files = len(glob.glob(os.path.join(corpus, "docs", "*.jsonl.gz")))
            seconds, clusters = run_datatrove(os.path.join(corpus, "docs"), work, workers, files, gzip_level)
            result = {"seconds": seconds, "clusters": clusters}
        result["leftover_children_reaped"] = machine.reap_orphans()
    result.update(rss.summary(), subreaper=adopted)
    return result


def side_process(side: str, corpus: str, work: str, workers: int, components: str = "auto",
                 decisions: str = "auto", gzip_level: int = 1, stage_rss: str | None = None) -> dict:
    """Runs :func:`run_side` in a fresh Python process and returns its result (``stage_rss``: a folder for
    the per-bundle memory log of :mod:`bench.stage_rss`)."""
    out = os.path.join(work + ".json")
    path = [os.path.dirname(HERE)] + ([os.path.join(HERE, "stage_rss")] if stage_rss else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")])}
    if stage_rss:
        os.makedirs(stage_rss, exist_ok=True)
        env["BENCH_STAGE_RSS"] = stage_rss
    subprocess.run([sys.executable, os.path.join(HERE, "dedup_vs_datatrove.py"), "--_side", side, "--_corpus",
                    corpus, "--_work", work, "--workers", str(workers), "--components", components,
                    "--decisions", decisions, "--gzip_level", str(gzip_level)],
                   check=True, env=env)
    with open(out) as f:
        return json.load(f)


def measure(size: int, args, cond) -> dict:
    corpus = os.path.join(args.corpus_dir, f"docs{size}")
    meta = dedup_corpus.build(corpus, size)
    with open(os.path.join(corpus, "truth.json")) as f:
        truth = json.load(f)
    true_groups: dict[str, list[str]] = {}
    for doc_id, base in truth.items():
        true_groups.setdefault(base, []).append(doc_id)
    true_groups = [g for g in true_groups.values() if len(g) > 1]
    n = meta["good_docs"]
    with tempfile.TemporaryDirectory() as tmp:
        with cond.round():
            dt = None if args.ours_only else side_process("datatrove", corpus, os.path.join(tmp, "dt"),
                                                          args.workers, gzip_level=args.gzip_level)
            stage_rss = os.path.join(args.stage_rss, f"docs{size}") if args.stage_rss else None
            ours = side_process("ours", corpus, os.path.join(tmp, "ours"), args.workers, args.components,
                                args.decisions, args.gzip_level, stage_rss)
            if stage_rss:
                ours["stage_rss"] = stage_rss_summary(stage_rss)
    out = {"documents": n, "bad_documents": meta["bad_total"], "planted_pairs": len(pairs(true_groups)),
           "copies_by_edit": meta["copies_by_edit"]}
    for name, r in (("datatrove", dt), ("ours", ours)):
        if r is not None:
            out[name] = {k: v for k, v in r.items() if k != "clusters"}
            out[name].update(docs_per_s=n / r["seconds"], clusters=len(r["clusters"]),
                             vs_truth=agreement(r["clusters"], true_groups))
    if dt is not None:
        out["ours"]["vs_datatrove"] = agreement(ours["clusters"], dt["clusters"])
        out["ratio"] = dt["seconds"] / ours["seconds"]
    return out


def _default_decisions() -> str:
    """``MinHashConfig.decisions``'s default, read from the dataclass."""
    import dataclasses

    from textbooks.curate.dedup import MinHashConfig

    return next(f.default for f in dataclasses.fields(MinHashConfig) if f.name == "decisions")


def _default_gzip_level() -> int:
    """Our writers' default gzip level."""
    from textbooks.curate.writers import DEFAULT_GZIP_LEVEL

    return DEFAULT_GZIP_LEVEL


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50000, 100000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--corpus_dir", default=os.path.join(tempfile.gettempdir(), "textbooks_dedup_corpus"))
    parser.add_argument("--components", choices=["auto", "union_find", "distributed"], default="auto",
                        help="our connected-components method (ComponentsConfig.method)")
    parser.add_argument("--decisions", choices=["auto", "join", "side_input", "reread"], default=None,
                        help="how our drop decisions reach the records (MinHashConfig.decisions; default: its "
                             "default, auto: the input read again with the decisions as a side input here)")
    parser.add_argument("--gzip_level", type=int, default=None,
                        help="gzip level of both sides' kept output (default: textbooks.curate.writers."
                             "DEFAULT_GZIP_LEVEL; datatrove's own JsonlWriter writes level 9)")
    parser.add_argument("--out", default="dedup_vs_datatrove.json")
    parser.add_argument("--stage_rss", default=None,
                        help="a folder: our workers log their memory per bundle there (bench/stage_rss), and the "
                             "result names the bundles that raised each worker's peak")
    parser.add_argument("--ours_only", action="store_true",
                        help="run only our side (memory and speed across sizes; no ratio, no datatrove agreement)")
    parser.add_argument("--_side", choices=["ours", "datatrove"], help=argparse.SUPPRESS)
    parser.add_argument("--_corpus", help=argparse.SUPPRESS)
    parser.add_argument("--_work", help=argparse.SUPPRESS)
    machine.add_arguments(parser)
    args = parser.parse_args(argv)
    if args._side:
        result = run_side(args._side, args._corpus, args._work, args.workers, args.components,
                          args.decisions or _default_decisions(), args.gzip_level or _default_gzip_level())
        with open(args._work + ".json", "w") as f:
            json.dump(result, f)
        return 0
    cond = machine.Conditions(args.wait_quiet)  # before this process loads the machine itself
    args.decisions = args.decisions or _default_decisions()
    args.gzip_level = args.gzip_level or _default_gzip_level()
    sizes = {}
    for size in args.sizes:
        sizes[size] = m = measure(size, args, cond)
        o, d, rc = m["ours"], m.get("datatrove"), m["ours"]["reconciliation"]
        print(f"[{m['documents']} docs, {m['planted_pairs']} planted pairs, {m['bad_documents']} bad documents; "
              f"both sides write gzip level {args.gzip_level}]")
        if d is not None:
            print(f"  datatrove: {d['docs_per_s']:.0f} docs/s ({d['seconds']:.1f}s), largest worker "
                  f"{d['largest_worker_peak_rss_mb']:.0f} MB, driver {d['driver_peak_rss_mb']:.0f} MB, "
                  f"P/R vs planted {d['vs_truth']['precision']:.3f}/{d['vs_truth']['recall']:.3f}")
        f1 = f"pairwise F1 vs datatrove {o['vs_datatrove']['f1']:.3f}, " if d is not None else ""
        print(f"  ours:      {o['docs_per_s']:.0f} docs/s ({o['seconds']:.1f}s), largest worker "
              f"{o['largest_worker_peak_rss_mb']:.0f} MB, driver {o['driver_peak_rss_mb']:.0f} MB, "
              f"P/R vs planted {o['vs_truth']['precision']:.3f}/{o['vs_truth']['recall']:.3f}, "
              f"{f1}components: {o['components']['method']}, decisions: {o['decisions']}")
        print(f"  reconciliation: {rc['units_read']} in = {rc['kept']} kept + {rc['dropped']} dropped + "
              f"{rc['rejected']} rejected {rc['rejected_by_reason']}: balanced={rc['balanced']}")
        for w in o.get("stage_rss", [])[:1]:
            rises = ", ".join(f"+{r['hwm_mb'][1] - r['hwm_mb'][0]} {' '.join(r['stages'])[:60]}"
                              for r in w["raised"])
            print(f"  largest worker's peak {w['peak_mb']} MB, raised by: {rises}")
        if "ratio" in m:
            print(f"  ratio ours/datatrove: {m['ratio']:.2f}x (goal >= {GOAL}x)")
    largest = max(sizes)
    result = {"sizes": sizes, "workers": args.workers, "decisions": args.decisions, "gzip_level": args.gzip_level,
              "goal": GOAL,
              "ratio": sizes[largest].get("ratio"),
              "machine": {**cond.finish(args.settle), "python": platform.python_version()}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")
    if result["ratio"] is not None:
        print(cond.headline(f"near-dedup docs/s at {largest} docs, ours / datatrove", result["ratio"]))
    return 0 if all(s["ours"]["reconciliation"]["balanced"] for s in sizes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""MinHash near-dedup throughput and agreement: textbooks.curate (Apache Beam) vs datatrove, same corpus.

    python bench/dedup_vs_datatrove.py [--num_bases 2000] [--dup_fraction 0.3] [--workers 2]
                                       [--modes multi_processing in_memory] [--wait_quiet 0] [--settle 150]
                                       [--out dedup_vs_datatrove.json]

Corpus: real text, CPython standard library docstrings of at least 30 words, without natural near-duplicates
(exact 5-gram Jaccard < 0.2 between any two), plus planted near-duplicates of a fraction of them (word
substitutions, an inserted sentence, swapped paragraphs, an appended line), written as gzip JSON Lines (two
files).

Both sides read those files, compute 5-gram MinHash signatures in 14 bands of 8 rows, find candidate pairs,
resolve clusters and write the kept documents:

* ours: ``ReadInputs → NearDedup → WriteShards`` (+ the cluster summaries), one Beam pipeline on the
  DirectRunner (each mode in ``--modes``; ``--workers`` processes or threads);
* datatrove 0.10.1: its four MinHash steps (signatures, buckets, clustering, filtering) with
  ``LocalPipelineExecutor`` (``--workers`` workers), with the same tokenization (lowercased ``\\w+`` runs,
  after datatrove's own text simplification) and its dependency-free SHA-1 hashing (64-bit); documents are
  read and written by two small steps with the json module (its JsonlReader/Writer need orjson).

Reported: documents per second (wall clock, end to end), the ratio ours / datatrove (goal >= 1x), and the
agreement of the duplicate clusterings: pairwise precision, recall and F1 of "same cluster" pairs (ours vs
datatrove, and each vs the planted truth).

The timed runs (datatrove, then ours in each mode) form one round of :mod:`bench.machine`, which records the
date, the CPU model, the load average before and after (``--wait_quiet``, ``--settle``) and the cores other
processes kept busy meanwhile (the worker processes count as ours). The last line is the headline ratio,
marked ``NOT A HEADLINE`` when the machine was busy.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import itertools
import json
import os
import platform
import random
import re
import sys
import sysconfig
import tempfile
import time

try:
    from bench import machine
except ImportError:  # run as a script: python bench/dedup_vs_datatrove.py
    import machine

GOAL = 1.0
_DOCSTRING = re.compile(r'^[ \t]*[rRuU]?"""(.*?)"""', re.S | re.M)


def _shingles(text: str, n: int = 5) -> set:
    words = re.findall(r"\w+", text.lower())
    return {" ".join(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}


def distinct_texts(texts: list[tuple[str, str]], max_jaccard: float = 0.2) -> list[tuple[str, str]]:
    """Drops texts whose exact 5-gram Jaccard similarity with an earlier kept text reaches ``max_jaccard``, so
    that the only near-duplicates in the corpus are the planted ones (candidates from an inverted index)."""
    kept, sets, postings = [], [], {}
    for doc_id, text in texts:
        s = _shingles(text)
        shared: dict[int, int] = {}
        for g in s:
            for j in postings.get(g, ()):
                shared[j] = shared.get(j, 0) + 1
        if any(c / (len(s) + len(sets[j]) - c) >= max_jaccard for j, c in shared.items()):
            continue
        for g in s:
            postings.setdefault(g, []).append(len(sets))
        sets.append(s)
        kept.append((doc_id, text))
    return kept


def build_corpus(num_bases: int, dup_fraction: float, seed: int = 0) -> tuple[list[dict], dict[str, str]]:
    """Returns records and the planted truth ``{doc id: base id}``."""
    import textwrap

    stdlib = sysconfig.get_paths()["stdlib"]
    texts, seen = [], set()
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "test", "tests", "__pycache__", "idlelib"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                source = open(os.path.join(root, name), encoding="utf-8").read()
            except UnicodeDecodeError:
                continue
            rel = os.path.relpath(os.path.join(root, name), stdlib)
            for m in _DOCSTRING.finditer(source):
                doc = textwrap.dedent(m.group(1)).strip()
                key = " ".join(doc.split())
                if len(doc.split()) >= 30 and key not in seen:
                    seen.add(key)
                    texts.append((f"doc/{rel}:{m.start()}", doc))
    rng = random.Random(seed)
    rng.shuffle(texts)
    bases = distinct_texts(texts)[:num_bases]
    if len(bases) < num_bases:
        print(f"note: only {len(bases)} distinct stdlib docstrings of 30+ words; using them all")
    truth = {doc_id: doc_id for doc_id, _ in bases}
    docs = list(bases)
    for i, (doc_id, text) in enumerate(bases[: int(dup_fraction * len(bases))]):
        words = text.split(" ")
        kind = i % 4
        if kind == 0:
            for _ in range(max(1, len(words) // 100)):
                words[rng.randrange(len(words))] = rng.choice(words)
            new = " ".join(words)
        elif kind == 1:
            cut = rng.randrange(1, max(len(words), 2))
            new = " ".join(words[:cut] + ["This sentence was added to the copy."] + words[cut:])
        elif kind == 2:
            paras = text.split("\n\n")
            if len(paras) > 2:
                j = rng.randrange(len(paras) - 1)
                paras[j], paras[j + 1] = paras[j + 1], paras[j]
            new = "\n\n".join(paras) + ("" if len(paras) > 2 else "\n\nSee the module documentation.")
        else:
            new = text + "\n\nCopied from the Python standard library."
        docs.append((f"{doc_id}#copy", new))
        truth[f"{doc_id}#copy"] = doc_id
    rng.shuffle(docs)
    records = [{"id": i, "text": t, "role": "web_raw", "source": "stdlib", "license": "PSF-2.0", "split": "train",
                "meta": {}} for i, t in docs]
    return records, truth


def write_inputs(records: list[dict], directory: str, files: int = 2) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    for k in range(files):
        path = os.path.join(directory, f"train-{k:05d}-of-{files:05d}.jsonl.gz")
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for r in records[k::files]:
                f.write(json.dumps(r) + "\n")
        paths.append(path)
    return paths


def run_ours(input_dir: str, out_dir: str, mode: str, workers: int) -> tuple[float, list[list[str]]]:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from textbooks.curate import writers
    from textbooks.curate.dedup import MinHashConfig, NearDedup
    from textbooks.curate.input_specs import ReadConfig
    from textbooks.curate.io import ReadInputs

    start = time.perf_counter()
    options = PipelineOptions(runner="DirectRunner", direct_running_mode=mode, direct_num_workers=workers)
    with beam.Pipeline(options=options) as p:
        read = p | "Read" >> ReadInputs([input_dir], ReadConfig(check_unique_ids=False), ("train",))
        out = read["records"] | "Dedup" >> NearDedup(MinHashConfig(shingle_size=5, num_bands=14, rows_per_band=8))
        out["kept"] | "WriteKept" >> writers.WriteShards(out_dir, "train", 2)
        out["clusters"] | "WriteClusters" >> writers.WriteJsonl(os.path.join(out_dir, "clusters"))
    elapsed = time.perf_counter() - start
    clusters = []
    for path in glob.glob(os.path.join(out_dir, "clusters-*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            clusters += [json.loads(line)["members"] for line in f if line.strip()]
    return elapsed, clusters


def run_datatrove(input_dir: str, work: str, workers: int, files: int) -> tuple[float, list[list[str]]]:
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
            with gzip.open(os.path.join(work, "kept", f"{rank:05d}.jsonl.gz"), "wt", encoding="utf-8") as f:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_bases", type=int, default=2000)  # capped by the distinct docstrings
    parser.add_argument("--dup_fraction", type=float, default=0.3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["multi_processing", "in_memory"],
                        choices=["multi_processing", "multi_threading", "in_memory"])
    parser.add_argument("--out", default="dedup_vs_datatrove.json")
    machine.add_arguments(parser)
    args = parser.parse_args(argv)
    cond = machine.Conditions(args.wait_quiet)  # before this process loads the machine itself
    import logging

    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    from loguru import logger as loguru_logger

    loguru_logger.remove()
    records, truth = build_corpus(args.num_bases, args.dup_fraction)
    true_groups: dict[str, list[str]] = {}
    for doc_id, base in truth.items():
        true_groups.setdefault(base, []).append(doc_id)
    true_groups = [g for g in true_groups.values() if len(g) > 1]
    n = len(records)
    with tempfile.TemporaryDirectory() as tmp:
        write_inputs(records, os.path.join(tmp, "input"))
        ours = {}
        with cond.round():
            dt_time, dt_clusters = run_datatrove(os.path.join(tmp, "input"), os.path.join(tmp, "dt"), args.workers,
                                                 2)
            for mode in args.modes:
                t, clusters = run_ours(os.path.join(tmp, "input"), os.path.join(tmp, f"ours_{mode}"), mode,
                                       args.workers)
                ours[mode] = {"seconds": t, "docs_per_s": n / t, "clusters": clusters}
    best_mode = min(ours, key=lambda m: ours[m]["seconds"])
    best = ours[best_mode]
    result = {
        "documents": n, "planted_pairs": len(pairs(true_groups)), "workers": args.workers,
        "machine": {**cond.finish(args.settle), "python": platform.python_version()},
        "datatrove": {"version": __import__("datatrove").__version__ if hasattr(__import__("datatrove"),
                                                                                  "__version__") else "0.10.1",
                      "seconds": dt_time, "docs_per_s": n / dt_time, "clusters": len(dt_clusters),
                      "vs_truth": agreement(dt_clusters, true_groups)},
        "ours": {m: {"seconds": v["seconds"], "docs_per_s": v["docs_per_s"], "clusters": len(v["clusters"]),
                     "vs_truth": agreement(v["clusters"], true_groups),
                     "vs_datatrove": agreement(v["clusters"], dt_clusters)} for m, v in ours.items()},
        "best_mode": best_mode, "ratio": dt_time / best["seconds"], "goal": GOAL,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"documents: {n} ({result['planted_pairs']} planted duplicate pairs), workers: {args.workers}")
    print(f"datatrove: {result['datatrove']['docs_per_s']:.0f} docs/s ({dt_time:.1f}s), "
          f"F1 vs planted {result['datatrove']['vs_truth']['f1']:.3f}")
    for m, v in result["ours"].items():
        print(f"ours [{m}]: {v['docs_per_s']:.0f} docs/s ({v['seconds']:.1f}s), F1 vs planted "
              f"{v['vs_truth']['f1']:.3f}, pairwise F1 vs datatrove {v['vs_datatrove']['f1']:.3f}")
    print(f"ratio ours/datatrove (docs/s, best mode {best_mode}): {result['ratio']:.2f}x (goal >= {GOAL:.0f}x)")
    print(f"wrote {args.out}")
    print(cond.headline(f"near-dedup docs/s, ours ({best_mode}) / datatrove", result["ratio"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

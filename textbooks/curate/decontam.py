"""Decontamination against the evaluation benchmarks (HumanEval, MBPP, GSM8K and the phi-1.5 suite).

Two checks, each removal recorded with the benchmark item it matched:

* **n-gram overlap** (GPT-3's method): the normalized word tokens of every benchmark item
  (``textbooks.evaluate.benchmarks.benchmark_texts``) give 13-grams (``ngram_size``); items shorter than that
  but at least ``min_item_tokens`` long are indexed whole. A document sharing ``min_matches`` of them with one
  item is contaminated; the record names the benchmark, item id and the first matching n-gram. N-grams found
  in more than ``max_items_per_ngram`` items are template text ("which of the following") and ignored.
* **code similarity** (phi-1's check, for Python documents): every function of the document is compared
  with every benchmark solution function by embedding cosine similarity (MiniLM or phi embeddings); for the
  ``top_k`` nearest, the normalized AST similarity is computed (:mod:`textbooks.curate.code_similarity`).
  A pair reaching both thresholds is a match. Test harnesses in benchmark items (HumanEval's ``check``, MBPP's
  asserts) are not indexed: only solutions are.

The index is built once on the driver (:func:`build_index`), saved next to the outputs (``decontam/``) and
loaded by each worker in ``DoFn.setup``; the Beam stage is :class:`Decontaminate`; :func:`find_contamination`
checks one text from Python.
"""

from __future__ import annotations

import dataclasses
import io as _io
import json
import logging
from typing import Iterable, Sequence

import apache_beam as beam
import gin
import numpy as np
from apache_beam.io.filesystems import FileSystems

from textbooks.curate import stages
from textbooks.curate.code_similarity import ast_similarity, extract_functions
from textbooks.curate.embeddings import EncoderSpec, embed_texts, get_encoder
from textbooks.curate.heuristics import record_language
from textbooks.curate.textnorm import hash_words, ngram_hashes, word_tokens
from textbooks.evaluate.benchmarks import benchmark_texts

logger = logging.getLogger(__name__)
STAGE = "decontam"
MATCHES = "matches"
PHI15_SUITE = ("piqa", "hellaswag", "arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa", "siqa",
               "mmlu")
DEFAULT_BENCHMARKS = ("humaneval", "mbpp", "gsm8k") + PHI15_SUITE


@gin.configurable
@dataclasses.dataclass
class CodeDecontamConfig:
    """phi-1's embedding + AST check for Python documents.

    Attributes:
        benchmarks: code benchmarks whose solution functions are compared.
        encoder: embeddings for the cosine similarity.
        embedding_threshold / ast_threshold: a function pair matches when both are reached.
        top_k: benchmark functions (nearest by embedding) whose AST is compared, per document function.
        min_ast_nodes: smaller functions (trivial one-liners) are not compared.
        max_functions_per_doc: functions of one document checked at most.
        default_language: language of records whose ``meta`` names none (only ``python`` is checked).
    """

    benchmarks: tuple[str, ...] = ("humaneval", "mbpp")
    encoder: EncoderSpec = EncoderSpec(max_length=256, batch_size=32)
    embedding_threshold: float = 0.7
    ast_threshold: float = 0.8
    top_k: int = 5
    min_ast_nodes: int = 20
    max_functions_per_doc: int = 200
    default_language: str | None = None


@gin.configurable
@dataclasses.dataclass
class DecontamConfig:
    """Decontamination settings.

    Attributes:
        benchmarks: names for ``benchmark_texts`` (default: HumanEval, MBPP, GSM8K and the phi-1.5 suite).
        ngram_size: n of the n-gram overlap (GPT-3: 13).
        min_item_tokens: shorter items are not indexed (too generic to mean contamination).
        max_items_per_ngram: n-grams shared by more items are ignored (template text).
        min_matches: matching n-grams with one item needed to flag a document.
        code: the code similarity check (None: off).
        batch_size: documents per batch (for the embedding of code).
    """

    benchmarks: tuple[str, ...] = DEFAULT_BENCHMARKS
    ngram_size: int = 13
    min_item_tokens: int = 8
    max_items_per_ngram: int = 10
    min_matches: int = 1
    code: CodeDecontamConfig | None = None
    batch_size: int = 64


@dataclasses.dataclass
class BenchmarkItem:
    benchmark: str
    item_id: str
    text: str


def load_benchmark_items(names: Sequence[str]) -> list[BenchmarkItem]:
    """Items of the named benchmarks from ``textbooks.evaluate.benchmarks.benchmark_texts``."""
    return [BenchmarkItem(name, item_id, text) for name in names for item_id, text in benchmark_texts(name)]


class DecontamIndex:
    """N-gram hashes (sorted) with the item each came from, plus benchmark code functions and embeddings."""

    def __init__(self, hashes: np.ndarray, item_of: np.ndarray, windows: list[int], items: list[tuple[str, str]],
                 code_items: list[int] | None = None, code_sequences: list[list[str]] | None = None,
                 code_embeddings: np.ndarray | None = None, code_sources: list[str] | None = None):
        self.hashes = hashes
        self.item_of = item_of
        self.windows = windows
        self.items = items
        self.code_items = code_items or []
        self.code_sequences = code_sequences or []
        self.code_embeddings = code_embeddings
        self.code_sources = code_sources or []

    def save(self, path_prefix: str) -> list[str]:
        """Writes ``<prefix>.npz`` (arrays) and ``<prefix>.json`` (items, code ASTs); local or remote."""
        buf = _io.BytesIO()
        arrays = {"hashes": self.hashes, "item_of": self.item_of}
        if self.code_embeddings is not None:
            arrays["code_embeddings"] = self.code_embeddings
        np.savez(buf, **arrays)
        meta = {"windows": self.windows, "items": self.items, "code_items": self.code_items,
                "code_sequences": self.code_sequences, "code_sources": self.code_sources}
        with FileSystems.create(path_prefix + ".npz") as f:
            f.write(buf.getvalue())
        with FileSystems.create(path_prefix + ".json") as f:
            f.write(json.dumps(meta).encode())
        return [path_prefix + ".npz", path_prefix + ".json"]

    @classmethod
    def load(cls, path_prefix: str) -> "DecontamIndex":
        with FileSystems.open(path_prefix + ".npz", compression_type="uncompressed") as f:
            arrays = np.load(_io.BytesIO(f.read()))
            arrays = {k: arrays[k] for k in arrays.files}
        with FileSystems.open(path_prefix + ".json", compression_type="uncompressed") as f:
            meta = json.loads(f.read().decode())
        return cls(arrays["hashes"], arrays["item_of"], meta["windows"], [tuple(i) for i in meta["items"]],
                   meta["code_items"], meta["code_sequences"], arrays.get("code_embeddings"), meta["code_sources"])

    def summary(self) -> dict:
        per_bench: dict[str, int] = {}
        for bench, _ in self.items:
            per_bench[bench] = per_bench.get(bench, 0) + 1
        return {"items": per_bench, "ngrams": int(len(self.hashes)), "windows": self.windows,
                "code_functions": len(self.code_items)}


def build_index(config: DecontamConfig, items: Iterable[BenchmarkItem] | None = None) -> DecontamIndex:
    """Builds the index from ``items`` (default: :func:`load_benchmark_items` of ``config.benchmarks``)."""
    items = list(items) if items is not None else load_benchmark_items(config.benchmarks)
    n = config.ngram_size
    all_hashes, all_items = [], []
    windows = {n}
    for idx, item in enumerate(items):
        tokens = word_tokens(item.text)
        if len(tokens) < config.min_item_tokens:
            continue
        w = min(n, len(tokens))
        windows.add(w)
        grams = np.unique(ngram_hashes(hash_words(tokens), w))
        all_hashes.append(grams)
        all_items.append(np.full(len(grams), idx, dtype=np.int32))
    hashes = np.concatenate(all_hashes) if all_hashes else np.zeros(0, np.uint64)
    item_of = np.concatenate(all_items) if all_items else np.zeros(0, np.int32)
    order = np.argsort(hashes, kind="stable")
    hashes, item_of = hashes[order], item_of[order]
    uniq, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    keep = counts <= config.max_items_per_ngram
    hashes, item_of = uniq[keep], item_of[first[keep]]
    index = DecontamIndex(hashes, item_of, sorted(windows), [(i.benchmark, i.item_id) for i in items])
    if config.code is not None:
        code_items, seqs, sources = [], [], []
        for idx, item in enumerate(items):
            if item.benchmark not in config.code.benchmarks:
                continue
            for unit in extract_functions(item.text, min_nodes=config.code.min_ast_nodes, skip_tests=True):
                code_items.append(idx)
                seqs.append(unit.sequence)
                sources.append(unit.code)
        index.code_items, index.code_sequences, index.code_sources = code_items, seqs, sources
        index.code_embeddings = embed_texts(sources, config.code.encoder, desc="embedding benchmark functions") \
            if sources else np.zeros((0, 1), np.float32)
    logger.info("decontamination index: %s", index.summary())
    return index


def ngram_matches(text: str, index: DecontamIndex, config: DecontamConfig) -> dict | None:
    """The benchmark item ``text`` shares most n-grams with, if at least ``min_matches``; else None."""
    if len(index.hashes) == 0:
        return None
    tokens = word_tokens(text)
    if not tokens:
        return None
    word_hashes = hash_words(tokens)
    hits: dict[int, list[tuple[int, int]]] = {}
    for w in index.windows:
        grams = ngram_hashes(word_hashes, w)
        if len(grams) == 0:
            continue
        pos = np.searchsorted(index.hashes, grams)
        pos[pos >= len(index.hashes)] = 0
        found = np.nonzero(index.hashes[pos] == grams)[0]
        for start in found.tolist():
            hits.setdefault(int(index.item_of[pos[start]]), []).append((start, w))
    if not hits:
        return None
    item, where = max(hits.items(), key=lambda kv: (len(kv[1]), -kv[0]))
    if len(where) < config.min_matches:
        return None
    start, w = where[0]
    bench, item_id = index.items[item]
    return {"method": "ngram", "benchmark": bench, "item_id": item_id, "ngram": " ".join(tokens[start:start + w]),
            "ngram_size": w, "matched_ngrams": len(where)}


def code_matches(units_embeddings: np.ndarray, units: list, index: DecontamIndex,
                 cfg: CodeDecontamConfig) -> dict | None:
    """The best (embedding, AST) match of a document's functions against the benchmark functions, or None."""
    if not units or index.code_embeddings is None or len(index.code_items) == 0:
        return None
    sims = units_embeddings @ index.code_embeddings.T
    best = None
    for i, unit in enumerate(units):
        top = np.argsort(-sims[i])[: cfg.top_k]
        for j in top.tolist():
            cos = float(sims[i, j])
            if cos < cfg.embedding_threshold:
                break
            ast_sim = ast_similarity(unit.sequence, index.code_sequences[j])
            if ast_sim >= cfg.ast_threshold and (best is None or (cos + ast_sim) > best[0]):
                best = (cos + ast_sim, i, j, cos, ast_sim)
    if best is None:
        return None
    _, i, j, cos, ast_sim = best
    bench, item_id = index.items[index.code_items[j]]
    return {"method": "code_similarity", "benchmark": bench, "item_id": item_id, "function": units[i].name,
            "embedding_similarity": round(cos, 4), "ast_similarity": round(ast_sim, 4)}


def find_contamination_batch(texts: Sequence[str], index: DecontamIndex, config: DecontamConfig,
                             is_python: Sequence[bool] | None = None) -> list[dict | None]:
    """Checks documents (from Python or a Beam worker): one match record or None per text.

    The n-gram check runs first; Python documents without an n-gram match then get the code check, with the
    functions of all documents embedded together.
    """
    is_python = list(is_python) if is_python is not None else [False] * len(texts)
    found: list[dict | None] = [ngram_matches(t, index, config) for t in texts]
    if config.code is None:
        return found
    code_units = {}
    for i, text in enumerate(texts):
        if found[i] is None and is_python[i]:
            units = extract_functions(text, min_nodes=config.code.min_ast_nodes,
                                      max_functions=config.code.max_functions_per_doc)
            if units:
                code_units[i] = units
    if code_units:
        emb = get_encoder(config.code.encoder).embed([u.code for units in code_units.values() for u in units])
        offset = 0
        for i, units in code_units.items():
            found[i] = code_matches(emb[offset:offset + len(units)], units, index, config.code)
            offset += len(units)
    return found


def find_contamination(text: str, index: DecontamIndex, config: DecontamConfig, *,
                       is_python: bool = False) -> dict | None:
    """Checks one document: the match record, or None when clean (see :func:`find_contamination_batch`)."""
    return find_contamination_batch([text], index, config, [is_python])[0]


class _DecontamDoFn(beam.DoFn):
    def __init__(self, config: DecontamConfig, index_prefix: str, stage: str):
        self.config = config
        self.index_prefix = index_prefix
        self.stage = stage

    def setup(self):
        self.index = DecontamIndex.load(self.index_prefix)
        self.counters = stages.StageCounters(self.stage)
        if self.config.code is not None:
            get_encoder(self.config.code.encoder)  # Load once per worker, before the first batch.

    def process(self, batch: list[dict]):
        default = self.config.code.default_language if self.config.code is not None else None
        python = [record_language(r.get("meta"), default) == "python" for r in batch]
        found = find_contamination_batch([r["text"] for r in batch], self.index, self.config, python)
        for i, record in enumerate(batch):
            tokens = self.counters.seen(record)
            match = found[i]
            if match is None:
                self.counters.kept(record, tokens)
                yield record
                continue
            reason = "benchmark_ngram" if match["method"] == "ngram" else "benchmark_code_similarity"
            self.counters.dropped(record, reason, tokens)
            self.counters.inc(f"matched/{match['benchmark']}")
            yield beam.pvalue.TaggedOutput(MATCHES, dict(match, id=record["id"]))
            yield beam.pvalue.TaggedOutput(stages.DROPPED, stages.mark_dropped(record, self.stage, reason,
                                                                                 match=match))


class Decontaminate(beam.PTransform):
    """Beam stage: drops documents that overlap a benchmark item; returns ``kept``, ``dropped``, ``matches``.

    Args:
        config: the settings.
        index_prefix: where :meth:`DecontamIndex.save` wrote the index (built on the driver beforehand).
    """

    def __init__(self, config: DecontamConfig, index_prefix: str, stage: str = STAGE):
        super().__init__()
        self.config = config
        self.index_prefix = index_prefix
        self.stage = stage

    def expand(self, records):
        out = (records
               | "Batch" >> beam.BatchElements(min_batch_size=min(8, self.config.batch_size),
                                               max_batch_size=self.config.batch_size)
               | "Check" >> beam.ParDo(_DecontamDoFn(self.config, self.index_prefix, self.stage)).with_outputs(
                       stages.DROPPED, MATCHES, main="kept"))
        return {"kept": out.kept, "dropped": out[stages.DROPPED], "matches": out[MATCHES]}

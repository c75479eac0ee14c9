"""Decontamination catches planted benchmark items (verbatim and lightly edited) and leaves clean text alone."""

import ast
import random

import apache_beam as beam
import pytest

import curate_testdata as td
from textbooks.curate import decontam
from textbooks.curate.code_similarity import ast_similarity, extract_functions
from textbooks.curate.embeddings import EncoderSpec
from textbooks.curate.textnorm import word_tokens

TEXT_BENCHMARKS = ("humaneval", "mbpp", "gsm8k", "piqa")
ENCODER = EncoderSpec(max_length=128, batch_size=32)


@pytest.fixture(scope="module")
def items():
    return decontam.load_benchmark_items(TEXT_BENCHMARKS)


@pytest.fixture(scope="module")
def text_index(items):
    return decontam.build_index(decontam.DecontamConfig(benchmarks=TEXT_BENCHMARKS), items)


def _edit(text: str, rng: random.Random) -> str:
    """Light edits: case and whitespace changes, punctuation removed, one word in 40 replaced."""
    words = text.split()
    for _ in range(max(1, len(words) // 40)):
        words[rng.randrange(len(words))] = rng.choice(["foo", "thing", "value", "item"])
    out = " ".join(words).replace(",", "").replace(";", "")
    return out.upper() if rng.random() < 0.5 else out


def _planted(items, rng, per_benchmark=25):
    docs, clean = [], td.stdlib_docstrings(min_words=60)
    for bench in TEXT_BENCHMARKS:
        pool = [i for i in items if i.benchmark == bench and len(word_tokens(i.text)) >= 40]
        for k, item in enumerate(rng.sample(pool, per_benchmark)):
            body = item.text if k % 2 == 0 else _edit(item.text, rng)
            prefix, suffix = rng.choice(clean)[1][:400], rng.choice(clean)[1][:400]
            docs.append((item, f"{prefix}\n\n{body}\n\n{suffix}", "verbatim" if k % 2 == 0 else "edited"))
    return docs


def test_ngram_decontam_recall_and_false_positives(items, text_index):
    cfg = decontam.DecontamConfig(benchmarks=TEXT_BENCHMARKS)
    rng = random.Random(0)
    planted = _planted(items, rng)
    hits = correct = 0
    for item, doc, _ in planted:
        match = decontam.find_contamination(doc, text_index, cfg)
        if match is not None:
            hits += 1
            correct += (match["benchmark"], match["item_id"]) == (item.benchmark, item.item_id)
            assert match["method"] == "ngram" and len(match["ngram"].split()) == 13
    recall = hits / len(planted)
    assert recall >= 0.95, recall
    assert correct / max(hits, 1) >= 0.95
    clean = [t for _, t in td.stdlib_docstrings(min_words=60)[:300]] + \
        [t for _, t in td.stdlib_functions(max_docs=60)]
    flagged = [t[:80] for t in clean if decontam.find_contamination(t, text_index, cfg) is not None]
    assert len(flagged) <= 0.01 * len(clean), flagged


def test_short_items_and_template_ngrams():
    template = "according to the passage which of the following statements about the topic is most likely true"
    items = [decontam.BenchmarkItem("b", "1", "what is the boiling point of water at sea level in celsius"),
             decontam.BenchmarkItem("b", "2", "too short item"),
             *[decontam.BenchmarkItem("t", str(i), f"{template} item {i} concerns the history of city {i}")
               for i in range(20)]]
    cfg = decontam.DecontamConfig(min_item_tokens=8, max_items_per_ngram=5)
    index = decontam.build_index(cfg, items)
    assert index.windows == [12, 13]  # the 12-token item is indexed whole
    m = decontam.find_contamination("Q: What is the boiling point of water at sea level in Celsius? 100.", index, cfg)
    assert m["item_id"] == "1" and m["ngram_size"] == 12
    assert decontam.find_contamination("a too short item", index, cfg) is None
    # 13-grams of the template appear in 20 items (> 5): template text, ignored; item-specific ones are kept.
    assert decontam.find_contamination(f"{template}.", index, cfg) is None
    assert decontam.find_contamination(f"{template} item 7 concerns the history of city 7", index,
                                       cfg)["item_id"] == "7"


class _Rename(ast.NodeTransformer):
    def __init__(self, names):
        self.names = names

    def visit_Name(self, node):
        node.id = self.names.get(node.id, node.id)
        return node

    def visit_arg(self, node):
        node.arg = self.names.get(node.arg, node.arg)
        return node


def _disguise(source: str) -> str:
    """Renames arguments and local variables and drops docstrings and comments (ast round trip)."""
    tree = ast.parse(source)
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) or (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)):
            name = node.arg if isinstance(node, ast.arg) else node.id
            names.setdefault(name, f"var_{len(names)}")
    tree = _Rename(names).visit(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.Module)) and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(getattr(node.body[0], "value", None), ast.Constant):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def test_code_similarity_catches_disguised_solutions(items):
    # A sample of HumanEval keeps the embedding work small on CPU; the planted items are among it.
    humaneval = random.Random(2).sample([i for i in items if i.benchmark == "humaneval"], 40)
    cfg = decontam.DecontamConfig(benchmarks=("humaneval",),
                                  code=decontam.CodeDecontamConfig(benchmarks=("humaneval",), encoder=ENCODER))
    index = decontam.build_index(cfg, humaneval)
    rng = random.Random(1)
    planted = []
    for item in rng.sample(humaneval, 20):
        parsed = extract_functions(item.text, min_nodes=20, skip_tests=True)
        if parsed:
            planted.append((item, "import math\n\n" + _disguise(parsed[0].source) + "\n"))
    assert len(planted) >= 15
    clean = [src for _, src in td.stdlib_functions(min_lines=10, max_docs=25)]
    texts = [code for _, code in planted] + clean
    matches = decontam.find_contamination_batch(texts, index, cfg, is_python=[True] * len(texts))
    hits = sum(m is not None and m["item_id"] == item.item_id for (item, _), m in zip(planted, matches))
    assert hits / len(planted) >= 0.95, (hits, len(planted), matches[:len(planted)])
    by_code = [m for m in matches[:len(planted)] if m is not None and m["method"] == "code_similarity"]
    assert by_code and all(m["embedding_similarity"] >= 0.7 and m["ast_similarity"] >= 0.8 for m in by_code)
    flagged = [c[:60] for c, m in zip(clean, matches[len(planted):]) if m is not None]
    assert len(flagged) <= 1, flagged


def test_ast_similarity_ignores_names_and_docstrings():
    a = extract_functions("def f(x, y):\n    '''Doc.'''\n    total = x + y\n    return total * 2\n")[0]
    b = extract_functions("def g(p, q):\n    s = p + q\n    return s * 2\n")[0]
    c = extract_functions("def h(items):\n    for i in items:\n        print(i)\n")[0]
    assert ast_similarity(a.sequence, b.sequence) == 1.0
    assert ast_similarity(a.sequence, c.sequence) < 0.6


def test_decontam_beam_stage_records_matches(items, text_index, tmp_path):
    cfg = decontam.DecontamConfig(benchmarks=TEXT_BENCHMARKS)
    prefix = str(tmp_path / "index")
    text_index.save(prefix)
    item = next(i for i in items if i.item_id == "HumanEval/0")
    docs = [{"id": "dirty", "text": "Here is a solution.\n" + item.text, "role": "r", "source": "s", "license": "l",
             "split": "train", "meta": {}},
            {"id": "clean", "text": td.stdlib_docstrings(min_words=60)[0][1], "role": "r", "source": "s",
             "license": "l", "split": "train", "meta": {}}]
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(docs) | decontam.Decontaminate(cfg, prefix)
        load = td.collect({"kept": out["kept"] | "k" >> beam.Map(lambda r: r["id"]), "matches": out["matches"],
                           "dropped": out["dropped"]}, str(tmp_path))
    res = load()
    assert res["kept"] == ["clean"]
    assert [(m["id"], m["benchmark"], m["item_id"]) for m in res["matches"]] == [("dirty", "humaneval", "HumanEval/0")]
    assert res["dropped"][0]["meta"]["curation"]["match"]["item_id"] == "HumanEval/0"

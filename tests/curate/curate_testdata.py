"""Test corpora for the curation tests, built from real local text.

Preferred: the shards of the local corpora builder (``textbooks corpora``) under the data root. Otherwise the
CPython standard library (module/class/function docstrings as textbook-like prose, functions as code) and
web-like noisy pages assembled from real stdlib words around typical web boilerplate.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import random
import re
import sysconfig
import warnings

from textbooks.curate.textnorm import word_tokens

STDLIB = sysconfig.get_paths()["stdlib"]
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib2to3", "__pycache__", "turtledemo"}


def stdlib_files(limit: int | None = None) -> list[str]:
    """Sorted stdlib ``.py`` files (no tests, no site-packages)."""
    out = []
    for root, dirs, files in os.walk(STDLIB):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        out += [os.path.join(root, f) for f in sorted(files) if f.endswith(".py")]
    out.sort()
    return out[:limit] if limit else out


def _parse(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return source, ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None, None


@functools.lru_cache(maxsize=None)
def _stdlib_sources() -> tuple:
    out = []
    for path in stdlib_files():
        try:
            with open(path, encoding="utf-8") as f:
                out.append((path, f.read()))
        except UnicodeDecodeError:
            continue
    return tuple(out)


_DOCSTRING = re.compile(r'^[ \t]*[rRuU]?"""(.*?)"""', re.S | re.M)


def stdlib_docstrings(min_words: int = 100, max_docs: int | None = None) -> list[tuple[str, str]]:
    """``(id, text)`` of stdlib docstrings (triple-quoted strings opening a line) with at least ``min_words``
    words, unique, in file order; indentation is removed."""
    import textwrap

    seen, out = set(), []
    for path, source in _stdlib_sources():
        rel = os.path.relpath(path, STDLIB)
        for m in _DOCSTRING.finditer(source):
            doc = textwrap.dedent(m.group(1)).strip()
            if len(doc.split()) < min_words:
                continue
            key = " ".join(doc.split())
            if key in seen:
                continue
            seen.add(key)
            out.append((f"docstring/{rel}:{source.count(chr(10), 0, m.start()) + 1}", doc))
            if max_docs and len(out) >= max_docs:
                return out
    return out


def stdlib_functions(min_lines: int = 8, max_docs: int | None = None, max_files: int = 60) -> list[tuple[str, str]]:
    """``(id, source)`` of top-level functions with at least ``min_lines`` lines from the first ``max_files``
    stdlib files."""
    out = []
    for path in stdlib_files()[:max_files]:
        source, tree = _parse(path)
        if tree is None:
            continue
        rel = os.path.relpath(path, STDLIB)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 >= min_lines:
                seg = ast.get_source_segment(source, node)
                if seg:
                    out.append((f"function/{rel}:{node.name}", seg))
                    if max_docs and len(out) >= max_docs:
                        return out
    return out


def role_records(role: str, n: int, seed: int = 0, sources: tuple[str, ...] | None = None) -> list[dict] | None:
    """A deterministic sample of ``n`` records of a corpora-builder role, or None when it is not built."""
    from textbooks.data import paths, records
    from textbooks.data.manifest import MANIFEST_NAME

    directory = paths.role_dir(role)
    if not os.path.exists(os.path.join(directory, MANIFEST_NAME)):
        return None
    recs = [r.to_dict() for r in records.iter_records(directory)
            if sources is None or r.source in sources]
    rng = random.Random(seed)
    rng.shuffle(recs)
    return recs[:n] if len(recs) >= n else None


def textbook_like(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Textbook-like prose: the Python docs of ``synthetic_textbooks`` if built, else stdlib docstrings."""
    recs = role_records("synthetic_textbooks", n, seed)
    if recs:
        return [(r["id"], r["text"]) for r in recs]
    docs = stdlib_docstrings(min_words=120)
    random.Random(seed).shuffle(docs)
    return docs[:n]


_BOILERPLATE = [
    "Home | About Us | Contact | Privacy Policy | Terms of Use",
    "This site uses cookies. By continuing to browse you agree to our use of cookies.",
    "Click here to subscribe to our newsletter!!!", "Share on Facebook Share on Twitter Pin it",
    "BEST PRICES GUARANTEED - FREE SHIPPING ON ORDERS OVER $50", "Posted by admin at 3:45 PM 0 comments",
    "Please enable JavaScript to view the comments.", "Copyright 2012 All rights reserved.",
    "Related posts:", "Tags: cheap, best, top 10, review, discount, online, buy",
]


def web_like_noise(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Noisy web-like pages: the noisy sources of ``web_raw`` if built (fortunes, jargon, c4, oscar), else pages
    of real stdlib words in random order around web boilerplate."""
    recs = role_records("web_raw", n, seed, sources=("fortunes", "jargon-file", "c4", "oscar"))
    if recs:
        return [(r["id"], r["text"]) for r in recs]
    rng = random.Random(seed)
    vocab = sorted({w for _, d in stdlib_docstrings(min_words=60)[:200] for w in d.split() if w.isalpha()})
    out = []
    for i in range(n):
        lines = rng.sample(_BOILERPLATE, 4)
        for _ in range(rng.randint(3, 8)):
            lines.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(4, 25))))
        rng.shuffle(lines)
        out.append((f"noise/{i}", "\n".join(lines)))
    return out


def shingles(text: str, n: int = 5) -> set:
    w = word_tokens(text)
    return {tuple(w[i:i + n]) for i in range(max(len(w) - n + 1, 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / max(len(sa | sb), 1)


def light_edit(text: str, rng: random.Random, every: int = 100) -> str:
    """Replaces about one word in ``every`` with a nearby word of the same text."""
    words = text.split(" ")
    for _ in range(max(1, len(words) // every)):
        i = rng.randrange(len(words))
        words[i] = rng.choice(words)
    return " ".join(words)


def insert_sentence(text: str, sentence: str, rng: random.Random) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text)
    i = rng.randrange(1, max(len(parts), 2))
    return " ".join(parts[:i] + [sentence] + parts[i:])


def swap_paragraphs(text: str, rng: random.Random) -> str:
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paras) < 3:
        sents = re.split(r"(?<=[.!?])\s+", text)
        if len(sents) < 3:
            return text + "\n\n(Revised.)"
        i = rng.randrange(len(sents) - 1)
        sents[i], sents[i + 1] = sents[i + 1], sents[i]
        return " ".join(sents)
    i = rng.randrange(len(paras) - 1)
    paras[i], paras[i + 1] = paras[i + 1], paras[i]
    return "\n\n".join(paras)


def write_jsonl(path: str, objs, gz: bool = False) -> None:
    import gzip

    data = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def collect(pcolls: dict, directory: str) -> dict:
    """Adds a JSON Lines sink per PCollection (run the pipeline after this); returns a loader:
    ``load()`` gives ``{name: [elements]}`` (tuples come back as lists)."""
    import glob

    import apache_beam as beam

    for name, pc in pcolls.items():
        (pc | f"json_{name}" >> beam.Map(lambda x: json.dumps(x, default=str))
         | f"write_{name}" >> beam.io.WriteToText(os.path.join(directory, name), file_name_suffix=".jsonl"))

    def load():
        out = {}
        for name in pcolls:
            out[name] = [json.loads(line) for path in sorted(glob.glob(os.path.join(directory, name + "*.jsonl")))
                         for line in open(path) if line.strip()]
        return out

    return load

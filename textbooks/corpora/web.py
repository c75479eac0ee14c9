"""Web text and a noisy prose pool: ``web_raw`` (unfiltered) and ``web_filtered`` (heuristic filter).

Web samples come from three files of the PyPI ``evals`` wheel (see :mod:`textbooks.corpora.assets`):
1,000 OpenWebText excerpts and 1,000 Wikipedia paragraphs (field ``"0"`` of each line is the original
text; the other fields are shuffled variants and are ignored) and 50 rows each of C4, OpenWebText, OSCAR and
Wikipedia. The noisy pool is the Debian ``fortunes`` databases and the Jargon File.

``web_filtered`` keeps Wikipedia and OpenWebText documents that pass :func:`quality_heuristics` (Gopher-style
rules). The educational-value classifier of phi-1.5-web is applied by ``textbooks curate``, not here.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from typing import Iterator

from textbooks.corpora import assets
from textbooks.corpora.document import Document

OWT_FILE = "evals/registry/data/schelling_point/owt_5.jsonl"
WIKI_FILE = "evals/registry/data/schelling_point/wikipedia_5.jsonl"
SAMPLES_FILE = "evals/registry/data/text_compression/samples.jsonl"
# text_compression "type" -> our source name.
SAMPLE_TYPES = {"openwebtext": "openwebtext", "c4": "c4", "oscar": "oscar", "wikipedia": "wikipedia"}
FILTER_NOTE = ("heuristic filter only (textbooks.corpora.web.quality_heuristics); the educational-value "
               "classifier filter comes from `textbooks curate`")

_STOP_WORDS = frozenset("the be to of and that have with".split())
_WORD = re.compile(r"\S+")
_OVERSTRIKE = re.compile(r".\x08")


def _jsonl(path: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, json.loads(line)


def _meta(**kw) -> dict:
    return dict({"stand_in": None}, **kw)


def schelling_documents(relpath: str, source: str) -> Iterator[Document]:
    """The original texts (field "0") of a schelling_point file."""
    short = os.path.basename(relpath).split(".")[0]
    for lineno, row in _jsonl(assets.evals_file(relpath)):
        text = str(row.get("0", "")).strip()
        if text:
            yield Document(id=f"{source}:{short}/{lineno:05d}", text=text + "\n", source=source,
                           meta=_meta(file=relpath, line=lineno, package="evals==3.0.1.post1"))


def sample_documents(sources: tuple[str, ...]) -> dict[str, Iterator[Document]]:
    """The text_compression rows of the given sources, one iterator per source."""
    rows: dict[str, list[Document]] = {s: [] for s in sources}
    for lineno, row in _jsonl(assets.evals_file(SAMPLES_FILE)):
        source = SAMPLE_TYPES.get(row.get("type", ""))
        text = str(row.get("text", "")).strip()
        if source in rows and text:
            rows[source].append(Document(
                id=f"{source}:text_compression/{lineno:05d}", text=text + "\n", source=source,
                meta=_meta(file=SAMPLES_FILE, line=lineno, dataset=row["type"], package="evals==3.0.1.post1")))
    return {s: iter(docs) for s, docs in rows.items()}


def _read_text(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return _OVERSTRIKE.sub("", text).replace("\r\n", "\n")


def fortune_documents(max_chars: int = 2000) -> Iterator[Document]:
    """Fortunes packed into documents of up to ``max_chars`` characters, per database file."""
    for path in assets.fortune_files():
        name = os.path.basename(path)
        items = [f.strip("\n") for f in re.split(r"^%\s*$", _read_text(path), flags=re.M) if f.strip()]
        pack: list[str] = []
        size = k = 0
        for item in items + [None]:
            if item is None or (pack and size + len(item) + 2 > max_chars):
                if pack:
                    yield Document(id=f"fortunes:{name}/{k:04d}", text="\n\n".join(pack) + "\n", source="fortunes",
                                   meta=_meta(file=path, database=name, num_fortunes=len(pack)))
                    k += 1
                pack, size = [], 0
            if item is not None:
                pack.append(item)
                size += len(item) + 2


def jargon_documents() -> Iterator[Document]:
    """The Jargon File as one document (the builder chunks it at paragraph boundaries)."""
    path = assets.jargon_file()
    yield Document(id="jargon-file:jargon-4.4.7", text=_read_text(path), source="jargon-file",
                   meta=_meta(file=path, version="4.4.7"))


def web_raw_sources() -> dict[str, Iterator[Document]]:
    """Per-source document iterators for ``web_raw``; sources whose files are missing are left out."""
    out: dict[str, Iterator[Document]] = {}
    try:
        samples = sample_documents(("openwebtext", "c4", "oscar"))
        owt = schelling_documents(OWT_FILE, "openwebtext")
        out["openwebtext"] = _chain(owt, samples["openwebtext"])
        out["c4"] = samples["c4"]
        out["oscar"] = samples["oscar"]
    except assets.AssetMissingError as e:
        _warn(e)
    for name, fn in (("fortunes", fortune_documents), ("jargon-file", jargon_documents)):
        try:
            fn_iter = fn()
            first = next(fn_iter, None)
            if first is not None:
                out[name] = _chain(iter([first]), fn_iter)
        except assets.AssetMissingError as e:
            _warn(e)
    return out


def web_filtered_sources() -> dict[str, Iterator[Document]]:
    """Per-source iterators for ``web_filtered``: Wikipedia and OpenWebText documents passing the heuristics."""
    try:
        samples = sample_documents(("wikipedia", "openwebtext"))
        raw = {"wikipedia": _chain(schelling_documents(WIKI_FILE, "wikipedia"), samples["wikipedia"]),
               "openwebtext": _chain(schelling_documents(OWT_FILE, "openwebtext"), samples["openwebtext"])}
    except assets.AssetMissingError as e:
        _warn(e)
        return {}
    return {name: _filtered(docs) for name, docs in raw.items()}


def _filtered(docs: Iterator[Document]) -> Iterator[Document]:
    for doc in docs:
        ok, stats = quality_heuristics(doc.text)
        if ok:
            doc.meta.update(filter=FILTER_NOTE, heuristics=stats)
            yield doc


def _chain(*iters: Iterator[Document]) -> Iterator[Document]:
    for it in iters:
        yield from it


def _warn(error: Exception) -> None:
    import sys

    print(f"warning: {error}; skipping that source", file=sys.stderr)


def quality_heuristics(text: str) -> tuple[bool, dict]:
    """Gopher-style quality rules for web text.

    Keeps a document when it has 50 to 100,000 words, a mean word length of 3 to 10 characters, at least
    80% of words containing a letter, at most 10% of '#' or '...' per word, at most 30% of lines ending in
    an ellipsis or 90% starting with a bullet, at least two distinct English stop words, and at most 30% of
    its characters in duplicated lines.

    Returns:
        (keep, the measured statistics rounded to 3 decimals).
    """
    words = _WORD.findall(text)
    n = len(words)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if n == 0 or not lines:
        return False, {"words": 0}
    mean_len = sum(len(w) for w in words) / n
    alpha = sum(1 for w in words if any(c.isalpha() for c in w)) / n
    symbols = (text.count("#") + text.count("...") + text.count("\u2026")) / n
    ellipsis_lines = sum(1 for ln in lines if ln.endswith(("...", "\u2026"))) / len(lines)
    bullet_lines = sum(1 for ln in lines if ln.startswith(("-", "*", "\u2022"))) / len(lines)
    stop = len(_STOP_WORDS.intersection(w.lower().strip(".,;:!?\"'()") for w in words))
    seen: set[str] = set()
    dup_chars = 0
    for ln in lines:
        if ln in seen:
            dup_chars += len(ln)
        seen.add(ln)
    dup = dup_chars / max(1, sum(len(ln) for ln in lines))
    stats = {"words": n, "mean_word_len": round(mean_len, 3), "alpha_words": round(alpha, 3),
             "symbols_per_word": round(symbols, 3), "ellipsis_lines": round(ellipsis_lines, 3),
             "bullet_lines": round(bullet_lines, 3), "stop_words": stop, "dup_line_chars": round(dup, 3)}
    keep = (50 <= n <= 100_000 and 3 <= mean_len <= 10 and alpha >= 0.8 and symbols <= 0.1
            and ellipsis_lines <= 0.3 and bullet_lines <= 0.9 and stop >= 2 and dup <= 0.3)
    return keep, stats

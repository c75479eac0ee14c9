"""The Python documentation's reST sources (Debian ``python3.11-doc``) as textbook-like documents.

``code_textbooks`` takes the tutorial and the HOWTOs (prose interleaved with code), ``synthetic_textbooks``
the library and language references, FAQ, glossary, and the using/extending guides. The reST is lightly
cleaned: index entries, labels, comments and build-only directives are dropped and inline roles become
plain literals (``:func:`len``` -> ````len````), keeping headings, code blocks and directives that carry text.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from textbooks.corpora import assets
from textbooks.corpora.document import Document
from textbooks.corpora.sources import ROLE_INFO

SOURCE = "python-docs"
SECTIONS: dict[str, tuple[str, ...]] = {
    "code_textbooks": ("tutorial", "howto"),
    "synthetic_textbooks": ("library", "reference", "faq", "glossary.rst.txt", "using", "extending"),
}
# Directives dropped with their indented bodies: build machinery, not text.
_DROP_DIRECTIVES = {"index", "sectionauthor", "moduleauthor", "highlight", "toctree", "testsetup",
                    "testcleanup", "tabularcolumns", "include", "literalinclude", "currentmodule", "only",
                    "raw", "default-role", "program", "audit-event", "availability"}
_DIRECTIVE = re.compile(r"^\.\. ([A-Za-z][\w:-]*)::")
_LABEL = re.compile(r"^\.\. _[^:]+:\s*$|^\.\. _[^:]+:\s+\S")
_REF_ROLE = re.compile(r":(?:ref|doc|term):`([^`<]*?)\s*(?:<([^`>]*)>)?`")
_ROLE = re.compile(r":(?:[\w-]+:)?[\w-]+:`([^`]+)`")


def _role_text(match: re.Match) -> str:
    text = match.group(1).strip()
    if text.startswith("!"):
        text = text[1:]
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"``{text}``"


def _ref_text(match: re.Match) -> str:
    title, target = match.group(1).strip(), (match.group(2) or "").strip()
    return title or target.lstrip("~!").rsplit("/", 1)[-1]


def clean_rest(text: str) -> str:
    """Drops reST build markup (see module docstring); keeps the text, headings and code."""
    out: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        is_comment = line.startswith("..") and not directive and not _LABEL.match(line) and \
            not line.startswith(".. |") and not line.startswith(".. [")
        if _LABEL.match(line) or is_comment or (directive and directive.group(1) in _DROP_DIRECTIVES):
            i += 1  # Skip the line and its indented body.
            while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
                if not lines[i].strip() and i + 1 < len(lines) and lines[i + 1].strip() and \
                        not lines[i + 1][:1].isspace():
                    break
                i += 1
            # Do not leave two blank lines where the block was.
            if i < len(lines) and not lines[i].strip() and (not out or not out[-1].strip()):
                i += 1
            continue
        out.append(line)
        i += 1
    cleaned = "".join(out)
    cleaned = _REF_ROLE.sub(_ref_text, cleaned)
    cleaned = _ROLE.sub(_role_text, cleaned)
    cleaned = re.sub(r"\n{4,}", "\n\n\n", cleaned)
    return cleaned.strip("\n") + "\n"


def _title(text: str) -> str:
    lines = text.splitlines()
    for k in range(len(lines) - 1):
        under = lines[k + 1].strip()
        if lines[k].strip() and len(under) >= 3 and len(set(under)) == 1 and under[0] in "=*-#~^" and \
                not set(lines[k].strip()) <= set("=*-#~^"):
            return lines[k].strip()
    return ""


def doc_files(sections: tuple[str, ...], root: str | None = None) -> list[str]:
    """Sorted relative paths of the ``.rst.txt`` sources in ``sections`` (folders or single files)."""
    root = root or assets.python_doc_sources()
    found = []
    for section in sections:
        path = os.path.join(root, section)
        if os.path.isfile(path):
            found.append(section)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".rst.txt"):
                    found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(found)


def documents(role: str, root: str | None = None) -> Iterator[Document]:
    """The cleaned documentation pages for ``code_textbooks`` or ``synthetic_textbooks``.

    Raises:
        textbooks.corpora.assets.AssetMissingError: python3.11-doc is not installed.
    """
    root = root or assets.python_doc_sources()
    stand_in = ROLE_INFO[role].stand_in
    for rel in doc_files(SECTIONS[role], root):
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            text = clean_rest(f.read())
        if len(text.split()) < 50:
            continue
        name = rel[: -len(".rst.txt")]
        yield Document(id=f"{SOURCE}:{name}", text=text, source=SOURCE,
                       meta={"path": rel, "section": rel.split("/")[0].replace(".rst.txt", ""),
                             "title": _title(text), "stand_in": stand_in, "python_docs_version": "3.11"})


def training_text_files(root: str | None = None) -> list[str]:
    """Absolute paths of all sources used by both roles (for tokenizer training)."""
    root = root or assets.python_doc_sources()
    rels = doc_files(SECTIONS["code_textbooks"] + SECTIONS["synthetic_textbooks"], root)
    return [os.path.join(root, r) for r in rels]

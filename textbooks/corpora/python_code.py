"""Python code from the CPython standard library: whole modules (``code_filtered``) and function exercises
(``code_exercises``, a stand-in for phi-1's teacher-generated CodeExercises).

Files come from ``sysconfig.get_paths()['stdlib']`` in sorted order, without site-packages, test suites
(``test``/``tests``/``idle_test`` folders, ``test_*.py``) and generated tables (codec maps, sysconfig data).
"""

from __future__ import annotations

import ast
import os
import platform
import re
import sysconfig
from typing import Iterator

from textbooks.corpora.document import Document
from textbooks.corpora.sources import ROLE_INFO

SOURCE = "cpython-stdlib"
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "lib-dynload", "__pycache__",
              "_bundled", "pydoc_data", "__phello__"}
# Generated files announce it in a comment or, for codec tables, in the module docstring.
_GENERATED = re.compile(r"(?im)^\s*#.*\b(?:auto-?generated|generated (?:from|by|with)|do not edit)\b"
                        r"|\bCodec \S+ generated from\b")
_MAX_FILE_BYTES = 1_000_000


def stdlib_dir() -> str:
    """The standard library folder of the running interpreter."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> list[str]:
    """Sorted relative paths of the standard library's own ``.py`` files (see module docstring)."""
    root = root or stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_") or name.startswith("_sysconfigdata"):
                continue
            path = os.path.join(dirpath, name)
            if os.path.getsize(path) > _MAX_FILE_BYTES:
                continue
            found.append(os.path.relpath(path, root).replace(os.sep, "/"))
    return sorted(found)


def read_source(path: str) -> str | None:
    """The file's text, or None when it is not UTF-8, is generated, or is empty."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (UnicodeDecodeError, OSError):
        return None
    if not text.strip() or _GENERATED.search(text[:1500]):
        return None
    return text


def _meta(relpath: str) -> dict:
    return {"path": relpath, "python_version": platform.python_version(), "stand_in": None}


def module_documents(root: str | None = None) -> Iterator[Document]:
    """``code_filtered``: one document per standard-library module."""
    root = root or stdlib_dir()
    for rel in stdlib_files(root):
        text = read_source(os.path.join(root, rel))
        if text is not None:
            yield Document(id=f"{SOURCE}:{rel}", text=text, source=SOURCE, meta=_meta(rel))


def _exercise(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, str] | None:
    """(prompt, solution) for a documented top-level function, or None when it does not make an exercise."""
    body = node.body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        return None
    doc = body[0].value.value.strip()
    if len(doc.split()) < 4 or len(body) < 2:
        return None
    start, doc_end, end = node.lineno - 1, body[0].end_lineno, node.end_lineno
    prompt = "".join(lines[start:doc_end])
    solution = "".join(lines[doc_end:end])
    code_lines = [ln for ln in solution.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not 2 <= len(code_lines) <= 60 or len(prompt) + len(solution) > 6000:
        return None
    if not solution.endswith("\n"):
        solution += "\n"
    return prompt, solution


def exercise_documents(root: str | None = None) -> Iterator[Document]:
    """``code_exercises``: documented top-level functions as "signature + docstring -> body" exercises.

    ``text`` is the prompt (the ``def`` line(s) and the docstring) followed by the solution (the original
    body); ``meta.prompt_chars`` says where the solution starts and ``meta.entry_point`` names the function.
    """
    stand_in = ROLE_INFO["code_exercises"].stand_in
    root = root or stdlib_dir()
    for rel in stdlib_files(root):
        text = read_source(os.path.join(root, rel))
        if text is None:
            continue
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        lines = text.splitlines(keepends=True)
        seen: set[str] = set()
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            pair = _exercise(lines, node)
            if pair is None:
                continue
            prompt, solution = pair
            key = node.name if node.name not in seen else f"{node.name}@{node.lineno}"
            seen.add(node.name)
            meta = dict(_meta(rel), stand_in=stand_in, entry_point=node.name, prompt_chars=len(prompt),
                        template="stdlib-function")
            yield Document(id=f"{SOURCE}:{rel}::{key}", text=prompt + solution, source=SOURCE, meta=meta,
                           chunkable=False)

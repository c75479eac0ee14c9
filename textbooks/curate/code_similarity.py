"""phi-1's code contamination check: embedding similarity plus abstract-syntax-tree similarity of functions.

A training document and a benchmark solution are compared function by function:

* :func:`extract_functions` parses Python source (prose before the code is skipped) and returns each function
  definition's source and its normalized AST sequence;
* :func:`ast_sequence` is the pre-order list of node types of a function with docstrings removed and every
  identifier, attribute name and constant value abstracted away (constants keep their type), so renaming
  variables or editing strings does not change it;
* :func:`ast_similarity` is ``1 - edit_distance(a, b) / max(len(a), len(b))`` over two such sequences (a
  normalized tree-edit-style match rate over the dumped AST);
* the embedding side uses the same encoders as the classifier (MiniLM or a phi checkpoint) on the function's
  code without docstrings or comments, re-printed by ``ast.unparse`` (:func:`normalized_code`); cosine
  similarity of unit-norm embeddings.

A function pair is a match when both the cosine similarity and the AST similarity reach their thresholds
(see :class:`textbooks.curate.decontam.CodeDecontamConfig`).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import warnings

_CODE_START = re.compile(r"^(?:def|async\s+def|class|import|from|@)\b", re.M)


@dataclasses.dataclass
class FunctionUnit:
    """One function: its name, source text, normalized code (what is embedded), normalized AST sequence."""

    name: str
    source: str
    sequence: list[str]
    code: str = ""


def _parse(source: str) -> ast.AST | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None


def parse_python(text: str) -> tuple[ast.AST, str] | None:
    """Parses ``text``, or the code that follows leading prose (from the first ``def``/``class``/``import``
    line; trailing lines that break parsing are cut). Returns ``(tree, source)`` or None."""
    tree = _parse(text)
    if tree is not None:
        return tree, text
    m = _CODE_START.search(text)
    if not m:
        return None
    code = text[m.start():]
    tree = _parse(code)
    if tree is not None:
        return tree, code
    lines = code.splitlines()
    for end in range(len(lines) - 1, 0, -1):  # Drop trailing prose line by line.
        tree = _parse("\n".join(lines[:end]))
        if tree is not None:
            return tree, "\n".join(lines[:end])
    return None


def _strip_docstring(body: list) -> list:
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def ast_sequence(node: ast.AST) -> list[str]:
    """Pre-order node types of ``node`` without docstrings, identifiers or constant values."""
    out: list[str] = []

    def visit(n: ast.AST) -> None:
        if isinstance(n, ast.Constant):
            out.append(f"Constant:{type(n.value).__name__}")
            return
        out.append(type(n).__name__)
        for field, value in ast.iter_fields(n):
            if field == "body" and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                value = _strip_docstring(value)
            if isinstance(value, ast.AST):
                visit(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        visit(item)

    visit(node)
    return out


def is_test_function(node: ast.AST) -> bool:
    """A test harness rather than a solution: named ``check``/``test*``, or a body of asserts only."""
    name = getattr(node, "name", "")
    if name == "check" or name.startswith("test"):
        return True
    body = _strip_docstring(list(getattr(node, "body", [])))
    return bool(body) and all(isinstance(s, ast.Assert) for s in body)


def normalized_code(node: ast.AST) -> str:
    """The function re-printed by ``ast.unparse`` without docstrings or comments (uniform formatting); this
    code-only text is what gets embedded, so documentation edits do not move the embedding."""
    import copy

    node = copy.deepcopy(node)
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            n.body = _strip_docstring(n.body) or [ast.Pass()]
    try:
        return ast.unparse(node)
    except (ValueError, RecursionError):
        return ""


def extract_functions(text: str, *, min_nodes: int = 1, max_functions: int = 1000,
                      skip_tests: bool = False) -> list[FunctionUnit]:
    """Function definitions (nested ones included) of the Python code in ``text``; nothing if it does not parse.

    Args:
        min_nodes: smaller functions (AST sequence length) are skipped.
        max_functions: stop after this many.
        skip_tests: leave out test harnesses (:func:`is_test_function`), e.g. HumanEval's ``check``.
    """
    parsed = parse_python(text)
    if parsed is None:
        return []
    tree, source = parsed
    units = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if skip_tests and is_test_function(node):
                continue
            seq = ast_sequence(node)
            if len(seq) < min_nodes:
                continue
            segment = ast.get_source_segment(source, node) or node.name
            units.append(FunctionUnit(node.name, segment, seq, normalized_code(node) or segment))
            if len(units) >= max_functions:
                break
    return units


def ast_similarity(a: list[str], b: list[str]) -> float:
    """``1 - edit_distance / max(len)`` over two AST sequences (1.0 for identical structure)."""
    import editdistance

    if not a and not b:
        return 1.0
    return 1.0 - editdistance.eval(a, b) / max(len(a), len(b))

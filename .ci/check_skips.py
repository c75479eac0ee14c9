"""Fails a test run that skipped a test the repository does not allow to be skipped.

Reads pytest's JUnit XML report (``pytest --junitxml=PATH``) and the allowlist ``.ci/allowed_skips.toml``, whose
``[[skip]]`` entries each give ``test`` (a glob on the pytest node id, e.g. ``tests/train/test_tpu_aot.py::*``),
``reason`` (a glob on the skip message, so that the same test skipped for another reason still fails) and
``why`` (why that part is optional). Globs are :mod:`fnmatch` patterns, case-sensitive; ``[`` starts a
character class, so match a test's parameters with ``*``. A module skipped at collection has its file as node
id (``tests/x.py``): ``tests/x.py*`` matches it and each of its tests.

Prints every skip with the entry that allows it, then every skip no entry allows, and exits 1 when there is
one, when the report holds no test at all, or when the report or the allowlist cannot be read. Expected
failures (``xfail``) count as skips. Standard library only::

    python .ci/check_skips.py report.xml [--allowlist .ci/allowed_skips.toml] [--root .]
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import os
import sys
import tomllib
import xml.etree.ElementTree as ET
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ALLOWLIST = os.path.join(HERE, "allowed_skips.toml")


class Allowed(NamedTuple):
    """One allowlist entry."""
    test: str
    reason: str
    why: str


class Skip(NamedTuple):
    """One skipped test in the report."""
    nodeid: str
    reason: str


def load_allowlist(path: str) -> list[Allowed]:
    """Reads the allowlist; raises ValueError naming the file and entry when one lacks a field."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    entries = []
    for i, entry in enumerate(data.get("skip", [])):
        missing = [k for k in Allowed._fields if not str(entry.get(k, "")).strip()]
        if missing:
            raise ValueError(f"{path}: [[skip]] entry {i + 1} has no {', '.join(missing)}; every entry needs "
                             f"test, reason and why")
        entries.append(Allowed(entry["test"], entry["reason"], entry["why"]))
    return entries


def _module_split(parts: list[str], root: str) -> int:
    """How many leading parts of a dotted JUnit classname are the module path (the rest are classes)."""
    for k in range(len(parts), 0, -1):
        if os.path.isfile(os.path.join(root, *parts[:k]) + ".py"):
            return k
    for k, part in enumerate(parts):  # the file is not here: classes are the capitalised parts
        if part[:1].isupper():
            return k
    return len(parts)


def node_id(classname: str, name: str, root: str = ".") -> str:
    """The pytest node id of a JUnit testcase (``tests.a.test_b`` + ``test_c[1]`` -> ``tests/a/test_b.py::test_c[1]``).

    A module skipped at collection has an empty classname and the dotted module as its name.
    """
    if not classname:
        return "/".join(name.split(".")) + ".py"
    parts = classname.split(".")
    k = _module_split(parts, root)
    return "::".join(["/".join(parts[:k]) + ".py", *parts[k:], name])


def _collection_reason(text: str) -> str:
    """The message of a module skipped at collection, which the report keeps as ``(path, line, 'Skipped: ...')``."""
    try:
        reason = str(ast.literal_eval(text)[2])
    except (ValueError, SyntaxError, TypeError, IndexError):
        return text
    return reason.removeprefix("Skipped: ")


def read_report(path: str, root: str = ".") -> tuple[int, list[Skip]]:
    """Returns (number of test cases, the skipped ones) of a JUnit XML report."""
    tree = ET.parse(path)
    cases = list(tree.iter("testcase"))
    skips = []
    for case in cases:
        skipped = case.find("skipped")
        if skipped is None:
            continue
        reason = skipped.get("message", "")
        if reason == "collection skipped":
            reason = _collection_reason(skipped.text or reason)
        if skipped.get("type") == "pytest.xfail":
            reason = f"xfail: {reason}"
        skips.append(Skip(node_id(case.get("classname", ""), case.get("name", ""), root), reason.strip()))
    return len(cases), skips


def allowed_by(skip: Skip, allowlist: list[Allowed]) -> Allowed | None:
    """The first entry whose test and reason globs both match ``skip``, or None."""
    for entry in allowlist:
        if fnmatch.fnmatchcase(skip.nodeid, entry.test) and fnmatch.fnmatchcase(skip.reason, entry.reason):
            return entry
    return None


def check(report: str, allowlist_path: str, root: str = ".") -> int:
    """Prints the summary; returns the exit status (0: every skip is allowed and some test ran)."""
    try:
        allowlist = load_allowlist(allowlist_path)
        total, skips = read_report(report, root)
    except (OSError, ValueError, ET.ParseError, tomllib.TOMLDecodeError) as e:
        print(f"check_skips: cannot read the report or the allowlist: {e}", file=sys.stderr)
        return 1
    if total == 0:
        print(f"check_skips: {report} holds no test case; a run that collects nothing is a failure",
              file=sys.stderr)
        return 1
    matched = [(skip, allowed_by(skip, allowlist)) for skip in skips]
    allowed = [(s, e) for s, e in matched if e is not None]
    unlisted = [s for s, e in matched if e is None]
    print(f"check_skips: {total} tests, {len(skips)} skipped ({len(allowed)} allowed, {len(unlisted)} not)")
    for skip, entry in allowed:
        print(f"  allowed  {skip.nodeid}: {skip.reason}\n           ({entry.why})")
    for skip in unlisted:
        print(f"  NOT ALLOWED  {skip.nodeid}: {skip.reason}")
    if unlisted:
        print(f"check_skips: {len(unlisted)} test(s) skipped without an entry in {allowlist_path}. A core "
              f"dependency, data package or local asset must be installed (`make venv`, `make assets`), not "
              f"skipped; add an entry only for a genuinely optional part, with its reason.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="pytest's JUnit XML report (--junitxml)")
    parser.add_argument("--allowlist", default=DEFAULT_ALLOWLIST)
    parser.add_argument("--root", default=".", help="the folder pytest ran in (to locate test modules)")
    args = parser.parse_args(argv)
    return check(args.report, args.allowlist, args.root)


if __name__ == "__main__":
    sys.exit(main())

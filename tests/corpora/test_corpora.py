"""Local corpora: a small build of every role checked for splits, manifests, metadata and determinism;
chunking, reST cleaning and the web heuristics on their own."""

import ast
import collections
import filecmp
import os

import pytest

from textbooks import cli
from textbooks.corpora import assets, build, chunking, python_code, python_docs, web
from textbooks.corpora.sources import ROLE_INFO, SOURCES, sources_table
from textbooks.data import paths, records
from textbooks.data.manifest import read_manifest
from textbooks.data.roles import ROLES

MAX_DOCS = 24


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    assets.require_all()  # AssetMissingError says what is missing and how to install it
    root = tmp_path_factory.mktemp("corpora")
    results = build.build_corpora(str(root / "a"), max_docs=MAX_DOCS, max_chars=4000, verbose=False)
    return root, results


def test_every_role_is_built_with_both_splits(small_corpus):
    root, results = small_corpus
    assert [r.role for r in results] == list(ROLES)
    for r in results:
        m = read_manifest(os.path.join(root, "a", r.role))
        assert m == r.manifest and m.role == r.role and m.format_version == records.FORMAT_VERSION
        assert m.num_docs == MAX_DOCS
        assert m.splits["train"].num_docs >= 1 and m.splits["validation"].num_docs >= 1
        assert m.stand_in == ROLE_INFO[r.role].stand_in
        assert m.description and m.meta["sources"]
        for split in paths.SPLITS:
            got = list(records.iter_records(m.shard_paths(split), on_error="raise"))
            assert len(got) == m.splits[split].num_docs
            assert sum(x.num_bytes for x in got) == m.splits[split].num_bytes


def test_record_metadata(small_corpus):
    root, _ = small_corpus
    for role in ROLES:
        recs = list(records.iter_records(os.path.join(root, "a", role), on_error="raise"))
        assert len({r.id for r in recs}) == len(recs)
        by_source = collections.Counter(r.source for r in recs)
        assert set(by_source) == {s.name for s in SOURCES.values() if role in s.roles}, role
        for r in recs:
            assert r.role == role and r.text.strip()
            assert r.license == SOURCES[r.source].license
            assert r.meta["stand_in"] == ROLE_INFO[role].stand_in
            assert len(r.text) <= 4000 or role == "code_exercises"
        # Chunks of one document stay in one split.
        split_of = {}
        for r in recs:
            parent = r.meta.get("parent_id", r.id)
            assert split_of.setdefault(parent, r.split) == r.split


def test_exercises_are_prompt_plus_solution(small_corpus):
    root, _ = small_corpus
    for r in records.iter_records(os.path.join(root, "a", "code_exercises")):
        fn = ast.parse(r.text).body[0]
        assert isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name == r.meta["entry_point"]
        prompt, solution = r.text[: r.meta["prompt_chars"]], r.text[r.meta["prompt_chars"]:]
        assert ast.get_docstring(fn).split()[0] in prompt and prompt.rstrip().endswith(('"""', "'''"))
        assert solution.strip() and "CodeExercises" in r.meta["stand_in"]


def test_web_filtered_passes_heuristics(small_corpus):
    root, _ = small_corpus
    for r in records.iter_records(os.path.join(root, "a", "web_filtered")):
        if "parent_id" not in r.meta:  # The filter judged the whole document; chunks carry its statistics.
            assert web.quality_heuristics(r.text) == (True, r.meta["heuristics"])
        assert r.meta["heuristics"]["words"] >= 50
        assert "textbooks curate" in r.meta["filter"]


def test_building_twice_is_byte_identical(small_corpus):
    root, _ = small_corpus
    build.build_corpora(str(root / "b"), max_docs=MAX_DOCS, max_chars=4000, verbose=False)
    cmp = filecmp.dircmp(root / "a", root / "b")
    assert not cmp.left_only and not cmp.right_only
    for role in ROLES:
        names = sorted(os.listdir(root / "a" / role))
        assert "manifest.json" in names
        _, mismatch, errors = filecmp.cmpfiles(root / "a" / role, root / "b" / role, names, shallow=False)
        assert not mismatch and not errors, (role, mismatch)


def test_cli_builds_selected_roles(tmp_path, capsys):
    assets.require_all()
    assert cli.main(["corpora", "--out", str(tmp_path), "--roles", "code_exercises", "web_raw",
                     "--max_docs", "6", "-q"]) == 0
    out = capsys.readouterr().out
    assert "code_exercises" in out and "web_raw" in out and "synthetic_textbooks" not in out
    assert sorted(os.listdir(tmp_path)) == ["code_exercises", "web_raw"]


def test_sources_table_lists_every_role_and_license(capsys):
    assert cli.main(["corpora", "--print-sources-table"]) == 0
    table = capsys.readouterr().out
    assert table == sources_table() + "\n"
    for role in ROLES:
        assert f"`{role}`" in table
    for s in SOURCES.values():
        assert s.license in table
    assert set(ROLE_INFO) == set(ROLES)


def test_chunking_joins_back_and_respects_limits():
    prose = "".join(f"Title {i}\n=======\n\n" + ("Some words here. " * 20 + "\n\n") * 3 for i in range(20))
    prose += "Tail\n====\n\n" + "Long paragraph. " * 200 + "\n"
    chunks = chunking.chunk_text(prose, 1500, "prose")
    assert "".join(chunks) == prose and len(chunks) > 5
    assert all(len(c) <= 1500 for c in chunks)
    assert sum(c.startswith("Title") for c in chunks) == 20  # each section starts a chunk
    assert [len(c) for c in chunks[-3:]] == [1500, 1500, 212]  # the long tail is cut at the limit

    code = "".join(f"def f{i}(x):\n    y = x\n\n    return y + {i}\n\n\n" for i in range(200))
    chunks = chunking.chunk_text(code, 1000, "code")
    assert "".join(chunks) == code and all(len(c) <= 1000 for c in chunks)
    assert all(c.startswith("def ") for c in chunks)  # never inside a function body
    long_line = "x" * 2500
    assert chunking.chunk_text(long_line, 1000) == ["x" * 1000, "x" * 1000, "x" * 500]
    assert chunking.chunk_text("", 100) == []


def test_clean_rest():
    src = (".. _label:\n\nTitle\n=====\n\n.. index::\n   single: foo\n\nSee :func:`len` and :ref:`the guide "
           "<guide>` or :class:`~os.PathLike`.\n\n.. note::\n\n   Keep me.\n\n.. a comment\n   continues\n\n"
           "Done::\n\n   >>> 1 + 1\n   2\n")
    out = python_docs.clean_rest(src)
    assert out == ("Title\n=====\n\nSee ``len`` and the guide or ``PathLike``.\n\n.. note::\n\n   Keep me.\n\n"
                   "Done::\n\n   >>> 1 + 1\n   2\n")


def test_quality_heuristics():
    good = ("The river flows through the valley and into the sea. It has been used for trade since the "
            "medieval period, and the towns along its banks grew with it. ") * 3
    assert web.quality_heuristics(good)[0]
    assert not web.quality_heuristics("buy now!!! ### $$$ " * 40)[0]
    assert not web.quality_heuristics("short text with the and of")[0]
    repeated = "\n".join(["Click here to subscribe to the newsletter and win."] * 30)
    keep, stats = web.quality_heuristics(repeated)
    assert not keep and stats["dup_line_chars"] > 0.9


def test_stdlib_files_exclude_tests_and_site_packages():
    files = python_code.stdlib_files()
    assert "json/decoder.py" in files and len(files) > 500
    assert not any(f.startswith(("test/", "site-packages/")) or "/tests/" in f or "idle_test" in f
                   for f in files)

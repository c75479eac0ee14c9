"""Writes colab/setup_cell.py into each notebook's first code cell, and the Open-in-Colab badges.

The set-up cell has one source, ``colab/setup_cell.py``; this script copies its text (less the final newline)
into the first code cell of every notebook in :data:`NOTEBOOKS`. The badges (one at the top of each notebook's
first markdown cell, one per notebook in ``colab/README.md``) open
``https://colab.research.google.com/github/<OWNER/REPO>/blob/<branch>/colab/<notebook>.ipynb``. The GitHub path
and branch are one line of ``colab/README.md``, :data:`GITHUB_LINE`, which starts as the placeholder
``OWNER/REPO``: the repository does not know where it is published. When ``git remote get-url origin`` is a
GitHub URL, this script writes its ``owner/repo`` there (a fork gets its own badges); ``--github OWNER/REPO``
sets it by hand.

Usage: ``python colab/sync_setup_cell.py [--check] [--github OWNER/REPO] [--branch BRANCH]``. ``--check``
changes nothing and exits 1 naming each file that is out of date (the README's line is taken as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

NOTEBOOKS = ("quickstart", "mixture_explorer", "ablation_analysis")
PLACEHOLDER = "OWNER/REPO"
GITHUB_LINE = "GitHub path of the badges: `{github}`, branch `{branch}`."
_GITHUB_LINE_RE = re.compile(r"^GitHub path of the badges: `([^`]+)`, branch `([^`]+)`\.$", re.MULTILINE)
_BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
_URL_RE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/[^\s)]+?/colab/"
                     r"(\w+)\.ipynb")
_REMOTE_RE = re.compile(r"github\.com[:/]([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")
_OWNER_REPO_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


def colab_url(github: str, branch: str, notebook: str) -> str:
    """The address that opens ``colab/<notebook>.ipynb`` of GitHub repository ``github`` (owner/repo) in Colab."""
    return f"https://colab.research.google.com/github/{github}/blob/{branch}/colab/{notebook}.ipynb"


def badge(github: str, branch: str, notebook: str) -> str:
    """The Open-in-Colab badge (markdown) for one notebook."""
    return f"[![Open In Colab]({_BADGE_SVG})]({colab_url(github, branch, notebook)})"


def setup_cell_text(colab_dir: str) -> str:
    """The set-up cell's exact text: ``setup_cell.py`` without its final newline."""
    with open(os.path.join(colab_dir, "setup_cell.py"), encoding="utf-8") as f:
        return f.read().rstrip("\n")


def read_github(readme: str, path: str = "colab/README.md") -> tuple[str, str]:
    """Returns (owner/repo, branch) from the README's :data:`GITHUB_LINE`.

    Raises:
        ValueError: the line is missing (the message shows it).
    """
    found = _GITHUB_LINE_RE.search(readme)
    if found is None:
        raise ValueError(f"{path} has no line `{GITHUB_LINE.format(github=PLACEHOLDER, branch='main')}`: add it "
                         "back (the badges are built from it)")
    return found.group(1), found.group(2)


def github_from_remote(repo_root: str) -> str | None:
    """``owner/repo`` of ``git remote get-url origin`` when that is a GitHub URL; None without one."""
    try:
        out = subprocess.run(["git", "-C", repo_root, "remote", "get-url", "origin"], capture_output=True,
                             text=True, check=False)
    except FileNotFoundError:  # no git
        return None
    found = _REMOTE_RE.search(out.stdout.strip()) if out.returncode == 0 else None
    return f"{found.group(1)}/{found.group(2)}" if found else None


def _source_lines(text: str) -> list[str]:
    """A cell source as nbformat stores it: lines keeping their newlines, the last one without."""
    return text.splitlines(keepends=True)


def synced_readme(readme: str, github: str, branch: str) -> str:
    """``readme`` with :data:`GITHUB_LINE` and every notebook's badge address set to ``github``/``branch``."""
    text = _GITHUB_LINE_RE.sub(lambda _: GITHUB_LINE.format(github=github, branch=branch), readme)
    return _URL_RE.sub(lambda m: colab_url(github, branch, m.group(1)), text)


def synced_notebook(nb: dict, name: str, cell: str, github: str, branch: str) -> dict:
    """A copy of notebook ``nb`` (``name``) whose first code cell is ``cell`` and whose first markdown cell starts
    with its badge.

    Raises:
        ValueError: the notebook has no code cell or no markdown cell.
    """
    nb = json.loads(json.dumps(nb))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    markdown = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    if not code or not markdown:
        raise ValueError(f"colab/{name}.ipynb needs a markdown cell (title, badge) and a code cell (set-up)")
    code[0]["source"] = _source_lines(cell)
    text = "".join(markdown[0]["source"])
    line = badge(github, branch, name)
    if _URL_RE.search(text):
        text = _URL_RE.sub(lambda m: colab_url(github, branch, m.group(1)), text)
    else:
        text = line + "\n\n" + text
    markdown[0]["source"] = _source_lines(text)
    return nb


def _dump(nb: dict) -> str:
    """A notebook as Jupyter writes it (one-space indent, a final newline)."""
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def sync(colab_dir: str, github: str | None = None, branch: str | None = None, check: bool = False) -> list[str]:
    """Brings the notebooks and README in ``colab_dir`` in line with ``setup_cell.py`` and the GitHub path.

    Args:
        colab_dir: the folder holding ``setup_cell.py``, ``README.md`` and the notebooks.
        github: owner/repo for the badges; None takes ``origin``'s when it is on GitHub (unless ``check``), else
            the README's.
        branch: the branch the badges open; None keeps the README's.
        check: only compare; write nothing.

    Returns:
        The paths that were (or, with ``check``, would be) rewritten.
    """
    readme_path = os.path.join(colab_dir, "README.md")
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    current, current_branch = read_github(readme, readme_path)
    if github is None and not check:
        github = github_from_remote(os.path.dirname(os.path.abspath(colab_dir)))
    github, branch = github or current, branch or current_branch
    if not _OWNER_REPO_RE.match(github):
        raise ValueError(f"GitHub path {github!r} is not owner/repo (e.g. {PLACEHOLDER})")
    cell = setup_cell_text(colab_dir)
    outdated = []
    updates = {readme_path: (readme, synced_readme(readme, github, branch))}
    for name in NOTEBOOKS:
        path = os.path.join(colab_dir, f"{name}.ipynb")
        with open(path, encoding="utf-8") as f:
            old = f.read()
        updates[path] = (old, _dump(synced_notebook(json.loads(old), name, cell, github, branch)))
    for path, (old, new) in updates.items():
        if old != new:
            outdated.append(path)
            if not check:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
    return outdated


def main(argv: list[str] | None = None) -> int:
    """Syncs (or with ``--check`` compares) colab/; exit status 1 when ``--check`` finds a file out of date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is out of date")
    parser.add_argument("--github", help="owner/repo the badges open (default: origin's, else the README's)")
    parser.add_argument("--branch", help="the branch the badges open (default: the README's)")
    args = parser.parse_args(argv)
    colab_dir = os.path.dirname(os.path.abspath(__file__))
    try:
        changed = sync(colab_dir, args.github, args.branch, check=args.check)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(os.path.join(colab_dir, "README.md"), encoding="utf-8") as f:
        github, branch = read_github(f.read())
    if args.check:
        for path in changed:
            print(f"out of date: {path}; run `python colab/sync_setup_cell.py`", file=sys.stderr)
        return 1 if changed else 0
    for path in changed:
        print(f"wrote {path}")
    if github == PLACEHOLDER:
        print(f"note: the badges open {PLACEHOLDER}, a placeholder (no GitHub `origin` remote): pass "
              "--github <owner>/<repo> to point them at the repository's GitHub page")
    return 0


if __name__ == "__main__":
    sys.exit(main())

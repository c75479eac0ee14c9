"""The package layers hold (lint-imports with .importlinter), and the contract does fail on an import that points
up a layer or closes a cycle: checked on a scratch copy of the packages with one such import added."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run([LINT, "--config", os.path.join(root, ".importlinter"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _scratch(tmp_path) -> str:
    root = str(tmp_path / "repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.model", "*.vocab", "*.json")
    for name in ("textbooks", "mixtures"):
        shutil.copytree(os.path.join(REPO, name), os.path.join(root, name), ignore=ignore)
    shutil.copy(os.path.join(REPO, ".importlinter"), root)
    return root


def test_the_repository_keeps_its_layers(tmp_path):
    out = _lint(_scratch(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 2 kept, 0 broken." in out.stdout


@pytest.mark.parametrize("module,line,broken", [
    # The model layer reaching up into the trainer.
    ("textbooks/model/phi.py", "from textbooks.train import trainer  # noqa", "Imports point down the layers"),
    # Core reaching up into mixtures.
    ("textbooks/data/records.py", "import mixtures.phi  # noqa", "Imports point down the layers"),
    # Two sibling modules of one package importing each other.
    ("textbooks/data/files.py", "from textbooks.data import records  # noqa", "No import cycle"),
])
def test_an_import_that_breaks_the_layers_fails(tmp_path, module, line, broken):
    root = _scratch(tmp_path)
    path = os.path.join(root, module)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n" + line + "\n")
    out = _lint(root)
    assert out.returncode != 0, out.stdout
    assert f"{broken}" in out.stdout and "BROKEN" in out.stdout, out.stdout

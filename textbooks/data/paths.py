"""Where data lives: the data root and one folder per data role.

The data root is resolved in this order: the gin binding ``textbooks.data.paths.data_root.path``, the
environment variable ``TEXTBOOKS_DATA_DIR``, then ``~/.cache/textbooks/data``. Each role's shards live in
``<data_root>/<role>/`` with ``train`` and ``validation`` splits (see :mod:`textbooks.data.records`).

The small file-access layer used by the shard format lives here too: local paths use the built-in file API;
paths with a scheme (``gs://...``) go through ``tf.io.gfile``, imported only then. Setting the environment
variable ``TEXTBOOKS_FORCE_GFILE=1`` routes local paths through ``tf.io.gfile`` as well.
"""

from __future__ import annotations

import glob as _glob
import os

import gin

# The data roles of phi-1 / phi-1.5 mixtures; names used by corpora, curation, mixtures and reports.
ROLES: tuple[str, ...] = (
    "synthetic_textbooks",  # phi-1.5's synthetic NLP textbooks (teacher-written)
    "code_textbooks",  # phi-1's synthetic Python textbooks: prose interleaved with code
    "code_exercises",  # phi-1's CodeExercises: signature + docstring -> body
    "code_filtered",  # The Stack / StackOverflow Python filtered by an educational-value classifier
    "web_filtered",  # phi-1.5-web's filtered web text (Falcon RefinedWeb filtered by the classifier)
    "web_raw",  # unfiltered web text, the baseline
)
SPLITS: tuple[str, ...] = ("train", "validation")
ENV_VAR = "TEXTBOOKS_DATA_DIR"
DEFAULT_DATA_ROOT = os.path.join("~", ".cache", "textbooks", "data")


def _expand(path: str) -> str:
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(os.path.expanduser(os.path.expandvars(path)))


@gin.configurable
def data_root(path: str | None = None) -> str:
    """Returns the data root folder (local absolute path or ``gs://...``).

    Args:
        path: explicit root (usually bound in gin); when None, ``$TEXTBOOKS_DATA_DIR`` or
            ``~/.cache/textbooks/data``.
    """
    if path:
        return _expand(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return _expand(env)
    return _expand(DEFAULT_DATA_ROOT)


def check_role(role: str) -> str:
    """Returns ``role`` if it is a known data role.

    Raises:
        ValueError: unknown role; the message lists the known ones.
    """
    if role not in ROLES:
        raise ValueError(f"unknown data role {role!r}; known roles: {', '.join(ROLES)}")
    return role


def role_dir(role: str, root: str | None = None) -> str:
    """``<root>/<role>`` for a known role; ``root`` defaults to :func:`data_root`.

    Raises:
        ValueError: unknown role.
    """
    check_role(role)
    root = data_root() if root is None else _expand(root)
    return root.rstrip("/") + "/" + role if "://" in root else os.path.join(root, role)


def split_pattern(role: str, split: str, root: str | None = None) -> str:
    """The glob of the shards of ``split`` of ``role`` under the data root."""
    from textbooks.data import records

    return records.shard_pattern(role_dir(role, root), split)


# ----------------------------------------------------------------------------------------------------------
# File access: built-in files for local paths, tf.io.gfile for gs:// and other schemes (or for every path
# when the environment variable TEXTBOOKS_FORCE_GFILE=1).


def _use_gfile(path: str) -> bool:
    return "://" in path or os.environ.get("TEXTBOOKS_FORCE_GFILE", "") not in ("", "0")


def _gfile():
    import tensorflow as tf  # Heavy; only needed for remote paths.

    return tf.io.gfile


def open_file(path: str, mode: str = "rb"):
    """Opens ``path`` (local or ``gs://``) in ``mode`` ('rb', 'wb', 'r', 'w')."""
    if _use_gfile(path):
        return _gfile().GFile(path, mode)
    return open(path, mode)


def exists(path: str) -> bool:
    return _gfile().exists(path) if _use_gfile(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if _use_gfile(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    if _use_gfile(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    names = _gfile().listdir(path) if _use_gfile(path) else os.listdir(path)
    return sorted(n.rstrip("/") for n in names)


def glob(pattern: str) -> list[str]:
    """Sorted paths matching ``pattern`` (``*``, ``?``, ``[...]``), local or remote."""
    return sorted(_gfile().glob(pattern) if _use_gfile(pattern) else _glob.glob(pattern))


def remove(path: str) -> None:
    if _use_gfile(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rename(src: str, dst: str) -> None:
    if _use_gfile(src):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def join(directory: str, *names: str) -> str:
    """``os.path.join`` that keeps ``gs://bucket/...`` intact."""
    return "/".join([directory.rstrip("/"), *names]) if "://" in directory else os.path.join(directory, *names)

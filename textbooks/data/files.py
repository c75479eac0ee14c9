"""File access for local and remote paths: the small layer every data module reads and writes through.

Local paths use the built-in file API; paths with a scheme (``gs://...``) go through ``tf.io.gfile``, imported
only then. Setting the environment variable ``TEXTBOOKS_FORCE_GFILE=1`` routes local paths through
``tf.io.gfile`` as well (to exercise the remote code path on a laptop).
"""

from __future__ import annotations

import glob as _glob
import os
from typing import IO

FORCE_GFILE_VAR = "TEXTBOOKS_FORCE_GFILE"


def is_url(path: str | os.PathLike) -> bool:
    """True for paths with a scheme (``gs://bucket/x``, ``file:///x``), which are used as given."""
    return "://" in os.fspath(path)


def _use_gfile(path: str) -> bool:
    return is_url(path) or os.environ.get(FORCE_GFILE_VAR, "") not in ("", "0")


def _gfile():
    import tensorflow as tf  # Heavy; only needed for remote paths.

    return tf.io.gfile


def open_file(path: str, mode: str = "rb") -> IO:
    """Opens ``path`` (local or ``gs://``) in ``mode`` ('rb', 'wb', 'r', 'w', 'a')."""
    if _use_gfile(path):
        return _gfile().GFile(path, mode)
    return open(path, mode)


def exists(path: str) -> bool:
    """Whether ``path`` (a file or a folder) exists."""
    return _gfile().exists(path) if _use_gfile(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    """Whether ``path`` is a folder."""
    return _gfile().isdir(path) if _use_gfile(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    """Creates ``path`` and its parents; an existing folder is fine."""
    if _use_gfile(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Sorted names directly inside the folder ``path`` (no trailing slashes)."""
    names = _gfile().listdir(path) if _use_gfile(path) else os.listdir(path)
    return sorted(n.rstrip("/") for n in names)


def glob(pattern: str) -> list[str]:
    """Sorted paths matching ``pattern`` (``*``, ``?``, ``[...]``), local or remote."""
    return sorted(_gfile().glob(pattern) if _use_gfile(pattern) else _glob.glob(pattern))


def remove(path: str) -> None:
    """Deletes the file ``path``."""
    if _use_gfile(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rename(src: str, dst: str) -> None:
    """Moves ``src`` to ``dst``, replacing ``dst`` if it exists."""
    if _use_gfile(src):
        _gfile().rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def join(directory: str, *names: str) -> str:
    """``os.path.join`` that keeps ``gs://bucket/...`` intact."""
    return "/".join([directory.rstrip("/"), *names]) if is_url(directory) else os.path.join(directory, *names)

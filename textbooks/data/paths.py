"""Where data lives: the data root, one folder per data role, and user-given paths made absolute.

The data root is resolved in this order: the gin binding ``textbooks.data.paths.data_root.path``, the
environment variable ``TEXTBOOKS_DATA_DIR``, then ``~/.cache/textbooks/data``. Each role's shards live in
``<data_root>/<role>/`` with ``train`` and ``validation`` splits (see :mod:`textbooks.data.records`).

The small file-access layer used by the shard format lives here too: local paths use the built-in file API;
paths with a scheme (``gs://...``) go through ``tf.io.gfile``, imported only then. Setting the environment
variable ``TEXTBOOKS_FORCE_GFILE=1`` routes local paths through ``tf.io.gfile`` as well.

Paths given by users (command-line flags, gin bindings such as ``MODEL_DIR``) enter through :func:`resolve`:
a local path becomes absolute once, where it enters, because some readers (orbax) refuse relative ones and a
path recorded in a run's config must still mean the same folder from another working directory. Paths with a
scheme stay as they are. :func:`resolve_gin_paths` does the same for values already bound in gin, and
:func:`check_output_dir` says before any long work whether a folder can be written.
"""

from __future__ import annotations

import glob as _glob
import os
from typing import Iterable

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


def is_url(path: str) -> bool:
    """True for paths with a scheme (``gs://bucket/x``, ``file:///x``), which are used as given."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> str:
    """The absolute form of a local path (``~`` and ``$VARS`` expanded, relative to the working directory);
    paths with a scheme (``gs://...``) are returned unchanged."""
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(os.path.expanduser(os.path.expandvars(path)))


@gin.configurable
def data_root(path: str | None = None) -> str:
    """Returns the data root folder (local absolute path or ``gs://...``).

    Args:
        path: explicit root (usually bound in gin); when None, ``$TEXTBOOKS_DATA_DIR`` or
            ``~/.cache/textbooks/data``.
    """
    if path:
        return resolve(path)
    env = os.environ.get(ENV_VAR)
    if env:
        return resolve(env)
    return resolve(DEFAULT_DATA_ROOT)


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
    root = data_root() if root is None else resolve(root)
    return root.rstrip("/") + "/" + role if is_url(root) else os.path.join(root, role)


def split_pattern(role: str, split: str, root: str | None = None) -> str:
    """The glob of the shards of ``split`` of ``role`` under the data root."""
    from textbooks.data import records

    return records.shard_pattern(role_dir(role, root), split)


def resolve_gin_paths(keys: Iterable[str]) -> dict[str, str]:
    """Makes the local paths bound in gin to ``keys`` absolute; call it after parsing, before finalizing.

    A key bound to a macro (``train.model_dir = %MODEL_DIR``) has the macro's value resolved, wherever that was
    set (a gin file, ``--gin.MODEL_DIR=...``), so the operative config records the absolute path. Unbound keys
    and values that are not non-empty strings (None, ``%gin.REQUIRED``) are left alone.

    Args:
        keys: binding keys such as ``'train.model_dir'`` or ``'CheckpointConfig.init_from'``.

    Returns:
        ``{key: resolved path}`` for the keys bound, directly or through macros, to a path.
    """
    out: dict[str, str] = {}
    for key in keys:
        target, seen = key, {key}
        try:
            value = gin.query_parameter(target)
            while isinstance(value, gin.config.ConfigurableReference) and value.scoped_selector.endswith("gin.macro"):
                target = value.scoped_selector + ".value"  # a macro's value is bound as NAME/gin.macro.value
                if target in seen:  # a cycle of macros: gin reports it when the config is used
                    break
                seen.add(target)
                value = gin.query_parameter(target)
        except ValueError:  # not bound
            continue
        if isinstance(value, str) and value:
            out[key] = resolve(value)
            if out[key] != value:
                gin.bind_parameter(target, out[key])
    return out


def check_output_dir(path: str, what: str = "output folder") -> str:
    """Checks that ``path`` is a folder this process can write, or one it can create; returns it resolved.

    Meant to run before long work whose results go there. Paths with a scheme (``gs://``) are not checked.

    Raises:
        ValueError: ``path`` or one of its parents is a file, or the nearest existing folder is not writable
            (the message names the path, ``what`` it is for, and the obstacle).
    """
    if is_url(path):
        return path
    path = resolve(path)
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{what} {path} cannot be used: {probe} is a file, not a folder; give a folder path "
                         f"that is not inside a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        verb = "written" if probe == path else "created"
        raise ValueError(f"{what} {path} cannot be {verb}: {probe} is not writable by this user; give a "
                         f"folder you can write to")
    return path


# ----------------------------------------------------------------------------------------------------------
# File access: built-in files for local paths, tf.io.gfile for gs:// and other schemes (or for every path
# when the environment variable TEXTBOOKS_FORCE_GFILE=1).


def _use_gfile(path: str) -> bool:
    return is_url(path) or os.environ.get("TEXTBOOKS_FORCE_GFILE", "") not in ("", "0")


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
    return "/".join([directory.rstrip("/"), *names]) if is_url(directory) else os.path.join(directory, *names)

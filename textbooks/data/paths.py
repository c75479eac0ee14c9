"""Where data lives: the data root, one folder per data role, and user-given paths made absolute.

The data root is resolved in this order: the gin binding ``textbooks.data.paths.data_root.path``, the
environment variable ``TEXTBOOKS_DATA_DIR``, then ``~/.cache/textbooks/data``. Each role's shards live in
``<data_root>/<role>/`` with ``train`` and ``validation`` splits (see :mod:`textbooks.data.records`).

The role names are those of :mod:`textbooks.data.roles`; reading and writing files, local or ``gs://``, goes
through :mod:`textbooks.data.files`.

Paths given by users (command-line flags, gin bindings such as ``MODEL_DIR``) enter through :func:`resolve`:
a local path becomes absolute once, where it enters, because some readers (orbax) refuse relative ones and a
path recorded in a run's config must still mean the same folder from another working directory. Paths with a
scheme stay as they are. :func:`resolve_gin_paths` does the same for values already bound in gin, and
:func:`check_output_dir` says before any long work whether a folder can be written.
"""

from __future__ import annotations

import os
from typing import Iterable

import gin

from textbooks import data_packages
from textbooks.data.files import is_url, join
from textbooks.data.records import shard_pattern
from textbooks.data.roles import check_role

SPLITS: tuple[str, ...] = ("train", "validation")
ENV_VAR = "TEXTBOOKS_DATA_DIR"
DEFAULT_DATA_ROOT = os.path.join("~", ".cache", "textbooks", "data")


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


def role_dir(role: str, root: str | None = None) -> str:
    """``<root>/<role>`` for a known role; ``root`` defaults to :func:`data_root`.

    Raises:
        ValueError: unknown role.
    """
    check_role(role)
    return join(data_root() if root is None else resolve(root), role)


def split_pattern(role: str, split: str, root: str | None = None) -> str:
    """The glob of the shards of ``split`` of ``role`` under the data root."""
    return shard_pattern(role_dir(role, root), split)


def resolve_gin_paths(keys: Iterable[str], checkpoint_keys: Iterable[str] = ()) -> dict[str, str]:
    """Makes the local paths bound in gin to ``keys`` absolute; call it after parsing, before finalizing.

    Values of ``checkpoint_keys`` (a subset of ``keys``) may also be a registered checkpoint name
    (:data:`textbooks.data_packages.NAMED_CHECKPOINTS`), bound as the file it names.

    A key bound to a macro (``train.model_dir = %MODEL_DIR``) has the macro's value resolved, wherever that was
    set (a gin file, ``--gin.MODEL_DIR=...``), so the operative config records the absolute path. Unbound keys
    and values that are not non-empty strings (None, ``%gin.REQUIRED``) are left alone.

    Args:
        keys: binding keys such as ``'train.model_dir'`` or ``'CheckpointConfig.init_from'``.
        checkpoint_keys: those of ``keys`` that name a checkpoint to read.

    Returns:
        ``{key: resolved path}`` for the keys bound, directly or through macros, to a path.
    """
    out: dict[str, str] = {}
    checkpoint_keys = set(checkpoint_keys)
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
            out[key] = resolve(data_packages.resolve_checkpoint(value) if key in checkpoint_keys else value)
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

"""gin configuration the T5X way: ``--gin_file`` files composed in order, then ``--gin.NAME=VALUE`` bindings.

Used by every gin-configured command (train, eval, curate, generate, sweep). Errors name the file or the
binding at fault; the operative config can be written next to a run's outputs.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Sequence

import gin

# Folders searched for relative --gin_file paths, after the working directory: the repository's experiments/
# and the installed package's copy of it.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SEARCH_PATHS = (os.path.join(_REPO_ROOT, "experiments"), _REPO_ROOT)


class GinConfigError(ValueError):
    """A gin file or binding could not be parsed or applied; the message names which one."""


def add_gin_arguments(parser) -> None:
    """Adds ``--gin_file`` (repeatable), ``--gin_search_path`` and documents ``--gin.NAME=VALUE``."""
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file to parse (repeatable; composed in order). Relative paths are also looked "
                             "up under experiments/.")
    parser.add_argument("--gin_search_path", action="append", default=[],
                        help="extra folder to resolve relative --gin_file paths and gin includes.")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a gin binding such as 'train.steps = 100' (repeatable). The T5X form "
                             "--gin.train.steps=100 works too.")


def split_gin_flags(extra: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates T5X-style ``--gin.NAME=VALUE`` (or ``--gin.NAME VALUE``) flags from other leftovers.

    Returns:
        (bindings as 'NAME = VALUE' strings, the remaining arguments).
    """
    bindings, rest = [], []
    args = list(extra)
    i = 0
    while i < len(args):
        arg = args[i]
        m = re.match(r"^--gin\.([^=]+)(?:=(.*))?$", arg, re.S)
        if m:
            name, value = m.group(1), m.group(2)
            if value is None:
                if i + 1 >= len(args):
                    raise GinConfigError(f"flag {arg} has no value; write --gin.{name}=VALUE")
                value = args[i + 1]
                i += 1
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
        i += 1
    return bindings, rest


def resolve_gin_file(path: str, search_paths: Iterable[str] = ()) -> str:
    """Returns an existing path for ``path``, trying the working directory, then each search path."""
    candidates = [path] + [os.path.join(p, path) for p in list(search_paths) + list(DEFAULT_SEARCH_PATHS)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise GinConfigError(f"gin file {path!r} not found; looked in: {', '.join(candidates)}")


def parse_gin(gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
              search_paths: Sequence[str] = (), finalize: bool = True) -> None:
    """Parses ``gin_files`` in order and then ``bindings``, with errors that name the file or binding.

    Raises:
        GinConfigError: a file is missing, or a file or binding does not parse or names an unknown
            configurable or parameter.
    """
    for p in list(search_paths) + list(DEFAULT_SEARCH_PATHS):
        if os.path.isdir(p):
            gin.add_config_file_search_path(p)
    for f in gin_files:
        resolved = resolve_gin_file(f, search_paths)
        try:
            gin.parse_config_file(resolved)
        except Exception as e:  # gin raises several types; keep the original message and name the file.
            raise GinConfigError(f"in gin file {resolved}: {e}") from e
    for b in bindings:
        try:
            gin.parse_config(b)
        except Exception as e:
            raise GinConfigError(f"in gin binding {b!r}: {e}") from e
    if finalize:
        gin.finalize()


def parse_gin_from_args(args) -> None:
    """Applies ``--gin_file``, ``--gin_bindings`` and ``--gin.X=Y`` from a parsed command line."""
    flag_bindings, rest = split_gin_flags(getattr(args, "extra", []) or [])
    if rest:
        raise GinConfigError(f"unrecognized arguments: {' '.join(rest)}")
    parse_gin(args.gin_file, list(args.gin_bindings) + flag_bindings, args.gin_search_path)


def write_operative_config(directory: str, filename: str = "config.gin") -> str:
    """Writes gin's operative config (the values actually used) into ``directory``; returns the path."""
    import tensorflow as tf  # tf.io.gfile reaches local and gs:// paths alike.

    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, filename)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(gin.operative_config_str())
    return path

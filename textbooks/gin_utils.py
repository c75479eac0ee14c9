"""gin configuration the T5X way: ``--gin_file`` files composed in order, then ``--gin.NAME=VALUE`` bindings.

Used by every gin-configured command (train, eval, curate, generate, sweep, mixopt): they parse with
:func:`parse_gin_from_args`. Errors name the file or the binding at fault; the operative config can be written
next to a run's outputs.

gin itself rejects a binding of an unknown configurable or parameter (``OptimizerConfig.learnig_rate``) but
accepts any macro name: ``TRAIN_STEP = 5`` defines a macro nothing reads, and the run silently keeps the
file's ``TRAIN_STEPS``. Commands therefore parse with ``check_macros=True``: a binding that introduces a macro
which no composed gin file defines (``NAME = ...``) and nothing references (``%NAME``) is an error that names
the closest known names.

How configurables are registered (one way for the whole project):

* A configurable exists once the Python module defining it is imported. Each verb's entry module (the module
  of its gin entry function: ``train.trainer``, ``evaluate.suite``, ``curate.pipeline``, ``synth.generate``,
  ``mixopt.sweep``, ``mixopt.optimize``) imports at module level every module whose configurables the verb's
  gin files may bind, so a caller imports the entry module, then parses.
* gin files do not ``import`` Python modules: they name configurables (``train.batch_size``,
  ``OptimizerConfig.learning_rate``), which stay valid when a module moves; a module path would not.
* Configurables are defined with ``gin.configurable``; a module that may first be imported after the config
  is locked (a library importing it lazily) uses :func:`configurable`, which gin would otherwise refuse.
* A configurable that is renamed keeps its old name working through :func:`register_alias`, documented where
  it is registered: ``EvalConfig`` is ``ValidationConfig`` (:mod:`textbooks.train.hooks`), ``EvalSettings`` is
  ``SuiteSettings`` (:mod:`textbooks.evaluate.suite`).
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Callable, Iterable, Sequence, TypeVar

import gin

_T = TypeVar("_T")

# Folders searched for relative --gin_file paths, after the working directory: the repository's experiments/
# and the installed package's copy of it.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SEARCH_PATHS = (os.path.join(_REPO_ROOT, "experiments"), _REPO_ROOT)


class GinConfigError(ValueError):
    """A gin file or binding could not be parsed or applied; the message names which one."""


def configurable(fn_or_name: Any = None, **kwargs: Any) -> Any:
    """``gin.configurable`` that also works when the module is first imported after gin was finalized.

    Use it as ``@configurable`` or ``@configurable(name=..., denylist=...)`` (the arguments of
    ``gin.configurable``). A configurable registered after finalizing exists but no binding can name it any
    more: its defaults apply.
    """
    if callable(fn_or_name):
        with gin.unlock_config():
            return gin.configurable(fn_or_name, **kwargs)

    def decorate(fn: _T) -> _T:
        with gin.unlock_config():
            return gin.configurable(fn_or_name, **kwargs)(fn)

    return decorate


def register_alias(old_name: str, fn_or_cls: Callable) -> None:
    """Makes ``old_name`` a second name of the registered configurable ``fn_or_cls``.

    Bindings and references under the old name (``EvalConfig.eval_every = 5``, ``@EvalConfig()``) go to the
    same configurable as the new name's, so gin files written before a rename keep working and a mix of old and
    new names in one config does not silently split the settings. The operative config uses the new name.

    Raises:
        ValueError: ``fn_or_cls`` is not a registered configurable, or ``old_name`` already names another one.
    """
    info = gin.config._inverse_lookup(fn_or_cls)  # gin keeps no public alias API; its registry is a selector map.
    if info is None:
        raise ValueError(f"{fn_or_cls!r} is not a gin configurable; register it (gin.configurable) before "
                         f"aliasing it as {old_name!r}")
    selector = f"{info.module}.{old_name}" if info.module else old_name
    existing = gin.config._REGISTRY.get(selector)
    if existing is not None and existing is not info:
        raise ValueError(f"gin name {old_name!r} already belongs to {existing.selector}; cannot make it an alias "
                         f"of {info.selector}")
    gin.config._REGISTRY[selector] = info


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
              search_paths: Sequence[str] = (), finalize: bool = True, check_macros: bool = False) -> None:
    """Parses ``gin_files`` in order and then ``bindings``, with errors that name the file or binding.

    Args:
        gin_files: gin files, composed in order (relative paths: see :func:`resolve_gin_file`).
        bindings: ``'NAME = VALUE'`` strings applied after the files.
        search_paths: extra folders for relative paths and includes.
        finalize: lock the config afterwards.
        check_macros: refuse a binding that sets a macro the files neither define nor reference (a typo such
            as ``TRAIN_STEP`` for ``TRAIN_STEPS`` would otherwise be ignored). Commands set it; library
            callers that bind optional macros for several file sets (tests, sweeps) leave it off.

    Raises:
        GinConfigError: a file is missing, or a file or binding does not parse or names an unknown
            configurable or parameter, or (``check_macros``) sets a macro nothing uses.
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
    defined_by_files = _bound_macros()
    introduced: dict[str, str] = {}  # macro name -> the binding that introduced it
    for b in bindings:
        before = _bound_macros()
        try:
            gin.parse_config(b)
        except Exception as e:
            raise GinConfigError(f"in gin binding {b!r}: {e}") from e
        for name in sorted(_bound_macros() - before):
            introduced.setdefault(name, b)
    if check_macros:
        _check_introduced_macros(introduced, defined_by_files, gin_files)
    if finalize:
        gin.finalize()


def _bound_macros() -> set[str]:
    """Names of the macros gin's current config binds (``NAME = value`` in a file or binding)."""
    # gin keeps parsed bindings in config._CONFIG, keyed (scope, selector); a macro NAME is (NAME, 'gin.macro').
    return {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}


def _referenced_macros() -> set[str]:
    """Names of the macros referenced as ``%NAME`` anywhere in gin's current config."""
    refs = gin.config.iterate_references(gin.config._CONFIG, to=gin.config.get_configurable(gin.config.macro))
    return {ref.scoped_selector.rsplit("/", 1)[0] for ref in refs}


def _parameter_names() -> set[str]:
    """``Configurable.param`` for every parameter the current config binds (suggestions for a mistyped name)."""
    return {f"{selector.rsplit('.', 1)[-1]}.{param}" for (_, selector), params in gin.config._CONFIG.items()
            if selector != "gin.macro" for param in params}


def nearest_names(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The ``n`` candidates closest to ``name`` (``difflib.get_close_matches``, ignoring case)."""
    by_folded: dict[str, str] = {}
    for c in sorted(candidates):
        by_folded.setdefault(c.casefold(), c)
    return [by_folded[m] for m in difflib.get_close_matches(name.casefold(), list(by_folded), n=n)]


def _check_introduced_macros(introduced: dict[str, str], defined_by_files: set[str],
                             gin_files: Sequence[str]) -> None:
    """Raises GinConfigError for each macro a binding introduced that nothing in the config references."""
    referenced = _referenced_macros()
    unused = {name: b for name, b in introduced.items() if name not in referenced}
    if not unused:
        return
    known = sorted(defined_by_files | referenced)
    where = f"the gin files ({', '.join(gin_files)}) neither define nor reference" if gin_files else \
        "no gin file reads (none was given), nor does any binding reference"
    problems = []
    for name, binding in unused.items():
        close = nearest_names(name, set(known) | _parameter_names())
        hint = f"did you mean {' or '.join(close)}?" if close else "no known name is close"
        problems.append(f"gin binding {binding.strip()!r} sets the macro {name}, which {where} as %{name}, so "
                        f"it would have no effect; {hint}")
    raise GinConfigError("; ".join(problems) + f". Macros in use: {', '.join(known) or 'none'}. Bind a "
                         f"parameter as Configurable.param = VALUE, or a macro that the files read.")


def parse_gin_from_args(args, bindings: Sequence[str] = (), finalize: bool = True) -> None:
    """Applies ``--gin_file``, ``--gin_bindings`` and ``--gin.X=Y`` from a parsed command line, then
    ``bindings`` (the command's own flags turned into bindings, e.g. ``--model_dir``), macro names checked
    (see :func:`parse_gin`).

    Args:
        args: the parsed command line (``gin_file``, ``gin_bindings``, ``gin_search_path`` and the leftover
            ``extra`` arguments).
        bindings: ``'NAME = VALUE'`` strings applied after the command line's, so they win.
        finalize: lock the config afterwards (a command that still edits bindings, e.g. to make paths
            absolute, finalizes itself).

    Raises:
        GinConfigError: a leftover argument is not a ``--gin.`` flag, or see :func:`parse_gin`.
    """
    flag_bindings, rest = split_gin_flags(getattr(args, "extra", []) or [])
    if rest:
        raise GinConfigError(f"unrecognized arguments: {' '.join(rest)}")
    parse_gin(args.gin_file, list(args.gin_bindings) + flag_bindings + list(bindings), args.gin_search_path,
              finalize=finalize, check_macros=True)


def write_operative_config(directory: str, filename: str = "config.gin") -> str:
    """Writes gin's operative config (the values actually used) into ``directory``; returns the path."""
    import tensorflow as tf  # tf.io.gfile reaches local and gs:// paths alike.

    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, filename)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(gin.operative_config_str())
    return path

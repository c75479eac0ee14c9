"""The ``textbooks`` console script: one subcommand per module in :mod:`textbooks.commands`.

Each command module defines ``HELP`` (a one-line summary), ``add_arguments(parser)`` and ``main(args) -> int``.
Commands are discovered from the package, so adding a verb means adding one module. Every flag may be spelled
with ``_`` or ``-`` between words. Heavy imports (JAX, TensorFlow, Beam) happen inside each command's ``main`` so
that ``textbooks --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from textbooks import commands as _commands
from textbooks import logs


def _command_modules() -> dict[str, object]:
    found = {}
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_commands.__name__}.{info.name}")
        found[getattr(module, "NAME", info.name)] = module
    return found


def build_parser() -> argparse.ArgumentParser:
    """Returns the top-level parser with one subparser per discovered command."""
    parser = argparse.ArgumentParser(
            prog="textbooks",
            description="Build textbook-quality data, train phi models on seqio mixtures, evaluate and sweep.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _command_modules().items():
        p = sub.add_parser(name, help=module.HELP, description=(module.__doc__ or module.HELP).strip(),
                                              formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        if "--log_level" not in p._option_string_actions:
            p.add_argument("--log_level", default="INFO", help="logging level of this project's messages")
        p.add_argument("--verbose", action="store_true",
                       help="also show the libraries' logs (TensorFlow, JAX, libtpu, Beam workers, absl)")
        p.set_defaults(_module=module)
    return parser


def normalize_flag_spelling(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Lets every flag be spelled with ``_`` or ``-`` between words (``--from_hf`` = ``--from-hf``, ``--model-dir``
    = ``--model_dir``): a ``--flag`` the verb does not define is replaced by its other spelling when the verb
    defines that one. Gin bindings (``--gin.NAME=...``) and everything after ``--`` are left as they are."""
    argv = list(argv)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = next((t for t in argv if not t.startswith("-")), None)
    if sub is None or command not in sub.choices:
        return argv
    known = sub.choices[command]._option_string_actions
    out = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + argv[i:]
        name, eq, value = token.partition("=")
        if name.startswith("--") and not name.startswith("--gin.") and name not in known:
            for other in (name[:2] + name[2:].replace("-", "_"), name[:2] + name[2:].replace("_", "-")):
                if other in known:
                    token = other + eq + value
                    break
        out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the chosen command; returns its exit status."""
    parser = build_parser()
    argv = normalize_flag_spelling(parser, sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    module = args._module
    if extra and not getattr(module, "ACCEPTS_EXTRA", False):
        parser.error(f"unrecognized arguments for '{args.command}': {' '.join(extra)}")
    args.extra = extra
    logs.setup(args.log_level, verbose=args.verbose)  # before the verb imports TensorFlow, JAX or Beam
    try:
        return int(module.main(args) or 0)
    except Exception as e:
        from textbooks.gin_utils import GinConfigError  # deferred: `textbooks --help` does not import gin

        if not isinstance(e, GinConfigError):
            raise
        print(f"textbooks {args.command}: {e}", file=sys.stderr)  # a configuration error: exit status 2
        return 2


def entry() -> int:
    """The console script: :func:`main` with native libraries' log noise filtered from stderr unless
    ``--verbose`` (see :mod:`textbooks.logs`)."""
    if "--verbose" not in sys.argv[1:]:
        logs.filter_native_stderr()
    return main()


if __name__ == "__main__":
    sys.exit(entry())

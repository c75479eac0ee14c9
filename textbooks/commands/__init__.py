"""Subcommands of the ``textbooks`` console script, one module each (see :mod:`textbooks.cli`)."""

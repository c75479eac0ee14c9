"""Evaluate a checkpoint on the phi papers' benchmarks and write a report.

Examples:

  textbooks eval --checkpoint /tmp/run --tasks=phi15 --out /tmp/run/eval
  textbooks eval --checkpoint /tmp/run --tasks=piqa,hellaswag,mmlu --limit 200 --out /tmp/eval
  textbooks eval --checkpoint /tmp/hf_phi --gin_file=eval/phi15_suite.gin --gin.SuiteSettings.code_samples=10

Tasks: humaneval, mbpp, gsm8k, piqa, hellaswag, arc_easy, arc_challenge, boolq, winogrande, openbookqa, siqa,
mmlu, squad; suites: phi15 (all of them), common_sense, language, reasoning, code, multiple_choice.
The report (results.json, results.md in the phi-1.5 tables' layout with 95% intervals, results.png and
per-item records under items/) goes to --out. Paths may be relative to the working directory. Generated
programs run in the sandbox of textbooks.evaluate.sandbox. A task that fails (a missing benchmark file, a model
error) is reported with its error while the other tasks still run. Exit status: 0 every task ran, 1 some task
failed (the others are in the report), 2 bad arguments or configuration, 3 the checkpoint does not load.
"""

from __future__ import annotations

import argparse
import sys

from textbooks import data_packages

HELP = "evaluate a checkpoint on the phi-1 / phi-1.5 benchmarks (multiple choice, code, GSM8K, SQuAD)"
ACCEPTS_EXTRA = True


def add_arguments(parser) -> None:
    from textbooks import gin_utils  # deferred: keeps the CLI start fast

    gin_utils.add_gin_arguments(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="orbax model dir (newest step), step dir, transformers-format or params folder, .gguf "
                             "file, or a registered name (smollm2-135m-instruct)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks or suites (default: phi15)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="items per task (a seeded subset; a positive number)")
    parser.add_argument("--out", default=None, help="folder for the report")
    parser.add_argument("--list", action="store_true", help="list tasks and suites, then exit")
    parser.add_argument("--log_level", default="INFO", help="logging level (default INFO)")


def main(args) -> int:
    # Importing the suite registers every configurable its gin files bind (see textbooks.gin_utils).
    from textbooks import gin_utils  # deferred: keeps the CLI start fast
    from textbooks.data import paths  # deferred: keeps the CLI start fast
    from textbooks.evaluate import benchmarks, suite  # deferred: keeps the CLI start fast

    if args.list:
        print("tasks: " + ", ".join(f"{t} ({benchmarks.benchmark_kind(t)})" for t in benchmarks.BENCHMARKS))
        for name, members in suite.SUITES.items():
            print(f"suite {name}: {', '.join(members)}")
        return 0
    bindings = []
    if args.checkpoint:
        checkpoint = data_packages.resolve_checkpoint(args.checkpoint)  # a registered name, or a path
        bindings.append(f"evaluate.checkpoint = {paths.resolve(checkpoint)!r}")
    if args.tasks:
        bindings.append(f"evaluate.tasks = {args.tasks!r}")
    if args.out:
        try:  # before the model loads and the tasks run, not when the report is written
            bindings.append(f"evaluate.out_dir = {paths.check_output_dir(args.out, 'the report folder (--out)')!r}")
        except ValueError as e:
            print(f"textbooks eval: {e}", file=sys.stderr)
            return 2
    if args.limit is not None:
        bindings.append(f"SuiteSettings.limit = {int(args.limit)}")
    try:
        gin_utils.parse_gin_from_args(args, bindings)
    except gin_utils.GinConfigError as e:
        print(f"textbooks eval: {e}", file=sys.stderr)
        return 2
    try:
        settings = suite.SuiteSettings()
        results = suite.evaluate(settings=settings)
    except suite.EvalError as e:
        print(f"textbooks eval: {e}", file=sys.stderr)
        return 3 if "does not load" in str(e) else 2
    except (ValueError, TypeError) as e:  # e.g. a missing required gin binding such as the checkpoint
        print(f"textbooks eval: {e}", file=sys.stderr)
        return 2
    print(suite.summarize(results))
    if results.get("report"):
        print(f"report: {results['report'].get('markdown')}")
    failed = suite.failed_tasks(results)
    if failed:
        print(f"textbooks eval: {len(failed)} of {len(results['tasks'])} tasks failed: {', '.join(failed)} (their "
              f"errors are above and in the report)", file=sys.stderr)
        return 1
    return 0


def positive_int(text: str) -> int:
    """argparse type of ``--limit``: a whole number of at least 1 (argparse turns the error into exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (items per task), got {value}; leave --limit out "
                                         f"to run every item")
    return value

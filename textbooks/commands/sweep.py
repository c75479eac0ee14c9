"""Run (or resume) a mixture-ratio sweep: one proxy training run per (mixture point, seed).

Examples:
  textbooks sweep --gin_file=sweeps/phi15_three_way.gin
  textbooks sweep --gin_file=sweeps/phi15_three_way.gin --executor slurm --gin.SlurmSettings.partition="'gpu'"
  textbooks sweep --gin_file=sweeps/phi15_three_way.gin --executor emit      # writes <sweep_dir>/commands.sh
  textbooks sweep --sweep_dir DIR --run_trial t0123456789abcde               # one trial (emitted commands)
  textbooks sweep --sweep_dir DIR --status                                   # the results table, by status

The sweep folder records the base config's fingerprint: re-running the same gin resumes the sweep (finished
trials are not redone); another base config is refused.
"""

from __future__ import annotations

import argparse
import sys

from textbooks import gin_utils

HELP = "run or resume a mixture-ratio sweep (submitit local/Slurm, or emitted commands)"
ACCEPTS_EXTRA = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    gin_utils.add_gin_arguments(parser)
    parser.add_argument("--executor", choices=("local", "slurm", "emit"), default=None,
                        help="overrides sweep.executor (default from gin: local).")
    parser.add_argument("--sweep_dir", default=None, help="overrides sweep.sweep_dir.")
    parser.add_argument("--max_parallel", type=int, default=None,
                        help="local executor: trials running at once (overrides LocalSettings.max_parallel).")
    parser.add_argument("--no_wait", action="store_true", help="slurm: submit and return.")
    parser.add_argument("--dry_run", action="store_true",
                        help="write what would run (commands.sh, or slurm_array.sbatch) and run nothing.")
    parser.add_argument("--run_trial", metavar="TRIAL_ID", default=None,
                        help="run one recorded trial of --sweep_dir in this process.")
    parser.add_argument("--status", action="store_true", help="print the results table of --sweep_dir.")


def _print_status(sweep_dir: str) -> int:
    from textbooks.mixopt import results, trials  # deferred: keeps the CLI start fast

    sw = trials.SweepDir(sweep_dir)
    rows = results.refresh(sw)
    comps = sw.manifest()["components"]
    counts = results.summarize(rows)
    print(f"{sw.root}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    for r in rows:
        ratios = " ".join(f"{c}={r.get('ratio/' + c, float('nan')):.3f}" for c in comps)
        extra = f"  error: {r.get('error')}  log: {r.get('log')}" if r["status"] in ("failed", "missing") else ""
        print(f"  {r['trial_id']}  point {r.get('point')}  seed {r.get('seed')}  {r['status']:9s} {ratios}{extra}")
    print(f"table: {sw.results_csv}")
    return 0 if not (counts.get("failed") or counts.get("missing")) else 1


def main(args: argparse.Namespace) -> int:
    from textbooks.data import paths  # deferred: keeps the CLI start fast

    if args.sweep_dir:  # relative to the working directory; trials and emitted commands get the absolute path
        args.sweep_dir = paths.resolve(args.sweep_dir)

    if args.run_trial or args.status:
        if not args.sweep_dir:
            print("--run_trial and --status need --sweep_dir", file=sys.stderr)
            return 2
        if args.status:
            try:
                return _print_status(args.sweep_dir)
            except FileNotFoundError as e:  # not a sweep folder; the message says what to give instead
                print(f"textbooks sweep --status: error: {e}", file=sys.stderr)
                return 2
    if not args.run_trial and not args.gin_file:
        print("textbooks sweep needs --gin_file (e.g. sweeps/phi15_three_way.gin), or --sweep_dir with "
              "--status / --run_trial", file=sys.stderr)
        return 2
    # Importing the sweep registers every configurable its gin files bind (see textbooks.gin_utils).
    from textbooks.mixopt import dispatch  # deferred: keeps the CLI start fast
    from textbooks.mixopt import sweep as sweep_lib  # deferred: keeps the CLI start fast

    if args.run_trial:
        result = sweep_lib.run_trial(args.sweep_dir, args.run_trial)
        print(f"trial {result['trial_id']}: {result['status']}")
        return 0 if result["status"] in ("done", "skipped") else 1
    gin_utils.parse_gin_from_args(args)
    kwargs = {}
    if args.executor:
        kwargs["executor"] = args.executor
    if args.sweep_dir:
        kwargs["sweep_dir"] = args.sweep_dir
    if args.no_wait:
        kwargs["wait"] = False
    if args.dry_run:
        kwargs["dry_run"] = True
    if args.max_parallel is not None:
        import gin

        with gin.unlock_config():
            gin.bind_parameter("LocalSettings.max_parallel", args.max_parallel)
        kwargs["local"] = dispatch.LocalSettings()
    outcome = sweep_lib.sweep(**kwargs)
    if outcome.commands_path:
        print(f"commands: {outcome.commands_path}")
    if outcome.sbatch_path:
        print(f"sbatch script: {outcome.sbatch_path}")
    print(f"{outcome.sweep_dir}: " + ", ".join(f"{v} {k}" for k, v in outcome.counts.items() if v))
    for f in outcome.failures:
        print(f"  FAILED {f['trial_id']}: {f['error']} (log: {f['log']})")
    return 1 if outcome.failures else 0

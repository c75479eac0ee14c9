"""Fit a law from mixture ratios to a metric over a sweep's runs and propose the best mixture.

Examples:
  textbooks mixopt --sweep_dir /tmp/sweeps/three_way --target valid/loss
  textbooks mixopt --sweep_dir DIR --target valid/loss --model mixing_law --max_l1 0.4
  textbooks mixopt --sweep_dir DIR --target bench/piqa/acc --maximize --model linear
  textbooks mixopt --gin_file=sweeps/phi15_three_way_mixopt.gin --target bench/common_sense/bpb --validate
  textbooks mixopt --sweep_dir DIR --target valid/loss --max_epochs 4 --token_budget 2e9 --tokens_from_data
  textbooks mixopt --sweep_dir DIR --target valid/loss --gin_file mixopt.gin --gin.ProposalConstraints.bounds=...

Models: loglinear (Olmix: exp(a) + exp(t.r)), mixing_law (Data Mixing Laws: c + k exp(t.r)), linear
(RegMix), lightgbm (RegMix; needs the lightgbm package). The cross-validated Spearman rank correlation of
held-out runs says how far to trust the law. Targets: any recorded column, the phi-1.5 table's groups
(bench/common_sense/<m>, bench/language/<m>, bench/reasoning/<m>, bench/code/bpb) or a composite named in gin
(mixopt.composites); every candidate's seed-to-seed noise, spread across mixtures and held-out Spearman go to
targets.md, and a target whose noise swamps its spread is refused (--allow_unrankable fits it anyway). Outputs go to <sweep_dir>/mixopt/<target>-<model>/: report.md
with figures, fit.json, proposal.json, proposal.gin (registers and selects the mixture for `textbooks train`)
and train_proposal.sh.
"""

from __future__ import annotations

import argparse
import sys

from textbooks import gin_utils

HELP = "fit ratios -> metric over a sweep (log-linear, mixing law, linear, LightGBM) and propose a mixture"
ACCEPTS_EXTRA = True
DEFAULT_VALIDATION_SEEDS = [1000, 1001, 1002]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    gin_utils.add_gin_arguments(parser)
    parser.add_argument("--sweep_dir", default=None, help="the sweep folder (overrides mixopt.sweep_dir).")
    parser.add_argument("--target", default=None, help="metric column to optimize (overrides mixopt.target).")
    parser.add_argument("--model", default=None, choices=("loglinear", "mixing_law", "linear", "lightgbm"),
                        help="the law (default loglinear).")
    parser.add_argument("--maximize", action="store_true", help="maximize the target (accuracies).")
    parser.add_argument("--folds", type=int, default=None, help="K of the cross-validation (default 5).")
    parser.add_argument("--seed", type=int, default=None, help="seed of folds, restarts and search.")
    parser.add_argument("--max_epochs", type=float, default=None,
                        help="repetition cap: most passes over each component (needs --token_budget and token "
                             "counts: --component_tokens or --tokens_from_data).")
    parser.add_argument("--token_budget", type=float, default=None, help="planned training tokens of the run.")
    parser.add_argument("--component_tokens", default=None, help="tokens per component: 'web_filtered=1e9,...'.")
    parser.add_argument("--tokens_from_data", action="store_true",
                        help="estimate tokens per component from the data manifests (bytes / 4).")
    parser.add_argument("--bounds", default=None, help="per-component bounds: 'code_filtered=0.05:0.5,...'.")
    parser.add_argument("--max_l1", type=float, default=None, help="trust region: L1(r, prior) <= this.")
    parser.add_argument("--max_kl", type=float, default=None, help="trust region: KL(r || prior) <= this.")
    parser.add_argument("--no_register", action="store_true", help="do not register the proposal.")
    parser.add_argument("--validate", action="store_true",
                        help="train the proposal and the sweep's best and median mixtures with fresh seeds and "
                             "report them on the target with intervals (validation.md).")
    parser.add_argument("--validation_seeds", default=None,
                        help="fresh seeds of --validate, e.g. '1000,1001,1002' (overrides mixopt.validate_seeds).")
    parser.add_argument("--allow_unrankable", action="store_true",
                        help="fit a target flagged not rankable at this scale (its noise swamps its spread).")
    parser.add_argument("--out", default=None, help="output folder (default <sweep_dir>/mixopt/<target>-<model>).")


def main(args: argparse.Namespace) -> int:
    import dataclasses

    from textbooks.data import paths
    from textbooks.mixopt import fit, optimize, propose, validate

    gin_utils.parse_gin_from_args(args)
    if args.max_l1 is not None and args.max_kl is not None:
        print("textbooks mixopt: give --max_l1 or --max_kl, not both", file=sys.stderr)
        return 2
    try:
        constraints = propose.ProposalConstraints()
        updates = {}
        if args.bounds is not None:
            updates["bounds"] = optimize.parse_mapping(args.bounds, "--bounds")
        if args.component_tokens is not None:
            updates["component_tokens"] = optimize.parse_mapping(args.component_tokens, "--component_tokens")
        if args.max_epochs is not None:
            updates["max_epochs"] = args.max_epochs
        if args.token_budget is not None:
            updates["token_budget"] = args.token_budget
        if args.max_l1 is not None:
            updates.update(distance="l1", max_distance=args.max_l1)
        if args.max_kl is not None:
            updates.update(distance="kl", max_distance=args.max_kl)
        constraints = dataclasses.replace(constraints, **updates)
    except ValueError as e:
        print(f"textbooks mixopt: {e}", file=sys.stderr)
        return 2
    kwargs = {"constraints": constraints}
    for flag, key in (("sweep_dir", "sweep_dir"), ("target", "target"), ("model", "model"), ("folds", "num_folds"),
                      ("seed", "seed"), ("out", "out_dir")):
        if getattr(args, flag) is not None:
            kwargs[key] = getattr(args, flag)
    for key in ("sweep_dir", "out_dir"):  # relative paths are taken from the working directory
        if key in kwargs:
            kwargs[key] = paths.resolve(kwargs[key])
    if args.maximize:
        kwargs["maximize"] = True
    if args.tokens_from_data:
        kwargs["tokens_from_data"] = True
    if args.no_register:
        kwargs["register"] = False
    if args.allow_unrankable:
        kwargs["allow_unrankable"] = True
    if args.validation_seeds is not None:
        try:
            kwargs["validate_seeds"] = [int(s) for s in args.validation_seeds.split(",") if s.strip()]
        except ValueError:
            print(f"textbooks mixopt: --validation_seeds must be integers separated by commas, got "
                  f"{args.validation_seeds!r}", file=sys.stderr)
            return 2
    elif args.validate:
        kwargs["validate_seeds"] = DEFAULT_VALIDATION_SEEDS
    try:
        result = optimize.mixopt(**kwargs)
    except (fit.FitError, propose.ProposalError, validate.ValidationError, FileNotFoundError) as e:
        print(f"textbooks mixopt: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "Required bindings" not in str(e) and "REQUIRED" not in str(e):
            raise
        print(f"textbooks mixopt: {e} (give --sweep_dir and --target)", file=sys.stderr)
        return 2
    print(optimize.result_summary(result))
    return 0

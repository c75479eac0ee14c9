"""Curate a corpus with one Apache Beam pipeline, or train the educational-value classifier it uses.

The stages (heuristic filters, exact and MinHash near-dedup, benchmark decontamination, LLM judge,
classifier) and their thresholds come from gin files; see experiments/curate/. Kept documents are written in
the shard format with a manifest; rejects, dropped documents, clusters, decontamination matches and a report
(markdown + JSON + plots) go next to them.

Examples:
  textbooks curate --gin_file=experiments/curate/web.gin
  textbooks curate --gin_file=experiments/curate/code.gin --gin.curate.output_dir="'/tmp/code_filtered'"
  textbooks curate --gin_file=experiments/curate/web.gin --gin.curate.direct_num_workers=4
  textbooks curate --train_classifier --gin_file=experiments/curate/train_edu_classifier_web.gin
"""

from __future__ import annotations

import sys

HELP = "filter, deduplicate and decontaminate a corpus (Beam), or train the quality classifier"
ACCEPTS_EXTRA = True


def add_arguments(parser) -> None:
    from textbooks import gin_utils

    gin_utils.add_gin_arguments(parser)
    parser.add_argument("--train_classifier", action="store_true",
                        help="run the gin-configured train_classifier(...) instead of curate(...)")
    parser.add_argument("--print_report", action="store_true", help="print report.md when done")


def main(args) -> int:
    import json
    import os

    from textbooks import gin_utils

    # Register the configurables before the gin files are parsed.
    import textbooks.curate.pipeline  # noqa: F401
    import textbooks.curate.training  # noqa: F401
    from textbooks.curate import report as report_lib

    if not args.gin_file and not args.gin_bindings and not any(a.startswith("--gin.") for a in args.extra):
        print("textbooks curate: give a config: --gin_file=experiments/curate/<name>.gin (see experiments/curate/)",
              file=sys.stderr)
        return 2
    gin_utils.parse_gin_from_args(args)  # a GinConfigError becomes one line and exit status 2 (textbooks.cli)
    if args.train_classifier:
        metadata = textbooks.curate.training.train_classifier()
        held = metadata["metrics"]["held_out"]
        print(f"held-out precision {held['precision']:.3f} recall {held['recall']:.3f} F1 {held['f1']:.3f}")
        return 0
    report = textbooks.curate.pipeline.curate()
    print(report_lib.format_summary(report))
    if args.print_report:
        with open(os.path.join(report["output_dir"], "report", "report.md")) as f:
            print(f.read())
    if not report["reconciliation"]["balanced"]:
        print(json.dumps(report["reconciliation"], indent=2))
        return 1
    return 0

"""Build the local real corpora, one shard folder per data role, from text that ships in Debian/PyPI packages.

Reads the CPython standard library, the Python documentation (Debian python3.11-doc), web samples (PyPI
evals, extracted by `python -m textbooks.corpora.assets install`) and a noisy prose pool (Debian fortunes,
jargon-text), and writes <out>/<role>/{train,validation}-*.jsonl.gz plus manifest.json for each role.
Roles without an offline source of their own hold stand-ins, named in every record's meta.stand_in.

Examples:
  textbooks corpora --out ~/.cache/textbooks/data
  textbooks corpora --out /tmp/tiny --roles code_exercises web_raw --max_docs 50
  textbooks corpora --print-sources-table
"""

from __future__ import annotations

HELP = "build the local corpora for every data role (shards + manifests)"


def add_arguments(parser) -> None:
    from textbooks.data.roles import ROLES

    parser.add_argument("--out", default=None,
                        help="data root to write <out>/<role>/ into (default: the data root: "
                             "$TEXTBOOKS_DATA_DIR or ~/.cache/textbooks/data)")
    parser.add_argument("--roles", nargs="+", choices=ROLES, default=None, metavar="ROLE",
                        help=f"roles to build (default: all of {', '.join(ROLES)})")
    parser.add_argument("--max_docs", type=int, default=None,
                        help="keep at most N records per role (sources interleaved), for quick tests")
    parser.add_argument("--max_chars", type=int, default=8000,
                        help="split longer documents into chunks of at most this many characters")
    parser.add_argument("--validation_fraction", type=float, default=0.05,
                        help="share of documents (by id hash) in the validation split")
    parser.add_argument("--install", action="store_true",
                        help="first install missing sources (apt packages, evals wheel files)")
    parser.add_argument("--print-sources-table", "--print_sources_table", dest="print_sources_table",
                        action="store_true", help="print the markdown table of sources and licenses and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def main(args) -> int:
    from textbooks.corpora import sources

    if args.print_sources_table:
        print(sources.sources_table())
        return 0
    if args.max_docs is not None and args.max_docs < 1:
        raise SystemExit("--max_docs must be at least 1")
    if not 0.0 <= args.validation_fraction < 1.0:
        raise SystemExit("--validation_fraction must be in [0, 1)")
    from textbooks.corpora import assets, build
    from textbooks.data import paths

    if args.install:
        assets.install(quiet=args.quiet)
    out = paths.resolve(args.out) if args.out else None  # relative to the working directory
    results = build.build_corpora(out, args.roles, max_docs=args.max_docs, max_chars=args.max_chars,
                                  validation_fraction=args.validation_fraction, verbose=not args.quiet)
    print(build.summary_table(results))
    skipped = [r.role for r in results if r.manifest is None]
    if skipped:
        print(f"\nskipped (no source installed): {', '.join(skipped)}; run "
              f"`python -m textbooks.corpora.assets install`")
    return 1 if len(skipped) == len(results) else 0

"""Vocabulary tools: train the project's SentencePiece model, or encode/decode text to inspect a vocabulary.

Examples:
  textbooks vocab train --out textbooks/assets/spm8k --vocab_size 8192
  textbooks vocab train --out /tmp/spm16k --vocab_size 16384 --input notes.txt code.py
  textbooks vocab encode --name phi "def f(x):\n    return x"
  textbooks vocab decode --name spm8k "335 285 1222"        # or 335,285,1222 or 335 285 1222
  textbooks vocab info --name spm8k                          # kind, size, special ids, source file

`train` reads the Python documentation (Debian python3.11-doc) and the CPython standard library by default
(install the docs with `python -m textbooks.corpora.assets install`), keeps whitespace exactly, and writes
PREFIX.model and PREFIX.vocab. The same corpus always gives the same model file.

An unknown vocabulary name, a missing model file or ids that are not integers of the vocabulary is a one-line
error (exit status 2).
"""

from __future__ import annotations

import re
import sys

HELP = "train the SentencePiece vocabulary; encode/decode/inspect vocabularies"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    train = sub.add_parser("train", help="train a whitespace-preserving BPE SentencePiece model")
    train.add_argument("--out", required=True, help="output prefix (writes PREFIX.model and PREFIX.vocab)")
    train.add_argument("--vocab_size", type=int, default=8192)
    train.add_argument("--input", nargs="+", default=None, metavar="FILE",
                       help="UTF-8 text files to train on (default: Python docs + standard library)")
    train.add_argument("--max_bytes", type=int, default=None,
                       help="read at most this many characters of the default corpus")
    for name, text in (("encode", "print the ids and pieces of TEXT"), ("decode", "print the text of IDS")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--name", default="phi", help="vocabulary name: phi, spm8k or spm:PATH")
        p.add_argument("value", nargs="+", help="text (backslash escapes such as \\n are expanded)"
                       if name == "encode" else "token ids, separated by spaces or commas")
    info = sub.add_parser("info", help="print kind, size, special ids and source file of a vocabulary")
    info.add_argument("--name", default="phi")


def parse_ids(values: list[str], size: int, name: str) -> list[int]:
    """Token ids from command-line words: each word holds ids separated by spaces or commas (``[...]`` allowed,
    as ``encode`` prints them).

    Raises:
        ValueError: a word that is not an integer, an id outside ``[0, size)``, or no ids at all.
    """
    words = [w for w in re.split(r"[\s,]+", " ".join(values).strip().strip("[]")) if w]
    bad = [w for w in words if not re.fullmatch(r"[+-]?\d+", w)]
    if bad or not words:
        raise ValueError(f"ids must be integers separated by spaces or commas, e.g. \"335 285 1222\" or "
                         f"335,285,1222; got {' '.join(values)!r}")
    ids = [int(w) for w in words]
    outside = [i for i in ids if not 0 <= i < size]
    if outside:
        raise ValueError(f"id {outside[0]} is outside vocabulary {name!r} (ids 0..{size - 1}); check --name")
    return ids


def main(args) -> int:
    try:
        return _run(args)
    except (ValueError, OSError) as e:
        # get_vocabulary is gin-configurable, and gin appends "In call to configurable ..." lines to errors
        # raised inside it: the first line is the message.
        lines = str(e).strip().splitlines() or [type(e).__name__]
        print(f"textbooks vocab {args.action}: error: {lines[0]}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.action == "train":
        from textbooks.vocab import spm

        return spm.main_train(args.out, args.input, args.vocab_size, args.max_bytes)
    if args.action == "info":
        from textbooks.vocab.info import describe

        print("\n".join(describe(args.name).lines()))
        return 0
    from textbooks.vocab.registry import get_vocabulary

    vocab = get_vocabulary(args.name)
    if args.action == "encode":
        text = " ".join(args.value).encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
        ids = list(vocab.encode(text))
        print(ids)
        print([vocab.decode([i]) for i in ids])
        return 0
    print(repr(vocab.decode(parse_ids(args.value, int(vocab.vocab_size), args.name))))
    return 0

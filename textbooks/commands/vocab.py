"""Vocabulary tools: train the project's SentencePiece model, or encode/decode text to inspect a vocabulary.

Examples:
  textbooks vocab train --out textbooks/assets/spm8k --vocab_size 8192
  textbooks vocab train --out /tmp/spm16k --vocab_size 16384 --input notes.txt code.py
  textbooks vocab encode --name phi "def f(x):\n    return x"
  textbooks vocab info --name spm8k

`train` reads the Python documentation (Debian python3.11-doc) and the CPython standard library by default
(install the docs with `python -m textbooks.corpora.assets install`), keeps whitespace exactly, and writes
PREFIX.model and PREFIX.vocab. The same corpus always gives the same model file.
"""

from __future__ import annotations

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
                       if name == "encode" else "token ids")
    info = sub.add_parser("info", help="print size and special ids of a vocabulary")
    info.add_argument("--name", default="phi")


def main(args) -> int:
    if args.action == "train":
        from textbooks.vocab import spm

        return spm.main_train(args.out, args.input, args.vocab_size, args.max_bytes)
    from textbooks.vocab import get_vocabulary

    vocab = get_vocabulary(args.name)
    if args.action == "info":
        print(f"{args.name}: {vocab!r}\n  vocab_size={vocab.vocab_size} eos_id={vocab.eos_id} "
              f"pad_id={vocab.pad_id} unk_id={vocab.unk_id}")
        return 0
    if args.action == "encode":
        text = " ".join(args.value).encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
        ids = list(vocab.encode(text))
        print(ids)
        print([vocab.decode([i]) for i in ids])
        return 0
    print(repr(vocab.decode([int(v) for v in args.value])))
    return 0

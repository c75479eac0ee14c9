"""The project's SentencePiece vocabulary (``spm8k``): training and loading.

``textbooks vocab train`` trains a BPE model on a fixed local corpus (the Python documentation's reST
sources and the CPython standard library) with whitespace kept exactly: identity normalization, no dummy
prefix, no whitespace squeezing, whitespace-only pieces allowed (indentation runs become single pieces),
``\\n`` and ``\\t`` as user-defined pieces, digits split, and byte fallback so nothing is ever unknown. Ids: 0
``<pad>`` (a dedicated padding piece, never produced by encoding), 1 ``<|endoftext|>`` (end of text /
document separator), 2 ``<unk>``; no bos. Training is single-threaded over sentences in a fixed order, so the
same corpus gives a byte-identical model. The trained ``textbooks/assets/spm8k.model`` is committed, so
``get_vocabulary('spm8k')`` needs no training.
"""

from __future__ import annotations

import importlib.resources
import io
import os
import sys
from typing import Iterable, Iterator, Sequence

from textbooks.corpora.build import iter_training_text
from textbooks.vocab import SPM8K_VOCAB_SIZE

SPM8K_FILE = "spm8k.model"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
PAD_PIECE, EOS_PIECE, UNK_PIECE = "<pad>", "<|endoftext|>", "<unk>"
USER_SYMBOLS: tuple[str, ...] = ("\n", "\t")
MAX_SENTENCE_BYTES = 16384


def spm8k_path() -> str:
    """Path of the committed ``textbooks/assets/spm8k.model``.

    Raises:
        FileNotFoundError: the file is missing (train it with ``textbooks vocab train``).
    """
    path = str(importlib.resources.files("textbooks.assets") / SPM8K_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; train it with `textbooks vocab train --out "
                                f"textbooks/assets/spm8k`")
    return path


def sentencepiece_vocabulary(path: str, extra_ids: int = 0):
    """A ``seqio.SentencePieceVocabulary`` for the model file at ``path`` (local or gs://).

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    import seqio
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"SentencePiece model {path!r} not found; give the path of an existing .model "
                                f"file (`textbooks vocab train` writes one)")
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def spm8k_vocabulary(extra_ids: int = 0):
    """The committed 8,192-piece model as a ``seqio.SentencePieceVocabulary``."""
    return sentencepiece_vocabulary(spm8k_path(), extra_ids=extra_ids)


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    """Training sentences: the non-blank lines of each text, leading whitespace kept."""
    for text in texts:
        for line in text.split("\n"):
            line = line.rstrip("\r")
            if line.strip() and len(line.encode("utf-8", "replace")) <= MAX_SENTENCE_BYTES:
                yield line


def _read_files(files: Sequence[str]) -> Iterator[str]:
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()


def train_spm(out_prefix: str, input_files: Sequence[str] | None = None, *, vocab_size: int = SPM8K_VOCAB_SIZE,
              max_bytes: int | None = None, character_coverage: float = 0.9999, verbose: bool = False) -> str:
    """Trains a whitespace-preserving BPE SentencePiece model and writes ``<out_prefix>.model`` and ``.vocab``.

    Args:
        out_prefix: output path without extension.
        input_files: UTF-8 text files to train on (in this order); default: the Python documentation and
            the standard library (:func:`textbooks.corpora.build.iter_training_text`).
        vocab_size: number of pieces, including the 3 special pieces, the user pieces and the 256 byte pieces.
        max_bytes: stop reading the default corpus after this many characters.
        character_coverage: share of characters covered by character pieces (the rest use bytes).
        verbose: show SentencePiece's training log.

    Returns:
        The path of the written ``.model`` file.
    """
    import sentencepiece as spm

    if input_files:
        texts: Iterable[str] = _read_files(input_files)
    else:
        texts = iter_training_text(max_bytes=max_bytes)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(texts), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        pad_id=PAD_ID, pad_piece=PAD_PIECE, eos_id=EOS_ID, eos_piece=EOS_PIECE, unk_id=UNK_ID,
        unk_piece=UNK_PIECE, bos_id=-1, user_defined_symbols=list(USER_SYMBOLS), byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, split_by_whitespace=True,
        character_coverage=character_coverage, max_sentence_length=MAX_SENTENCE_BYTES, input_sentence_size=0,
        shuffle_input_sentence=False, num_threads=1, minloglevel=0 if verbose else 2)
    data = model.getvalue()
    out_dir = os.path.dirname(os.path.abspath(out_prefix))
    os.makedirs(out_dir, exist_ok=True)
    with open(out_prefix + ".model", "wb") as f:
        f.write(data)
    processor = spm.SentencePieceProcessor(model_proto=data)
    with open(out_prefix + ".vocab", "w", encoding="utf-8") as f:
        for i in range(processor.get_piece_size()):
            piece = processor.id_to_piece(i).encode("unicode_escape").decode("ascii")
            f.write(f"{piece}\t{processor.get_score(i):g}\n")
    return out_prefix + ".model"


def check_model(path: str) -> list[str]:
    """Problems with a model file for this project's conventions (empty list when it is fine)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    problems = []
    for want, got, what in ((PAD_ID, sp.pad_id(), "pad"), (EOS_ID, sp.eos_id(), "eos"), (UNK_ID, sp.unk_id(), "unk")):
        if want != got:
            problems.append(f"{what} id is {got}, expected {want}")
    sample = "def f(x):\n\tif x:\n        return  x  \n\n"
    if sp.decode(sp.encode(sample)) != sample:
        problems.append("whitespace is not preserved by encode/decode")
    if not sp.is_control(PAD_ID):
        problems.append("pad is not a control piece")
    return problems


def main_train(out_prefix: str, input_files: Sequence[str] | None, vocab_size: int,
               max_bytes: int | None = None) -> int:
    path = train_spm(out_prefix, input_files, vocab_size=vocab_size, max_bytes=max_bytes)
    problems = check_model(path)
    print(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB)", file=sys.stderr)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0

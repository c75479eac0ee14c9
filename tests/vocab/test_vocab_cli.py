"""`textbooks vocab`: decode reads ids separated by spaces or commas, info prints facts, and wrong input is a
one-line error (exit status 2) instead of a traceback."""

import subprocess
import sys

import pytest
import sentencepiece

from textbooks.cli import main
from textbooks.vocab import PHI_VOCAB_SIZE, phi, spm

IDS = [335, 285, 1222]


def _one_line_error(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("textbooks vocab ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert captured.out == ""
    return err


@pytest.mark.parametrize("words", [["335 285 1222"], ["335,285,1222"], ["335", "285", "1222"],
                                   ["[335, 285, 1222]"], ["335, 285", "1222"]])
def test_decode_reads_ids_separated_by_spaces_or_commas(words, capsys):
    expected = sentencepiece.SentencePieceProcessor(model_file=spm.spm8k_path()).decode(IDS)
    assert main(["vocab", "decode", "--name", "spm8k", *words]) == 0
    assert capsys.readouterr().out.strip() == repr(expected) == repr("def fib")


@pytest.mark.parametrize("words,needles", [
    (["335 abc"], ["ids must be integers separated by spaces or commas", "'335 abc'"]),
    (["1.5"], ["ids must be integers"]),
    ([","], ["ids must be integers"]),
    (["335 8192"], ["id 8192 is outside vocabulary 'spm8k' (ids 0..8191)", "--name"]),
])
def test_decode_of_bad_ids_is_a_one_line_error(words, needles, capsys):
    assert main(["vocab", "decode", "--name", "spm8k", *words]) == 2
    _one_line_error(capsys, "textbooks vocab decode: error:", *needles)


def test_unknown_name_or_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["vocab", "info", "--name", "nope"]) == 2
    _one_line_error(capsys, "unknown vocabulary 'nope'", "known names: phi, spm8k, byte", "spm:/path")
    assert main(["vocab", "encode", "--name", "nope", "x"]) == 2
    _one_line_error(capsys, "unknown vocabulary 'nope'")
    missing = tmp_path / "missing.model"
    assert main(["vocab", "decode", "--name", f"spm:{missing}", "1"]) == 2
    _one_line_error(capsys, str(missing), "not found", "textbooks vocab train")


def test_info_prints_facts_not_an_object_repr(capsys):
    processor = sentencepiece.SentencePieceProcessor(model_file=spm.spm8k_path())
    assert main(["vocab", "info", "--name", "spm8k"]) == 0
    out = capsys.readouterr().out
    assert "object at 0x" not in out
    special = f"pad={processor.pad_id()} '<pad>' eos={processor.eos_id()} '<|endoftext|>' " \
              f"unk={processor.unk_id()} '<unk>' bos=none"
    assert processor.bos_id() == -1
    assert out.splitlines() == [
        "name:    spm8k",
        "kind:    SentencePiece BPE (normalization identity, byte fallback, no dummy prefix, whitespace kept)",
        f"size:    {processor.get_piece_size():,} ids",
        f"special: {special}",
        f"source:  {spm.spm8k_path()}",
    ]

    assert main(["vocab", "info", "--name", "phi"]) == 0
    out = capsys.readouterr().out
    assert f"size:    {PHI_VOCAB_SIZE:,} ids" in out and f"eos={phi.EOS_ID} '<|endoftext|>'" in out
    assert "unk=none" in out and phi.added_tokens_path() in out and "byte-level BPE" in out

    assert main(["vocab", "info", "--name", "byte"]) == 0
    out = capsys.readouterr().out
    assert "size:    259 ids" in out and "source:  none (built in)" in out and "UTF-8 bytes" in out


def test_errors_reach_the_shell_as_one_line_and_status_2():
    done = subprocess.run([sys.executable, "-m", "textbooks.cli", "vocab", "info", "--name", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "textbooks vocab info: error: unknown vocabulary 'nope'; known names: phi, spm8k, byte; give one of them, "
        "or 'spm:/path/to/model.model' for a SentencePiece model file"]

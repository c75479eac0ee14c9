"""What the CLI says when asked for help or given too little: runnable examples, every flag explained, and a
missing --model_dir named as such."""

import argparse

from textbooks import cli


def _sub(verb: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


def test_train_help_examples_keep_their_line_continuations():
    text = _sub("train").format_help()
    lines = [line for line in text.splitlines() if line.strip().startswith("textbooks train")]
    assert len(lines) >= 3
    # A multi-line example ends its first line with a backslash, so it can be pasted into a shell.
    assert any(line.rstrip().endswith("\\") for line in lines), "\n".join(lines)


def test_every_flag_of_every_verb_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{verb} {action.option_strings[0]}" for verb, p in sub.choices.items() for action in p._actions
               if action.option_strings and not action.help]
    assert not missing, missing


def test_train_without_a_model_dir_names_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--gin_file=tiny/phi15_web.gin"]) == 2
    err = capsys.readouterr().err
    assert "--model_dir" in err and "gin.REQUIRED" not in err

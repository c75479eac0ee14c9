"""`textbooks sweep --status` on a folder that is not a sweep: a one-line error naming the folder and what to
give instead (exit status 2), no traceback, and nothing created."""

import os
import subprocess
import sys

from textbooks.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _one_line(err: str) -> str:
    err = err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("textbooks sweep --status: error: "), err
    assert "give --sweep_dir the folder of a sweep" in err and "textbooks sweep --gin_file" in err, err
    return err


def test_missing_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--sweep_dir", "missing", "--status"]) == 2
    captured = capsys.readouterr()
    err = _one_line(captured.err)
    assert f"{tmp_path / 'missing'} does not exist" in err  # the relative path, resolved
    assert captured.out == "" and os.listdir(tmp_path) == []


def test_folder_without_a_sweep(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["sweep", "--sweep_dir", str(tmp_path / "empty"), "--status"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{tmp_path / 'empty' / 'sweep.json'} does not exist" in err and "is not a sweep folder" in err
    assert os.listdir(tmp_path / "empty") == []


def test_through_the_shell(tmp_path):
    done = subprocess.run([sys.executable, "-m", "textbooks.cli", "sweep", "--sweep_dir", "missing", "--status"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 2 and done.stdout == ""
    assert f"{tmp_path / 'missing'} does not exist" in _one_line(done.stderr)

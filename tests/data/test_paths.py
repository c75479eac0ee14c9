"""User-given paths: made absolute against the working directory, URLs kept, gin-bound paths resolved through
macros, and output folders checked before work starts."""

import gin
import pytest

from textbooks.data import files, paths


def test_resolve_takes_relative_paths_from_the_working_directory_and_keeps_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.resolve("runs/a/") == str(tmp_path / "runs" / "a")
    assert paths.resolve(tmp_path / "x" / ".." / "y") == str(tmp_path / "y")
    assert paths.resolve("~/ckpt") == str(tmp_path / "home" / "ckpt")
    for url in ("gs://bucket/run", "file:///tmp/run", "s3://b/k/../k"):
        assert paths.resolve(url) == url and files.is_url(url)
    assert not files.is_url("runs/a")


def test_check_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.check_output_dir("new/deeper/run") == str(tmp_path / "new" / "deeper" / "run")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert paths.check_output_dir(".") == str(tmp_path)
    assert paths.check_output_dir("gs://bucket/run") == "gs://bucket/run"
    (tmp_path / "file").write_text("x")
    for bad in ("file", "file/run/deeper"):
        with pytest.raises(ValueError, match=f"the model dir {tmp_path / bad} cannot be used: {tmp_path / 'file'} "
                                             "is a file, not a folder"):
            paths.check_output_dir(bad, "the model dir")


def test_check_output_dir_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    # Permission bits do not stop root, so the access check itself answers "not writable" here.
    monkeypatch.setattr(paths.os, "access", lambda path, mode: False)
    (tmp_path / "locked").mkdir()
    with pytest.raises(ValueError, match=f"cannot be created: {tmp_path / 'locked'} is not writable"):
        paths.check_output_dir(str(tmp_path / "locked" / "run"))
    with pytest.raises(ValueError, match=f"cannot be written: {tmp_path / 'locked'} is not writable"):
        paths.check_output_dir(str(tmp_path / "locked"))


@gin.configurable
def _path_holder(model_dir=None, init_from=None, steps=1):
    return model_dir, init_from, steps


def test_resolve_gin_paths_follows_macros_and_leaves_other_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gin.parse_config("""
        MODEL_DIR = %OUTER
        OUTER = 'runs/a'
        _path_holder.model_dir = %MODEL_DIR
        _path_holder.init_from = 'gs://bucket/base'
        _path_holder.steps = 3
        """)
    keys = ["_path_holder.model_dir", "_path_holder.init_from", "_path_holder.steps", "_unbound.path"]
    assert paths.resolve_gin_paths(keys) == {"_path_holder.model_dir": str(tmp_path / "runs" / "a"),
                                             "_path_holder.init_from": "gs://bucket/base"}
    gin.finalize()
    assert _path_holder() == (str(tmp_path / "runs" / "a"), "gs://bucket/base", 3)
    assert gin.query_parameter("OUTER/gin.macro.value") == str(tmp_path / "runs" / "a")  # set where it was set


def test_resolve_gin_paths_stops_at_a_cycle_of_macros():
    gin.parse_config("A = %B\nB = %A\n_path_holder.model_dir = %A")
    assert paths.resolve_gin_paths(["_path_holder.model_dir"]) == {}

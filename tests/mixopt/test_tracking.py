"""Tracking: TensorBoard events readable by TensorBoard's own loader; W&B runs grouped per sweep when present."""

import importlib.machinery
import logging
import sys
import types

import pytest

from textbooks.mixopt import tracking

ROW = {"trial_id": "tabc", "point": 3, "seed": 1, "status": "done", "ratio/web_filtered": 0.25,
       "ratio/code_filtered": 0.75, "train/loss": 2.5, "valid/loss": 2.75, "mixture": "mix_cf75_wf25",
       "wall_s": 3.0}
CURVE = [{"step": 10, "loss": 3.0, "time": 1.0}, {"step": 20, "loss": 2.5, "time": 2.0}]


def test_tensorboard_runs_per_trial_and_for_the_sweep(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # absent, whatever is installed
    t = tracking.SweepTracker(str(tmp_path), "s", "fp", ["web_filtered", "code_filtered"])
    t.trial_finished(ROW, CURVE)
    t.progress(done=1, failed=0, total=4)
    t.close([ROW])
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "tabc"))
    acc.Reload()
    assert {"final/train/loss", "final/valid/loss"} <= set(acc.Tags()["scalars"])
    (ev,) = acc.Scalars("final/valid/loss")
    assert ev.value == pytest.approx(2.75) and ev.step == 20
    assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
    summary = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "_sweep"))
    summary.Reload()
    assert summary.Scalars("sweep/done")[0].value == 1.0
    root = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    root.Reload()
    assert "_hparams_/experiment" in root.Tags()["tensors"]


def test_absent_wandb_is_one_info_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with caplog.at_level(logging.INFO, logger="textbooks.mixopt.tracking"):
        assert not tracking.wandb_enabled(tracking.TrackingSettings())
    assert "wandb is not installed" in caplog.text
    with pytest.raises(RuntimeError, match="pip install wandb"):
        tracking.wandb_enabled(tracking.TrackingSettings(wandb=True))


class _FakeRun:
    def __init__(self, calls, kwargs):
        self.calls, self.kwargs, self.summary = calls, kwargs, {}
        self.logged = []

    def log(self, values, step=None):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.calls.append(("finish", self.kwargs["name"]))


def _fake_wandb(calls):
    mod = types.ModuleType("wandb")
    mod.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    mod.runs = []

    def init(**kwargs):
        run = _FakeRun(calls, kwargs)
        mod.runs.append(run)
        calls.append(("init", kwargs["name"]))
        return run

    mod.init = init
    mod.Table = lambda columns, data: {"columns": columns, "data": data}
    return mod


def test_wandb_runs_are_grouped_per_sweep_with_configs(tmp_path, monkeypatch):
    calls = []
    fake = _fake_wandb(calls)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    t = tracking.SweepTracker(str(tmp_path), "three_way", "fp123", ["web_filtered", "code_filtered"],
                              tracking.TrackingSettings(wandb_project="proj"))
    t.trial_finished(ROW, CURVE)
    t.close([ROW])
    trial_run, summary_run = fake.runs
    kw = trial_run.kwargs
    assert kw["group"] == "three_way" and kw["project"] == "proj" and kw["name"] == "tabc"
    assert kw["config"]["ratio/code_filtered"] == 0.75 and kw["config"]["fingerprint"] == "fp123"
    assert trial_run.logged == [(10, {"loss": 3.0}), (20, {"loss": 2.5})]
    assert trial_run.summary["valid/loss"] == 2.75
    assert summary_run.kwargs["group"] == "three_way" and summary_run.kwargs["job_type"] == "sweep-summary"
    assert calls == [("init", "tabc"), ("finish", "tabc"), ("init", "three_way-summary"),
                     ("finish", "three_way-summary")]

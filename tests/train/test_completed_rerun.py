"""`textbooks train` on a model dir that already finished: nothing is trained and nothing is written, so the
finished run's summary, metrics, TensorBoard events and config stay as they were."""

import json
import os

import pytest

from train_support import losses, run_cli, tiny_gin, train_cmd

pytestmark = pytest.mark.slow

STEPS = 4


def _snapshot(model_dir):
    """{relative path: (bytes, mtime_ns)} of every file under ``model_dir``."""
    out = {}
    for root, _, files in os.walk(model_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, model_dir)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def test_rerunning_a_finished_run_leaves_its_records_alone(tmp_path):
    gin_file = tiny_gin(tmp_path, steps=STEPS, save_every=2, extra="""\
        train.tensorboard = True
        ValidationConfig.eval_every = 2
        ValidationConfig.num_batches = 1
        """)
    model_dir = str(tmp_path / "run")
    first = run_cli(train_cmd(gin_file, model_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.load(open(os.path.join(model_dir, "summary.json")))
    assert summary["final_step"] == STEPS and summary["stopped_by"] == "completed"
    assert summary["final_loss"] == pytest.approx(losses(model_dir)[STEPS], rel=1e-6)
    assert summary["tokens_per_second"] > 0 and summary["eval"]
    before = _snapshot(model_dir)
    assert any(p.startswith("tensorboard") and "tfevents" in p for p in before)

    again = run_cli(train_cmd(gin_file, model_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    after = _snapshot(model_dir)
    assert after["summary.json"] == before["summary.json"]  # byte-identical, not rewritten
    assert sorted(after) == sorted(before), "files were added or removed (e.g. a new TensorBoard event file)"
    changed = [p for p in before if after[p] != before[p]]
    assert not changed, f"files rewritten by the rerun: {changed}"
    # The rerun reports the recorded run.
    assert f"steps 0->{STEPS} (completed); final loss {summary['final_loss']:.4f}" in again.stdout
    assert "nothing to train" in again.stderr

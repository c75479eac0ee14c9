"""Weights & Biases in training: `textbooks train` with ``WandbConfig.enabled = True`` in W&B's offline mode
logs the scalars the JSON Lines/TensorBoard writers log, the run record and the operative config; read back
from the offline run's own files (no network)."""

import glob
import json
import os

import pytest
from wandb.proto import wandb_internal_pb2
from wandb.sdk.internal import datastore

from train_support import cli_env, run_cli, tiny_gin, train_cmd
from textbooks.train.metrics import read_jsonl

STEPS = 4


def _offline_records(wandb_dir):
    """The records of the single offline run under ``wandb_dir``: ``(history rows, config, run folder)``."""
    runs = glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*"))
    assert len(runs) == 1, runs
    (path,) = glob.glob(os.path.join(runs[0], "run-*.wandb"))
    store = datastore.DataStore()
    store.open_for_scan(path)
    history, config = [], {}
    while (data := store.scan_data()) is not None:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in rec.history.item})
        elif kind in ("config", "run"):
            items = rec.config.update if kind == "config" else rec.run.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    return history, config, runs[0]


def test_train_logs_scalars_record_and_config_to_wandb_offline(tmp_path):
    gin_file = tiny_gin(tmp_path, steps=STEPS, save_every=2, extra="""\
        WandbConfig.enabled = True
        WandbConfig.mode = 'offline'
        WandbConfig.project = 'textbooks-test'
        """)
    model_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb_files"
    out = run_cli(train_cmd(gin_file, str(model_dir)),
                  env=cli_env(devices=1, WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true"))
    assert out.returncode == 0, out.stderr[-3000:]

    history, config, run_dir = _offline_records(str(wandb_dir))
    logged = read_jsonl(str(model_dir / "metrics" / "train.jsonl"))
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
    by_step = {h["_step"]: h for h in history}
    for rec in logged:
        row = by_step[rec["step"]]
        for key, value in rec.items():
            if key not in ("step", "time") and value is not None:
                # Both are the same float64 value, written as JSON by each writer.
                assert row[f"train/{key}"] == pytest.approx(value, rel=1e-12, abs=0), (rec["step"], key)
    assert any(k.startswith("train/tokens/") for k in by_step[1])

    record = json.loads((model_dir / "run_record.json").read_text())
    assert config["run_record"]["tokens_per_role"] == record["tokens_per_role"]
    assert config["run_record"]["code"] == record["code"]
    operative = (model_dir / "config.gin").read_text()
    assert config["operative_config"] == operative
    assert "WandbConfig.enabled = True" in operative
    text = open(os.path.join(run_dir, "files", "operative_config.txt")).read()
    assert operative in text

"""train() in-process: metrics files (JSONL, TensorBoard, MFU), non-finite losses, and configuration errors."""

import glob
import json
import math
import os

import jax
import numpy as np
import pytest

from train_support import FAST_COMPILE
from treecheck import assert_same_structure
from textbooks import gin_utils
from textbooks import partitioning as part
from textbooks.model.load import load_model
from textbooks.train import checkpoints as ck
from textbooks.train import flops
from textbooks.train import trainer
from textbooks.train.synthetic import SyntheticBatches


class PoisonedBatches(SyntheticBatches):
    """Synthetic batches whose batch number ``bad`` (0-based) has a NaN loss weight."""

    def __init__(self, bad, **kw):
        super().__init__(**kw)
        self.bad = bad

    def batch(self, step):
        out = super().batch(step)
        if step == self.bad:
            out["decoder_loss_weights"] = out["decoder_loss_weights"].copy()
            out["decoder_loss_weights"][0, 0] = np.nan
        return out


def _train(tmp_path, config, steps, iterator, **kw):
    kw.setdefault("checkpoint", ck.CheckpointConfig(save_every=2, async_save=False))
    return trainer.train(
        model_dir=str(tmp_path), model_config=config, task_feature_lengths={"targets": 32}, batch_size=8,
        train_steps=steps, vocabulary="byte", partitioning=part.PartitioningConfig(data=2, fsdp=2, tensor=2),
        train_iterator=iterator, log_every=1, progress_bar=False, peak_flops_per_device=1e9,
        compiler_options=FAST_COMPILE, **kw)


def test_skip_policy_drops_the_bad_step_and_writes_metrics(tmp_path, tiny_config):
    data = PoisonedBatches(3, global_batch_size=8, seq_len=32, vocab_size=tiny_config.vocab_size, mean_doc_len=12)
    result = _train(tmp_path, tiny_config, 6, data, on_nonfinite="skip", tensorboard=True)
    assert result.skipped_steps == 1 and result.final_step == 6 and math.isfinite(result.final_loss)

    records = [json.loads(line) for line in open(tmp_path / "metrics" / "train.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    bad = records[3]
    assert bad["nonfinite"] == 1.0 and bad["loss"] is None  # NaN is written as null
    good = records[-1]
    for key in ("loss", "grad_norm", "learning_rate", "tokens", "tokens_per_second", "mfu", "step_seconds"):
        assert key in good and good[key] is not None, key
    roles = [k for k in good if k.startswith("loss/")]
    assert roles and all(r[5:] in ("synthetic_textbooks", "code_textbooks", "code_exercises", "code_filtered",
                                   "web_filtered", "web_raw") for r in roles)
    # MFU = tokens/s x FLOPs per token / peak, with the model's own FLOP count as the reference.
    fpt = tiny_config.flops_per_token(32)
    assert flops.flops_per_token(tiny_config, 32) == fpt
    assert good["mfu"] == pytest.approx(good["tokens_per_second"] * fpt / (1e9 * 8), rel=1e-6)
    assert glob.glob(str(tmp_path / "tensorboard" / "train" / "events.out.tfevents.*"))
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["skipped_steps"] == 1 and summary["stopped_by"] == "completed"


def test_stop_policy_raises_and_keeps_a_finite_checkpoint(tmp_path, tiny_config):
    data = PoisonedBatches(3, global_batch_size=8, seq_len=32, vocab_size=tiny_config.vocab_size, mean_doc_len=12)
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss or gradient at step 4"):
        _train(tmp_path, tiny_config, 10, data, on_nonfinite="stop", tensorboard=False)
    loaded = load_model(str(tmp_path))
    assert loaded.step <= 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(loaded.params))
    assert json.load(open(tmp_path / "summary.json"))["stopped_by"] == "nonfinite"


def test_vocabulary_larger_than_the_model_is_an_error(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="model_config.vocab_size = 51200"):
        trainer.train(model_dir=str(tmp_path), model_config=tiny_config.replace(vocab_size=8192),
                      task_feature_lengths={"targets": 32}, batch_size=8, train_steps=1, vocabulary="phi",
                      train_iterator=iter([]))
    trainer.check_vocab_size(51200, "phi")
    trainer.check_vocab_size(8192, "spm8k")


def test_batch_layout_errors_name_the_gin_keys(tmp_path, tiny_config):
    layout = part.PartitioningConfig(data=2, fsdp=2, tensor=2)  # 4 data-parallel devices
    kw = dict(model_dir=str(tmp_path), model_config=tiny_config, task_feature_lengths={"targets": 32},
              train_steps=1, vocabulary="byte", partitioning=layout, train_iterator=iter([]))
    with pytest.raises(ValueError, match=r"train.microbatches = 3 cannot split.*Valid train.microbatches: 1, 2;"):
        trainer.train(batch_size=8, microbatches=3, **kw)
    with pytest.raises(ValueError, match=r"train.batch_size \(BATCH_SIZE = 6\) is not divisible by the 4 "):
        trainer.train(batch_size=6, **kw)


def test_unknown_mixture_lists_the_registered_names(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="unknown mixture or task 'no_such_mixture'; registered: .*code_filtered"):
        trainer.train(model_dir=str(tmp_path), model_config=tiny_config, mixture_or_task_name="no_such_mixture",
                      task_feature_lengths={"targets": 32}, batch_size=8, train_steps=1)


def test_gin_bad_binding_is_named():
    with pytest.raises(gin_utils.GinConfigError, match="train.no_such_argument"):
        gin_utils.parse_gin(["runs/pretrain.gin"], ["train.no_such_argument = 3"])


def test_cli_reports_unknown_preset_and_missing_required_macros(tmp_path, capsys):
    from textbooks import cli

    rc = cli.main(["train", "--gin_file=runs/pretrain.gin", "--gin_file=tiny/synthetic.gin",
                   f"--model_dir={tmp_path}", "--gin.TRAIN_STEPS=1", "--gin.model_config.preset='phi-9000'"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown model preset 'phi-9000'" in err and "phi-cpu-1m" in err

    import gin

    gin.clear_config()
    rc = cli.main(["train", "--gin_file=runs/pretrain.gin", f"--model_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "MIXTURE_OR_TASK_NAME" in err and "gin.REQUIRED" in err
    assert not os.path.exists(tmp_path / "checkpoints")


def test_init_from_takes_the_parameters_of_another_run(tmp_path, tiny_config):
    from textbooks.model.causal_lm import CausalLM
    from textbooks.train import optimizer as opt
    from textbooks.train import state as st

    # A source checkpoint holding other parameters (seed 7), written as a run would.
    mesh_cfg = part.PartitioningConfig(data=-1)
    tx, _ = opt.make_optimizer(opt.OptimizerConfig(), 10)
    state = st.init_state(CausalLM(tiny_config), tx, part.make_mesh(mesh_cfg), mesh_cfg.logical_axis_rules,
                          seed=7, compiler_options=FAST_COMPILE)
    state = state.replace(step=state.step + 5)
    source = jax.device_get(state.params)
    run = ck.RunCheckpoints(str(tmp_path / "source"), ck.CheckpointConfig(save_every=5))
    run.save(5, state, None, {"model_config": tiny_config.to_dict(), "vocabulary": "byte"})
    run.close()

    data = SyntheticBatches(global_batch_size=8, seq_len=32, vocab_size=tiny_config.vocab_size, mean_doc_len=12)
    result = _train(tmp_path / "finetune", tiny_config, 1, data, tensorboard=False,
                    optimizer=opt.OptimizerConfig(learning_rate=1e-12, weight_decay=0.0),
                    checkpoint=ck.CheckpointConfig(save_every=1, async_save=False, init_from=str(tmp_path / "source")))
    assert result.start_step == 0 and result.final_step == 1  # a fresh run (own step count, fresh optimizer)
    tuned = load_model(str(tmp_path / "finetune")).params
    # One AdamW step of learning rate 1e-12 moves a weight by about 1e-12: the weights are the source's.
    assert_same_structure(tuned, source)
    for a, b in zip(jax.tree_util.tree_leaves(tuned), jax.tree_util.tree_leaves(source)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-9)

    # From a params folder (what `textbooks convert --from-hf` writes, unscanned) into a run with scanned layers.
    from textbooks.model import params_io

    params_io.save_params(source, tiny_config, str(tmp_path / "params"), vocabulary="byte")
    scanned = tiny_config.replace(scan_layers=True)
    _train(tmp_path / "scanned", scanned, 1, data, tensorboard=False,
           optimizer=opt.OptimizerConfig(learning_rate=1e-12, weight_decay=0.0),
           checkpoint=ck.CheckpointConfig(save_every=1, async_save=False, init_from=str(tmp_path / "params")))
    tuned = load_model(str(tmp_path / "scanned"))
    assert tuned.config.scan_layers and params_io.is_scanned(tuned.params)
    unscanned = params_io.to_layout(jax.device_get(tuned.params), scan_layers=False)
    flat_tuned, flat_source = params_io.flatten(unscanned), params_io.flatten(source)
    assert flat_tuned.keys() == flat_source.keys()
    for key in flat_source:
        np.testing.assert_allclose(np.asarray(flat_tuned[key]), np.asarray(flat_source[key]), atol=1e-9)


@pytest.mark.parametrize("files", [
    ["runs/pretrain.gin"], ["runs/finetune.gin"], ["runs/pretrain.gin", "tiny/pretrain_tiny.gin"],
    ["runs/finetune.gin", "tiny/finetune_tiny.gin"], ["runs/pretrain.gin", "tpu/phi15_v5e256.gin"],
    ["runs/pretrain.gin", "tpu/phi15_v5p128.gin"], ["runs/pretrain.gin", "gpu/phi15_8xh100.gin"],
    ["runs/pretrain.gin", "gpu/phi15_8xa100_40gb.gin"]], ids="+".join)
def test_experiment_gin_files_compose(files):
    import gin

    gin_utils.parse_gin(files, ["MIXTURE_OR_TASK_NAME = 'phi15'", "TRAIN_STEPS = 10", "MODEL_DIR = '/tmp/x'",
                                "INIT_FROM = '/tmp/y'"])
    b = gin.get_bindings("train")
    assert b["model_dir"] == "/tmp/x" and b["train_steps"] == 10 and b["mixture_or_task_name"] == "phi15"
    assert b["optimizer"].b2 == 0.98 and b["optimizer"].eps == 1e-7
    config = b["model_config"]
    if files[-1].startswith(("tpu/", "gpu/")):
        assert config.hidden_size == 2048 and config.dtype == "bfloat16" and config.scan_layers
        assert b["partitioning"].fsdp in (-1, 8)
        # runs/pretrain.gin's batch of 1024 at the hardware file's default HOSTS, at most rows_per_device
        # sequences per device at a time: v5e-256 1024 / 256 chips = 4 rows (cap 4), v5p-128 1024 / 64 = 16
        # (cap 16), one 8-GPU host 1024 / 8 = 128 rows in microbatches of 8 (H100) or 4 (A100 40GB).
        expected = {"tpu/phi15_v5e256.gin": 1, "tpu/phi15_v5p128.gin": 1, "gpu/phi15_8xh100.gin": 16,
                    "gpu/phi15_8xa100_40gb.gin": 32}
        assert b["batch_size"] == 1024 and b["microbatches"] == expected[files[-1]]
    if "finetune" in files[0]:
        assert b["checkpoint"].init_from == "/tmp/y" and b["optimizer"].schedule == "linear"
    if "tiny" in " ".join(files):
        assert config.hidden_size == 64 and b["batch_size"] == 8


# The papers' numbers, as printed in "Textbooks Are All You Need" (section 2.3) and its phi-1.5 report
# (section 2): (mixture, batch, steps, peak lr, schedule, warmup, weight decay, hidden size).
PAPER_RUNS = {
    "phi1/pretrain.gin": ("phi1", 1024, 36000, 1e-3, "linear", 750, 0.1, 2048),
    "phi1/finetune.gin": ("phi1_finetune", 256, 6000, 1e-4, "linear", 50, 0.01, 2048),
    "phi15/phi15.gin": ("phi15", 2048, 35763, 2e-4, "constant", 0, 0.1, 2048),
    "phi15/phi15_web_only.gin": ("phi15_web_only", 2048, 35763, 2e-4, "constant", 0, 0.1, 2048),
    "phi15/phi15_web.gin": ("phi15_web", 2048, 35763, 2e-4, "constant", 0, 0.1, 2048),
}


def _bindings(files, extra=()):
    import gin

    gin.clear_config()
    gin_utils.parse_gin(files, ["MODEL_DIR = '/tmp/x'", "INIT_FROM = '/tmp/y'", *extra])
    return gin.get_bindings("train")


@pytest.mark.parametrize("name", sorted(PAPER_RUNS))
def test_paper_runs_carry_the_papers_hyperparameters(name):
    mixture, batch, steps, lr, schedule, warmup, wd, hidden = PAPER_RUNS[name]
    b = _bindings([name])
    opt_config, config = b["optimizer"], b["model_config"]
    assert (b["mixture_or_task_name"], b["batch_size"], b["train_steps"]) == (mixture, batch, steps)
    assert (opt_config.learning_rate, opt_config.schedule, opt_config.warmup_steps) == (lr, schedule, warmup)
    assert opt_config.weight_decay == wd and b["task_feature_lengths"] == {"targets": 2048}
    assert config.hidden_size == hidden and config.num_layers == 24 and config.vocab_size == 51200
    if name.startswith("phi15/"):  # 150B tokens
        assert abs(batch * steps * 2048 - 150e9) / 150e9 < 1e-4
    if name == "phi1/pretrain.gin":  # the step-24,000 checkpoint (phi-1-base) is kept
        assert 24000 % b["checkpoint"].keep_period == 0
    # A hardware file after the run keeps the run's data, batch and optimizer and brings the mesh.
    with_mesh = _bindings([name, "tpu/phi15_v5e256.gin"])
    assert (with_mesh["mixture_or_task_name"], with_mesh["batch_size"]) == (mixture, batch)
    assert with_mesh["optimizer"] == opt_config and with_mesh["partitioning"].fsdp == -1


@pytest.mark.parametrize("paper,tiny", [("phi1/pretrain.gin", "tiny/phi1_pretrain.gin"),
                                        ("phi1/finetune.gin", "tiny/phi1_finetune.gin"),
                                        ("phi15/phi15.gin", "tiny/phi15.gin"),
                                        ("phi15/phi15_web_only.gin", "tiny/phi15_web_only.gin"),
                                        ("phi15/phi15_web.gin", "tiny/phi15_web.gin")])
def test_tiny_runs_keep_the_paper_runs_ratios(paper, tiny):
    full, small = _bindings([paper]), _bindings([tiny])
    assert small["mixture_or_task_name"] == full["mixture_or_task_name"] + "_spm8k"
    import seqio

    import mixtures  # noqa: F401 - registers the paper mixtures

    registered = set(seqio.MixtureRegistry.names())
    assert {small["mixture_or_task_name"], full["mixture_or_task_name"]} <= registered
    assert small["model_config"].hidden_size <= 256 and small["vocabulary"] == "spm8k"
    fo, so = full["optimizer"], small["optimizer"]
    assert (so.learning_rate, so.schedule, so.weight_decay) == (fo.learning_rate, fo.schedule, fo.weight_decay)
    # Warmup share of the run, to the nearest step.
    assert abs(so.warmup_steps - fo.warmup_steps / full["train_steps"] * small["train_steps"]) <= 1
    # Sequence length and batch shrink by the same factors in every run.
    assert full["task_feature_lengths"]["targets"] / small["task_feature_lengths"]["targets"] == 8
    assert full["batch_size"] / small["batch_size"] == 64


def test_tiny_runs_keep_the_token_ratios_between_paper_runs():
    def sequences(name):
        b = _bindings([name])
        return b["batch_size"] * b["train_steps"]

    # phi-1 fine-tuning sees 1/24 of its pretraining's sequences; phi-1.5 about twice phi-1's pretraining.
    for prefix in ("phi1/", "tiny/phi1_"):
        pre, ft = ("phi1/pretrain.gin", "phi1/finetune.gin") if prefix == "phi1/" else (
            "tiny/phi1_pretrain.gin", "tiny/phi1_finetune.gin")
        assert abs(sequences(ft) / sequences(pre) - 1 / 24) < 0.01
    assert abs(sequences("phi15/phi15.gin") / sequences("phi1/pretrain.gin") - 1.99) < 0.01
    assert abs(sequences("tiny/phi15.gin") / sequences("tiny/phi1_pretrain.gin") - 2.0) < 0.01


def test_train_called_from_python_with_a_relative_model_dir(tmp_path, tiny_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = SyntheticBatches(global_batch_size=8, seq_len=32, vocab_size=tiny_config.vocab_size, mean_doc_len=12)
    result = _train("rel/run", tiny_config, 2, data, tensorboard=False)
    assert result.final_step == 2
    assert os.path.isdir(tmp_path / "rel" / "run" / "checkpoints" / "2")
    assert not [p for p in os.listdir(tmp_path / "rel" / "run" / "checkpoints") if "tmp" in p]

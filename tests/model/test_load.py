"""The one loader: which folder is which (locally and on gs://), what it loads, configs saved by earlier
versions, and the errors that name what to do. (Run checkpoints written by the trainer are loaded in
tests/train/test_checkpoints.py.)"""

import json

import numpy as np
import pytest
from phi_testing import random_params
from treecheck import assert_trees_equal

from textbooks.data import files
from textbooks.model import get_preset, hf, params_io, save_hf_checkpoint, save_params
from textbooks.model.config import PARAM_TREE_FIELDS, RETIRED_FIELDS, SHAPE_FIELDS, ModelConfig
from textbooks.model.load import is_step_dir, load_model

CONFIG = get_preset("phi-cpu-1m").replace(vocab_size=259, max_len=64)


class FakeGfile:
    """tf.io.gfile over a set of file names (what the gs:// path helpers call)."""

    def __init__(self, names):
        self.files = set(names)
        self.asked = []

    def exists(self, path):
        self.asked.append(path)
        return path in self.files or any(f.startswith(path.rstrip("/") + "/") for f in self.files)


@pytest.fixture
def fake_gcs(monkeypatch):
    def install(names):
        fake = FakeGfile(names)
        monkeypatch.setattr(files, "_gfile", lambda: fake)
        return fake

    return install


def test_folders_are_told_apart_by_their_marker_files(tmp_path):
    params = random_params(CONFIG, seed=0)
    save_hf_checkpoint(params, CONFIG, str(tmp_path / "hf"))
    save_params(params, CONFIG, str(tmp_path / "ours"))
    (tmp_path / "step" / "params").mkdir(parents=True)
    (tmp_path / "step" / "metadata").mkdir()
    (tmp_path / "empty").mkdir()
    kinds = {name: (hf.is_hf_dir(str(tmp_path / name)), params_io.is_params_dir(str(tmp_path / name)),
                    is_step_dir(str(tmp_path / name))) for name in ("hf", "ours", "step", "empty")}
    assert kinds == {"hf": (True, False, False), "ours": (False, True, False), "step": (False, False, True),
                     "empty": (False, False, False)}


def test_marker_files_are_looked_up_on_gcs_through_the_file_helpers(fake_gcs):
    fake = fake_gcs(["gs://b/hf/config.json", "gs://b/ours/textbooks_config.json", "gs://b/run/5/params/x",
                     "gs://b/run/5/metadata/metadata"])
    assert hf.is_hf_dir("gs://b/hf") and not hf.is_hf_dir("gs://b/ours") and not hf.is_hf_dir("gs://b/run/5")
    assert params_io.is_params_dir("gs://b/ours") and not params_io.is_params_dir("gs://b/hf")
    assert is_step_dir("gs://b/run/5") and not is_step_dir("gs://b/run")
    assert "gs://b/hf/config.json" in fake.asked  # joined with '/', the scheme kept


def test_a_transformers_folder_on_gcs_asks_for_a_local_copy(fake_gcs):
    fake_gcs(["gs://b/hf/config.json", "gs://b/hf/model.safetensors"])
    with pytest.raises(params_io.CheckpointError, match=r"gs://b/hf: .*local disk; copy it first.*gsutil"):
        load_model("gs://b/hf")


def test_folders_load_with_their_recorded_vocabulary_and_layout(tmp_path):
    params = random_params(CONFIG, seed=1)
    save_hf_checkpoint(params, CONFIG, str(tmp_path / "hf"), vocabulary="byte")
    save_params(params, CONFIG, str(tmp_path / "ours"))
    from_hf = load_model(str(tmp_path / "hf"))
    assert from_hf.config == CONFIG and from_hf.step is None and from_hf.path == str(tmp_path / "hf")
    assert from_hf.vocabulary_name == "byte" and from_hf.vocabulary.vocab_size == 259
    assert_trees_equal(from_hf.params, params)
    ours = load_model(str(tmp_path / "ours"), scan_layers=True)
    assert ours.config == CONFIG.replace(scan_layers=True) and ours.vocabulary_name == "phi"  # none recorded
    np.testing.assert_array_equal(ours.params["layers"]["mlp"]["fc1"]["kernel"][1],
                                  params["layers_1"]["mlp"]["fc1"]["kernel"])


def test_a_transformers_folder_without_safetensors_says_how_to_convert_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf.config_to_hf(CONFIG)))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x00")
    with pytest.raises(params_io.CheckpointError, match=r"found \['pytorch_model.bin'\].*safe_serialization=True"):
        load_model(str(tmp_path))


def test_configs_saved_with_the_retired_kernel_fields_still_load(tmp_path):
    params = random_params(CONFIG, seed=2)
    save_params(params, CONFIG, str(tmp_path))
    body = json.loads((tmp_path / params_io.CONFIG_FILE).read_text())
    assert not set(RETIRED_FIELDS) & set(body["config"])  # kernels are not saved any more
    body["config"].update(decode_attention="cpu_kernel", decode_projections="xla")  # as earlier versions wrote
    (tmp_path / params_io.CONFIG_FILE).write_text(json.dumps(body))
    loaded = load_model(str(tmp_path))
    assert loaded.config == CONFIG
    assert_trees_equal(loaded.params, params)
    assert ModelConfig.from_dict(dict(CONFIG.to_dict(), decode_attention="xla")) == CONFIG
    with pytest.raises(ValueError, match=r"\['decode_attention'\] are no longer ModelConfig fields.*--kernels"):
        CONFIG.replace(decode_attention="cpu_kernel")
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['kernel'\]"):
        ModelConfig.from_dict(dict(CONFIG.to_dict(), kernel="xla"))


def test_shape_fields_cannot_be_overridden_while_loading(tmp_path):
    save_params(random_params(CONFIG, seed=3), CONFIG, str(tmp_path / "ours"))
    save_hf_checkpoint(random_params(CONFIG, seed=3), CONFIG, str(tmp_path / "hf"))
    with pytest.raises(params_io.CheckpointError, match=r"\['hidden_size'\] set the shapes"):
        params_io.load_params(str(tmp_path / "ours"), hidden_size=128)
    with pytest.raises(params_io.CheckpointError, match=r"\['num_layers', 'vocab_size'\] set the shapes"):
        hf.load_hf_checkpoint(str(tmp_path / "hf"), vocab_size=512, num_layers=3)
    config, _ = hf.load_hf_checkpoint(str(tmp_path / "hf"), dtype="bfloat16")
    assert config.dtype == "bfloat16"


def test_shape_fields_are_the_fields_the_parameter_shapes_depend_on():
    """Changing a field in SHAPE_FIELDS changes some parameter's shape or the tree; changing any other does not."""
    from textbooks.model import param_shapes

    def shapes(config):
        return {k: v.shape for k, v in params_io.flatten(param_shapes(config)).items()}

    # A llama config (grouping off, untied, no biases) from which every shape field can move on its own.
    llama = CONFIG.replace(family="llama", partial_rotary_factor=1.0)
    base = shapes(llama)
    bigger = dict(family="phi", vocab_size=300, hidden_size=128, num_layers=3, num_heads=8, num_kv_heads=2,
                  intermediate_size=512, tie_word_embeddings=True, attention_bias=True)
    assert set(bigger) == set(SHAPE_FIELDS) and PARAM_TREE_FIELDS == SHAPE_FIELDS + ("scan_layers",)
    changed = {field for field, value in bigger.items() if shapes(llama.replace(**{field: value})) != base}
    assert changed == set(SHAPE_FIELDS)
    others = dict(max_len=128, partial_rotary_factor=0.5, rope_theta=500.0, layer_norm_eps=1e-6, dtype="bfloat16",
                  remat_policy="full", initializer_range=0.1, embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1,
                  rope_scaling_type="linear", rope_scaling_factor=2.0, rope_low_freq_factor=2.0,
                  rope_high_freq_factor=8.0, rope_original_max_len=64)
    assert set(others) | set(PARAM_TREE_FIELDS) | {"param_dtype"} == {f for f in CONFIG.to_dict()}
    assert all(shapes(llama.replace(**{field: value})) == base for field, value in others.items())

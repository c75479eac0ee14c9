"""Bad checkpoints are refused with errors that name the file, the tensor and the shapes; tied embeddings load."""

import json
import os

import numpy as np
import pytest
from phi_testing import HF_CONFIGS, hf_logits, make_hf_model, our_logits, random_params
from safetensors.numpy import load_file, save_file

from textbooks.model import CheckpointError, load_hf_checkpoint, load_params, save_hf_checkpoint, save_params
from textbooks.model.hf import config_from_hf

CONFIG = config_from_hf(dict(HF_CONFIGS["five_heads_full_rotary"], model_type="phi"))


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "hf"
    save_hf_checkpoint(random_params(CONFIG, seed=0), CONFIG, str(path))
    return path


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_shapes_that_do_not_match_the_config_name_tensor_and_shapes(checkpoint):
    _edit_config(checkpoint, intermediate_size=72)
    with pytest.raises(CheckpointError) as e:
        load_hf_checkpoint(str(checkpoint))
    message = str(e.value)
    assert "'model.layers.0.mlp.fc1.weight' in model.safetensors has shape (64, 40), config expects (72, 40)" \
        in message
    assert "model.layers.1.mlp.fc2.weight" in message


def test_truncated_and_corrupt_files_are_named(checkpoint):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read safetensors file, it is truncated"):
        load_hf_checkpoint(str(checkpoint))
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[100:])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        load_hf_checkpoint(str(checkpoint))


def test_missing_and_unknown_tensors_are_listed(checkpoint):
    weights = str(checkpoint / "model.safetensors")
    tensors = load_file(weights)
    del tensors["model.layers.1.mlp.fc2.bias"]
    tensors["model.layers.2.mlp.fc1.weight"] = np.zeros((64, 40), np.float32)
    save_file(tensors, weights)
    with pytest.raises(CheckpointError) as e:
        load_hf_checkpoint(str(checkpoint))
    assert "missing tensor 'model.layers.1.mlp.fc2.bias' (expected shape (40,))" in str(e.value)
    assert "unknown tensors ['model.layers.2.mlp.fc1.weight']" in str(e.value)


def test_sharded_checkpoint_with_a_missing_shard_is_refused(tmp_path):
    path = tmp_path / "sharded"
    save_hf_checkpoint(random_params(CONFIG, seed=1), CONFIG, str(path), max_shard_bytes=20_000)
    assert load_hf_checkpoint(str(path))[0] == CONFIG
    shards = sorted(p.name for p in path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    os.remove(path / shards[1])
    with pytest.raises(CheckpointError, match=f"{shards[1]} not found"):
        load_hf_checkpoint(str(path))


def test_unsupported_or_missing_configs(checkpoint, tmp_path):
    _edit_config(checkpoint, qk_layernorm=True, num_key_value_heads=1)
    with pytest.raises(CheckpointError, match="qk_layernorm=true is not supported.*grouped-query|grouped-query.*qk"):
        load_hf_checkpoint(str(checkpoint))
    _edit_config(checkpoint, model_type="gpt_neox")
    with pytest.raises(CheckpointError, match=r"model_type is 'gpt_neox'; supported: \['llama', 'phi', 'qwen2'\]"):
        load_hf_checkpoint(str(checkpoint))
    _edit_config(checkpoint, model_type="llama")  # phi's gelu in a llama config
    with pytest.raises(CheckpointError, match="unsupported llama config: hidden_act='gelu_new' is not supported"):
        load_hf_checkpoint(str(checkpoint))
    os.remove(checkpoint / "config.json")
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_hf_checkpoint(str(checkpoint))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(dict(HF_CONFIGS["phi_like"], model_type="phi")))
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="neither model.safetensors nor .*pytorch_model.bin"):
        load_hf_checkpoint(str(tmp_path / "empty"))


def test_saving_params_that_do_not_match_the_config_is_refused(tmp_path):
    params = random_params(CONFIG.replace(intermediate_size=32), seed=2)
    with pytest.raises(CheckpointError, match=r"'layers_0/mlp/fc1/kernel' has shape \(40, 32\), config expects "
                                              r"\(40, 64\)"):
        save_hf_checkpoint(params, CONFIG, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="do not match"):
        save_params(params, CONFIG, str(tmp_path / "own"))


def test_own_format_round_trip_and_corruption(tmp_path):
    params = random_params(CONFIG, seed=3)
    save_params(params, CONFIG.replace(scan_layers=True), str(tmp_path / "own"))
    config, loaded = load_params(str(tmp_path / "own"))
    assert config.scan_layers and loaded["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 40, 64)
    np.testing.assert_array_equal(loaded["layers"]["mlp"]["fc1"]["kernel"][1],
                                  params["layers_1"]["mlp"]["fc1"]["kernel"])
    weights = tmp_path / "own" / "params.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="params.safetensors: cannot read"):
        load_params(str(tmp_path / "own"))


def test_tied_embeddings_checkpoint_loads(tmp_path):
    fields = dict(HF_CONFIGS["phi_like"], tie_word_embeddings=True)
    hf_model = make_hf_model(seed=3, **fields)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    ids = np.random.RandomState(0).randint(0, 128, (3, 24))
    config, params = load_hf_checkpoint(str(tmp_path))
    np.testing.assert_allclose(our_logits(config, params, ids), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_a_llama_config_with_an_output_bias_is_refused_by_name():
    """transformers' Llama `attention_bias` also puts a bias on o_proj, which these models lack (Qwen2's q/k/v
    biases are supported)."""
    fields = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1)
    with pytest.raises(CheckpointError, match=r"attention_bias=true .*o_proj.*\(model_type 'qwen2'\)"):
        config_from_hf(dict(fields, model_type="llama", attention_bias=True))
    assert config_from_hf(dict(fields, model_type="qwen2")).attention_bias
    assert not config_from_hf(dict(fields, model_type="llama")).attention_bias

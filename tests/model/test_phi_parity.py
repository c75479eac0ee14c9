"""Logits parity with transformers' PhiForCausalLM (torch, CPU, float32, eager attention), both directions."""

import numpy as np
import pytest
from phi_testing import HF_CONFIGS, hf_logits, make_hf_model, our_logits, random_params

from textbooks.model import load_hf_checkpoint, save_hf_checkpoint
from textbooks.model.hf import config_from_hf
from textbooks.model.params_io import flatten

# Two float32 forwards of the same weights differ by rounding in (layers + 1) chained contractions of length
# n <= 256 (hidden, MLP, sequence); rounding errors add up like a random walk, about sqrt(n) * eps * |logit|
# per contraction: 4 * 16 * 1.2e-7 * 5 ~ 4e-5 for the largest config here (|logits| <= ~5), on any IEEE CPU.
# 1e-4 leaves margin for that and still fails on any wrong weight mapping (|logits| > 1 is asserted).
TOL = 1e-4
SHAPE = (3, 24)  # one input shape everywhere: each config's forward compiles once


def _ids(vocab_size, seed):
    return np.random.RandomState(seed).randint(0, vocab_size, SHAPE)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, name):
    fields = HF_CONFIGS[name]
    hf_model = make_hf_model(**fields)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    ids = _ids(fields["vocab_size"], 0)
    expected = hf_logits(hf_model, ids)
    assert np.abs(expected).max() > 1.0  # weights large enough that a wrong mapping would show

    config, params = load_hf_checkpoint(str(tmp_path))
    assert config.num_heads == fields["num_attention_heads"]
    assert config.partial_rotary_factor == fields["partial_rotary_factor"]
    assert config.num_layers == fields["num_hidden_layers"]
    np.testing.assert_allclose(our_logits(config, params, ids), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_our_checkpoint_loads_in_transformers_with_same_logits(tmp_path, name):
    import transformers

    config = config_from_hf(dict(HF_CONFIGS[name], model_type="phi"))
    params = random_params(config, seed=4)
    save_hf_checkpoint(params, config, str(tmp_path))

    hf_model, info = transformers.PhiForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager",
                                                                 output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    ids = _ids(config.vocab_size, 1)
    expected = hf_logits(hf_model.eval(), ids)
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(our_logits(config, params, ids), expected, atol=TOL, rtol=0)


def test_scanned_layers_with_remat_match_transformers_both_ways(tmp_path):
    """nn.scan over the blocks (params with a leading layer axis) + remat: same logits, both directions."""
    import transformers

    fields = HF_CONFIGS["three_heads_quarter_rotary"]
    hf_model = make_hf_model(seed=5, **fields)
    hf_model.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    ids = _ids(fields["vocab_size"], 2)
    config, params = load_hf_checkpoint(str(tmp_path / "theirs"), scan_layers=True, remat_policy="full")
    assert config.scan_layers and "layers" in params and "layers_0" not in params
    assert params["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 48, 80)
    np.testing.assert_allclose(our_logits(config, params, ids), hf_logits(hf_model, ids), atol=TOL, rtol=0)

    params = random_params(config, seed=6)
    save_hf_checkpoint(params, config, str(tmp_path / "ours"))
    reloaded = transformers.PhiForCausalLM.from_pretrained(str(tmp_path / "ours"), attn_implementation="eager")
    np.testing.assert_allclose(our_logits(config, params, ids), hf_logits(reloaded.eval(), ids), atol=TOL, rtol=0)


def test_sharded_checkpoints_round_trip_through_transformers(tmp_path):
    """A sharded export (index + several files) loads in transformers; a sharded HF save loads back in ours."""
    import transformers

    config = config_from_hf(dict(HF_CONFIGS["phi_like"], model_type="phi"))
    params = random_params(config, seed=7)
    save_hf_checkpoint(params, config, str(tmp_path / "hf"), max_shard_bytes=100_000)
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    assert sum(f.endswith(".safetensors") for f in files) > 2

    ids = _ids(config.vocab_size, 3)
    hf_model = transformers.PhiForCausalLM.from_pretrained(str(tmp_path / "hf"), attn_implementation="eager")
    np.testing.assert_allclose(our_logits(config, params, ids), hf_logits(hf_model.eval(), ids), atol=TOL, rtol=0)

    hf_model.save_pretrained(tmp_path / "resaved", safe_serialization=True, max_shard_size="60KB")
    assert (tmp_path / "resaved" / "model.safetensors.index.json").exists()
    loaded_config, loaded = load_hf_checkpoint(str(tmp_path / "resaved"))
    assert loaded_config == config
    ours, theirs = flatten(loaded), flatten(params)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_bfloat16_compute_stays_close_and_returns_float32(tmp_path):
    hf_model = make_hf_model(**HF_CONFIGS["phi_like"])
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    ids = _ids(128, 0)
    expected = hf_logits(hf_model, ids)
    config, params = load_hf_checkpoint(str(tmp_path), dtype="bfloat16")
    logits = our_logits(config, params, ids)
    assert logits.dtype == np.float32
    assert np.abs(logits - expected).max() < 0.05 * np.abs(expected).max()
    assert np.abs(logits - expected).max() > 1e-6  # the computation really ran in bfloat16

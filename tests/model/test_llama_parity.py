"""Logits parity of the llama family with transformers' LlamaForCausalLM and Qwen2ForCausalLM (torch, CPU,
float32, eager attention): HF -> ours, ours -> HF, the `textbooks convert` round trip, packed rows and scanned
layers. The configs together cover grouped-query ratios 1, 3 and 5, tied and untied heads, odd head counts,
linear and llama3 rope scaling and q/k/v biases."""

import json

import numpy as np
import pytest
from phi_testing import hf_logits, our_logits, random_params
from safetensors.numpy import load_file

from textbooks.cli import main
from textbooks.model import load_hf_checkpoint, save_hf_checkpoint
from textbooks.model.hf import config_from_hf
from textbooks.model.layers import rotary_inv_freq

# Differently shaped configs (HF field names; "arch" picks the transformers class). Vocabularies are >= 259 so
# that the byte vocabulary, recorded in config.json for `textbooks convert`, fits the embedding.
LLAMA_CONFIGS = {
    # Grouped-query ratio 1 (plain multi-head), untied head, head dim 16.
    "mha_untied": dict(arch="llama", vocab_size=263, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=10000.0,
                       tie_word_embeddings=False),
    # Ratio 3 (6 query heads share 2 KV heads of 8), tied head, linear rope scaling.
    "gqa3_tied_linear": dict(arch="llama", vocab_size=300, hidden_size=48, intermediate_size=80,
                             num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5,
                             tie_word_embeddings=True,
                             rope_parameters=dict(rope_type="linear", rope_theta=1000.0, factor=2.5)),
    # Five heads of 16 sharing one KV head (ratio 5), untied, llama3 rope scaling: with theta 500 and an original
    # context of 32 the wavelengths 6 (kept, < 32 / 4), 13, 27 (blended) and 56 ... 1051 (divided, > 32 / 1)
    # hit every band.
    "five_heads_mqa_llama3": dict(arch="llama", vocab_size=271, hidden_size=80, intermediate_size=96,
                                  num_hidden_layers=3, num_attention_heads=5, num_key_value_heads=1,
                                  rms_norm_eps=1e-5, tie_word_embeddings=False,
                                  rope_parameters=dict(rope_type="llama3", rope_theta=500.0, factor=8.0,
                                                       low_freq_factor=1.0, high_freq_factor=4.0,
                                                       original_max_position_embeddings=32)),
    # Qwen2: q/k/v biases; three query heads of 16 share one KV head, tied head, large rope theta.
    "qwen2_three_heads_bias": dict(arch="qwen2", vocab_size=289, hidden_size=48, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                                   rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1e6),
}

# Two float32 forwards of the same weights differ by rounding in (layers + 1) chained contractions of length
# n <= 112 (hidden, MLP, sequence); the errors add up like a random walk, about sqrt(n) * eps * |logit| per
# contraction: 4 * sqrt(112) * 1.2e-7 * 10 ~ 5e-5 for the deepest config here (|logits| <= 10 is asserted).
# RMSNorm's rsqrt and the rotary cos/sin add one eps-relative error each per layer, well inside. 1e-4 leaves
# margin for that and still fails on any wrong weight mapping, head grouping or rotary frequency (|logits| > 1
# is asserted, and such a mistake moves them by O(1)).
TOL = 1e-4
MAX_ABS_LOGIT = 10.0
SHAPE = (3, 24)  # one input shape (with segment ids and positions) everywhere: each config compiles once
DOCS = (9, 11)  # row 0 packs two documents of these lengths, then padding


def make_hf_model(seed=0, *, arch="llama", **fields):
    """A transformers Llama/Qwen2 model with large random weights (norm scales around 1, biases), eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config_class, model_class = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                                 "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    config = config_class(**fields, max_position_embeddings=64, attn_implementation="eager")
    config.textbooks_vocabulary = "byte"  # the vocabulary `textbooks convert` records (transformers keeps it)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            norm = name.endswith("norm.weight")
            p.copy_(torch.randn_like(p) * (0.3 if norm else 0.15) + (1.0 if norm else 0.0))
    return model


def _hf_class(arch):
    import transformers

    return {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[arch]


def _inputs(vocab_size, seed):
    """ids, segment ids and positions: row 0 packs two documents and padding, rows 1-2 are one document each."""
    ids = np.random.RandomState(seed).randint(0, vocab_size, SHAPE)
    segments = np.ones(SHAPE, np.int32)
    positions = np.broadcast_to(np.arange(SHAPE[1], dtype=np.int32), SHAPE).copy()
    a, b = DOCS
    segments[0] = [1] * a + [2] * b + [0] * (SHAPE[1] - a - b)
    positions[0] = list(range(a)) + list(range(b)) + [0] * (SHAPE[1] - a - b)
    return ids, segments, positions


def _expected(hf_model, ids):
    """transformers' logits for the unpacked rows, and for each packed document run alone; padding positions zero."""
    a, b = DOCS
    expected = hf_logits(hf_model, ids)
    expected[0] = 0.0
    expected[0, :a] = hf_logits(hf_model, ids[:1, :a])[0]
    expected[0, a:a + b] = hf_logits(hf_model, ids[:1, a:a + b])[0]
    assert 1.0 < np.abs(expected).max() < MAX_ABS_LOGIT  # large enough to show errors, small enough for TOL
    return expected


def _ours(config, params, inputs):
    ids, segments, positions = inputs
    logits = np.array(our_logits(config, params, ids, segment_ids=segments, positions=positions))
    logits[0, sum(DOCS):] = 0.0  # padding tokens attend to nothing: their logits are not compared
    return logits


def _fields(name):
    return {k: v for k, v in LLAMA_CONFIGS[name].items() if k != "arch"}


def _our_config(name):
    spec = LLAMA_CONFIGS[name]
    return config_from_hf(dict(_fields(name), model_type=spec["arch"], max_position_embeddings=64))


def _random_llama_params(config, seed):
    """Random parameters with every RMSNorm scale around 1 (phi_testing's draw centres only LayerNorms)."""
    params = random_params(config, seed=seed)
    params["norm"]["scale"] = params["norm"]["scale"] + np.float32(1.0)
    return params


@pytest.mark.parametrize("name", sorted(LLAMA_CONFIGS))
def test_transformers_checkpoint_loads_with_same_logits_packed_and_unpacked(tmp_path, name):
    spec = LLAMA_CONFIGS[name]
    hf_model = make_hf_model(seed=1, **spec)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    inputs = _inputs(spec["vocab_size"], 0)
    expected = _expected(hf_model, inputs[0])

    config, params = load_hf_checkpoint(str(tmp_path))
    assert config.family == "llama" and config.partial_rotary_factor == 1.0
    assert (config.num_heads, config.kv_heads) == (spec["num_attention_heads"], spec["num_key_value_heads"])
    assert config.tie_word_embeddings == spec["tie_word_embeddings"]
    assert ("lm_head" in params) != config.tie_word_embeddings
    assert config.attention_bias == (spec["arch"] == "qwen2")
    np.testing.assert_allclose(_ours(config, params, inputs), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(LLAMA_CONFIGS))
def test_our_checkpoint_loads_in_transformers_with_same_logits(tmp_path, name):
    import transformers

    config = _our_config(name)
    params = _random_llama_params(config, seed=2)
    save_hf_checkpoint(params, config, str(tmp_path))

    # The class config.json names: Qwen2 for q/k/v biases (transformers' Llama would add an output bias).
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager",
                                                                       output_loading_info=True)
    assert type(hf_model) is _hf_class(LLAMA_CONFIGS[name]["arch"])
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    inputs = _inputs(config.vocab_size, 1)
    np.testing.assert_allclose(_ours(config, params, inputs), _expected(hf_model.eval(), inputs[0]), atol=TOL,
                               rtol=0)


@pytest.mark.parametrize("name", sorted(LLAMA_CONFIGS))
def test_convert_cli_round_trip_gives_back_the_same_tensors(tmp_path, name, capsys):
    spec = LLAMA_CONFIGS[name]
    make_hf_model(seed=3, **spec).save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert "imported" in capsys.readouterr().out
    assert main(["convert", "--to-hf", "--checkpoint", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]) == 0

    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(back) == sorted(original)  # a tied head is written by neither
    for key in original:
        assert back[key].dtype == original[key].dtype, key
        np.testing.assert_array_equal(back[key], original[key], err_msg=key)
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    back_config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config_from_hf(back_config) == config_from_hf(hf_config)
    assert back_config["textbooks_vocabulary"] == "byte"


def test_rope_scaling_frequencies_equal_transformers():
    """Our scaled inverse frequencies are transformers' (and the scaling really changes them)."""
    import torch
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for name, kind in (("gqa3_tied_linear", "linear"), ("five_heads_mqa_llama3", "llama3")):
        hf_config = transformers.LlamaConfig(**_fields(name), max_position_embeddings=64)
        theirs, _ = ROPE_INIT_FUNCTIONS[kind](hf_config, torch.device("cpu"))
        config = _our_config(name)
        assert config.rope_scaling_type == kind
        ours = rotary_inv_freq(config)
        # Both compute theta ** (-2i / d) and a few float32 products: a few eps apart.
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=8 * np.finfo(np.float32).eps, atol=0)
        assert np.abs(ours - rotary_inv_freq(config.replace(rope_scaling_type="none"))).max() > 1e-3


def test_packed_documents_equal_each_document_alone(tmp_path):
    """Two documents in one row (segment ids, restarting positions) give each document's own logits; the same
    row without its segment ids, or without positions, does not (so the comparison can fail)."""
    spec = LLAMA_CONFIGS["gqa3_tied_linear"]
    hf_model = make_hf_model(seed=4, **spec)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    config, params = load_hf_checkpoint(str(tmp_path))
    ids, segments, positions = _inputs(spec["vocab_size"], 5)
    expected = _expected(hf_model, ids)
    np.testing.assert_allclose(_ours(config, params, (ids, segments, positions)), expected, atol=TOL, rtol=0)

    a, b = DOCS
    second = slice(a, a + b)
    unsegmented = _ours(config, params, (ids, np.where(segments > 0, 1, 0), positions))
    assert np.abs(unsegmented[0, second] - expected[0, second]).max() > 100 * TOL  # attends across documents
    # (Positions that run on unbroken would not show: rotary scores depend only on position differences.)
    positionless = _ours(config, params, (ids, segments, np.zeros(SHAPE, np.int32)))
    assert np.abs(positionless[0, second] - expected[0, second]).max() > 100 * TOL  # the positions are used


def test_scanned_layers_match_transformers_both_ways(tmp_path):
    """nn.scan over the blocks (params with a leading layer axis): same logits on load and after export."""
    spec = LLAMA_CONFIGS["five_heads_mqa_llama3"]
    hf_model = make_hf_model(seed=6, **spec)
    hf_model.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    inputs = _inputs(spec["vocab_size"], 7)
    config, params = load_hf_checkpoint(str(tmp_path / "theirs"), scan_layers=True, remat_policy="full")
    assert config.scan_layers and "layers" in params and "layers_0" not in params
    assert params["layers"]["self_attn"]["k_proj"]["kernel"].shape == (3, 80, 1, 16)
    np.testing.assert_allclose(_ours(config, params, inputs), _expected(hf_model, inputs[0]), atol=TOL, rtol=0)

    params = _random_llama_params(config, seed=8)
    save_hf_checkpoint(params, config, str(tmp_path / "ours"))
    reloaded = _hf_class(spec["arch"]).from_pretrained(str(tmp_path / "ours"), attn_implementation="eager")
    np.testing.assert_allclose(_ours(config, params, inputs), _expected(reloaded.eval(), inputs[0]), atol=TOL,
                               rtol=0)

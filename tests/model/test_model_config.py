"""ModelConfig, presets, parameter counts (against transformers) and the gin entry point."""

import glob
import os

import gin
import pytest

from textbooks import gin_utils
from textbooks.model import PRESETS, ModelConfig, get_preset, model_config, param_shapes
from textbooks.model.hf import config_to_hf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _transformers_param_count(config: ModelConfig) -> int:
    """Parameters of the transformers model our export names (PhiForCausalLM, LlamaForCausalLM, ...) for the
    same shape, built on the meta device (no memory); a tied head's weights are the embedding's, counted once."""
    import torch
    import transformers

    hf = config_to_hf(config)
    hf_config = transformers.AutoConfig.for_model(hf["model_type"], **{
        k: v for k, v in hf.items() if k not in ("architectures", "model_type", "dtype", "torch_dtype")})
    with torch.device("meta"):
        model = getattr(transformers, hf["architectures"][0])(hf_config)
    return sum(p.numel() for p in model.parameters())


def test_phi_1_5_param_count_equals_transformers_and_the_released_model():
    config = get_preset("phi-1.5")
    assert config.num_params() == 1_418_270_720  # microsoft/phi-1_5 as published
    assert config.num_params() == _transformers_param_count(config)
    # Our module's own parameter tree, traced abstractly (nothing allocated), agrees.
    assert sum(s.size for s in __import__("jax").tree.leaves(param_shapes(config))) == config.num_params()


@pytest.mark.parametrize("name", ["phi-1-small", "phi-cpu-7m"])
def test_other_preset_counts_equal_transformers(name):
    config = get_preset(name)
    assert config.num_params() == _transformers_param_count(config)


def test_smollm2_135m_param_count_equals_transformers_and_the_released_model():
    config = get_preset("smollm2-135m")
    assert config.num_params() == 134_515_008  # HuggingFaceTB/SmolLM2-135M as published (tied head)
    assert config.num_params() == _transformers_param_count(config)
    assert sum(s.size for s in __import__("jax").tree.leaves(param_shapes(config))) == config.num_params()


@pytest.mark.parametrize("name", ["smollm2-360m", "smollm2-1.7b", "llama-cpu-7m"])
def test_other_llama_preset_counts_equal_transformers(name):
    config = get_preset(name)
    assert config.num_params() == _transformers_param_count(config)


@pytest.mark.parametrize("changes", [{}, {"tie_word_embeddings": True}, {"attention_bias": True, "num_kv_heads": 1},
                                     {"num_kv_heads": 4, "tie_word_embeddings": True, "attention_bias": True}],
                         ids=["preset", "tied", "bias_mqa", "mha_tied_bias"])
def test_llama_param_count_equals_initialized_leaves_and_transformers(changes):
    """Each llama option (grouping, tied head, q/k/v biases) counted as the initialized tree and transformers
    (LlamaForCausalLM, or Qwen2ForCausalLM for the biases) have it."""
    import jax

    from textbooks.model import init_params

    config = get_preset("llama-cpu-1m").replace(vocab_size=300, **changes)
    params = init_params(config, 0)
    assert sum(x.size for x in jax.tree.leaves(params)) == config.num_params()
    assert config.num_params() == _transformers_param_count(config)
    assert ("lm_head" in params) != config.tie_word_embeddings
    assert params["layers_0"]["self_attn"]["k_proj"]["kernel"].shape == (64, config.kv_heads, 16)
    embedding_and_head = (1 if config.tie_word_embeddings else 2) * 300 * 64
    assert config.num_params(non_embedding=True) == config.num_params() - embedding_and_head


@pytest.mark.parametrize("size", ["1m", "7m", "30m"])
def test_llama_cpu_presets_match_the_phi_cpu_presets(size):
    """Same depth, width, heads, vocabulary and context as phi-cpu-*, parameters within 1%."""
    llama, phi = get_preset(f"llama-cpu-{size}"), get_preset(f"phi-cpu-{size}")
    assert llama.family == "llama" and phi.family == "phi"
    for field in ("num_layers", "hidden_size", "num_heads", "vocab_size", "max_len"):
        assert getattr(llama, field) == getattr(phi, field), field
    assert abs(llama.num_params() / phi.num_params() - 1) < 0.01, (llama.num_params(), phi.num_params())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_the_documented_shapes(name):
    import jax

    config = get_preset(name)
    assert sum(s.size for s in jax.tree.leaves(param_shapes(config))) == config.num_params()
    assert config.head_dim * config.num_heads == config.hidden_size
    if name in ("phi-1", "phi-1.5"):
        assert (config.num_layers, config.hidden_size, config.num_heads, config.head_dim) == (24, 2048, 32, 64)
        assert (config.intermediate_size, config.max_len, config.vocab_size, config.rotary_dim) == (8192, 2048,
                                                                                                 51200, 32)
    if name == "phi-1-small":
        assert (config.num_layers, config.hidden_size, config.num_heads, config.intermediate_size) == (20, 1024, 16,
                                                                                                     4096)
        assert 340e6 < config.num_params() < 360e6
    if name.startswith("phi-cpu-"):
        assert config.vocab_size == 8192
        target = {"phi-cpu-1m": 1e6, "phi-cpu-7m": 7e6, "phi-cpu-30m": 30e6}[name]
        assert 0.8 * target < config.num_params() < 1.3 * target
    assert get_preset("phi-1").attn_dropout == 0.1 and get_preset("phi-1").resid_dropout == 0.1


def test_unknown_preset_lists_the_names():
    with pytest.raises(KeyError) as e:
        get_preset("phi-2")
    for name in PRESETS:
        assert name in str(e.value)


def test_config_round_trips_and_validates():
    config = get_preset("phi-cpu-7m").replace(dtype="bfloat16", scan_layers=True, remat_policy="dots")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.head_dim == 64 and config.rotary_dim == 32
    with pytest.raises(ValueError, match="unknown ModelConfig field.*'hidden'"):
        ModelConfig.from_dict(dict(config.to_dict(), hidden=3))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        config.replace(num_heads=3)
    with pytest.raises(ValueError, match="remat_policy"):
        config.replace(remat_policy="sometimes")
    with pytest.raises(ValueError, match="rotary_dim"):
        ModelConfig(hidden_size=48, num_heads=3, partial_rotary_factor=0.2)  # int(16 * 0.2) = 3 dims: odd
    assert config.num_params(non_embedding=True) < config.num_params()


def test_model_config_is_gin_configurable():
    gin.parse_config(["model_config.preset = 'phi-cpu-1m'", "model_config.scan_layers = True"])
    config = model_config()
    assert config == get_preset("phi-cpu-1m").replace(scan_layers=True)
    with pytest.raises(KeyError, match="phi-cpu-7m"):
        model_config(preset="nope")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "experiments", "models", "*.gin"))))
def test_model_gin_files_select_their_preset(path):
    gin_utils.parse_gin([path], finalize=False)
    config = model_config()
    by_file = {n.replace(".", "_").replace("-", "_"): n for n in PRESETS}
    assert config == get_preset(by_file[os.path.basename(path)[:-4]])


def test_every_preset_has_a_gin_file():
    names = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(REPO, "experiments", "models", "*.gin"))}
    assert names == {n.replace(".", "_").replace("-", "_") for n in PRESETS}


@pytest.mark.parametrize("name,changes", [("phi-cpu-1m", {}), ("llama-cpu-1m", {}),
                                          ("llama-cpu-1m", {"tie_word_embeddings": True, "num_kv_heads": 1})],
                         ids=["phi", "llama", "llama_tied_mqa"])
def test_flops_per_token_matches_the_compiled_forward(name, changes):
    """6N + 12 L D T per token (training) is three times what XLA counts for the compiled forward pass (a tied
    head's matmul counts although its weights are the embedding's; fewer KV heads shrink N, not 12 L D T)."""
    import jax
    import jax.numpy as jnp

    from textbooks.model import CausalLM

    config, length = get_preset(name).replace(**changes), 128
    model = CausalLM(config)
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(
        param_shapes(config), jax.ShapeDtypeStruct((2, length), jnp.int32)).compile()
    cost = compiled.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert abs(flops / (2 * length * config.flops_per_token(length) / 3) - 1) < 0.03

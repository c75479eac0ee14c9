"""Helpers of the model tests: small configs, random transformers/our phi models, cached jitted forwards."""

import numpy as np

# Differently shaped configs (HF field names). Together they cover partial_rotary_factor 0.25, 0.5 and 1.0,
# odd head counts (3, 5), head dims 8 and 16, and non-default rope_theta / layer_norm_eps.
HF_CONFIGS = {
    "three_heads_quarter_rotary": dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                       num_attention_heads=3, max_position_embeddings=64, partial_rotary_factor=0.25,
                                       rope_theta=1000.0),
    "phi_like": dict(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                     num_attention_heads=4, max_position_embeddings=64, partial_rotary_factor=0.5),
    "five_heads_full_rotary": dict(vocab_size=61, hidden_size=40, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=5, max_position_embeddings=64, partial_rotary_factor=1.0,
                                   layer_norm_eps=1e-6),
}


def make_hf_model(seed: int = 0, **fields):
    """A transformers PhiForCausalLM with large random weights (LayerNorms and biases included), eval mode."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.PhiConfig(**fields, attn_implementation="eager")
    model = transformers.PhiForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if "layernorm" in name else 0.15
            p.copy_(torch.randn_like(p) * scale + (1.0 if name.endswith("layernorm.weight") else 0.0))
    return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.float().numpy()


def random_params(config, seed: int = 0, scale: float = 0.15):
    """Random parameters of ``config`` drawn with numpy (no compilation), biases and LayerNorms included."""
    import jax

    from textbooks.model import param_shapes

    rng = np.random.RandomState(seed)
    shapes = param_shapes(config)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        x = rng.standard_normal(s.shape).astype(np.float32) * np.float32(scale)
        return x + np.float32(1.0) if "layernorm" in name and "scale" in name else x

    return jax.tree_util.tree_map_with_path(draw, shapes)


_APPLY = {}


def our_logits(config, params, ids, **kwargs) -> np.ndarray:
    """Our model's logits, with one jitted apply per config (compiled once per input shape)."""
    import jax
    import jax.numpy as jnp

    from textbooks.model import CausalLM

    if config not in _APPLY:
        model = CausalLM(config)
        _APPLY[config] = jax.jit(lambda p, x, **kw: model.apply({"params": p}, x, **kw))
    kwargs = {k: jnp.asarray(v) for k, v in kwargs.items()}
    return np.asarray(_APPLY[config](params, jnp.asarray(ids), **kwargs))


def greedy_by_recomputing(config, params, prompts, steps):
    """Reference: run the full forward on prompt + generated tokens at every step, take the argmax."""
    width = max(map(len, prompts)) + steps
    sequences = [list(p) for p in prompts]
    for _ in range(steps):
        ids = np.zeros((len(prompts), width), np.int32)
        for i, s in enumerate(sequences):
            ids[i, :len(s)] = s  # right padding never reaches earlier positions (causal attention)
        logits = our_logits(config, params, ids)
        for i, s in enumerate(sequences):
            s.append(int(np.argmax(logits[i, len(s) - 1])))
    return [s[len(p):] for s, p in zip(sequences, prompts)]

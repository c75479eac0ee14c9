"""The models (phi and Llama families): configs and presets, the Flax module, KV-cache decoding, checkpoints, HF interop.

Typical use::

    from textbooks import model
    config = model.get_preset("phi-cpu-7m")
    params = model.init_params(config, rng=0)
    logits = model.CausalLM(config).apply({"params": params}, tokens)
    outputs = model.generate(params, config, [[1, 2, 3]], max_new_tokens=20)
    model.save_hf_checkpoint(params, config, "/tmp/phi-hf")  # loadable by transformers.PhiForCausalLM

Trained models of any checkpoint format are read with :func:`textbooks.model.load.load_model` (not imported
here: it brings in orbax and the vocabularies).
"""

from textbooks.model.causal_lm import CausalLM, init_params, param_logical_specs, param_shapes
from textbooks.model.config import PRESETS, ModelConfig, get_preset, model_config
from textbooks.model.decode import Decoder, GenerationOutput, GenerationRequest, generate
from textbooks.model.hf import load_hf_checkpoint, save_hf_checkpoint
from textbooks.model.kv_cache import init_cache
from textbooks.model.layers import DecodeKernels
from textbooks.model.params_io import CheckpointError, load_params, save_params, to_layout

__all__ = [
    "CausalLM",
    "CheckpointError",
    "DecodeKernels",
    "Decoder",
    "GenerationOutput",
    "GenerationRequest",
    "PRESETS",
    "ModelConfig",
    "generate",
    "get_preset",
    "init_cache",
    "init_params",
    "load_hf_checkpoint",
    "load_params",
    "model_config",
    "param_logical_specs",
    "param_shapes",
    "save_hf_checkpoint",
    "save_params",
    "to_layout",
]

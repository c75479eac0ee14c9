"""Shared fixtures of the evaluation tests: tiny random models (built once per session) and a sandbox."""

import pytest


@pytest.fixture(scope="session")
def sandbox():
    from textbooks.evaluate.sandbox import Sandbox, SandboxConfig

    # Generous wall-clock limit: reference solutions such as MBPP 123 need seconds on a busy machine.
    return Sandbox(SandboxConfig(timeout_s=30.0))


@pytest.fixture(scope="session")
def tiny_config():
    from textbooks.model.config import get_preset

    # A wider initializer than training's 0.02 spreads the logits, so choices rarely tie and comparisons
    # between implementations are meaningful.
    return get_preset("phi-cpu-1m").replace(initializer_range=0.2)


@pytest.fixture(scope="session")
def tiny_params(tiny_config):
    from textbooks.model import causal_lm

    return causal_lm.init_params(tiny_config, 0)


@pytest.fixture(scope="session")
def tiny_model(tiny_config, tiny_params):
    """An EvalModel over the project's SentencePiece vocabulary (8k, CPU-cheap)."""
    from textbooks.evaluate.lm import EvalModel
    from textbooks.vocab.registry import get_vocabulary

    return EvalModel(tiny_config, tiny_params, get_vocabulary("spm8k"), tokens_per_batch=2048)


@pytest.fixture(scope="session")
def tiny_hf_checkpoint(tmp_path_factory):
    """A transformers-format checkpoint of a tiny random phi model with the phi vocabulary (51,200 rows)."""
    from textbooks.model import causal_lm, hf
    from textbooks.model.config import get_preset

    config = get_preset("phi-cpu-1m").replace(vocab_size=51200, max_len=256)
    path = str(tmp_path_factory.mktemp("tiny_hf"))
    hf.save_hf_checkpoint(causal_lm.init_params(config, 1), config, path, eos_token_id=50256)
    return path


"""Fixtures of the model tests (helpers live in phi_testing.py)."""

import pytest
from phi_testing import random_params


@pytest.fixture(scope="session")
def tiny_model():
    """(config, params) of a small random model with peaked enough logits for decoding tests."""
    from textbooks.model import get_preset

    config = get_preset("phi-cpu-1m").replace(vocab_size=64, max_len=64)
    return config, random_params(config, seed=1, scale=0.3)

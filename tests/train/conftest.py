"""Fixtures of the trainer tests (shared code lives in train_support.py)."""

import pytest

from train_support import COMPILE_CACHE, TINY


@pytest.fixture(scope="session")
def tiny_config():
    from textbooks.model.config import get_preset

    return get_preset("phi-cpu-1m").replace(**TINY)


@pytest.fixture(scope="session", autouse=True)
def _shared_compile_cache(tmp_path_factory):
    """One persistent JAX compilation cache for the subprocesses of a test run (they compile the same
    programs)."""
    COMPILE_CACHE["dir"] = str(tmp_path_factory.mktemp("jax_cache"))
    yield

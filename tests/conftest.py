"""Test-wide setup: JAX on the CPU with 8 simulated devices (set before JAX is imported anywhere)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import logging  # noqa: E402

import gin  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_gin():
    """Each test starts from an empty gin config."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(autouse=True)
def _restore_logging_levels():
    """Each test leaves the root logger's level and the levels of the loggers that exist as it found them
    (a verb run in process sets them for its run), so a later test's ``caplog`` sees the warnings it checks."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    levels = [(logger, logger.level) for logger in loggers if isinstance(logger, logging.Logger)]
    yield
    for logger, level in levels:
        if logger.level != level:
            logger.setLevel(level)

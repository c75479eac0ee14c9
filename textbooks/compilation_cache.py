"""Points this process's JAX at a persistent compilation cache folder: the one switch the demo and the sweep
trials' benchmark scoring share, so that later runs load compiled programs instead of compiling them again."""

from __future__ import annotations

import os


def use_compilation_cache(folder: str, *, replace: bool = False, keep_all: bool = False) -> str:
    """Points JAX's persistent compilation cache at ``folder`` (``~`` expanded; created when needed).

    Args:
        folder: the cache folder.
        replace: use ``folder`` even when a cache is set already (``$JAX_COMPILATION_CACHE_DIR`` or an earlier
            call); otherwise the cache already set wins and ``folder`` is not created.
        keep_all: keep every executable, however quick to compile or small (JAX's defaults skip programs that
            compile in under a second).

    Returns:
        The cache folder in use.
    """
    import jax  # deferred: modules that import this one load without JAX (CLI start-up)

    folder = os.path.expanduser(folder)
    if replace or not jax.config.jax_compilation_cache_dir:
        os.makedirs(folder, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", folder)
    if keep_all:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return jax.config.jax_compilation_cache_dir

"""Model FLOPs and device peaks, for model FLOPs utilization (MFU).

Training FLOPs per token follow the PaLM appendix: ``6 N`` for the matmuls of the forward and backward pass
(``N`` = parameters in matmuls: everything but the token-embedding lookup) plus ``12 L d T`` for attention
scores and values (``L`` layers, width ``d``, sequence length ``T``; causal masking is not discounted).
Rematerialization is not counted (it is hardware FLOPs, not model FLOPs).

Peaks are dense bf16 matmul throughput per chip from vendor datasheets; on CPU the peak is measured (a large
float32 matmul under ``jax.jit``), since it depends on the machine.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per chip, matched against ``device.device_kind`` (first match wins).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),  # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("H200", 989e12),  # SXM, dense
    ("H100", 989e12),  # SXM, dense
    ("A100", 312e12),
)


def flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token of a :class:`~textbooks.model.config.ModelConfig` at sequence length ``seq_len``."""
    d, layers, v = config.hidden_size, config.num_layers, config.vocab_size
    matmul_params = config.num_params() - v * d  # the embedding lookup is a gather, not a matmul
    return 6.0 * matmul_params + 12.0 * layers * d * seq_len


def device_peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one chip of ``device_kind``, or None when unknown."""
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_kind.lower():
            return peak
    return None


@functools.lru_cache(maxsize=None)
def measure_cpu_peak_flops(n: int = 1024, repeats: int = 5, dtype: str = "float32") -> float:
    """Measures this process's CPU matmul FLOP/s: the best of ``repeats`` jitted ``n x n`` matmuls run on every
    local CPU device at once (simulated devices split the host's cores between them, so one device alone
    would understate the host)."""
    devices = jax.local_devices(backend="cpu")
    mesh = jax.sharding.Mesh(devices, ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    a = jax.device_put(jnp.ones((len(devices), n, n), dtype), sharding)
    b = jax.device_put(jnp.ones((len(devices), n, n), dtype), sharding)
    matmul = jax.jit(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), out_shardings=sharding)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * len(devices) * n ** 3 / best


def peak_flops(devices: Sequence[Any] | None = None) -> tuple[float, str]:
    """Peak FLOP/s of ``devices`` together (default: this process's devices) and how it was obtained.

    Simulated CPU devices share the host's cores, so on CPU the peak is the measured host matmul peak once
    per process, not per device.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        processes = len({d.process_index for d in devices})
        return measure_cpu_peak_flops() * processes, "measured CPU matmul peak (float32)"
    peak = device_peak_flops(kind)
    if peak is None:
        return float("nan"), f"unknown peak for {kind!r}"
    return peak * len(devices), f"{kind} bf16 datasheet peak x {len(devices)}"


def mfu(tokens_per_second: float, config: Any, seq_len: int, peak: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over ``peak``."""
    return tokens_per_second * flops_per_token(config, seq_len) / peak

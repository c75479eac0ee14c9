"""The requests decoding takes and the compiled token loop that continues them (see :mod:`textbooks.model.decode`).

* :class:`GenerationRequest` / :class:`GenerationOutput`: one prompt with its own settings, one continuation;
* :func:`batch_arrays`: the host arrays of a padded batch of requests (prompt tokens, per-row settings);
* :func:`token_loop`: a ``lax.while_loop`` that feeds one token per row per step (first the prompt's last token),
  samples the next one (greedy, temperature, top-k, top-p; per row), and marks a row done at its eos id, at one
  of its stop sequences, or after its ``max_new_tokens``; jit-compiled as :data:`decode_loop` (a batch's run)
  and :data:`decode_chunk` (a chunk of continuous batching, the cache updated in place).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from textbooks.model import cpu_greedy
from textbooks.model.causal_lm import CausalLM
from textbooks.model.config import ModelConfig
from textbooks.model.kv_cache import attention_windows, cache_length, resize_cache
from textbooks.model.layers import DecodeKernels
from textbooks.model.sampling import greedy_tokens, sample_tokens

FINISH_REASONS = ("length", "eos", "stop")
_LENGTH, _EOS, _STOP = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
    """One generated continuation.

    Attributes:
        tokens: the new tokens, without the eos token or the stop sequence that ended them.
        finish_reason: 'eos', 'stop' (a stop sequence was generated) or 'length' (max_new_tokens reached).
    """

    tokens: list[int]
    finish_reason: str


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One prompt with its own decoding settings (see :func:`textbooks.model.decode.generate` for their meaning)."""

    prompt: Sequence[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_sequences: Sequence[Sequence[int]] = ()
    eos_id: int | None = None
    seed: int = 0


def token_loop(config: ModelConfig, kernels: DecodeKernels, params: Any, cache: Any, last_tokens: jax.Array,
                rows: dict, num_new: int, filled: int, keep_cache: bool = False, until_free: Any = False,
                packed: Any = None) -> tuple:
    """Generates up to ``rows['max_new']`` tokens per row; returns (tokens [B, num_new], counts, reasons), plus
    the cache (at its full length) when ``keep_cache``.

    ``packed``: the layers' packed weights the steps use, if any (:func:`textbooks.model.kv_cache.pack_weights`).

    ``filled``: every row's cache holds nothing at or past slot ``filled``, so shorter windows keep all of it.
    ``until_free``: also stop as soon as a row that was decoding ends (continuous batching with requests
    waiting: the freed row takes one at once instead of idling until the chunk ends); a traced bool, so both
    settings share one program.
    """
    model = CausalLM(config, kernels)
    batch = last_tokens.shape[0]
    stops, stop_lengths = rows["stops"], rows["stop_lengths"]  # [B, S, M] right-aligned, -1 = wildcard; [B, S]
    window = stops.shape[-1]
    # With the product kernel the head's logits come from compiled code on this CPU: so can their argmax.
    greedy = cpu_greedy.greedy_tokens if kernels.projections == "cpu_kernel" else greedy_tokens

    def running(state):
        step, done = state[1], state[4]
        go = (step < jnp.max(rows["max_new"])) & ~jnp.all(done)
        return go & ~(until_free & jnp.any(done & (rows["max_new"] > 0)))

    def body(state):
        cache, step, tokens, out, done, counts, reasons = state
        weights = {"params": params, "cache": cache, **({"packed": packed} if packed else {})}
        logits, variables = model.apply(weights, tokens[:, None], decode=True, mutable=["cache"])
        def sampled(logits):  # per-step keys are derived only when a row samples
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(rows["keys"], step)
            return sample_tokens(logits, keys, rows["temperature"], rows["top_k"], rows["top_p"])

        new = jax.lax.cond(jnp.any(rows["temperature"] > 0), sampled, greedy, logits[:, -1])
        active = ~done
        out = out.at[:, step].set(jnp.where(active, new, 0))
        counts = counts + active.astype(jnp.int32)
        # The last `window` generated tokens of each row, -2 before the first one (matches nothing).
        idx = step - window + 1 + jnp.arange(window)
        recent = jnp.where(idx[None, :] >= 0, out[:, jnp.clip(idx, 0, out.shape[1] - 1)], -2)
        matches = jnp.all((stops == -1) | (stops == recent[:, None, :]), axis=-1) & (stop_lengths > 0)
        matches &= stop_lengths <= counts[:, None]
        is_eos = active & (new == rows["eos"])
        is_stop = active & ~is_eos & jnp.any(matches, axis=-1)
        is_full = active & (counts >= rows["max_new"])
        reasons = jnp.where(is_eos, _EOS, jnp.where(is_stop, _STOP, reasons))
        done = done | is_eos | is_stop | is_full
        return variables["cache"], step + 1, new, out, done, counts, reasons

    cache_len = cache_length(cache)
    # XLA attention reads the whole cache it is given, so phases attend over growing windows; the kernel reads
    # each row's own prefix of any cache, so one phase over the full cache does.
    windows = [w for w in attention_windows(cache_len) if w >= filled]
    if kernels.attention == "cpu_kernel":
        windows = [cache_len]
    state = (resize_cache(cache, windows[0]), jnp.int32(0), last_tokens,
             jnp.zeros((batch, num_new), jnp.int32), rows["max_new"] <= 0, jnp.zeros((batch,), jnp.int32),
             jnp.full((batch,), _LENGTH, jnp.int32))
    for i, slots in enumerate(windows):
        # Each phase attends over the first `slots` cache slots only; it runs while every unfinished row's next
        # write slot fits, then the cache grows (zero slots, masked until written) for the next phase.
        if i > 0:
            state = (resize_cache(state[0], slots),) + state[1:]
        if slots == cache_len:
            state = jax.lax.while_loop(running, body, state)
        else:
            def fits(state, slots=slots):
                index = state[0]["cache_index"]
                return running(state) & (jnp.max(jnp.where(state[4], 0, index)) < slots)

            state = jax.lax.while_loop(fits, body, state)
    cache, _, _, out, _, counts, reasons = state
    if keep_cache:
        return out, counts, reasons, resize_cache(cache, cache_len)
    return out, counts, reasons


# A batch's run (the cache is dropped) and a chunk of continuous batching (the cache is updated in place).
decode_loop = jax.jit(token_loop, static_argnums=(0, 1, 6, 7, 8))
decode_chunk = jax.jit(token_loop, static_argnums=(0, 1, 6, 7, 8), donate_argnums=(3,))

def batch_arrays(requests: Sequence[GenerationRequest], batch: int, prompt_len: int, num_stops: int = 1,
                 stop_window: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Host arrays of a padded batch: (prompt tokens but the last, their segment ids, last prompt tokens, rows).

    ``rows`` holds the per-row settings the token loop reads (max_new, temperature, top_k, top_p, eos, stops,
    stop_lengths, keys); rows past ``len(requests)`` are padding with ``max_new = 0`` (done from the start).
    """
    tokens = np.zeros((batch, prompt_len), np.int32)
    segments = np.zeros((batch, prompt_len), np.int32)
    last = np.zeros((batch,), np.int32)
    stops = np.full((batch, num_stops, stop_window), -1, np.int32)
    stop_lengths = np.zeros((batch, num_stops), np.int32)
    rows = dict(max_new=np.zeros((batch,), np.int32), temperature=np.zeros((batch,), np.float32),
                top_k=np.zeros((batch,), np.int32), top_p=np.ones((batch,), np.float32),
                eos=np.full((batch,), -1, np.int32))
    for b, r in enumerate(requests):
        body = np.asarray(r.prompt[:-1], np.int32)
        tokens[b, :len(body)] = body
        segments[b, :len(body)] = 1
        last[b] = r.prompt[-1]
        for j, stop in enumerate(r.stop_sequences):
            stops[b, j, stop_window - len(stop):] = stop
            stop_lengths[b, j] = len(stop)
        rows["max_new"][b] = r.max_new_tokens
        rows["temperature"][b] = r.temperature
        rows["top_k"][b] = r.top_k
        rows["top_p"][b] = r.top_p
        rows["eos"][b] = -1 if r.eos_id is None else r.eos_id
    seeds = [r.seed for r in requests]
    seeds += [seeds[0]] * (batch - len(requests))
    rows.update(stops=stops, stop_lengths=stop_lengths, keys=jax.random.wrap_key_data(_seed_keys(seeds)))
    return tokens, segments, last, rows


_key_data = jax.jit(jax.vmap(lambda seed: jax.random.key_data(jax.random.PRNGKey(seed))))


def _seed_keys(seeds: Sequence[int]) -> np.ndarray:
    """``jax.random.PRNGKey(seed)`` data of every seed, in one call (a call per seed costs a dispatch each)."""
    if jax.config.jax_enable_x64:
        return np.stack([np.asarray(jax.random.key_data(jax.random.PRNGKey(s))) for s in seeds])
    # Without x64, PRNGKey keeps a seed's low 32 bits.
    return np.asarray(_key_data(np.asarray([int(s) & 0xFFFFFFFF for s in seeds], np.uint32)))

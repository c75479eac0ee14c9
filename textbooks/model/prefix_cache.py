"""Prefix caching for continuous batching: prompts that begin like a recent prompt prefill only their rest.

Chat prompts repeat their beginnings (a template, a system prompt, a task line). A token's keys and values
depend only on the tokens up to it, so the cache slots of a shared beginning are the same whichever prompt
computed them (up to float summation order). :class:`PrefixCache` keeps the first ``tokens`` cache slots of the
``rows`` most recently admitted prompts (least recently used out), keyed by their tokens. Admitting a prompt,
:meth:`PrefixCache.lookup` finds the longest common beginning with a kept prompt, rounded down to a multiple of
``block`` tokens and leaving at least one token to prefill; :meth:`PrefixCache.prefill` copies those slots into
a new row and runs only the rest of the prompt through the model, at positions ``P, P + 1, ...``, attending
over the copied slots.

Compiled programs stay few: one per (reused length, padded prompt length). The row it returns has the length
a plain prefill of the whole prompt would have (:meth:`textbooks.model.decode.Decoder.prompt_bucket`), so the
row copies into the slot cache are the plain prefill's programs; it feeds the padded length minus the reused
one, so a prompt's padding is what it would be without the cache.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from textbooks.model.causal_lm import CausalLM
from textbooks.model.config import ModelConfig
from textbooks.model.kv_cache import resize_cache
from textbooks.model.layers import DecodeKernels

resize = jax.jit(resize_cache, static_argnums=(1,))


@functools.partial(jax.jit, static_argnums=(0, 1, 7))
def _prefill_after(config: ModelConfig, kernels: DecodeKernels, params: Any, prefix: Any, start: jax.Array,
                   tokens: jax.Array, segment_ids: jax.Array, cache_len: int) -> Any:
    """A one-row cache of ``cache_len`` slots: ``prefix``'s first ``start`` slots, then ``tokens`` (their
    ``segment_ids`` nonzero) written from slot ``start`` on, attending over everything before them."""
    cache = jax.tree.map(lambda x: x if x.ndim >= 4 else jnp.full_like(x, start), resize_cache(prefix, cache_len))
    _, variables = CausalLM(config, kernels).apply({"params": params, "cache": cache}, tokens,
                                                   segment_ids=segment_ids, decode=True, mutable=["cache"])
    return variables["cache"]


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    same = np.asarray(a[:n]) == np.asarray(b[:n])
    return n if same.all() else int(np.argmin(same))


class PrefixCache:
    """The first cache slots of recently admitted prompts, reused by prompts that begin the same way.

    Args:
        rows: most prompts kept (least recently used out); at least 1.
        tokens: most leading slots kept of each (the longest reusable beginning); a multiple of ``block``.
        block: reused lengths are multiples of this (one compiled prefill per reused length and prompt bucket).

    ``shapes`` holds the (reused length, padded prompt length) of the prefills run so far (each a compiled
    program).
    """

    def __init__(self, rows: int = 16, tokens: int = 64, block: int = 16):
        if rows < 1 or block < 1 or tokens < block or tokens % block:
            raise ValueError(f"PrefixCache needs rows >= 1 and tokens a positive multiple of block >= 1, got "
                             f"rows={rows}, tokens={tokens}, block={block}")
        self.rows, self.tokens, self.block = rows, tokens, block
        self._kept: collections.OrderedDict[tuple[int, ...], Any] = collections.OrderedDict()
        self.shapes: set[tuple[int, int]] = set()

    @property
    def lengths(self) -> list[int]:
        """Every length a prefill may reuse."""
        return list(range(self.block, self.tokens + 1, self.block))

    def lookup(self, body: Sequence[int]) -> tuple[int, Any]:
        """``(length, kept slots)`` of the longest reusable beginning of ``body`` (the prompt's tokens but the
        last), or ``(0, None)``: a multiple of ``block``, at most ``tokens``, below ``len(body)``."""
        best, found = 0, None
        for key, part in self._kept.items():
            n = common_length(key, body[:self.tokens])
            if n > best:
                best, found = n, key
        length = min(best, len(body) - 1) // self.block * self.block
        if length < self.block:
            return 0, None
        self._kept.move_to_end(found)
        return length, self._kept[found]

    def keep(self, body: Sequence[int], part: Any) -> None:
        """Keeps the first ``tokens`` slots of ``part`` (a one-row cache of ``body``) for later prompts."""
        if len(body) <= self.block:
            return  # nothing reusable: a reuse leaves one token to prefill
        key = tuple(int(t) for t in body[:self.tokens])
        if key in self._kept:
            self._kept.move_to_end(key)
            return
        self._kept[key] = resize(part, self.tokens)
        while len(self._kept) > self.rows:
            self._kept.popitem(last=False)

    def clear(self) -> None:
        self._kept.clear()

    def prefill(self, config: ModelConfig, kernels: DecodeKernels, params: Any, kept: Any, length: int,
                body: Sequence[int], cache_len: int) -> Any:
        """A one-row cache of ``cache_len`` slots holding ``body``: ``kept``'s first ``length`` slots and the rest
        of ``body`` prefilled after them (``cache_len - length`` tokens fed, padding included)."""
        fed = cache_len - length
        rest = np.asarray(body[length:], np.int32)
        if not 0 < len(rest) <= fed:
            raise ValueError(f"prefix prefill: {len(rest)} tokens after the reused {length} do not fit the "
                             f"{fed} fed into a cache of {cache_len} slots")
        tokens = np.zeros((1, fed), np.int32)
        segments = np.zeros((1, fed), np.int32)
        tokens[0, :len(rest)] = rest
        segments[0, :len(rest)] = 1
        self.shapes.add((length, cache_len))
        return _prefill_after(config, kernels, params, kept, np.int32(length), tokens, segments, cache_len)

"""Prompt beginnings reused across requests: a prompt that starts like a cached one prefills only the rest of it.

A token's keys and values depend only on the tokens up to it, so those of a prompt's first ``L`` tokens are the
same in every prompt that starts with those ``L`` tokens. :class:`PromptPrefixes` keeps such beginnings as
one-row caches of a fixed ``P`` slots (``slots``; 64 by default, raised to hold the longest given prefix, a
multiple of 16), keyed by their token ids:

* seeded entries: fixed beginnings given up front (a chat template's default system prompt and role tags), each
  prefilled once (:meth:`textbooks.model.decode.Decoder.prefill_prefix`) and never evicted;
* learned entries: after every prefill (whole, or of a rest after a reused beginning), the row's first
  ``min(P, len(prompt) - 1)`` slots, keyed by those tokens, in a least-recently-used store of at most
  ``entries`` (default: what fits :data:`DEFAULT_STORE_BYTES`; one entry holds ``P`` slots of every layer's keys
  and values, :func:`entry_bytes`: 2.9 MB for SmolLM2-135M at ``P = 64``). A new key that starts an entry's key
  is not stored (that entry serves it); an entry whose key starts the new key is replaced by it.

A prompt reuses the longest common token prefix ``L`` it has with any entry (at most ``len(prompt) - 2``: one
token is prefilled, the last feeds the token loop) when ``L >= min_reuse`` and its padded rest is shorter than
the whole prompt's padded length (:meth:`textbooks.model.decode.Decoder.prompt_bucket`); else it prefills whole.
Its rest is written from slot ``L`` on at positions ``L, L + 1, ...`` of a cache of ``P`` plus the padded rest
slots, attending over the slots before its own (:meth:`textbooks.model.decode.Decoder.prefill_after`; the
entry's slots from ``L`` on are overwritten or masked out). ``L`` is a traced value: the programs depend only on
the rest's bucket, so :meth:`PromptPrefixes.prewarm` compiles all of them (one per bucket, with the copy of a
row's first ``P`` slots for each row length) and which beginnings requests share, and in which order they come,
never compiles anything during serving.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Sequence

import jax
import numpy as np

from textbooks.model.decode import Decoder, GenerationRequest
from textbooks.model.kv_cache import cache_length, init_cache, resize_cache

DEFAULT_SLOTS = 64  # P: slots of every cached beginning (raised to hold the longest given prefix)
DEFAULT_STORE_BYTES = 100 * 2 ** 20  # what the learned entries may take by default
MIN_REUSE = 8  # the fewest tokens worth reusing (fewer: the prompt prefills whole)


def entry_bytes(decoder: Decoder, slots: int) -> int:
    """Bytes of one cached beginning of ``slots`` slots: every layer's keys and values for one row."""
    shapes = jax.eval_shape(lambda: init_cache(decoder.config, 1, slots))
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes))


def prefix_slots(prefixes: Sequence[Sequence[int]], slots: int = DEFAULT_SLOTS) -> int:
    """``P``: ``slots`` raised to the longest of ``prefixes``, rounded up to a multiple of 16."""
    longest = max([slots] + [len(p) for p in prefixes])
    return -(-longest // 16) * 16


@functools.partial(jax.jit, static_argnums=(1,))
def _head(cache: Any, slots: int) -> Any:
    """``cache``'s first ``slots`` slots (zero-padded when it has fewer): one program per row length."""
    return resize_cache(cache, slots)


@dataclasses.dataclass(frozen=True)
class Match:
    """A cached beginning a prompt reuses: its key, how many of its tokens the prompt shares, whether learned."""

    key: tuple[int, ...]
    reused: int
    learned: bool


class PromptPrefixes:
    """Cached prompt beginnings, seeded and learned (see the module docstring).

    Args:
        decoder: the decoder whose programs prefill them (and whose prompt buckets pad the rests).
        prefixes: seeded beginnings (token-id lists); empty ones are ignored, duplicates kept once.
        slots: ``P``, the slots of every cached beginning (raised to hold the longest of ``prefixes``, rounded
            up to a multiple of 16).
        entries: most learned entries (least recently used go first); None: as many as
            :data:`DEFAULT_STORE_BYTES` holds (:attr:`entry_bytes` each); 0: only the seeded ones.
        min_reuse: the fewest shared tokens a prompt reuses.

    Raises:
        ValueError: a prefix holds ids outside the model's vocabulary or is too long for its ``max_len``, or
            ``entries`` is negative.
    """

    def __init__(self, decoder: Decoder, prefixes: Sequence[Sequence[int]] = (), *, slots: int = DEFAULT_SLOTS,
                 entries: int | None = None, min_reuse: int = MIN_REUSE):
        self._decoder = decoder
        self.prefixes: list[tuple[int, ...]] = sorted({tuple(int(t) for t in p) for p in prefixes if len(p)},
                                                      key=lambda p: (-len(p), p))  # the longest first
        for p in self.prefixes:
            try:
                decoder.validate([GenerationRequest(prompt=list(p), max_new_tokens=1)])
            except ValueError as e:
                raise ValueError(f"prompt prefix of {len(p)} tokens {list(p[:8])}...: {e}; give prefixes that fit "
                                 "the model") from e
        if entries is not None and entries < 0:
            raise ValueError(f"entries must be >= 0 (0: only the given prefixes), got {entries}")
        self.slots = prefix_slots(self.prefixes, slots)
        self.entry_bytes = entry_bytes(decoder, self.slots)
        self.max_entries = max(1, DEFAULT_STORE_BYTES // self.entry_bytes) if entries is None else entries
        self.min_reuse = min_reuse
        self._seeded: dict[tuple[int, ...], Any] = {}  # key -> cache of P slots, prefilled on first use
        self._learned: collections.OrderedDict[tuple[int, ...], Any] = collections.OrderedDict()  # oldest first
        self._arrays: dict[tuple[int, ...], np.ndarray] = {}  # key -> its ids, for matching
        self.head_shapes: set[int] = set()  # row lengths whose first P slots were kept (each a program)

    def __bool__(self) -> bool:
        return bool(self.prefixes) or self.max_entries > 0

    def __len__(self) -> int:
        """Learned entries held now."""
        return len(self._learned)

    def match(self, prompt: Sequence[int]) -> Match | None:
        """The entry sharing the longest token prefix with ``prompt`` (at most ``len(prompt) - 2`` tokens), when
        that is at least ``min_reuse`` tokens, its rest pads to fewer tokens than the whole prompt, and ``P`` and
        the padded rest fit the model's ``max_len``; else None (prefill whole). A learned entry it returns
        becomes the most recently used."""
        decoder = self._decoder
        body = len(prompt) - 1
        whole = decoder.prompt_bucket(body)
        limit = min(self.slots, body - 1)
        if limit < self.min_reuse:
            return None
        ids = np.asarray(prompt[:limit], np.int64)
        best: Match | None = None
        for key, learned in [(k, False) for k in self.prefixes] + [(k, True) for k in self._learned]:
            n = min(len(key), limit)
            differ = np.flatnonzero(self._arrays.setdefault(key, np.asarray(key, np.int64))[:n] != ids[:n])
            shared = int(differ[0]) if differ.size else n
            if shared >= self.min_reuse and (best is None or shared > best.reused):
                best = Match(key, shared, learned)
        rest = decoder.prompt_bucket(body - best.reused) if best else 0
        if best is None or rest >= whole or self.slots + rest > decoder.config.max_len:
            return None
        if best.learned:
            self._learned.move_to_end(best.key)
        return best

    def cache(self, key: tuple[int, ...]) -> Any:
        """The one-row cache of ``P`` slots of a seeded or learned entry (a seeded one prefilled on first use)."""
        if key in self._learned:
            return self._learned[key]
        if key not in self._seeded:
            self._seeded[key] = self.head(self._decoder.prefill_prefix(key))
        return self._seeded[key]

    def head(self, part: Any) -> Any:
        """The first ``P`` slots of a one-row cache (zero-padded when it has fewer)."""
        self.head_shapes.add(cache_length(part))
        return _head(part, self.slots)

    def prefill(self, match: Match, request: GenerationRequest) -> tuple[Any, np.ndarray]:
        """``(cache row of P plus the padded rest slots, last prompt token [1])`` of ``request``, whose prompt
        shares ``match.reused`` tokens with ``match``'s entry (from :meth:`match`): those tokens' keys and values,
        then its rest's."""
        return self._decoder.prefill_after(self.cache(match.key), request, match.reused)

    def remember(self, prompt: Sequence[int], part: Any) -> None:
        """Keeps the first ``min(P, len(prompt) - 1)`` slots of ``part``, ``prompt``'s prefilled row (whole or
        after a reused beginning), as a learned entry, unless a held entry's key starts with those tokens
        (learned entries whose keys start the new one are dropped; the least recently used go beyond
        ``max_entries``)."""
        if self.max_entries == 0:
            return
        key = tuple(int(t) for t in prompt[:min(self.slots, len(prompt) - 1)])
        if len(key) < self.min_reuse:
            return
        for held in [*self.prefixes, *self._learned]:
            if held[:len(key)] == key:  # it already serves every prompt this one would
                if held in self._learned:
                    self._learned.move_to_end(held)
                return
        for held in [k for k in self._learned if key[:len(k)] == k]:
            self._drop(held)
        self._learned[key] = self.head(part)
        while len(self._learned) > self.max_entries:
            self._drop(next(iter(self._learned)))

    def clear(self) -> int:
        """Drops every learned entry (the seeded ones stay); returns how many."""
        keys = list(self._learned)
        for key in keys:
            self._drop(key)
        return len(keys)

    def _drop(self, key: tuple[int, ...]) -> None:
        del self._learned[key]
        self._arrays.pop(key, None)

    def prewarm(self, prompt_tokens: int, rows: Sequence[Any] = ()) -> list[Any]:
        """Prefills every seeded entry and a rest of every bucket that prompts up to ``prompt_tokens`` tokens take
        (one program each, whatever the reused length), and keeps the first ``P`` slots of those rests' rows and
        of ``rows`` (the caller's whole-prompt rows: one copy program per row length). Returns the rests' rows
        (one per bucket: for the caller's row copies); none when nothing is reused."""
        if not self:
            return []
        for key in self.prefixes:
            self.cache(key)
        empty = init_cache(self._decoder.config, 1, self.slots)
        parts = []
        for n in sorted({self._decoder.prompt_bucket(n) for n in range(1, max(2, prompt_tokens))}):
            parts.append(self._decoder.prefill_after(empty, GenerationRequest(prompt=[0] * (n + 1), max_new_tokens=1),
                                                     0)[0])
        if self.max_entries:
            for part in [*rows, *parts]:
                self.head(part)
        return parts

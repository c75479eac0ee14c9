"""Continuous batching: a persistent KV cache whose rows (slots) requests join and leave between chunks.

:class:`textbooks.model.decode.Decoder` runs a batch of requests from their prompts to their ends. A server with
requests arriving at any time and asking for different lengths wants more: a request should start as soon as
a row is free, and a finished one should free its row at once, without the others re-reading their prompts.
:class:`SlotDecoder` keeps one cache of ``num_slots`` rows between calls:

* :meth:`SlotDecoder.admit` prefills each new request on its own, its prompt padded to a fine length bucket
  (:meth:`textbooks.model.decode.Decoder.prompt_bucket`: under 1.25 times its length; padding prompts to the
  longest of a group, or rows to a power of two, would cost a full forward per padded position), and copies
  its cache row into a free slot; a prompt that starts like a cached beginning (one given as ``prefixes``, a
  chat template's, or, with ``prefix_entries``, the start of an earlier prompt) prefills only its rest after
  that beginning's keys and values (:mod:`textbooks.model.prefix_cache`);
* :meth:`SlotDecoder.step` advances every occupied slot by up to ``max_tokens`` tokens in one compiled token
  loop (:meth:`textbooks.model.decode.Decoder.decode_chunk`, attending only over the cache window the rows have
  reached) and frees the slots whose requests ended (eos or their ``max_new_tokens``);
* :meth:`SlotDecoder.release` frees a slot early (a client went away, a stop string matched in the text).

The cache's rows follow the requests it holds: a power of two at least the occupied slots (a slot keeps its
number; which cache row holds it is the decoder's business). When requests end and the occupied slots fit in
half the rows, the live rows are compacted into a cache half as tall (or smaller) before the next chunk, so the
last requests of a burst decode at their own batch size instead of the full one; a chunk that could end with
such a shrink stops at the first request's end. The cache length grows in powers of two to what admitted
requests need; both shrink back when every slot is free. Compiled programs stay few: one prefill per prompt
bucket (four per octave of prompt lengths) whatever the cache length or company, one per bucket of the rests
after a cached beginning (whatever its length), one copy of a row's first slots per row length, one row copy
per (rows, row length, cache length), one token loop per (rows, cache length, chunk-length bucket), all rows
powers of two. A request's i-th chunk samples from a stream derived
from its seed and i only, so its text does not depend on which other requests share the cache or when it was
admitted.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from textbooks.model import decode as decode_lib
from textbooks.model.buckets import bucket
from textbooks.model.config import ModelConfig
from textbooks.model.kv_cache import cache_length, init_cache, resize_cache
from textbooks.model.layers import DecodeKernels
from textbooks.model.prefix_cache import DEFAULT_SLOTS, PromptPrefixes


# What SlotDecoder.stats counts (seconds are wall clock; the decoder waits for its results at each boundary):
# prefill_s: admissions (prefills and their row copies); prefill_calls / prefill_tokens / prefill_padded_tokens:
# prompts prefilled, their tokens but the last, those padded to the compiled length; prefill_attention_pairs:
# (query, key) pairs the prefills' attention scores (the padded length squared, summed); decode_s: token loops;
# decode_steps: their steps; decode_row_steps: steps times the cache's rows (free and finished rows included);
# prefix_hits / prefix_reused_tokens: prompts that prefilled only their rest after a cached beginning, the
# reused tokens they did not prefill (not in prefill_tokens; a rest's attention pairs count the beginning's
# slots, every one of them: its program's shape);
# prefix_learned_hits / prefix_learned_tokens: those of them whose beginning an earlier prompt left (not given).
STAT_NAMES = ("prefill_s", "prefill_calls", "prefill_tokens", "prefill_padded_tokens", "prefill_attention_pairs",
              "decode_s", "decode_steps", "decode_row_steps", "prefix_hits", "prefix_reused_tokens",
              "prefix_learned_hits", "prefix_learned_tokens")


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of a request's ``chunk``-th chunk (depends on nothing else)."""
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclasses.dataclass
class _Slot:
    request: decode_lib.GenerationRequest
    position: int  # cache slots written (prompt and generated tokens fed so far)
    generated: int = 0
    next_token: int = 0
    chunks: int = 0
    row: int = 0  # the cache row holding it


def _batch_axis(leaf: jax.Array) -> int:
    # Keys/values are [..., batch, heads, slots, head_dim]; the write index is [..., batch].
    return leaf.ndim - 4 if leaf.ndim >= 4 else leaf.ndim - 1


@functools.partial(jax.jit, donate_argnums=(0,))
def _insert_row(cache: Any, part: Any, slot: jax.Array) -> Any:
    """Writes ``part``'s one row into row ``slot`` of ``cache``, from slot 0 on; the row's later slots keep what
    they held (each row's queries read only slots they have written). A row longer than ``cache`` (a rest after
    a cached beginning: its slots plus the padded rest) is cut to it: its prompt's slots always fit."""

    def insert(leaf, new):
        if new.ndim >= 4 and new.shape[-2] > leaf.shape[-2]:  # [..., batch, heads, slots, head_dim]
            new = jax.lax.slice_in_dim(new, 0, leaf.shape[-2], axis=new.ndim - 2)
        start = [0] * leaf.ndim
        start[_batch_axis(leaf)] = slot
        return jax.lax.dynamic_update_slice(leaf, new.astype(leaf.dtype), start)

    return jax.tree.map(insert, cache, part)


_resize = jax.jit(resize_cache, static_argnums=(1,))


@jax.jit
def _take_rows(cache: Any, rows: jax.Array) -> Any:
    """A cache of ``len(rows)`` rows: row i is ``cache``'s row ``rows[i]``, zeros where ``rows[i]`` is out of range
    (new rows)."""
    return jax.tree.map(lambda leaf: jnp.take(leaf, rows, axis=_batch_axis(leaf), mode="fill", fill_value=0),
                        cache)


class SlotDecoder:
    """A persistent ``num_slots``-row KV cache with continuous batching (see the module docstring).

    Args:
        params, config: the model.
        num_slots: rows of the cache (most requests decoded together).
        min_length_bucket: smallest prompt / cache length bucket.
        kernels: how decode steps compute ('auto', 'xla', 'cpu_kernel' or a :class:`DecodeKernels`; see
            :class:`textbooks.model.decode.Decoder`).
        chunk_buffer: the fewest new tokens a chunk's program is compiled for (its tokens buffer; a chunk of
            fewer tokens stops at its rows' limits all the same): one size for all of a server's chunk lengths
            means one token loop per (rows, cache length).
        pack_weights: decode steps read weights packed for the product kernel (``Decoder(pack_weights=...)``).
        prefixes: fixed prompt beginnings (token-id lists, e.g. a chat template's start): each is prefilled
            once, and a prompt that starts with one prefills only its rest (:attr:`prefixes`,
            :class:`textbooks.model.prefix_cache.PromptPrefixes`).
        prefix_slots: slots of every cached beginning (raised to hold the longest of ``prefixes``).
        prefix_entries: most beginnings of earlier prompts kept for later ones to reuse (None: as many as
            ~100 MB hold; 0, the default: none, only ``prefixes``). With neither, every prompt prefills whole.
    """

    def __init__(self, params: Any, config: ModelConfig, *, num_slots: int = 16, min_length_bucket: int = 16,
                 kernels: str | DecodeKernels = "auto", chunk_buffer: int = 0, pack_weights: bool = True,
                 prefixes: Sequence[Sequence[int]] = (), prefix_slots: int = DEFAULT_SLOTS,
                 prefix_entries: int | None = 0):
        self._decoder = decode_lib.Decoder(params, config, max_batch_size=num_slots,
                                           min_length_bucket=min_length_bucket, kernels=kernels,
                                           pack_weights=pack_weights)
        self.params = self._decoder.params  # on the device
        self.config = config
        self.num_slots = num_slots
        self.min_length_bucket = min_length_bucket
        self.chunk_buffer = chunk_buffer
        self.cache: Any = None
        self.cache_len = 0
        self.rows = 0  # rows of the cache (0 without one)
        self._slots: list[_Slot | None] = [None] * num_slots
        # (rows, cache length, new-token bucket) of the token loops run so far (each a compiled program)
        self.decode_shapes: set[tuple[int, int, int]] = set()
        self.stats = {name: 0 for name in STAT_NAMES}
        self.prefixes = PromptPrefixes(self._decoder, prefixes, slots=prefix_slots, entries=prefix_entries)

    @property
    def prefill_shapes(self) -> set[tuple[int, int, int]]:
        """(rows, padded prompt length, cache length) of every prefill run so far (each is a compiled program)."""
        return self._decoder.prefill_shapes

    @property
    def prefix_shapes(self) -> set[tuple[int, int]]:
        """(slots of the cached beginning, padded rest) of every prefill after one, and (length, 0) of every given
        prefix's own prefill, so far (each is a compiled program)."""
        return self._decoder.prefix_shapes

    @property
    def head_shapes(self) -> set[int]:
        """Row lengths whose first slots were kept as cached beginnings so far (each a compiled program)."""
        return self.prefixes.head_shapes

    @property
    def free_slots(self) -> list[int]:
        return [i for i, s in enumerate(self._slots) if s is None]

    @property
    def active_slots(self) -> list[int]:
        return [i for i, s in enumerate(self._slots) if s is not None]

    @property
    def longest_remaining(self) -> int:
        """The most tokens a running request may still generate (0 when no slot is occupied)."""
        return max((s.request.max_new_tokens - s.generated for s in self._slots if s is not None), default=0)

    def admit(self, requests: Sequence[decode_lib.GenerationRequest]) -> list[int]:
        """Prefills ``requests`` into free slots; returns their slot numbers, in order.

        Raises:
            ValueError: an invalid request (see ``Decoder.validate``), token stop sequences (match stop strings
                on the text instead: a token loop only sees one chunk), or more requests than free slots.
        """
        requests = list(requests)
        if not requests:
            return []
        self._decoder.validate(requests)
        if any(r.stop_sequences for r in requests):
            raise ValueError("SlotDecoder does not take token stop sequences; match stop strings on the text "
                             "and call release()")
        free = self.free_slots
        if len(requests) > len(free):
            raise ValueError(f"{len(requests)} requests but only {len(free)} free slots of {self.num_slots}")
        needed = max(len(r.prompt) + r.max_new_tokens - 1 for r in requests)
        needed = max([needed] + [s.position + s.request.max_new_tokens - s.generated
                                 for s in self._slots if s is not None])
        self._ensure_shape(self.row_bucket(self.num_slots - len(free) + len(requests)),
                           self._decoder.length_bucket(needed))
        slots = free[:len(requests)]
        taken = {s.row for s in self._slots if s is not None}
        rows = [row for row in range(self.rows) if row not in taken]
        start = time.perf_counter()
        for slot, row, r in zip(slots, rows, requests):
            # One row per prefill: no row pads to a longer prompt, no padding rows (on a CPU a prompt's tokens
            # already fill the weight products; more rows would not make each token cheaper).
            # (Matched one by one: a request may reuse the beginning of one admitted before it.)
            match = self.prefixes.match(r.prompt) if self.prefixes else None
            reused = match.reused if match else 0
            part, last = self.prefixes.prefill(match, r) if match else self._decoder.prefill([r])
            self.cache = _insert_row(self.cache, part, np.int32(row))
            self.prefixes.remember(r.prompt, part)
            self._slots[slot] = _Slot(request=r, position=len(r.prompt) - 1, next_token=int(last[0]), row=row)
            self.stats["prefill_tokens"] += len(r.prompt) - 1 - reused
            padded = self._decoder.prompt_bucket(len(r.prompt) - 1 - reused)
            self.stats["prefill_padded_tokens"] += padded
            self.stats["prefill_attention_pairs"] += padded * ((self.prefixes.slots if match else 0) + padded)
            self.stats["prefix_hits"] += bool(match)
            self.stats["prefix_reused_tokens"] += reused
            self.stats["prefix_learned_hits"] += bool(match and match.learned)
            self.stats["prefix_learned_tokens"] += reused if match and match.learned else 0
        # The next chunk waits for the prefills anyway: waiting here only moves where, and times them.
        jax.block_until_ready(self.cache)
        self.stats["prefill_s"] += time.perf_counter() - start
        self.stats["prefill_calls"] += len(requests)
        return slots

    def prewarm(self, prompt_tokens: int, cache_lengths: Sequence[int], chunk_tokens: int) -> int:
        """Compiles the programs serving will run, before any request (a program compiles in seconds): the
        prefill of every prompt bucket up to ``prompt_tokens`` tokens with its row copy into a cache of
        ``num_slots`` rows, the compaction to every smaller row bucket, and the token loop of every row bucket at
        each of ``cache_lengths`` (length-bucketed) for chunks of ``chunk_tokens``; with :attr:`prefixes`, each
        given prefix's prefill, the rests' after a cached beginning with their row copies, and the copies of
        every row's first slots. Returns how many programs it ran.

        Raises:
            ValueError: a slot is occupied (the cache would be dropped).
        """
        if self.active_slots:
            raise ValueError("prewarm() runs before any request is admitted; release the occupied slots first")
        decoder = self._decoder
        idle = decode_lib.GenerationRequest(prompt=[0], max_new_tokens=0)  # done from the start: one check
        lengths = sorted({decoder.length_bucket(n) for n in cache_lengths})
        prompts = sorted({decoder.prompt_bucket(n) for n in range(1, max(1, prompt_tokens))})
        runs = 0
        parts = []
        for n in prompts:
            parts.append(decoder.prefill([decode_lib.GenerationRequest(prompt=[0] * (n + 1), max_new_tokens=1)])[0])
            runs += 1
        known = len(decoder.prefix_shapes) + len(self.head_shapes)
        rests = self.prefixes.prewarm(prompt_tokens, parts)  # rows cut to any cache length (see _insert_row)
        runs += len(decoder.prefix_shapes) + len(self.head_shapes) - known
        rows_buckets = sorted({self.row_bucket(n) for n in range(1, self.num_slots + 1)}, reverse=True)
        for length in lengths:
            cache = init_cache(self.config, self.num_slots, length)
            copied = set()  # one row copy per part length (a rest's row may be as long as a whole prompt's)
            for part in [p for p in parts if cache_length(p) <= length] + rests:
                if cache_length(part) not in copied:
                    cache = _insert_row(cache, part, np.int32(0))
                    copied.add(cache_length(part))
                    runs += 1
            for rows in rows_buckets:  # shrinking as a burst of requests ends
                if rows < self.num_slots:
                    cache = _take_rows(cache, np.arange(rows, dtype=np.int32))
                    runs += 1
                *_, cache = self._decode(cache, [idle] * rows, chunk_tokens, 0, False)
                runs += 1
        return runs

    def row_bucket(self, occupied: int) -> int:
        """The cache rows that hold ``occupied`` slots: the next power of two, at most ``num_slots``."""
        return bucket(occupied, 1, self.num_slots)

    def release(self, slot: int) -> None:
        """Frees ``slot`` (its request is dropped; its cache row is overwritten by the next admission)."""
        self._slots[slot] = None
        if not self.active_slots:
            self.cache, self.cache_len, self.rows = None, 0, 0  # the next admission starts from the smallest cache

    def step(self, max_tokens: int, *, until_free: bool = False
             ) -> dict[int, decode_lib.GenerationOutput | tuple[list[int], None]]:
        """Advances every occupied slot by up to ``max_tokens`` tokens (``until_free``: or until a request ends,
        so that a waiting request can take its slot at once).

        Returns:
            ``{slot: output}`` for each slot that was occupied: a :class:`GenerationOutput` (tokens of this
            chunk, finish reason 'eos' or 'length') when its request ended (the slot is now free), else
            ``(tokens of this chunk, None)``.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        active = self.active_slots
        if not active:
            return {}
        self._ensure_shape(self.row_bucket(len(active)), self.cache_len)  # compacts the live rows
        # A chunk whose first ending request lets the rows halve stops there: the rest runs on fewer rows.
        until_free = until_free or self.row_bucket(len(active) - 1) < self.rows
        placeholder = decode_lib.GenerationRequest(prompt=[0], max_new_tokens=0)
        chunk_requests, top = [placeholder] * self.rows, 0
        for b in active:
            slot = self._slots[b]
            r = slot.request
            chunk_requests[slot.row] = dataclasses.replace(
                r, prompt=[slot.next_token], max_new_tokens=min(max_tokens, r.max_new_tokens - slot.generated),
                stop_sequences=(), seed=chunk_seed(r.seed, slot.chunks))
            top = max(top, slot.position)
        start = time.perf_counter()
        out, counts, reasons, self.cache = self._decode(self.cache, chunk_requests, max_tokens, top, until_free)
        steps = int(counts.max())  # the loop stops when its last row is done
        self.stats["decode_s"] += time.perf_counter() - start
        self.stats["decode_steps"] += steps
        self.stats["decode_row_steps"] += steps * self.rows
        results: dict[int, Any] = {}
        for b in active:
            slot = self._slots[b]
            tokens = [int(t) for t in out[slot.row, :counts[slot.row]]]
            slot.position += len(tokens)
            slot.generated += len(tokens)
            slot.chunks += 1
            reason = decode_lib.FINISH_REASONS[int(reasons[slot.row])]
            if reason == "eos":
                results[b] = decode_lib.GenerationOutput(tokens=tokens[:-1], finish_reason="eos")
            elif slot.generated >= slot.request.max_new_tokens:
                results[b] = decode_lib.GenerationOutput(tokens=tokens, finish_reason="length")
            else:
                slot.next_token = tokens[-1]
                results[b] = (tokens, None)
                continue
            self.release(b)
        return results

    def _decode(self, cache: Any, requests: list, tokens: int, written: int, until_free: bool) -> tuple:
        rows, length = len(requests), cache_length(cache)
        tokens = max(tokens, self.chunk_buffer)
        self.decode_shapes.add((rows, length, bucket(tokens, 8)))
        return self._decoder.decode_chunk(cache, requests, tokens, written, until_free=until_free)

    def _ensure_shape(self, rows: int, length: int) -> None:
        """Makes the cache ``rows`` rows (keeping every occupied slot's row: compacted to the first rows when
        shrinking, in slot order) and at least ``length`` slots."""
        if self.cache is None:
            self.cache = init_cache(self.config, rows, length)
            self.rows, self.cache_len = rows, length
            return
        if rows != self.rows:
            live = [s for s in self._slots if s is not None]
            if rows < self.rows:
                order = [s.row for s in live]
                for i, s in enumerate(live):
                    s.row = i
            else:
                order = list(range(self.rows))
            # Rows past the old cache (index self.rows) come back as zeros.
            order += [self.rows] * (rows - len(order))
            self.cache = _take_rows(self.cache, np.asarray(order, np.int32))
            self.rows = rows
        if length > self.cache_len:
            self.cache = _resize(self.cache, length)
            self.cache_len = length

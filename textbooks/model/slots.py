"""Continuous batching: a persistent KV cache whose rows (slots) requests join and leave between chunks.

:class:`textbooks.model.decode.Decoder` runs a batch of requests from their prompts to their ends. A server with
requests arriving at any time and asking for different lengths wants more: a request should start as soon as
a row is free, and a finished one should free its row at once, without the others re-reading their prompts.
:class:`SlotDecoder` keeps one cache of ``num_slots`` rows between calls:

* :meth:`SlotDecoder.admit` prefills each new request on its own, its prompt padded to a fine length bucket
  (:meth:`textbooks.model.decode.Decoder.prompt_bucket`: under 1.25 times its length; padding prompts to the
  longest of a group, or rows to a power of two, would cost a full forward per padded position), and copies
  its cache row into a free slot;
* :meth:`SlotDecoder.step` advances every occupied slot by up to ``max_tokens`` tokens in one compiled token
  loop (:meth:`textbooks.model.decode.Decoder.decode_chunk`, attending only over the cache window the rows have
  reached) and frees the slots whose requests ended (eos or their ``max_new_tokens``);
* :meth:`SlotDecoder.release` frees a slot early (a client went away, a stop string matched in the text).

The cache length grows in powers of two to what admitted requests need and shrinks back when every slot is
free, so compiled programs stay few: one prefill per prompt bucket (four per octave of prompt lengths)
whatever the cache length or company, one row copy per (prompt bucket, cache length). A request's i-th chunk
samples from a stream derived from its seed and i only, so its text does not depend on which other requests share the cache or when it was admitted.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import numpy as np

from textbooks.model import decode as decode_lib
from textbooks.model.config import ModelConfig
from textbooks.model.kv_cache import init_cache, resize_cache
from textbooks.model.layers import DecodeKernels


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


def _batch_axis(leaf: jax.Array) -> int:
    # Keys/values are [..., batch, heads, slots, head_dim]; the write index is [..., batch].
    return leaf.ndim - 4 if leaf.ndim >= 4 else leaf.ndim - 1


@functools.partial(jax.jit, donate_argnums=(0,))
def _insert_row(cache: Any, part: Any, slot: jax.Array) -> Any:
    """Writes ``part``'s one row (a cache of at most ``cache``'s slots) into row ``slot`` of ``cache``, from slot 0
    on; the row's later slots keep what they held (each row's queries read only slots they have written)."""

    def insert(leaf, new):
        start = [0] * leaf.ndim
        start[_batch_axis(leaf)] = slot
        return jax.lax.dynamic_update_slice(leaf, new.astype(leaf.dtype), start)

    return jax.tree.map(insert, cache, part)


_resize = jax.jit(resize_cache, static_argnums=(1,))


class SlotDecoder:
    """A persistent ``num_slots``-row KV cache with continuous batching (see the module docstring).

    Args:
        params, config: the model.
        num_slots: rows of the cache (most requests decoded together).
        min_length_bucket: smallest prompt / cache length bucket.
        kernels: how decode steps compute ('auto', 'xla', 'cpu_kernel' or a :class:`DecodeKernels`; see
            :class:`textbooks.model.decode.Decoder`).
    """

    def __init__(self, params: Any, config: ModelConfig, *, num_slots: int = 16, min_length_bucket: int = 16,
                 kernels: str | DecodeKernels = "auto"):
        self._decoder = decode_lib.Decoder(params, config, max_batch_size=num_slots,
                                           min_length_bucket=min_length_bucket, kernels=kernels)
        self.params = self._decoder.params  # on the device
        self.config = config
        self.num_slots = num_slots
        self.min_length_bucket = min_length_bucket
        self.cache: Any = None
        self.cache_len = 0
        self._slots: list[_Slot | None] = [None] * num_slots

    @property
    def prefill_shapes(self) -> set[tuple[int, int, int]]:
        """(rows, padded prompt length, cache length) of every prefill run so far (each is a compiled program)."""
        return self._decoder.prefill_shapes

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
        self._ensure_length(self._decoder.length_bucket(needed))
        slots = free[:len(requests)]
        for slot, r in zip(slots, requests):
            # One row per prefill: no row pads to a longer prompt, no padding rows (on a CPU a prompt's tokens
            # already fill the weight products; more rows would not make each token cheaper).
            part, last = self._decoder.prefill([r])
            self.cache = _insert_row(self.cache, part, np.int32(slot))
            self._slots[slot] = _Slot(request=r, position=len(r.prompt) - 1, next_token=int(last[0]))
        return slots

    def release(self, slot: int) -> None:
        """Frees ``slot`` (its request is dropped; its cache row is overwritten by the next admission)."""
        self._slots[slot] = None
        if not self.active_slots:
            self.cache, self.cache_len = None, 0  # the next admission starts from the smallest cache again

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
        placeholder = decode_lib.GenerationRequest(prompt=[0], max_new_tokens=0)
        chunk_requests, top = [], 0
        for slot in self._slots:
            if slot is None:
                chunk_requests.append(placeholder)
                continue
            r = slot.request
            chunk_requests.append(dataclasses.replace(
                r, prompt=[slot.next_token], max_new_tokens=min(max_tokens, r.max_new_tokens - slot.generated),
                stop_sequences=(), seed=chunk_seed(r.seed, slot.chunks)))
            top = max(top, slot.position)
        out, counts, reasons, self.cache = self._decoder.decode_chunk(self.cache, chunk_requests, max_tokens, top,
                                                                      until_free=until_free)
        results: dict[int, Any] = {}
        for b in active:
            slot = self._slots[b]
            tokens = [int(t) for t in out[b, :counts[b]]]
            slot.position += len(tokens)
            slot.generated += len(tokens)
            slot.chunks += 1
            reason = decode_lib.FINISH_REASONS[int(reasons[b])]
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

    def _ensure_length(self, length: int) -> None:
        if self.cache is None:
            self.cache = init_cache(self.config, self.num_slots, length)
            self.cache_len = length
        elif length > self.cache_len:
            self.cache = _resize(self.cache, length)
            self.cache_len = length

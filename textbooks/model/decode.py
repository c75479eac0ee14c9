"""Autoregressive decoding with a KV cache: batched, bucketed, jit-compiled prefill and token loop.

A batch holds prompts of different lengths, right-padded. Every row has its own cache write index, so
position ``p`` of a row's sequence lives in cache slot ``p`` whatever the other rows hold. Decoding runs in
two compiled programs:

* prefill: all prompt tokens but the last go through the model at once, filling the cache;
* loop: a ``lax.while_loop`` feeds one token per row per step (first the prompt's last token), samples the
  next one (greedy, temperature, top-k, top-p; per row), and marks a row done at its eos id, at one of its
  stop sequences, or after its ``max_new_tokens``. The loop ends when every row is done. It lives in
  :mod:`textbooks.model.token_loop`, with the request types and the host arrays of a batch (re-exported here).

The token loop's single-token steps run on the kernels :class:`Decoder` chooses (``kernels``); a prefill feeds
hundreds of tokens at once, whose projections run on the same packed weights as the steps when the decoder packed
them (the product kernel keeps each 48-column panel in cache over all the rows, with the norms and residual adds
inside its calls; XLA's products otherwise), and whose attention is a
full causal block that XLA's batched products compute faster than the per-query attention kernel: prefills
run :attr:`Decoder.prefill_kernels` (XLA attention) when their cache is as long as their padded prompt (what
:meth:`Decoder.prefill` makes by default; XLA attention reads every slot of the cache, the kernel only those
before each query, so a prefill into a longer cache keeps the decode kernels).

Shapes are rounded up to buckets (batch, prompt length, cache length, new tokens, stop sequences: powers of
two, :mod:`textbooks.model.buckets`), so a long-running :class:`Decoder` compiles a bounded number of programs
however requests vary. :meth:`Decoder.prefill` pads prompts to finer buckets (four per octave,
:func:`~textbooks.model.buckets.fine_bucket`): a prefill costs a full forward per padded position, a token loop
step does not grow with the prompt's padding. All sampling parameters are per-row arrays (:mod:`textbooks.model.sampling`), so a
server can batch concurrent requests with different settings in one call of :meth:`Decoder.generate`. Each
request's random stream depends only on its seed, so results do not depend on which other requests share its
batch. :meth:`Decoder.prefill` and :meth:`Decoder.decode_chunk` expose the two programs on a cache the caller
keeps (continuous batching, :mod:`textbooks.model.slots`); :meth:`Decoder.prefill_prefix` and
:meth:`Decoder.prefill_after` prefill a fixed prompt beginning once, then only the rest of each prompt that
starts with it (:mod:`textbooks.model.prefix_cache`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from textbooks.model import cpu_kernels, packed_decode
from textbooks.model.buckets import bucket, fine_bucket
from textbooks.model.config import ModelConfig
from textbooks.model.kv_cache import attention_windows, cache_length, init_cache, pack_weights, resize_cache
from textbooks.model.causal_lm import CausalLM
from textbooks.model.layers import DecodeKernels
from textbooks.model.token_loop import (FINISH_REASONS, GenerationOutput, GenerationRequest, batch_arrays,
                                        decode_chunk, decode_loop)

__all__ = ["FINISH_REASONS", "Decoder", "GenerationOutput", "GenerationRequest", "batch_arrays", "choose_kernels",
           "generate"]


def _weights(params: Any, cache: Any, packed: Any) -> dict:
    """The variables of a prefill: the parameters, the cache it fills and the packed weights when there are some
    (the layers' products then run on the packed kernels, as decode steps do)."""
    return {"params": params, "cache": cache, **({packed_decode.COLLECTION: packed} if packed else {})}


@functools.partial(jax.jit, static_argnums=(0, 1, 5))
def _prefill(config: ModelConfig, kernels: DecodeKernels, params: Any, tokens: jax.Array, segment_ids: jax.Array,
             cache_len: int, packed: Any = None) -> Any:
    model = CausalLM(config, kernels)
    cache = init_cache(config, tokens.shape[0], cache_len)
    _, variables = model.apply(_weights(params, cache, packed), tokens, segment_ids=segment_ids, decode=True,
                               mutable=["cache"])
    return variables["cache"]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prefill_after(config: ModelConfig, kernels: DecodeKernels, params: Any, prefix: Any, reused: jax.Array,
                   tokens: jax.Array, segment_ids: jax.Array, packed: Any = None) -> Any:
    """A cache of ``P + tokens.shape[1]`` slots (``P``: ``prefix``'s): ``prefix``'s first ``reused`` slots (a traced
    value: one program serves every ``reused``), then ``tokens`` written from slot ``reused`` on at positions
    ``reused, reused + 1, ...``, each attending over every slot up to its own (the decode-mode mask: the prefix's
    slots from ``reused`` on are overwritten or never read)."""
    cache = resize_cache(prefix, cache_length(prefix) + tokens.shape[1])  # zero slots after the prefix
    cache = jax.tree.map(lambda x: x if x.ndim >= 4 else jnp.broadcast_to(reused.astype(x.dtype), x.shape), cache)
    _, variables = CausalLM(config, kernels).apply(_weights(params, cache, packed), tokens,
                                                   segment_ids=segment_ids, decode=True, mutable=["cache"])
    return variables["cache"]


def _static_filled(kernels: DecodeKernels, filled: int) -> int:
    """The ``filled`` argument to compile with: the kernel ignores it, so one value (one program) serves all."""
    return 0 if kernels.attention == "cpu_kernel" else filled


class Decoder:
    """Compiled batched decoding for one model; reuse it across calls so compiled programs are reused.

    Args:
        params: model parameters (any layout matching ``config``; may be sharded).
        config: the model config.
        max_batch_size: most rows per compiled batch; larger request lists run in chunks.
        min_length_bucket: smallest prompt/cache length bucket.
        kernels: how decode steps compute cached attention and weight products: 'auto' (the compiled CPU
            kernels of :mod:`textbooks.model.cpu_kernels` when :func:`choose_kernels` allows them, else XLA ops),
            'xla' or 'cpu_kernel' (an error if they are unavailable), or a :class:`DecodeKernels` choosing each
            (e.g. to measure one kernel alone). ``self.kernels`` names the choice, ``self.model_kernels`` is it.
        pack_weights: with the product kernel, decode steps read a copy of the projection weights (and of a tied
            head's table) in the kernel's packed layout (:attr:`packed`), made at the first decode: about twice
            as fast at 16 rows, for a second copy of those weights in memory. False keeps one copy.
    """

    def __init__(self, params: Any, config: ModelConfig, *, max_batch_size: int = 16, min_length_bucket: int = 16,
                 kernels: str | DecodeKernels = "auto", pack_weights: bool = True):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        # Host (numpy) weights would be copied to the device at every call: put them there once.
        self.params = jax.tree.map(lambda x: jax.device_put(x) if isinstance(x, np.ndarray) else x, params)
        self.config = config
        self.max_batch_size = max_batch_size
        self.min_length_bucket = min_length_bucket
        if isinstance(kernels, DecodeKernels):
            if "cpu_kernel" in (kernels.attention, kernels.projections):
                choose_kernels(config, params, "cpu_kernel")  # raises when the kernels cannot run here
            self.model_kernels, self.kernels_reason = kernels, "requested"
        else:
            name, self.kernels_reason = choose_kernels(config, params, kernels)
            self.model_kernels = DecodeKernels(attention=name, projections=name)
        self.kernels = str(self.model_kernels)
        # Prefills into a cache of their own length attend with XLA's batched products (see the module
        # docstring); their projections run on the packed product kernels when the decoder packed the weights,
        # else on XLA's products.
        self.prefill_kernels = dataclasses.replace(self.model_kernels, attention="xla")
        # Compiled programs are shared by every Decoder of the same inference config and kernels.
        self._config = config.replace(remat_policy="none", embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
        self.pack_weights = pack_weights
        self._packed: Any = None
        self.shapes_used: set[tuple[int, ...]] = set()  # (batch, prompt, cache, new, stops, stop length) buckets
        self.prefill_shapes: set[tuple[int, int, int]] = set()  # (batch, prompt, cache) of prefill() calls
        # (prefix length, padded rest) of prefill_after() calls, (prefix length, 0) of prefill_prefix() calls
        self.prefix_shapes: set[tuple[int, int]] = set()

    @property
    def packed(self) -> Any:
        """The weights decode steps read in the product kernel's layout, packed on first use
        (:func:`textbooks.model.kv_cache.pack_weights`; empty without the kernel or when not
        ``pack_weights``)."""
        if self._packed is None:
            self._packed = {}
            if self.pack_weights:
                self._packed = pack_weights(self._config, self.model_kernels, self.params)
        return self._packed

    def validate(self, requests: Sequence[GenerationRequest]) -> None:
        """Checks every request; raises ValueError naming the request and what is wrong."""
        vocab, max_len = self.config.vocab_size, self.config.max_len
        for i, r in enumerate(requests):
            where = f"request {i}"
            if len(r.prompt) == 0:
                raise ValueError(f"{where}: empty prompt; pass at least one token (e.g. a BOS/eos token)")
            _check_ids(r.prompt, vocab, f"{where}: prompt")
            if not isinstance(r.max_new_tokens, (int, np.integer)) or r.max_new_tokens < 1:
                raise ValueError(f"{where}: max_new_tokens must be a positive integer, got {r.max_new_tokens!r}")
            if len(r.prompt) + r.max_new_tokens > max_len:
                raise ValueError(f"{where}: prompt length {len(r.prompt)} + max_new_tokens {r.max_new_tokens} = "
                                 f"{len(r.prompt) + r.max_new_tokens} exceeds the model's max_len {max_len}; "
                                 "shorten the prompt or ask for fewer tokens")
            if not r.temperature >= 0:
                raise ValueError(f"{where}: temperature must be >= 0 (0 = greedy), got {r.temperature}")
            if not isinstance(r.top_k, (int, np.integer)) or r.top_k < 0:
                raise ValueError(f"{where}: top_k must be an integer >= 0 (0 = off), got {r.top_k!r}")
            if not 0 < r.top_p <= 1:
                raise ValueError(f"{where}: top_p must be in (0, 1], got {r.top_p}")
            for j, stop in enumerate(r.stop_sequences):
                if len(stop) == 0:
                    raise ValueError(f"{where}: stop sequence {j} is empty")
                _check_ids(stop, vocab, f"{where}: stop sequence {j}")
            if r.eos_id is not None and not 0 <= r.eos_id < vocab:
                raise ValueError(f"{where}: eos_id {r.eos_id} is outside the vocabulary [0, {vocab})")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationOutput]:
        """Decodes every request (in chunks of ``max_batch_size``); returns outputs in request order.

        Raises:
            ValueError: a request is invalid (empty prompt, token id outside the vocabulary, prompt plus
                max_new_tokens longer than max_len, bad sampling settings).
        """
        requests = list(requests)
        self.validate(requests)
        outputs: list[GenerationOutput] = []
        for start in range(0, len(requests), self.max_batch_size):
            outputs += self._generate_batch(requests[start:start + self.max_batch_size])
        return outputs

    def length_bucket(self, n: int) -> int:
        """The prompt or cache length compiled for ``n`` positions."""
        return bucket(n, self.min_length_bucket, self.config.max_len)

    def prompt_bucket(self, n: int) -> int:
        """The padded prompt length a prefill of ``n`` tokens compiles for (a fine bucket: at most 1.25 ``n`` above
        ``min_length_bucket``, never more than :meth:`length_bucket`)."""
        return fine_bucket(n, self.min_length_bucket, self.config.max_len)

    def prefill(self, requests: Sequence[GenerationRequest], batch: int | None = None,
                cache_len: int | None = None) -> tuple[Any, np.ndarray]:
        """Runs the prompts but their last tokens through the model into a new cache (one compiled program).

        Args:
            requests: validated requests (:meth:`validate`); their other settings are not used here.
            batch: rows of the cache (at least ``len(requests)``; the rest are padding). Default: one per request.
            cache_len: slots of the cache (at least every prompt's length). Default: the padded prompt length
                (:meth:`prompt_bucket`), so the program depends on nothing else; a caller copying the rows into a
                longer cache leaves the slots past them as they were (no query reads a slot before writing it).

        Returns:
            ``(cache, last prompt tokens [batch])``: the tokens the next :meth:`decode_chunk` starts from.
        """
        prompt_len = self.prompt_bucket(max(len(r.prompt) for r in requests) - 1)
        batch = len(requests) if batch is None else batch
        cache_len = prompt_len if cache_len is None else cache_len
        self.prefill_shapes.add((batch, prompt_len, cache_len))
        tokens, segments, last, _ = batch_arrays(requests, batch, prompt_len)
        kernels = self.prefill_kernels if cache_len == prompt_len else self.model_kernels
        return _prefill(self._config, kernels, self.params, tokens, segments, cache_len, self.packed), last

    def prefill_prefix(self, tokens: Sequence[int]) -> Any:
        """A one-row cache of exactly ``len(tokens)`` slots holding every one of ``tokens`` (no padding, no token
        held back): a fixed prompt beginning that :meth:`prefill_after` continues (one program per length)."""
        if len(tokens) == 0:
            raise ValueError("prefill_prefix: empty prefix; pass at least one token id")
        _check_ids(tokens, self.config.vocab_size, "prefill_prefix: prefix")
        ids = np.asarray([tokens], np.int32)
        self.prefix_shapes.add((len(tokens), 0))
        return _prefill(self._config, self.prefill_kernels, self.params, ids, np.ones_like(ids), len(tokens),
                        self.packed)

    def prefill_after(self, prefix: Any, request: GenerationRequest, reused: int | None = None
                      ) -> tuple[Any, np.ndarray]:
        """:meth:`prefill` of one prompt whose first ``reused`` tokens (default: all ``P`` slots of ``prefix``) have
        their keys and values in the first slots of ``prefix``, a one-row cache of ``P`` slots
        (:meth:`prefill_prefix`, or the start of an earlier prompt's row; the caller checks that the prompt starts
        with those tokens): only the rest of the prompt but its last token goes through the model, padded to
        :meth:`prompt_bucket` of its length, at positions ``reused, reused + 1, ...``, attending over the reused
        keys and values and its own with the same batched products as a plain prefill. ``reused`` is a traced
        value: one program per (``P``, padded rest), whatever it is.

        Returns:
            ``(cache of P + padded rest slots, last prompt token [1])``.

        Raises:
            ValueError: ``reused`` is not in ``[0, P]``, or the prompt does not leave at least one token after the
                reused ones before its last.
        """
        slots = cache_length(prefix)
        reused = slots if reused is None else int(reused)
        if not 0 <= reused <= slots:
            raise ValueError(f"prefill_after: reused={reused} tokens but the prefix cache holds {slots} slots; pass "
                             f"0 <= reused <= {slots}")
        rest = list(request.prompt[reused:])
        if len(rest) < 2:
            raise ValueError(f"prefill_after: a prompt of {len(request.prompt)} tokens leaves {len(rest)} after the "
                             f"{reused}-token prefix; at least 2 are needed (prefill it with prefill())")
        rest_len = self.prompt_bucket(len(rest) - 1)
        self.prefix_shapes.add((slots, rest_len))
        tokens, segments, last, _ = batch_arrays([dataclasses.replace(request, prompt=rest)], 1, rest_len)
        return _prefill_after(self._config, self.prefill_kernels, self.params, prefix, np.int32(reused), tokens,
                              segments, self.packed), last

    def decode_chunk(self, cache: Any, requests: Sequence[GenerationRequest], num_new: int, written: int, *,
                     until_free: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """Continues every row of ``cache`` by up to ``num_new`` tokens in one compiled token loop.

        Args:
            cache: a cache of ``len(requests)`` rows (from :meth:`prefill` or earlier chunks); it is consumed
                (its buffers are reused for the returned cache).
            requests: one per row: its ``prompt`` is the single token the row continues from, its
                ``max_new_tokens`` the most tokens it generates now (0 for a free row), its seed this chunk's.
            num_new: compile for this many new tokens (bucketed): the size of the tokens buffer; each row's
                ``max_new_tokens`` (at most ``num_new``) says how many it generates.
            written: the most slots any row has written so far.
            until_free: stop as soon as an occupied row ends, so a waiting request can take its row.

        Returns:
            ``(tokens [rows, >= num_new], counts [rows], finish reason codes [rows], cache)``; reason codes index
            :data:`FINISH_REASONS`.
        """
        _, _, last, rows = batch_arrays(requests, len(requests), 0)
        # The first attention window must hold what the furthest row has written.
        filled = next(w for w in attention_windows(cache_length(cache)) if w >= written)
        out, counts, reasons, cache = decode_chunk(
            self._config, self.model_kernels, self.params, cache, last, rows, bucket(num_new, 8),
            _static_filled(self.model_kernels, filled), True, np.bool_(until_free), packed=self.packed)
        return (*jax.device_get((out, counts, reasons)), cache)

    def _generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationOutput]:
        n = len(requests)
        lengths = np.array([len(r.prompt) for r in requests])
        batch = bucket(n, 1, self.max_batch_size)
        prompt_len = self.length_bucket(int(lengths.max()) - 1)
        cache_len = self.length_bucket(max(len(r.prompt) + r.max_new_tokens - 1 for r in requests))
        num_new = bucket(max(r.max_new_tokens for r in requests), 8)
        num_stops = bucket(max([len(r.stop_sequences) for r in requests] + [1]), 1)
        stop_window = bucket(max([len(s) for r in requests for s in r.stop_sequences] + [1]), 4)
        self.shapes_used.add((batch, prompt_len, cache_len, num_new, num_stops, stop_window))

        tokens, segments, last, rows = batch_arrays(requests, batch, prompt_len, num_stops, stop_window)
        cache = _prefill(self._config, self.model_kernels, self.params, tokens, segments, cache_len, self.packed)
        out, counts, reasons = jax.device_get(decode_loop(
            self._config, self.model_kernels, self.params, cache, last, rows, num_new,
            _static_filled(self.model_kernels, prompt_len), packed=self.packed))
        results = []
        for b, r in enumerate(requests):
            generated = [int(t) for t in out[b, :counts[b]]]
            reason = FINISH_REASONS[int(reasons[b])]
            if reason == "eos":
                generated = generated[:-1]
            elif reason == "stop":
                matched = [s for s in r.stop_sequences if len(s) <= len(generated)
                           and generated[len(generated) - len(s):] == list(s)]
                generated = generated[:len(generated) - max(len(s) for s in matched)]
            results.append(GenerationOutput(tokens=generated, finish_reason=reason))
        return results


def choose_kernels(config: ModelConfig, params: Any, requested: str = "auto") -> tuple[str, str]:
    """Picks how decode steps of ``params`` compute attention and weight products: returns (name, reason).

    'cpu_kernel' needs float32 compute, parameters on one CPU device, and the kernels built (see
    :mod:`textbooks.model.cpu_kernels`); 'auto' falls back to 'xla' otherwise, 'cpu_kernel' raises.

    Raises:
        ValueError: ``requested`` is not 'auto', 'xla' or 'cpu_kernel', or is 'cpu_kernel' and unavailable.
    """
    if requested not in ("auto", "xla", "cpu_kernel"):
        raise ValueError(f"kernels must be 'auto', 'xla' or 'cpu_kernel', got {requested!r}")
    if requested == "xla":
        return "xla", "requested"
    devices = {d for leaf in jax.tree.leaves(params) if isinstance(leaf, jax.Array) for d in leaf.devices()}
    if config.dtype != "float32":
        why = f"the kernel is float32 and the model computes in {config.dtype}"
    elif len(devices) > 1 or any(d.platform != "cpu" for d in devices):
        why = f"parameters live on {len(devices)} device(s) of {sorted({d.platform for d in devices})}"
    else:
        kernel = cpu_kernels.status()
        if kernel.ok:
            return "cpu_kernel", kernel.reason
        why = kernel.reason
    if requested == "cpu_kernel":
        raise ValueError(f"kernels='cpu_kernel' is unavailable: {why}")
    return "xla", why


def _check_ids(ids: Sequence[int], vocab: int, where: str) -> None:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{where} must be a flat list of integer token ids, got {list(ids)[:8]!r}")
    bad = np.flatnonzero((arr < 0) | (arr >= vocab))
    if bad.size:
        raise ValueError(f"{where}: token id {int(arr[bad[0]])} at position {int(bad[0])} is outside the "
                         f"vocabulary [0, {vocab}) ({bad.size} such ids); was it encoded with another vocabulary?")


def generate(params: Any, config: ModelConfig, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_sequences: Sequence[Sequence[int]] = (), eos_id: int | None = None,
             seed: int = 0) -> list[GenerationOutput]:
    """Continues each prompt with the KV cache.

    Args:
        params: model parameters.
        config: their config.
        prompts: token-id lists, of any (non-zero) lengths.
        max_new_tokens: most tokens to generate per prompt.
        temperature: 0 for greedy decoding; otherwise softmax temperature.
        top_k: sample among the k most likely tokens (0: no limit).
        top_p: nucleus sampling mass (1: no limit).
        stop_sequences: token sequences that end a continuation (trimmed from the output).
        eos_id: token that ends a continuation (trimmed from the output).
        seed: sampling seed; prompt i uses a stream derived from (seed, i), so calls are reproducible.

    Returns:
        One :class:`GenerationOutput` per prompt, in order.

    Raises:
        ValueError: empty prompt, token id outside [0, vocab_size), prompt + max_new_tokens > max_len, or
            invalid sampling settings.
    """
    decoder = Decoder(params, config)  # compiled programs are cached per config and shape bucket
    requests = [GenerationRequest(prompt=list(p), max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, stop_sequences=[list(s) for s in stop_sequences],
                                  eos_id=eos_id, seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
                for i, p in enumerate(prompts)]
    return decoder.generate(requests)

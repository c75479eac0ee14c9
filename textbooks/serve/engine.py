"""The serving engine: a checkpoint behind a request queue that batches concurrent requests into KV-cache decoding.

Requests wait in a queue for up to ``batch_wait_ms`` (or until ``max_batch_size`` are there) and are decoded
on a worker thread, so the event loop keeps serving. Two schedules:

* continuous batching (``chunk_tokens > 0``, the default): a :class:`textbooks.model.slots.SlotDecoder` keeps
  one KV cache of up to ``max_batch_size`` rows (as a burst of requests ends, the live rows are compacted into
  a smaller power of two, so the last requests decode at their own batch size). Decoding proceeds in chunks
  of ``chunk_tokens`` tokens; between chunks, finished requests free their rows, waiting requests are
  prefilled into free rows (the others keep their caches: nothing is re-read), streaming requests receive their new text and stop strings are checked
  on the decoded text. A chunk ends early when a request ends while others wait for a row. When every row
  is taken and no running request streams or has stop strings, nothing can happen between chunks (no row
  to give a newcomer, no text to deliver or check), so the chunk runs on until a request ends.
* static batches (``chunk_tokens = 0``): each batch runs from its prompts to its last request's end in one
  :class:`textbooks.model.decode.Decoder` call; streaming then delivers the text at the end.

A request's sampling stream depends only on its seed (and chunk number), so a seed gives the same text
whether a request ran alone or alongside others. Continuous batching reuses prompt beginnings: the chat
template's fixed beginning, prefilled once (``prompt_prefixes``), and the first slots of earlier prompts' rows
(``prefix_cache_entries``, least recently used first out); a prompt that starts like one prefills only its rest,
with programs the warm-up compiled whatever it shares (:mod:`textbooks.model.prefix_cache`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import time
from typing import Any, Sequence

from textbooks.gin_utils import configurable
from textbooks.model import hf
from textbooks.model.decode import Decoder, GenerationRequest
from textbooks.model.load import load_model
from textbooks.model.slots import SlotDecoder, chunk_seed
from textbooks.model.stops import find_stop
from textbooks.serve.prompt_prefix import prompt_prefixes as prompt_prefixes_of
from textbooks.vocab.registry import get_vocabulary


logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Job:
    """One prompt being generated.

    Attributes:
        prompt_ids: tokenized prompt.
        max_tokens: most new tokens.
        temperature, top_p, top_k, seed: sampling settings.
        stop: stop strings (the text is cut before the first one found).
        stream: queue receiving ``(index, "delta", text)`` items, then ``(index, "end", None)``; None when not
            streaming (several jobs of one request may share a queue).
        index: the job's choice index within its request.
        generated: the completion's token ids; when a stop string ends it, only those that spell the text
            before the stop string (what ``usage.completion_tokens`` counts), not the rest of the decoded chunk.
    """

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: Sequence[str] = ()
    stream: asyncio.Queue | None = None
    index: int = 0
    generated: list[int] = dataclasses.field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    error: BaseException | None = None
    cancelled: bool = False
    chunks: int = 0
    done: asyncio.Future | None = None
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


@configurable
@dataclasses.dataclass(frozen=True)
class WarmupConfig:
    """What :meth:`Engine.warmup` compiles before the server listens (gin: ``WarmupConfig.prompt_tokens``, ...).

    Attributes:
        prompt_tokens: prefill programs for every prompt length bucket up to this many tokens (0: one, for a
            one-token prompt). Longer prompts compile their bucket when they first arrive.
        cache_lengths: continuous batching: token loops for every batch-row bucket at these cache lengths
            (rounded up to the length buckets); a request needing a longer cache compiles on arrival.
    """

    prompt_tokens: int = 128
    cache_lengths: tuple[int, ...] = (512,)


class Overloaded(RuntimeError):
    """The request queue is full."""


class Engine:
    """A loaded model, its vocabulary and the batching scheduler.

    Args:
        params, config: the model.
        vocabulary: a seqio-style vocabulary (``encode``, ``decode``, ``eos_id``, ``vocab_size``).
        model_name: the name served at ``/v1/models``.
        max_batch_size: most requests decoded together.
        batch_wait_ms: how long the first request of a batch waits for company.
        chunk_tokens: new tokens per decoding call of continuous batching (0: static batches, a request's whole
            completion in one call); a call runs longer while every row is taken by a request that neither
            streams nor has stop strings (see the module docstring).
        max_queue: most requests waiting; beyond it requests are refused (429).
        fixed_batch: static batches only: pad every batch to ``max_batch_size`` rows, so one batch shape is
            compiled (TPU-style; otherwise batches are rounded up to powers of two). Continuous batching decodes
            the power of two of rows that holds the running requests.
        min_length_bucket: smallest prompt/cache length bucket; larger values mean fewer compiled programs
            and more padding.
        kernels: how the decoders' steps compute attention and weight products ('auto', 'xla', 'cpu_kernel';
            see :class:`textbooks.model.decode.Decoder`).
        pack_weights: with the product kernel, the decoders read a second copy of the weights packed for it
            (``Decoder(pack_weights=...)``); False keeps one copy.
        prompt_prefixes: continuous batching: prompt beginnings (texts) prefilled once, so a prompt starting with
            one prefills only its rest; None: the chat template's fixed beginning, when it is long enough to be
            worth it (:mod:`textbooks.serve.prompt_prefix`); empty: none.
        prefix_cache_entries: continuous batching: most beginnings of earlier prompts (their first 64 slots) kept
            for later prompts that start alike to reuse; None: as many as ~100 MB hold; 0: only
            ``prompt_prefixes`` (with both empty, every prompt prefills whole).
    """

    def __init__(self, params: Any, config: Any, vocabulary: Any, *, model_name: str, max_batch_size: int = 16,
                 batch_wait_ms: float = 5.0, chunk_tokens: int = 32, max_queue: int = 1024,
                 fixed_batch: bool = False, min_length_bucket: int = 16, kernels: str = "auto",
                 pack_weights: bool = True, prompt_prefixes: Sequence[str] | None = None,
                 prefix_cache_entries: int | None = None):
        self.config = config
        self.vocabulary = vocabulary
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.chunk_tokens = chunk_tokens
        self.max_queue = max_queue
        self.fixed_batch = fixed_batch
        self.max_len = int(config.max_len)
        self.eos_id = getattr(vocabulary, "eos_id", None)
        self.text_vocab_size = int(getattr(vocabulary, "vocab_size", config.vocab_size))
        if self.text_vocab_size > config.vocab_size:
            raise ValueError(f"the vocabulary has {self.text_vocab_size} tokens but the model only {config.vocab_size}: "
                             f"they do not belong together; pass the vocabulary the model was trained with")
        self.decoder = Decoder(params, config, max_batch_size=max_batch_size,
                               min_length_bucket=min(min_length_bucket, self.max_len), kernels=kernels,
                               pack_weights=pack_weights)
        prefixes = prompt_prefixes_of(vocabulary, self.encode, prompt_prefixes)
        self.slots = SlotDecoder(params, config, num_slots=max_batch_size,
                                 min_length_bucket=min(min_length_bucket, self.max_len), kernels=kernels,
                                 chunk_buffer=self.until_end_tokens, pack_weights=pack_weights, prefixes=prefixes,
                                 prefix_entries=prefix_cache_entries)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task | None = None
        # Continuous batching adds the SlotDecoder's counts (prefill and token-loop seconds, tokens, steps; see
        # textbooks.model.slots.STAT_NAMES): where a serving round's time goes.
        self.stats = {"kernels": self.decoder.kernels, "requests": 0, "batches": 0, "decode_calls": 0,
                      "generated_tokens": 0, "rows_decoded": 0, "programs": 0, **self.slots.stats}

    # -------------------------------------------------------------------------------------------------- text

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.vocabulary.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        # A random or under-trained model may emit ids past the vocabulary's pieces (padding rows of the
        # embedding): they have no text.
        return self.vocabulary.decode([i for i in ids if 0 <= i < self.text_vocab_size and i != self.eos_id])

    # ----------------------------------------------------------------------------------------------- running

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._scheduler(), name="textbooks-serve-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def until_end_tokens(self) -> int:
        """The tokens a chunk asks for while every row is taken and nothing can happen between chunks (it stops
        at the first request's end anyway), and the tokens buffer every chunk's program is compiled for: one
        token loop per (rows, cache length) serves every chunk."""
        return 4 * self.chunk_tokens

    def programs(self) -> int:
        """Shapes the decoders have run so far (each a compiled program); serving a workload whose shapes were
        all warmed (:meth:`warmup`) leaves it unchanged."""
        return (len(self.decoder.shapes_used) + len(self.slots.prefill_shapes) + len(self.slots.prefix_shapes)
                + len(self.slots.head_shapes) + len(self.slots.decode_shapes))

    def warmup(self, config: WarmupConfig | None = None) -> float:
        """Compiles, synchronously before serving, the programs requests will run (see :class:`WarmupConfig`;
        default: its gin-bound values): continuous batching's prefills (whole prompts, the prompt prefixes and
        the rests after a cached beginning), row copies, the copies of rows' first slots kept for reuse and the
        token loops of every batch size it shrinks to; static batches' programs of a one-request batch. Returns
        seconds spent.
        """
        start = time.monotonic()
        config = config or WarmupConfig()
        if self.chunk_tokens > 0:
            self.slots.prewarm(min(config.prompt_tokens, self.max_len - 1),
                               [min(n, self.max_len) for n in config.cache_lengths], self.chunk_tokens)
        prompt = self.encode("Hello") or [0]
        job = Job(prompt_ids=prompt, max_tokens=max(1, min(self.chunk_tokens or 16, self.max_len - len(prompt))))
        if self.chunk_tokens > 0:
            slots, _ = self._slot_chunk([job])
            for slot in slots:
                if slot in self.slots.active_slots:
                    self.slots.release(slot)
        else:
            self._decode_chunk([job])
        return time.monotonic() - start

    async def reset_prefix_cache(self) -> int:
        """Drops the prompt beginnings learned from earlier prompts (the fixed ones stay), on the decode thread so
        that no admission is using them; returns how many were dropped. A benchmark calls it so that a timed
        round does not reuse what an identical earlier round left behind."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.slots.prefixes.clear)

    def submit(self, job: Job) -> asyncio.Future:
        """Queues ``job``; the future resolves (to the job) when it is finished.

        Raises:
            Overloaded: the queue is full.
        """
        assert self._queue is not None, "Engine.start() was not awaited"
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests are waiting; try again shortly")
        job.done = asyncio.get_running_loop().create_future()
        self.stats["requests"] += 1
        self._queue.put_nowait(job)
        return job.done

    async def _next_batch(self, waiting: int) -> list[Job]:
        """Up to ``max_batch_size - waiting`` queued jobs; waits ``batch_wait_ms`` for company when idle."""
        assert self._queue is not None
        room = self.max_batch_size - waiting
        jobs: list[Job] = []
        if waiting == 0:
            loop = asyncio.get_running_loop()
            jobs.append(await self._queue.get())
            deadline = loop.time() + self.batch_wait_s
            while len(jobs) < room:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
        while len(jobs) < room and not self._queue.empty():
            jobs.append(self._queue.get_nowait())
        return [j for j in jobs if not self._drop_cancelled(j)]

    async def _scheduler(self) -> None:
        if self.chunk_tokens > 0:
            await self._continuous_scheduler()
        else:
            await self._static_scheduler()

    async def _static_scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            active = await self._next_batch(0)
            if not active:
                continue
            self.stats["batches"] += 1
            try:
                outputs = await loop.run_in_executor(self._executor, self._decode_chunk, active)
            except Exception as e:  # noqa: BLE001 - fail this batch's requests, keep serving
                logger.exception("decoding failed for a batch of %d requests", len(active))
                for job in active:
                    self._finish(job, error=e)
                continue
            for job, out in zip(active, outputs):
                self._advance(job, out)
                self._finish(job)

    async def _continuous_scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        running: dict[int, Job] = {}  # slot -> job
        while True:
            new = await self._next_batch(len(running))
            for slot, job in list(running.items()):
                if job.cancelled:
                    self.slots.release(slot)
                    del running[slot]
                    self._finish(job)
            if not new and not running:
                continue
            if new:
                self.stats["batches"] += 1
            try:
                waiting = not self._queue.empty()  # then a chunk ends as soon as a slot frees up
                jobs = [*running.values(), *new]
                until_end = len(jobs) == self.max_batch_size and all(j.stream is None and not j.stop for j in jobs)
                slots, outputs = await loop.run_in_executor(self._executor, self._slot_chunk, new, waiting,
                                                            until_end)
            except Exception as e:  # noqa: BLE001 - fail the running requests, reset the cache, keep serving
                logger.exception("decoding failed with %d running and %d new requests", len(running), len(new))
                for job in list(running.values()) + new:
                    self._finish(job, error=e)
                for slot in self.slots.active_slots:
                    self.slots.release(slot)
                running = {}
                continue
            running.update(zip(slots, new))
            for slot, out in outputs.items():
                job = running[slot]
                self._advance(job, out)
                if job.finish_reason is not None or job.cancelled:
                    if slot in self.slots.active_slots:  # ended on a stop string, or cancelled
                        self.slots.release(slot)
                    del running[slot]
                    self._finish(job)

    def _drop_cancelled(self, job: Job) -> bool:
        if job.cancelled:
            self._finish(job)
        return job.cancelled

    def _decode_chunk(self, jobs: list[Job]):
        """Static batches: every job's whole completion in one Decoder call."""
        requests = [GenerationRequest(prompt=job.prompt_ids, max_new_tokens=job.max_tokens,
                                      temperature=job.temperature, top_k=job.top_k, top_p=job.top_p,
                                      eos_id=self.eos_id, seed=chunk_seed(job.seed, 0)) for job in jobs]
        if self.fixed_batch:  # Filler rows: one token each, outputs dropped.
            filler = GenerationRequest(prompt=[jobs[0].prompt_ids[0]], max_new_tokens=1)
            requests += [filler] * (self.max_batch_size - len(requests))
        outputs = self.decoder.generate(requests)[:len(jobs)]
        self.stats["decode_calls"] += 1
        self.stats["rows_decoded"] += len(jobs)
        self.stats["programs"] = self.programs()
        return outputs

    def _slot_chunk(self, jobs: list[Job], waiting: bool = False, until_end: bool = False
                    ) -> tuple[list[int], dict]:
        """Admits ``jobs`` into free slots, then decodes one chunk of every running request (``waiting``:
        requests are queued, so the chunk stops early when one ends; ``until_end``: the chunk is not cut at
        ``chunk_tokens`` but runs until a request ends)."""
        slots = self.slots.admit([GenerationRequest(
                prompt=job.prompt_ids, max_new_tokens=job.max_tokens, temperature=job.temperature, top_k=job.top_k,
                top_p=job.top_p, eos_id=self.eos_id, seed=job.seed) for job in jobs])
        tokens = self.until_end_tokens if until_end else self.chunk_tokens
        outputs = self.slots.step(tokens, until_free=waiting or until_end)
        self.stats.update(self.slots.stats)
        self.stats["decode_calls"] += 1
        self.stats["rows_decoded"] += len(outputs)
        self.stats["programs"] = self.programs()
        return slots, outputs

    def _advance(self, job: Job, out: Any) -> None:
        """Appends a chunk's tokens: a GenerationOutput (the request ended) or (tokens, None) (it goes on)."""
        tokens, reason = (out.tokens, out.finish_reason) if hasattr(out, "tokens") else out
        job.chunks += 1
        job.generated.extend(int(t) for t in tokens)
        self.stats["generated_tokens"] += len(tokens)
        job.text = self.decode(job.generated)
        cut = find_stop(job.text, job.stop)
        if cut is not None:
            job.text = job.text[:cut]
            # Tokens decoded past the cut (the rest of the chunk, or of the batch) are not the completion's.
            del job.generated[self._tokens_spelling(job.generated, job.text):]
            job.finish_reason = "stop"
        elif reason in ("eos", "stop"):
            job.finish_reason = "stop"
        elif len(job.generated) >= job.max_tokens:
            job.finish_reason = "length"
        if job.stream is not None:
            safe = len(job.text) if job.finish_reason else _safe_prefix(job.text, job.stop)
            if safe > job.emitted:
                job.stream.put_nowait((job.index, "delta", job.text[job.emitted:safe]))
                job.emitted = safe

    def _tokens_spelling(self, ids: Sequence[int], text: str) -> int:
        """The fewest leading ``ids`` whose text begins with ``text`` (a prefix of the text of all of them).

        A longer prefix of ids only appends text (or completes a trailing partial character), so the test is
        monotone in the prefix length and bisection finds the answer in O(log n) decodes.
        """
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.decode(ids[:mid]).startswith(text):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _finish(self, job: Job, error: BaseException | None = None) -> None:
        job.error = error
        if job.stream is not None:
            job.stream.put_nowait((job.index, "end", None))
        if job.done is not None and not job.done.done():
            job.done.set_result(job)


def _safe_prefix(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be streamed: not a trailing partial character, nor a possible stop-string start."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end


def load_engine(checkpoint: str, *, vocabulary: str | None = None, model_name: str | None = None,
                **engine_kwargs: Any) -> Engine:
    """Loads a checkpoint (anything :func:`textbooks.model.load.load_model` reads: orbax model or step dir,
    transformers or params folder, GGUF file, registered name) into an :class:`Engine`.

    Args:
        checkpoint: the folder, file or registered name.
        vocabulary: a vocabulary name (``phi``, ``spm8k``, ``spm:PATH``, ``hf:PATH``, ``gguf:PATH``) overriding
            the checkpoint's.
        model_name: name served (default: the registered name, or the folder or file name).
        **engine_kwargs: see :class:`Engine`.

    Raises:
        FileNotFoundError: nothing loadable at ``checkpoint``.
        ValueError: the vocabulary does not fit the model.
    """
    if vocabulary is not None and hf.is_hf_dir(checkpoint):
        # The vocabulary is given: read the weights only.
        config, params = hf.load_hf_checkpoint(checkpoint)
        vocab = get_vocabulary(vocabulary)
    else:
        loaded = load_model(checkpoint)
        config, params = loaded.config, loaded.params
        vocab = get_vocabulary(vocabulary) if vocabulary is not None else loaded.vocabulary
    name = model_name or os.path.basename(os.path.normpath(checkpoint))
    return Engine(params, config, vocab, model_name=name, **engine_kwargs)

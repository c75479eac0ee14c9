"""The smollm2 workload of :mod:`bench.serve_throughput`, and what bounds a decode step.

* :func:`make_chats`: the chats sent to ``textbooks serve --checkpoint smollm2-135m-instruct`` (a task and an
  excerpt of the standard library's module docs, every other one under a system prompt; seeded).
* :func:`decode_bound`: milliseconds per decode step of our decoder and of transformers at given batch sizes,
  beside what a step reads (:func:`bytes_per_step`, also the uniform workload's memory-traffic figure) and
  computes, and the machine's copy bandwidth and matmul rate measured now (:func:`machine_rates`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import time
from typing import Any

SMOLLM2 = "smollm2-135m-instruct"
CHAT_TASKS = ("Summarize this in one sentence:", "Explain this to a beginner:", "What is this text about?",
              "List the key points of this text:", "Write a question that this text answers:")


def bytes_per_step(config: Any, requests: list[tuple[list[int], int]]) -> float:
    """What one decode step of a uniform batch must read, in float32 bytes, averaged over its steps: every weight
    but the embedding table (only its rows for the batch's tokens are gathered; a tied table is read whole as
    the LM head) plus each row's cached keys and values so far (the KV heads only). Both contenders read at
    least this; dividing by the time per step gives the memory bandwidth a decoder reaches."""
    prompt, new = len(requests[0][0]), requests[0][1]
    mean_cached = prompt + (new - 1) / 2
    kv = config.num_layers * len(requests) * 2 * config.kv_heads * config.head_dim * mean_cached
    return 4.0 * (weights_read(config) + kv)


def weights_read(config: Any) -> int:
    """The weights a decode step reads (and multiplies each row by): all but an untied embedding table."""
    return config.num_params() - (0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size)


def make_chats(args: argparse.Namespace) -> list[tuple[list[dict], int]]:
    """The smollm2 workload's (messages, max_tokens <- ``--chat_new_tokens``), seeded: a task and an excerpt of
    the standard library's module docs of ``--chat_prompt_chars`` characters, every other one under a system
    prompt."""
    import importlib

    import numpy as np

    docs = [importlib.import_module(m).__doc__ for m in ("argparse", "asyncio", "json", "logging", "subprocess")]
    corpus = " ".join(" ".join(d.split()) for d in docs)
    rng = np.random.default_rng(0)
    chats = []
    for i in range(args.chat_requests):
        size = int(rng.integers(*args.chat_prompt_chars, endpoint=True))
        start = int(rng.integers(0, len(corpus) - size))
        messages = [{"role": "user", "content": f"{CHAT_TASKS[i % len(CHAT_TASKS)]}\n\n{corpus[start:start + size]}"}]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "You are a concise technical writer."})
        chats.append((messages, int(rng.integers(*args.chat_new_tokens, endpoint=True))))
    return chats


def machine_rates(size_mb: int = 256, rounds: int = 3) -> dict:
    """This machine's memory bandwidth (a ``size_mb`` copy split over every core: bytes read + written per
    second, best of ``rounds``) and float32 matmul rate (2048-square, BLAS on every core), measured now."""
    import numpy as np

    src = np.ones(size_mb << 18, np.float32)  # 4-byte elements
    dst, a, parts = np.empty_like(src), np.ones((2048, 2048), np.float32), os.cpu_count() or 1
    pieces = list(zip(np.array_split(dst, parts), np.array_split(src, parts)))
    with concurrent.futures.ThreadPoolExecutor(parts) as pool:  # numpy releases the GIL while copying
        copy = min(seconds(lambda: list(pool.map(lambda p: np.copyto(*p), pieces))) for _ in range(rounds))
    matmul = min(seconds(lambda: a @ a) for _ in range(rounds))
    return {"memory_gb_per_s": round(2 * src.nbytes / copy / 1e9, 1), "copy_threads": parts,
            "matmul_gflop_per_s": round(2 * 2048 ** 3 / matmul / 1e9, 1)}


def seconds(fn, *args: Any) -> float:
    """Wall-clock seconds of ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def decode_bound(hf_model: Any, prompt: list[int], batches: list[int], threads: int, rates: dict) -> list[dict]:
    """Milliseconds per decode step of our decoder (the server's kernels) and of transformers at each batch size
    (the difference of a 72- and an 8-token run of the same rows, over 64: prefill and set-up cancel), beside
    what a step reads and computes and the machine's rates."""
    import torch

    from textbooks.model.decode import Decoder, GenerationRequest
    from textbooks.model.load import load_model

    loaded = load_model(SMOLLM2)
    config = loaded.config
    decoder = Decoder(loaded.params, config, max_batch_size=max(batches))
    torch.set_num_threads(threads)

    def ours(rows: int, new: int) -> None:
        decoder.generate([GenerationRequest(prompt=prompt, max_new_tokens=new)] * rows)  # no eos: all steps

    @torch.no_grad()
    def theirs(rows: int, new: int) -> None:
        ids = torch.tensor([prompt] * rows)  # no stop ids (None would mean the config's eos): all steps
        hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                          num_beams=1, eos_token_id=[], pad_token_id=0)

    def ms_per_step(run, rows: int) -> float:
        times = {}
        for new in (8, 72):
            run(rows, new)  # compiles / allocates
            times[new] = min(seconds(run, rows, new) for _ in range(2))
        return (times[72] - times[8]) / 64 * 1000

    out = []
    for rows in batches:
        read = bytes_per_step(config, [(prompt, 72)] * rows)  # MB and GB here: 1e6 and 1e9 bytes
        flops = 2.0 * rows * weights_read(config)  # the weight products; attention over <= 104 positions: < 3%
        roofline = {"memory": read / (rates["memory_gb_per_s"] * 1e6),
                    "compute": flops / (rates["matmul_gflop_per_s"] * 1e6)}
        entry = {"batch": rows, "read_mb_per_step": round(read / 1e6, 1), "gflop_per_step": round(flops / 1e9, 2),
                 "floor_ms": {k: round(v, 1) for k, v in roofline.items()}, "bound": max(roofline, key=roofline.get)}
        for name, run in (("serve_decoder", ours), ("transformers", theirs)):
            ms = ms_per_step(run, rows)
            entry[name] = {"ms_per_step": round(ms, 1), "read_gb_per_s": round(read / ms / 1e6, 1),
                           "gflop_per_s": round(flops / ms / 1e6, 1),
                           "of_memory_bandwidth": round(read / ms / 1e6 / rates["memory_gb_per_s"], 2)}
        # bf16 weights and cache halve the bytes, not the FLOPs (computed in float32 as now): the step scales as
        # its roofline floor does, max(memory / 2, compute) over max(memory, compute).
        entry["serve_decoder"]["bf16_estimate_ms_per_step"] = round(entry["serve_decoder"]["ms_per_step"] * max(
            roofline["memory"] / 2, roofline["compute"]) / max(roofline.values()), 1)
        out.append(entry)
    return out

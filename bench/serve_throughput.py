"""Throughput of `textbooks serve` vs transformers `generate()` on the same CPU-size model, prompts and lengths.

Both decode greedily with a KV cache: the server receives N concurrent `/v1/completions` requests (token-id
prompts, over HTTP, batched by its request queue), transformers gets the same N prompts as one batch. The
metric is generated tokens per second (wall clock, after a warm-up round that compiles / allocates; median
of the rounds); the result is the ratio serve / transformers, measured in the same run on the same machine,
with the rounds of all contenders interleaved. transformers runs at each of ``--torch_threads`` and the
fastest is the peer. Greedy decoding makes both produce the same tokens, which the script checks.

Usage:
    python bench/serve_throughput.py [--preset phi-cpu-7m] [--requests 16] [--prompt_tokens 64]
                                     [--new_tokens 128] [--rounds 3] [--out serve_throughput.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vocabulary(tmp: str):
    """(vocabulary name for serve, SentencePiece processor): spm8k when present, else a small trained one."""
    import sentencepiece as spm

    try:
        from textbooks.vocab.spm import spm8k_path

        path, name = spm8k_path(), "spm8k"
    except (ImportError, FileNotFoundError):
        from textbooks.vocab.spm import train_spm

        stdlib = sysconfig.get_paths()["stdlib"]
        files = [os.path.join(stdlib, f) for f in ("textwrap.py", "string.py", "argparse.py", "json/decoder.py")]
        path = train_spm(os.path.join(tmp, "spm"), files, vocab_size=1024)
        name = f"spm:{path}"
    return name, spm.SentencePieceProcessor(model_file=path)


def _start_server(ckpt: str, vocab: str, requests: int, chunk_tokens: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "textbooks.cli", "serve", "--checkpoint", ckpt, "--port", "0", "--vocabulary", vocab,
           "--model_name", "bench", "--max_batch_size", str(requests), "--chunk_tokens", str(chunk_tokens),
           "--batch_wait_ms", "20", "--no_warmup"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stderr.read()[-2000:]}")
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if line.startswith("serving "):
                return proc, line.split(" on ")[1].strip()
    proc.kill()
    raise RuntimeError("serve did not start")


async def _serve_round(url: str, prompts: list[list[int]], new_tokens: int) -> tuple[float, int, list[str]]:
    from textbooks.synth.client import OpenAIClient

    async with OpenAIClient(url, "bench", api_key_env=None, concurrency=len(prompts), timeout=1200,
                            max_retries=0) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*[client._request("completions", {"prompt": p},  # noqa: SLF001 - token ids
                                                         {"max_tokens": new_tokens, "temperature": 0})
                                         for p in prompts])
        elapsed = time.perf_counter() - start
    return elapsed, sum(r.usage.completion_tokens for r in results), [r.text for r in results]


class _Transformers:
    """transformers' PhiForCausalLM.generate on the whole batch (greedy, KV cache)."""

    def __init__(self, ckpt: str, prompts: list[list[int]], new_tokens: int, eos: int):
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.PhiForCausalLM.from_pretrained(ckpt).eval()
        self.batch = torch.tensor(prompts)
        self.kwargs = dict(max_new_tokens=new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                           pad_token_id=eos, attention_mask=torch.ones_like(self.batch))
        self.eos = eos

    def round(self, threads: int) -> tuple[float, int, list[list[int]]]:
        self.torch.set_num_threads(threads)
        with self.torch.no_grad():
            start = time.perf_counter()
            out = self.model.generate(self.batch, **self.kwargs)
            elapsed = time.perf_counter() - start
        new = out[:, self.batch.shape[1]:].tolist()
        rows = [row[:row.index(self.eos)] if self.eos in row else row for row in new]
        return elapsed, sum(len(r) for r in rows), rows  # tokens without the eos, as the server's usage counts


def _summary(runs: list[tuple[float, int, Any]], warmup: float, **extra: Any) -> dict:
    tps = [tokens / elapsed for elapsed, tokens, _ in runs]
    return {**extra, "warmup_s": round(warmup, 2), "round_s": [round(e, 3) for e, _, _ in runs],
            "tokens_per_round": runs[0][1], "tokens_per_s": round(statistics.median(tps), 1)}


def run_benchmark(ckpt: str, vocab: str, prompts: list[list[int]], new_tokens: int, rounds: int, eos: int,
                  threads: list[int], chunk_settings: list[int]) -> tuple[dict, dict, list[str]]:
    """Rounds are interleaved (transformers at each thread count, then each server) so that load changes on a
    shared machine hit every contender alike. Returns (transformers by threads, serve by chunk, reference rows)."""
    servers = {c: _start_server(ckpt, vocab, len(prompts), c) for c in chunk_settings}
    try:
        hf = _Transformers(ckpt, prompts, new_tokens, eos)
        warm_hf, warm_serve = {}, {}
        for t in threads:
            start = time.perf_counter()
            hf.round(t)
            warm_hf[t] = time.perf_counter() - start
        for c, (_, url) in servers.items():
            start = time.perf_counter()
            asyncio.run(_serve_round(url, prompts, new_tokens))  # compiles the batch's programs
            warm_serve[c] = time.perf_counter() - start
        hf_runs: dict[int, list] = {t: [] for t in threads}
        serve_runs: dict[int, list] = {c: [] for c in chunk_settings}
        for _ in range(rounds):
            for t in threads:
                hf_runs[t].append(hf.round(t))
            for c, (_, url) in servers.items():
                serve_runs[c].append(asyncio.run(_serve_round(url, prompts, new_tokens)))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    reference = hf_runs[threads[0]][0][2]
    hf_out = {t: _summary(r, warm_hf[t], torch_threads=t) for t, r in hf_runs.items()}
    serve_out = {c: {**_summary(r, warm_serve[c], chunk_tokens=c), "texts": r[0][2]} for c, r in serve_runs.items()}
    return hf_out, serve_out, reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="phi-cpu-7m")
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests (= transformers batch)")
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk_tokens", type=int, nargs="+", default=[0, 32],
                        help="serve --chunk_tokens settings to measure (0: whole completions per batch)")
    parser.add_argument("--torch_threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                        help="torch thread counts to try; the fastest is the peer (OpenMP spinning makes more "
                             "threads slower on a busy machine)")
    parser.add_argument("--out", default="serve_throughput.json")
    args = parser.parse_args(argv)

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import numpy as np

    from textbooks.model.config import get_preset
    from textbooks.model.hf import save_hf_checkpoint
    from textbooks.model.phi import init_params

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        vocab, sp = _vocabulary(tmp)
        vocab_size, eos = sp.get_piece_size(), sp.eos_id()
        config = get_preset(args.preset).replace(vocab_size=vocab_size)
        ckpt = os.path.join(tmp, "ckpt")
        save_hf_checkpoint(init_params(config, 0), config, ckpt, eos_token_id=eos)
        rng = np.random.default_rng(0)
        low = 3  # skip pad/eos/unk
        prompts = rng.integers(low, vocab_size, size=(args.requests, args.prompt_tokens)).tolist()
        hf_runs, serve_by_chunk, reference_rows = run_benchmark(ckpt, vocab, prompts, args.new_tokens, args.rounds,
                                                                eos, args.torch_threads, args.chunk_tokens)
        hf = max(hf_runs.values(), key=lambda r: r["tokens_per_s"])
        serve_runs = list(serve_by_chunk.values())
        reference_texts = [sp.decode([t for t in r if t < vocab_size]) for r in reference_rows]
    result = {
        "benchmark": "serve_throughput", "preset": args.preset, "model_params": config.num_params(),
        "vocab_size": vocab_size, "requests": args.requests, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "machine": {"platform": platform.platform(),
                                                                         "cpus": os.cpu_count(),
                                                                         "load_average_start": load_start,
                                                                         "load_average_end": os.getloadavg()},
        "transformers": hf, "transformers_by_threads": hf_runs,
        "serve": [], "goal_ratio": 2.0,
    }
    for run in serve_runs:
        texts = run.pop("texts")
        run["same_text_as_transformers"] = sum(a == b for a, b in zip(texts, reference_texts))
        run["ratio_vs_transformers"] = round(run["tokens_per_s"] / hf["tokens_per_s"], 2)
        result["serve"].append(run)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())

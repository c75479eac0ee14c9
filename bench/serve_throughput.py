"""Throughput of `textbooks serve` vs transformers `generate()` on the same CPU-size model, prompts and lengths.

Both decode greedily with a KV cache; the metric is generated tokens per second (wall clock, after a warm-up
round that compiles / allocates; median of the rounds) and the result is the ratio serve / transformers,
measured in the same run on the same machine with the rounds of all contenders interleaved, so that load
changes on a shared machine hit every contender alike. Greedy decoding makes both produce the same tokens,
which the script checks. Two workloads:

* ``uniform``: N requests with prompts of one length asking for the same number of tokens, sent at once.
  transformers gets them as one batch: its best case (no padding, every row ends together).
* ``mixed``: what a generation job sends: M requests with prompt lengths and completion lengths drawn
  uniformly from ranges, sent at once. transformers runs them as static batches of N (left-padded, each
  batch decoding until its longest request ends, each row cut to its own length), in arrival order and,
  as the strongest static schedule, sorted by requested length; the faster is the peer. The server batches
  continuously: a finished request's row takes the next waiting request.

The server receives the requests as concurrent HTTP ``/v1/completions`` calls (token-id prompts) with
``--max_batch_size N``. transformers runs at each of ``--torch_threads``; the fastest setting is the peer.

Each round (every contender once) is one round of :mod:`bench.machine`, which records the date, the CPU model,
the load average before and after (``--wait_quiet``, ``--settle``) and the cores other processes kept busy
during each round (the server processes count as ours). The last lines are one headline per workload: the
ratio serve (the first ``--chunk_tokens`` setting) / transformers, marked ``NOT A HEADLINE`` when the machine
was busy.

Usage:
    python bench/serve_throughput.py [--preset phi-cpu-7m] [--workload uniform mixed] [--rounds 3]
                                     [--wait_quiet 0] [--settle 150] [--out serve_throughput.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import Any

try:
    from bench import machine
except ImportError:  # run as a script: python bench/serve_throughput.py
    import machine

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


def _start_server(ckpt: str, vocab: str, batch: int, chunk_tokens: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "textbooks.cli", "serve", "--checkpoint", ckpt, "--port", "0", "--vocabulary", vocab,
           "--model_name", "bench", "--max_batch_size", str(batch), "--chunk_tokens", str(chunk_tokens),
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


async def _serve_round(url: str, requests: list[tuple[list[int], int]]) -> tuple[float, int, list[str]]:
    from textbooks.serve.client import OpenAIClient

    async with OpenAIClient(url, "bench", api_key_env=None, concurrency=len(requests), timeout=1200,
                            max_retries=0) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*[client._request("completions", {"prompt": p},  # noqa: SLF001 - token ids
                                                         {"max_tokens": n, "temperature": 0})
                                         for p, n in requests])
        elapsed = time.perf_counter() - start
    return elapsed, sum(r.usage.completion_tokens for r in results), [r.text for r in results]


class _Transformers:
    """transformers' PhiForCausalLM.generate on static batches (greedy, KV cache, left padding)."""

    def __init__(self, ckpt: str, eos: int):
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.PhiForCausalLM.from_pretrained(ckpt).eval()
        self.eos = eos

    def _batch(self, batch: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        torch = self.torch
        width = max(len(p) for _, p, _ in batch)
        ids = torch.full((len(batch), width), self.eos, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, prompt, _) in enumerate(batch):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max(n for _, _, n in batch),
                                  do_sample=False, num_beams=1, eos_token_id=self.eos, pad_token_id=self.eos)
        rows = {}
        for row, (index, _, n) in enumerate(batch):
            new = out[row, width:width + n].tolist()
            rows[index] = new[:new.index(self.eos)] if self.eos in new else new  # as the server's usage counts
        return rows

    def round(self, threads: int, batches: list[list[tuple[int, list[int], int]]]) -> tuple[float, int, list]:
        self.torch.set_num_threads(threads)
        rows: dict[int, list[int]] = {}
        with self.torch.no_grad():
            start = time.perf_counter()
            for batch in batches:
                rows.update(self._batch(batch))
            elapsed = time.perf_counter() - start
        ordered = [rows[i] for i in range(len(rows))]
        return elapsed, sum(len(r) for r in ordered), ordered


def _summary(runs: list[tuple[float, int, Any]], warmup: float, **extra: Any) -> dict:
    tps = [tokens / elapsed for elapsed, tokens, _ in runs]
    return {**extra, "warmup_s": round(warmup, 2), "round_s": [round(e, 3) for e, _, _ in runs],
            "tokens_per_round": runs[0][1], "tokens_per_s": round(statistics.median(tps), 1)}


def bytes_per_step(config: Any, requests: list[tuple[list[int], int]]) -> float:
    """What one decode step of a uniform batch must read, in float32 bytes, averaged over its steps: every weight
    but the embedding table (only its rows for the batch's tokens are gathered) plus each row's cached keys and
    values so far. Both contenders read at least this; dividing by the time per step gives the memory bandwidth
    a decoder reaches."""
    prompt, new = len(requests[0][0]), requests[0][1]
    embedding = config.vocab_size * config.hidden_size
    mean_cached = prompt + (new - 1) / 2
    kv = config.num_layers * len(requests) * 2 * config.hidden_size * mean_cached
    return 4.0 * (config.num_params() - embedding + kv)


def make_workload(name: str, vocab_size: int, args: argparse.Namespace) -> list[tuple[list[int], int]]:
    """The (prompt token ids, max_tokens) of each request, seeded."""
    import numpy as np

    rng = np.random.default_rng(0)
    low = 3  # skip pad/eos/unk
    if name == "uniform":
        return [(rng.integers(low, vocab_size, args.prompt_tokens).tolist(), args.new_tokens)
                for _ in range(args.batch)]
    return [(rng.integers(low, vocab_size, int(rng.integers(*args.mixed_prompt_tokens, endpoint=True))).tolist(),
             int(rng.integers(*args.mixed_new_tokens, endpoint=True))) for _ in range(args.mixed_requests)]


def _schedules(name: str, requests: list[tuple[list[int], int]], batch: int) -> dict[str, list]:
    """transformers' static batches: (index, prompt, max_tokens) triples, in arrival order and sorted by length."""
    indexed = [(i, p, n) for i, (p, n) in enumerate(requests)]
    schedules = {"arrival": [indexed[i:i + batch] for i in range(0, len(indexed), batch)]}
    if name == "mixed":
        ordered = sorted(indexed, key=lambda r: (r[2], len(r[1])))
        schedules["sorted"] = [ordered[i:i + batch] for i in range(0, len(ordered), batch)]
    return schedules


def run_workload(name: str, ckpt: str, vocab: str, requests: list, batch: int, eos: int, rounds: int,
                 threads: list[int], chunk_settings: list[int], hf: _Transformers,
                 cond: machine.Conditions) -> dict:
    schedules = _schedules(name, requests, batch)
    servers = {c: _start_server(ckpt, vocab, batch, c) for c in chunk_settings}
    try:
        hf_keys = [(t, s) for t in threads for s in schedules]
        warm_hf, warm_serve = {}, {}
        for key in hf_keys:
            start = time.perf_counter()
            hf.round(key[0], schedules[key[1]])
            warm_hf[key] = time.perf_counter() - start
        for c, (_, url) in servers.items():
            start = time.perf_counter()
            asyncio.run(_serve_round(url, requests))  # compiles the programs the workload needs
            warm_serve[c] = time.perf_counter() - start
        hf_runs: dict[tuple, list] = {k: [] for k in hf_keys}
        serve_runs: dict[int, list] = {c: [] for c in chunk_settings}
        for _ in range(rounds):
            with cond.round():
                for key in hf_keys:
                    hf_runs[key].append(hf.round(key[0], schedules[key[1]]))
                for c, (_, url) in servers.items():
                    serve_runs[c].append(asyncio.run(_serve_round(url, requests)))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    reference = hf_runs[hf_keys[0]][0][2]
    hf_out = [_summary(r, warm_hf[k], torch_threads=k[0], schedule=k[1]) for k, r in hf_runs.items()]
    serve_out = [{**_summary(r, warm_serve[c], chunk_tokens=c), "texts": r[0][2]} for c, r in serve_runs.items()]
    return {"transformers_runs": hf_out, "serve": serve_out, "reference": reference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="phi-cpu-7m")
    parser.add_argument("--workload", nargs="+", choices=("uniform", "mixed"), default=["uniform", "mixed"])
    parser.add_argument("--batch", type=int, default=16,
                        help="server --max_batch_size = transformers batch = uniform workload's requests")
    parser.add_argument("--prompt_tokens", type=int, default=64, help="uniform: prompt length")
    parser.add_argument("--new_tokens", type=int, default=128, help="uniform: tokens per request")
    parser.add_argument("--mixed_requests", type=int, default=64)
    parser.add_argument("--mixed_prompt_tokens", type=int, nargs=2, default=[16, 128], metavar=("MIN", "MAX"))
    parser.add_argument("--mixed_new_tokens", type=int, nargs=2, default=[16, 256], metavar=("MIN", "MAX"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk_tokens", type=int, nargs="+", default=[32, 0],
                        help="serve --chunk_tokens settings (32: continuous batching, the default; 0: static)")
    parser.add_argument("--torch_threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                        help="torch thread counts to try; the fastest is the peer (OpenMP spinning makes more "
                             "threads slower on a busy machine)")
    parser.add_argument("--out", default="serve_throughput.json")
    machine.add_arguments(parser)
    args = parser.parse_args(argv)
    cond = machine.Conditions(args.wait_quiet)  # before this process loads the machine itself

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from textbooks.model.config import get_preset
    from textbooks.model.hf import save_hf_checkpoint
    from textbooks.model.causal_lm import init_params

    result: dict[str, Any] = {"benchmark": "serve_throughput", "preset": args.preset, "batch": args.batch,
                              "rounds": args.rounds, "goal_ratio": 2.0, "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        vocab, sp = _vocabulary(tmp)
        vocab_size, eos = sp.get_piece_size(), sp.eos_id()
        config = get_preset(args.preset).replace(vocab_size=vocab_size)
        ckpt = os.path.join(tmp, "ckpt")
        save_hf_checkpoint(init_params(config, 0), config, ckpt, eos_token_id=eos)
        result.update(model_params=config.num_params(), vocab_size=vocab_size)
        hf = _Transformers(ckpt, eos)
        for name in args.workload:
            requests = make_workload(name, vocab_size, args)
            run = run_workload(name, ckpt, vocab, requests, args.batch, eos, args.rounds, args.torch_threads,
                               args.chunk_tokens, hf, cond)
            peer = max(run["transformers_runs"], key=lambda r: r["tokens_per_s"])
            reference_texts = [sp.decode([t for t in r if t < vocab_size]) for r in run["reference"]]
            for s in run["serve"]:
                texts = s.pop("texts")
                s["same_text_as_transformers"] = f"{sum(a == b for a, b in zip(texts, reference_texts))}/" \
                                                 f"{len(requests)}"
                s["ratio_vs_transformers"] = round(s["tokens_per_s"] / peer["tokens_per_s"], 2)
            result["workloads"][name] = {
                "requests": len(requests), "prompt_tokens": [min(len(p) for p, _ in requests),
                                                             max(len(p) for p, _ in requests)],
                "new_tokens": [min(n for _, n in requests), max(n for _, n in requests)],
                "transformers": peer, "transformers_runs": run["transformers_runs"], "serve": run["serve"]}
            if name == "uniform":  # memory traffic: steps are new tokens per request, the round also prefills
                per_step = bytes_per_step(config, requests)
                result["workloads"][name]["read_per_step_mb"] = round(per_step / 2**20, 1)
                for entry in (*run["serve"], peer):
                    rate = entry["tokens_per_s"] / len(requests)  # steps per second
                    entry["read_gb_per_s"] = round(per_step * rate / 1e9, 1)
    result["machine"] = cond.finish(args.settle)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    for name, w in result["workloads"].items():
        peer = w["transformers"]
        for s in w["serve"]:
            traffic = f", reads {s['read_gb_per_s']} GB/s" if "read_gb_per_s" in s else ""
            print(f"{name}: serve (chunk_tokens {s['chunk_tokens']}) {s['tokens_per_s']} tokens/s vs transformers "
                  f"({peer['schedule']}, {peer['torch_threads']} threads) {peer['tokens_per_s']}: "
                  f"{s['ratio_vs_transformers']}x, same text {s['same_text_as_transformers']}{traffic}")
    for name, w in result["workloads"].items():
        first = w["serve"][0]
        print(cond.headline(f"{args.preset} {name}: serve (chunk_tokens {first['chunk_tokens']}) / transformers "
                            f"generated tokens/s", first["tokens_per_s"] / w["transformers"]["tokens_per_s"]))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())

"""Throughput of `textbooks serve` vs transformers `generate()` on the same model, prompts and lengths.

Both decode greedily with a KV cache; the metric is generated tokens per second (wall clock, after a warm-up
round of the same workload on each side that allocates and meets its shapes; median of the rounds) and the result is the ratio serve / transformers,
measured in the same run on the same machine with the rounds of all contenders interleaved, so that load
changes on a shared machine hit every contender alike. Greedy decoding makes both produce the same tokens,
which the script checks. Three workloads:

* ``uniform``: N requests with prompts of one length asking for the same number of tokens, sent at once, to a
  random-init CPU-size phi model (``--preset``). transformers gets them as one batch: its best case (no
  padding, every row ends together).
* ``mixed``: what a generation job sends: M requests with prompt lengths and completion lengths drawn
  uniformly from ranges, sent at once (same model). transformers runs them as static batches of N
  (left-padded, each batch decoding until its longest request ends, each row cut to its own length), in
  arrival order and, as the strongest static schedule, sorted by requested length; the faster is the peer.
  The server batches continuously: a finished request's row takes the next waiting request.
* ``smollm2`` (its chats and decode-step bounds: :mod:`bench.serve_smollm2`): the real SmolLM2-135M-Instruct
  (its GGUF file, float32 on both sides): ``--chat_requests`` chats of varied lengths and ``max_tokens`` sent
  at once as ``/v1/chat/completions`` (transformers gets ``apply_chat_template``'s tokens), ending at
  <|im_end|> or ``max_tokens``; static schedules as in ``mixed``. Then what bounds a decode step: it reads
  every weight (float32 ~540 MB; the tied embedding is the LM head). Our decoder's and transformers' steps at
  batch 1 and N, as GB/s and GFLOP/s, beside the machine's memory bandwidth (a multi-threaded copy) and
  matmul rate measured here, and what bf16 weights would give.

The server receives the phi workloads as concurrent HTTP ``/v1/completions`` calls (token-id prompts), all
with ``--max_batch_size N``. It starts as ``textbooks serve`` does by default, compiling its programs before it
listens (``start_s``, reported apart from the rounds); the programs it compiles later, in the warm-up round and
in the timed rounds, are counted from its ``/health`` stats (``programs``; a shape its warm-up did not cover). transformers runs at each of ``--torch_threads``; the fastest setting is the peer.
Every round sends the same prompts, so before each of its rounds the server drops the prompt beginnings it
learned from earlier ones (``POST /reset_prefix_cache``, untimed): within a round, prompts still reuse the
beginnings of those prefilled before them, as a fresh server would (``--keep_prefix_cache`` measures a server
that has seen the same prompts before).

Each round (every contender once) is one round of :mod:`bench.machine`, which records the date, the CPU model,
the load average before and after (``--wait_quiet``, ``--settle``) and the cores other processes kept busy
during each round (the server processes count as ours). The last lines are one headline per workload: the
ratio serve (the first ``--chunk_tokens`` setting) / transformers, marked ``NOT A HEADLINE`` when the machine
was busy.

Usage:
    python bench/serve_throughput.py [--preset phi-cpu-7m] [--workload uniform mixed smollm2] [--rounds 3]
                                     [--keep_prefix_cache] [--wait_quiet 0] [--settle 150]
                                     [--out serve_throughput.json]
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
    from bench.serve_smollm2 import SMOLLM2, bytes_per_step, decode_bound, machine_rates, make_chats, seconds
except ImportError:  # run as a script: python bench/serve_throughput.py
    import machine
    from serve_smollm2 import SMOLLM2, bytes_per_step, decode_bound, machine_rates, make_chats, seconds

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


def _start_server(ckpt: str, batch: int, chunk_tokens: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """Starts ``textbooks serve`` as a user would (it compiles its programs before listening: the warm-up)."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    cmd = [sys.executable, "-m", "textbooks.cli", "serve", "--checkpoint", ckpt, "--port", "0", "--max_batch_size",
           str(batch), "--chunk_tokens", str(chunk_tokens), "--batch_wait_ms", "20", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 1800  # compiling on a busy machine takes minutes
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stderr.read()[-2000:]}")
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if line.startswith("serving "):
                return proc, line.split(" on ")[1].strip()
    proc.kill()
    raise RuntimeError("serve did not start")


async def _serve_round(url: str, model: str, requests: list[tuple[list[int], int]],
                       chats: list | None, keep_prefix_cache: bool = False) -> tuple[float, int, list[tuple[str, int]]]:
    """Sends every request at once: token-id completions, or the ``chats`` as chat completions. Returns (seconds,
    completion tokens, (text, prompt tokens) per request). Unless ``keep_prefix_cache``, the server first drops
    the prompt beginnings it learned (``POST /reset_prefix_cache``, untimed): every round repeats the same
    prompts, and a round must not reuse what the one before it left (transformers keeps nothing between rounds)."""
    from textbooks.serve.client import OpenAIClient

    if not keep_prefix_cache:
        _post(f"{url}/reset_prefix_cache")

    async with OpenAIClient(url, model, api_key_env=None, concurrency=len(requests), timeout=1200,
                            max_retries=0) as client:
        start = time.perf_counter()
        if chats is None:
            calls = [client._request("completions", {"prompt": p},  # noqa: SLF001 - token ids
                                     {"max_tokens": n, "temperature": 0}) for p, n in requests]
        else:
            calls = [client.chat(m, max_tokens=n, temperature=0) for m, (_, n) in zip(chats, requests)]
        results = await asyncio.gather(*calls)
        elapsed = time.perf_counter() - start
    return elapsed, sum(r.usage.completion_tokens for r in results), [(r.text, r.usage.prompt_tokens)
                                                                      for r in results]


def _post(url: str) -> dict:
    """POSTs an empty JSON body to ``url``; returns the JSON answer."""
    import urllib.request

    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def _health(url: str) -> dict:
    """The server's ``/health`` stats (programs compiled so far, and continuous batching's time split)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/health", timeout=60) as response:
        return json.load(response)


def _programs(url: str) -> int:
    """The programs the server has compiled so far."""
    return int(_health(url)["programs"])


SPLIT_STATS = ("prefill_s", "prefill_calls", "prefill_tokens", "prefill_padded_tokens", "prefill_attention_pairs",
               "decode_s", "decode_steps", "decode_row_steps", "prefix_hits", "prefix_reused_tokens",
               "prefix_learned_hits", "prefix_learned_tokens")


def _split(before: dict, after: dict, runs: list[tuple[float, int, Any]]) -> dict | None:
    """Where the timed rounds' time went, per round: prefill (admissions: prefills and row copies), decode (token
    loops) and the rest (scheduling, text, HTTP), from the server's stats before and after them; None for a
    server without them (static batches)."""
    if "prefill_s" not in after or not runs:
        return None
    rounds = len(runs)
    per = {k: (after.get(k, 0) - before.get(k, 0)) / rounds for k in SPLIT_STATS}
    wall = sum(e for e, _, _ in runs) / rounds
    return {"round_s": round(wall, 2), "prefill_s": round(per["prefill_s"], 2), "decode_s": round(per["decode_s"], 2),
            "other_s": round(wall - per["prefill_s"] - per["decode_s"], 2),
            **{k: round(v, 1) for k, v in per.items() if not k.endswith("_s")}}


class _Transformers:
    """A transformers causal LM's generate() on static batches (greedy, KV cache, left padding)."""

    def __init__(self, model: Any, eos: int):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.eos = eos

    def _batch(self, batch: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        torch = self.torch
        width = max(len(p) for _, p, _ in batch)
        ids = torch.full((len(batch), width), self.eos, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # explicit: prompts may hold the pad (eos) id
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


def make_workload(name: str, vocab_size: int, args: argparse.Namespace) -> list[tuple[list[int], int]]:
    """The (prompt token ids, max_tokens) of each request of a phi workload, seeded."""
    import numpy as np

    rng = np.random.default_rng(0)
    low = 3  # skip pad/eos/unk
    if name == "uniform":
        return [(rng.integers(low, vocab_size, args.prompt_tokens).tolist(), args.new_tokens)
                for _ in range(args.batch)]
    return [(rng.integers(low, vocab_size, int(rng.integers(*args.mixed_prompt_tokens, endpoint=True))).tolist(),
             int(rng.integers(*args.mixed_new_tokens, endpoint=True))) for _ in range(args.mixed_requests)]


def _schedules(requests: list[tuple[list[int], int]], batch: int) -> dict[str, list]:
    """transformers' static batches: (index, prompt, max_tokens) triples, in arrival order and (several batches)
    sorted by length."""
    indexed = [(i, p, n) for i, (p, n) in enumerate(requests)]
    schedules = {"arrival": [indexed[i:i + batch] for i in range(0, len(indexed), batch)]}
    if len(indexed) > batch:
        ordered = sorted(indexed, key=lambda r: (r[2], len(r[1])))
        schedules["sorted"] = [ordered[i:i + batch] for i in range(0, len(ordered), batch)]
    return schedules


def run_workload(server: tuple[str, list[str], str], requests: list, batch: int, rounds: int, threads: list[int],
                 chunk_settings: list[int], hf: _Transformers, cond: machine.Conditions,
                 chats: list | None = None, keep_prefix_cache: bool = False) -> dict:
    """Warm-up, then ``rounds`` interleaved rounds of every transformers setting and every server (started with
    ``server`` = (checkpoint, extra serve flags, served model name)); ``keep_prefix_cache``: see
    :func:`_serve_round`."""
    ckpt, extra, model = server
    schedules = _schedules(requests, batch)
    start_s, servers = {}, {}
    for c in chunk_settings:
        start_s[c] = seconds(lambda c=c: servers.setdefault(c, _start_server(ckpt, batch, c, extra)))
    try:
        hf_keys = [(t, s) for t in threads for s in schedules]
        # Both sides run the workload once untimed (transformers allocates, the server meets its shapes).
        warm_hf = {key: seconds(hf.round, key[0], schedules[key[1]]) for key in hf_keys}
        programs = {c: [_programs(url)] for c, (_, url) in servers.items()}  # compiled at start
        warm_serve = {c: seconds(asyncio.run, _serve_round(url, model, requests, chats, keep_prefix_cache))
                      for c, (_, url) in servers.items()}
        health = {}
        for c, (_, url) in servers.items():
            health[c] = [_health(url)]
            programs[c].append(int(health[c][0]["programs"]))
        hf_runs: dict[tuple, list] = {k: [] for k in hf_keys}
        serve_runs: dict[int, list] = {c: [] for c in chunk_settings}
        for _ in range(rounds):
            with cond.round():
                for key in hf_keys:
                    hf_runs[key].append(hf.round(key[0], schedules[key[1]]))
                for c, (_, url) in servers.items():
                    serve_runs[c].append(asyncio.run(_serve_round(url, model, requests, chats, keep_prefix_cache)))
        for c, (_, url) in servers.items():
            health[c].append(_health(url))
            programs[c].append(int(health[c][1]["programs"]))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    reference = hf_runs[hf_keys[0]][0][2]
    hf_out = [_summary(r, warm_hf[k], torch_threads=k[0], schedule=k[1]) for k, r in hf_runs.items()]
    serve_out = [{**_summary(r, warm_serve[c], chunk_tokens=c), "outputs": r[0][2],
                  "start_s": round(start_s[c], 1),  # loading and compiling before the first request
                  "programs": {"at_start": programs[c][0],
                               "compiled_in_warmup_round": programs[c][1] - programs[c][0],
                               "compiled_in_timed_rounds": programs[c][2] - programs[c][1]},
                  "split": _split(*health[c], r)}
                 for c, r in serve_runs.items()]
    return {"transformers_runs": hf_out, "serve": serve_out, "reference": reference}


def _compare(run: dict, requests: list, reference_texts: list[str]) -> dict:
    """The workload's result: the peer (fastest transformers setting), each server's ratio to it and how many
    of its texts (and prompt token counts) equal transformers'."""
    peer = max(run["transformers_runs"], key=lambda r: r["tokens_per_s"])
    for s in run["serve"]:
        outputs = s.pop("outputs")
        s["same_text_as_transformers"] = f"{sum(t == r for (t, _), r in zip(outputs, reference_texts))}/{len(requests)}"
        s["same_prompt_tokens"] = f"{sum(n == len(p) for (_, n), (p, _) in zip(outputs, requests))}/{len(requests)}"
        s["ratio_vs_transformers"] = round(s["tokens_per_s"] / peer["tokens_per_s"], 2)
    return {"requests": len(requests), "prompt_tokens": [min(len(p) for p, _ in requests),
                                                         max(len(p) for p, _ in requests)],
            "new_tokens": [min(n for _, n in requests), max(n for _, n in requests)],
            "transformers": peer, "transformers_runs": run["transformers_runs"], "serve": run["serve"]}


def run_smollm2(args: argparse.Namespace, cond: machine.Conditions) -> dict:
    """The smollm2 workload: chats through the server vs transformers on the same GGUF file, then the decode
    step's bounds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from textbooks.data_packages import resolve_checkpoint

    folder, name = os.path.split(resolve_checkpoint(SMOLLM2))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    chats = make_chats(args)
    requests = [(tokenizer(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False),
                           add_special_tokens=False)["input_ids"], n) for m, n in chats]
    hf = _Transformers(model, tokenizer.eos_token_id)
    run = run_workload((SMOLLM2, [], SMOLLM2), requests, args.batch, args.rounds, args.torch_threads,
                       args.chunk_tokens, hf, cond, [m for m, _ in chats], args.keep_prefix_cache)
    result = _compare(run, requests, [tokenizer.decode(r, skip_special_tokens=True) for r in run["reference"]])
    result["goal_ratio"] = 3.0
    result["ended_at_eos"] = sum(len(r) < n for r, (_, n) in zip(run["reference"], requests))
    result["machine_rates"] = rates = machine_rates()
    for entry in result["serve"]:
        _prefill_rate(entry["split"], rates)
    result["decode_bound"] = decode_bound(model, requests[0][0][:32], [1, args.batch],
                                          result["transformers"]["torch_threads"], rates)
    return result


def _prefill_rate(split: dict | None, rates: dict) -> None:
    """Adds the prefills' GFLOP/s to a smollm2 ``split``, and its share of the matmul peak: the weight products
    of every padded position but the LM head's (a prefill's logits are unused, and XLA drops them) plus the
    attention's scores and weighted values."""
    from textbooks.model.load import load_model

    if not split or not split["prefill_s"]:
        return
    config = load_model(SMOLLM2).config
    flops = (2.0 * (config.num_params() - config.vocab_size * config.hidden_size) * split["prefill_padded_tokens"]
             + 4.0 * config.num_layers * config.num_heads * config.head_dim * split["prefill_attention_pairs"])
    split["prefill_gflop_per_s"] = round(flops / split["prefill_s"] / 1e9, 1)
    split["prefill_of_matmul_peak"] = round(split["prefill_gflop_per_s"] / rates["matmul_gflop_per_s"], 2)


def run_phi(args: argparse.Namespace, names: list[str], cond: machine.Conditions) -> dict:
    """The uniform and mixed workloads on a random-init ``--preset`` model exported for transformers."""
    import transformers

    from textbooks.model.causal_lm import init_params
    from textbooks.model.config import get_preset
    from textbooks.model.hf import save_hf_checkpoint

    out: dict[str, Any] = {"workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        vocab, sp = _vocabulary(tmp)
        vocab_size, eos = sp.get_piece_size(), sp.eos_id()
        config = get_preset(args.preset).replace(vocab_size=vocab_size)
        ckpt = os.path.join(tmp, "ckpt")
        save_hf_checkpoint(init_params(config, 0), config, ckpt, eos_token_id=eos)
        out.update(model_params=config.num_params(), vocab_size=vocab_size)
        hf = _Transformers(transformers.PhiForCausalLM.from_pretrained(ckpt), eos)
        for name in names:
            requests = make_workload(name, vocab_size, args)
            run = run_workload((ckpt, ["--vocabulary", vocab, "--model_name", "bench"], "bench"), requests,
                               args.batch, args.rounds, args.torch_threads, args.chunk_tokens, hf, cond,
                               keep_prefix_cache=args.keep_prefix_cache)
            w = out["workloads"][name] = _compare(
                run, requests, [sp.decode([t for t in r if t < vocab_size]) for r in run["reference"]])
            if name == "uniform":  # memory traffic: steps are new tokens per request, the round also prefills
                per_step = bytes_per_step(config, requests)
                w["read_per_step_mb"] = round(per_step / 2**20, 1)
                for entry in (*w["serve"], w["transformers"]):
                    rate = entry["tokens_per_s"] / len(requests)  # steps per second
                    entry["read_gb_per_s"] = round(per_step * rate / 1e9, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="phi-cpu-7m", help="the phi workloads' model (random init)")
    parser.add_argument("--workload", nargs="+", choices=("uniform", "mixed", "smollm2"), default=["uniform", "mixed"])
    parser.add_argument("--batch", type=int, default=16,
                        help="server --max_batch_size = transformers batch = uniform workload's requests")
    parser.add_argument("--prompt_tokens", type=int, default=64, help="uniform: prompt length")
    parser.add_argument("--new_tokens", type=int, default=128, help="uniform: tokens per request")
    parser.add_argument("--mixed_requests", type=int, default=64)
    parser.add_argument("--mixed_prompt_tokens", type=int, nargs=2, default=[16, 128], metavar=("MIN", "MAX"))
    parser.add_argument("--mixed_new_tokens", type=int, nargs=2, default=[16, 256], metavar=("MIN", "MAX"))
    parser.add_argument("--chat_requests", type=int, default=32, help="smollm2: concurrent chat requests")
    parser.add_argument("--chat_prompt_chars", type=int, nargs=2, default=[40, 800], metavar=("MIN", "MAX"))
    parser.add_argument("--chat_new_tokens", type=int, nargs=2, default=[16, 128], metavar=("MIN", "MAX"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk_tokens", type=int, nargs="+", default=[32, 0],
                        help="serve --chunk_tokens settings (32: continuous batching, the default; 0: static)")
    parser.add_argument("--torch_threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                        help="torch thread counts to try; the fastest is the peer (OpenMP spinning makes more "
                             "threads slower on a busy machine)")
    parser.add_argument("--keep_prefix_cache", action="store_true",
                        help="let each serve round reuse the prompt beginnings the server learned in the rounds "
                             "before it (the same prompts); default: dropped before every round")
    parser.add_argument("--out", default="serve_throughput.json")
    machine.add_arguments(parser)
    args = parser.parse_args(argv)
    cond = machine.Conditions(args.wait_quiet)  # before this process loads the machine itself

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    result: dict[str, Any] = {"benchmark": "serve_throughput", "preset": args.preset, "batch": args.batch,
                              "rounds": args.rounds, "goal_ratio": 2.0, "workloads": {}}
    phi = [w for w in args.workload if w != "smollm2"]
    if phi:
        found = run_phi(args, phi, cond)
        result["workloads"].update(found.pop("workloads"))
        result.update(found)
    if "smollm2" in args.workload:
        result["workloads"]["smollm2"] = run_smollm2(args, cond)
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
                  f"{s['ratio_vs_transformers']}x, same text {s['same_text_as_transformers']}{traffic}; started in "
                  f"{s['start_s']} s, programs compiled in the timed rounds: "
                  f"{s['programs']['compiled_in_timed_rounds']}")
    for name, w in result["workloads"].items():
        for s in w["serve"]:
            if s.get("split"):
                sp = s["split"]
                rate = (f", {sp['prefill_gflop_per_s']} GFLOP/s ({sp['prefill_of_matmul_peak']:.0%} of the matmul peak)"
                        if "prefill_gflop_per_s" in sp else "")
                print(f"{name}: serve (chunk_tokens {s['chunk_tokens']}) round {sp['round_s']} s = prefill "
                      f"{sp['prefill_s']} s ({sp['prefill_calls']:g} prompts, {sp['prefill_tokens']:g} tokens "
                      f"padded to {sp['prefill_padded_tokens']:g}{rate}; {sp['prefix_hits']:g} started with a "
                      f"prefilled prefix ({sp['prefix_learned_hits']:g} learned from earlier prompts), "
                      f"{sp['prefix_reused_tokens']:g} tokens reused) + decode {sp['decode_s']} s "
                      f"({sp['decode_steps']:g} steps, {sp['decode_row_steps']:g} row-steps) + other {sp['other_s']} s")
    for e in result["workloads"].get("smollm2", {}).get("decode_bound", []):
        ours, theirs, rates = e["serve_decoder"], e["transformers"], result["workloads"]["smollm2"]["machine_rates"]
        print(f"smollm2 decode step, batch {e['batch']}: reads {e['read_mb_per_step']} MB, {e['gflop_per_step']} "
              f"GFLOP; floors {e['floor_ms']['memory']} ms at {rates['memory_gb_per_s']} GB/s (copy), "
              f"{e['floor_ms']['compute']} ms at {rates['matmul_gflop_per_s']} GFLOP/s (matmul): {e['bound']}-bound; "
              f"serve's decoder {ours['ms_per_step']} ms ({ours['read_gb_per_s']} GB/s, {ours['gflop_per_s']} "
              f"GFLOP/s; bf16 estimate {ours['bf16_estimate_ms_per_step']} ms), transformers "
              f"{theirs['ms_per_step']} ms ({theirs['read_gb_per_s']} GB/s)")
    for name, w in result["workloads"].items():
        first = w["serve"][0]
        model = SMOLLM2 if name == "smollm2" else args.preset
        print(cond.headline(f"{model} {name}: serve (chunk_tokens {first['chunk_tokens']}) / transformers "
                            f"generated tokens/s", first["tokens_per_s"] / w["transformers"]["tokens_per_s"]))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())

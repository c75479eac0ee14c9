"""Training throughput on CPU: the textbooks train step vs transformers' PhiForCausalLM + torch AdamW.

    python bench/train_throughput.py [--preset phi-cpu-30m | phi-cpu-7m] [--batch 8] [--seq_len 256]
                                     [--steps 6] [--rounds 3] [--out train_throughput.json]

Two sizes: ``phi-cpu-30m`` and ``phi-cpu-7m``, the proxy sweeps' and the demo's model, at the demo's batch
(8 x 256, ``textbooks.demo.DemoConfig``), where the per-step overheads weigh more.

Both sides train the same phi model (the preset's shape, float32, no dropout) on the same batches (random
tokens, one document per row) with AdamW (0.9, 0.98, eps 1e-7, weight decay 0.1 off biases and LayerNorms)
and gradient clipping at norm 1.0:

* ours: ``textbooks.train``'s compiled step (``jax.jit`` with shardings, donation, the LM head fused with the
  loss and its per-role sums) on one CPU device;
* peer: transformers 5 ``PhiForCausalLM`` (its default attention, SDPA) with ``torch.optim.AdamW`` and
  ``clip_grad_norm_``, torch using all cores.

Timing: after warm-up steps (compilation), each round times ``--steps`` steps per side, sides alternating,
and measures the machine's float32 matmul peak right after; the median over rounds counts (the machine may
be shared, so every number is taken under the same conditions as its neighbours; ``bench/machine.py`` records
the load and marks a busy run's headline as not a result). Reported: tokens/s of each
side, the ratio ours / torch (goals in :data:`GOALS`), and model FLOPs utilization: tokens/s x training FLOPs
per token (6N + 12 L d T) over the peak of the same round. ``bench/train_profile.py`` says where our step's
time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

try:
    from bench import machine
except ImportError:  # run as a script: python bench/train_throughput.py
    import machine

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    sys.exit("run with one CPU device: unset XLA_FLAGS' --xla_force_host_platform_device_count")

# Per preset: (ratio ours / torch, MFU of ours) to reach on a quiet machine; MFU None: no goal.
GOALS = {"phi-cpu-30m": (1.2, 0.75), "phi-cpu-7m": (1.0, None)}
DEFAULT_GOAL = (1.0, None)


def make_batches(n: int, batch: int, seq_len: int, vocab: int, seed: int = 0) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=(batch, seq_len + 1), dtype=np.int32) for _ in range(n)]


class Ours:
    """The project's train step on one CPU device."""

    def __init__(self, config, batch: int, seq_len: int):
        import jax

        from textbooks import partitioning as part
        from textbooks.model.causal_lm import CausalLM
        from textbooks.train import optimizer as opt
        from textbooks.train import state as st
        from textbooks.train import step as stp

        self.jax, self.part = jax, part
        pc = part.PartitioningConfig(data=1)
        self.mesh = part.make_mesh(pc, jax.devices()[:1])
        self.rules = pc.logical_axis_rules
        model = CausalLM(config)
        tx, schedule = opt.make_optimizer(opt.OptimizerConfig(learning_rate=2e-4), 1000)
        self.state = st.init_state(model, tx, self.mesh, self.rules, seed=0)
        self.step_fn = stp.compile_train_step(stp.make_train_step(model, tx, schedule, num_roles=7, rules=self.rules),
                                              st.state_shardings(model, tx, self.mesh, self.rules), self.mesh,
                                              self.rules)
        self.batch, self.seq_len = batch, seq_len

    def to_device(self, tokens):
        import numpy as np

        b = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
             "decoder_segment_ids": np.ones_like(tokens[:, 1:]),
             "decoder_positions": np.broadcast_to(np.arange(self.seq_len, dtype=np.int32), tokens[:, 1:].shape),
             "decoder_loss_weights": np.ones(tokens[:, 1:].shape, np.float32),
             "decoder_role_ids": np.ones_like(tokens[:, 1:])}
        return self.part.make_global_batch(b, self.mesh, self.rules, self.batch)

    def run(self, batches) -> float:
        """Trains on ``batches`` (already on device); returns seconds."""
        with self.jax.set_mesh(self.mesh):
            t = time.perf_counter()
            for b in batches:
                self.state, metrics = self.step_fn(self.state, b)
            self.jax.block_until_ready((self.state, metrics))
            return time.perf_counter() - t


class Torch:
    """transformers' PhiForCausalLM with torch AdamW."""

    def __init__(self, config, threads: int):
        import torch
        import transformers

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        hf = transformers.PhiConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            max_position_embeddings=config.max_len, partial_rotary_factor=config.partial_rotary_factor,
            rope_theta=config.rope_theta, layer_norm_eps=config.layer_norm_eps, resid_pdrop=0.0, embd_pdrop=0.0,
            attention_dropout=0.0, tie_word_embeddings=False)
        self.torch = torch
        self.model = transformers.PhiForCausalLM(hf).train()
        decay = [p for n, p in self.model.named_parameters() if not (n.endswith("bias") or "layernorm" in n)]
        no_decay = [p for n, p in self.model.named_parameters() if n.endswith("bias") or "layernorm" in n]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                     lr=2e-4, betas=(0.9, 0.98), eps=1e-7)

    def to_device(self, tokens):
        t = self.torch.from_numpy(tokens.astype("int64"))
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def run(self, batches) -> float:
        torch = self.torch
        t = time.perf_counter()
        for inputs, targets in batches:
            logits = self.model(input_ids=inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        return time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="phi-cpu-30m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round and side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="train_throughput.json")
    machine.add_arguments(parser)
    args = parser.parse_args(argv)
    cond = machine.Conditions(args.wait_quiet)  # before this process loads the machine itself
    goal_ratio, goal_mfu = GOALS.get(args.preset, DEFAULT_GOAL)

    from textbooks.model.config import get_preset
    from textbooks.train import flops

    config = get_preset(args.preset).replace(dtype="float32", embd_dropout=0.0, attn_dropout=0.0, resid_dropout=0.0)
    tokens_per_step = args.batch * args.seq_len
    raw = make_batches(args.warmup + args.steps, args.batch, args.seq_len, config.vocab_size)

    print(f"{args.preset}: {config.num_params():,} parameters, batch {args.batch} x {args.seq_len}", flush=True)
    ours = Ours(config, args.batch, args.seq_len)
    ours_batches = [ours.to_device(b) for b in raw]
    ours.run(ours_batches[:args.warmup])
    threads = os.cpu_count() or 1
    peer = Torch(config, threads)
    peer_batches = [peer.to_device(b) for b in raw]
    peer.run(peer_batches[:args.warmup])

    fpt = flops.flops_per_token(config, args.seq_len)
    timed = {"ours": [], "torch": []}
    peaks, ratios, mfus, mfus_torch = [], [], [], []
    for r in range(args.rounds):
        with cond.round():
            timed["ours"].append(ours.run(ours_batches[args.warmup:]))
            timed["torch"].append(peer.run(peer_batches[args.warmup:]))
            peaks.append(flops.measure_cpu_peak_flops.__wrapped__(repeats=3))
        ratios.append(timed["torch"][-1] / timed["ours"][-1])
        mfus.append(args.steps * tokens_per_step / timed["ours"][-1] * fpt / peaks[-1])
        mfus_torch.append(args.steps * tokens_per_step / timed["torch"][-1] * fpt / peaks[-1])
        print(f"round {r + 1}: ours {timed['ours'][-1]:.2f} s, torch {timed['torch'][-1]:.2f} s for "
              f"{args.steps} steps ({ratios[-1]:.2f}x); peak {peaks[-1] / 1e9:.0f} GFLOP/s, MFU ours "
              f"{100 * mfus[-1]:.0f}%", flush=True)
    rate = {k: args.steps * tokens_per_step / statistics.median(v) for k, v in timed.items()}
    peak = statistics.median(peaks)
    mfu = statistics.median(mfus)
    result = {
        "preset": args.preset, "parameters": config.num_params(), "batch": args.batch, "seq_len": args.seq_len,
        "steps_per_round": args.steps, "rounds": args.rounds, "seconds": timed,
        "tokens_per_second": rate, "ratio_ours_over_torch": statistics.median(ratios), "ratio_per_round": ratios,
        "goal_ratio": goal_ratio, "flops_per_token": fpt, "cpu_matmul_peak_flops": peak, "peak_per_round": peaks,
        "mfu_ours": mfu, "mfu_ours_per_round": mfus, "mfu_torch": statistics.median(mfus_torch),
        "goal_mfu": goal_mfu,
        "machine": cond.finish(args.settle),
    }
    mfu_goal = f" (goal {100 * goal_mfu:.0f}%)" if goal_mfu else ""
    print(f"ours {rate['ours']:,.0f} tokens/s, torch {rate['torch']:,.0f} tokens/s (medians), ratio "
          f"{result['ratio_ours_over_torch']:.2f}x (goal {goal_ratio}x); MFU {100 * mfu:.1f}% of the measured "
          f"{peak / 1e9:.0f} GFLOP/s{mfu_goal}")
    print(cond.headline(f"{args.preset} training tokens/s, ours / torch", result["ratio_ours_over_torch"]))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

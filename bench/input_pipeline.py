"""Input pipeline throughput on one CPU core vs the training consumption of the CPU-size model.

    python -m bench.input_pipeline [--vocabulary phi] [--seq_len 512] [--batch 8] [--seconds 20]
                                   [--data_root DIR] [--wait_quiet 0] [--settle 150] [--out input_pipeline.json]

1. The pipeline (``textbooks.inputs.pipeline.make_train_iterator`` on the ``phi1`` mixture, stream-packed rows,
   the chosen vocabulary) runs in a child process pinned to one core, with TensorFlow limited to one thread
   per pool; its rate is real (loss-weighted) tokens per second after a warm-up.
2. The model's consumption is measured in this process on all cores: a jitted forward + backward + AdamW
   update of ``CausalLM`` (preset ``phi-cpu-7m``) on batches of the same shape
   (:func:`measure_model_consumption`; point it at the trainer's step to measure the trainer itself).

The ratio pipeline / model is what matters (goal: >= 20x, so one input core never starves training); both
numbers come from the same run on the same machine. Without ``--data_root`` the corpus is real code: the
CPython standard library's ``.py`` files, as whole files (``code_filtered``) and as short excerpts
(``code_textbooks``).

The two measurements form one round of :mod:`bench.machine`, which records the date, the CPU model, the load
average before and after (``--wait_quiet``, ``--settle``) and the cores other processes kept busy meanwhile
(the pipeline's child process counts as ours). The last line is the headline ratio, marked
``NOT A HEADLINE`` when the machine was busy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import time

try:
    from bench import machine
except ImportError:  # run as a script: python bench/input_pipeline.py
    import machine

GOAL = 20.0


def write_stdlib_corpus(root: str, max_files: int = 400) -> str:
    """Role folders ``code_filtered`` and ``code_textbooks`` made of CPython stdlib sources."""
    from textbooks.data import records
    from textbooks.data.manifest import Manifest, write_manifest

    stdlib = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests", "idlelib"))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    files = files[:max_files]
    texts = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append((os.path.relpath(path, stdlib), f.read()))
    for role, docs in (("code_filtered", texts),
                       ("code_textbooks", [(f"{n}#{i}", t[i:i + 1500]) for n, t in texts
                                           for i in range(0, min(len(t), 6000), 1500)])):
        directory = os.path.join(root, role)
        splits = {}
        for split, part in (("train", docs[: int(0.9 * len(docs))]), ("validation", docs[int(0.9 * len(docs)):])):
            with records.ShardWriter(directory, split, num_shards=4 if split == "train" else 1) as w:
                for name, text in part:
                    w.write(records.Record(id=name, text=text, role=role, source="cpython-stdlib",
                                           license="PSF-2.0", split=split))
            splits[split] = w.stats
        write_manifest(directory, Manifest(role=role, splits=splits,
                                                           description="CPython stdlib sources (benchmark)"))
    return root


def measure_pipeline(data_root: str, vocabulary: str, seq_len: int, batch: int, seconds: float,
                     warmup_batches: int = 5) -> dict:
    """Real tokens per second of the training iterator (call in a process pinned to one core)."""
    os.environ["TEXTBOOKS_DATA_DIR"] = data_root
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from textbooks.inputs import pipeline

    it = pipeline.make_train_iterator("phi1", task_feature_lengths=seq_len, batch_size=batch, seed=0,
                                      vocabulary=vocabulary)
    for _ in range(warmup_batches):
        next(it)
    tokens = batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        b = next(it)
        tokens += int(b["decoder_loss_weights"].sum())
        batches += 1
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": tokens / elapsed, "batches": batches, "seconds": elapsed,
            "efficiency": tokens / (batches * batch * seq_len)}


def measure_model_consumption(seq_len: int, batch: int, steps: int = 5, preset: str = "phi-cpu-7m") -> dict:
    """Tokens per second a training step of ``preset`` consumes on this machine (all cores).

    A plain jitted forward + backward + AdamW update of :class:`textbooks.model.causal_lm.CausalLM`; replace
    the body with the trainer's compiled step to measure the trainer itself.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import linen as nn

    from textbooks.model import config as model_config
    from textbooks.model.causal_lm import CausalLM

    cfg = model_config.get_preset(preset)
    seq_len = min(seq_len, cfg.max_len)
    model = CausalLM(cfg)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(batch, seq_len)), jnp.int32)
    seg = jnp.ones_like(ids)
    pos = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), ids.shape)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids, segment_ids=seg, positions=pos))["params"]
    tx = optax.adamw(3e-4, weight_decay=0.1)
    opt_state = tx.init(params)

    def loss_fn(p):
        logits = model.apply({"params": p}, ids, segment_ids=seg, positions=pos)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

    @jax.jit
    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    params, opt_state, loss = step(params, opt_state)
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
    jax.block_until_ready(loss)
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": steps * batch * seq_len / elapsed, "steps": steps, "seconds": elapsed,
            "preset": preset, "seq_len": seq_len, "num_params": cfg.num_params()}


def _child(args) -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    result = measure_pipeline(args.data_root, args.vocabulary, args.seq_len, args.batch, args.seconds)
    print("RESULT " + json.dumps(result))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocabulary", default="phi")
    parser.add_argument("--seq_len", type=int, default=512, help="row length (the phi-cpu-7m context is 512)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model_steps", type=int, default=5)
    parser.add_argument("--data_root", help="role folders to read (default: a CPython stdlib corpus)")
    parser.add_argument("--out", default="input_pipeline.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    machine.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    cond = machine.Conditions(args.wait_quiet)  # before this process loads the machine itself
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    tmp = None
    if not args.data_root:
        tmp = tempfile.TemporaryDirectory()
        args.data_root = write_stdlib_corpus(tmp.name)
    cmd = [sys.executable, "-m", "bench.input_pipeline", "--child", "--data_root", args.data_root,
           "--vocabulary", args.vocabulary, "--seq_len", str(args.seq_len), "--batch", str(args.batch),
           "--seconds", str(args.seconds)]
    with cond.round():
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"pipeline measurement failed (exit {proc.returncode})")
        pipe = json.loads(lines[-1][len("RESULT "):])
        model = measure_model_consumption(args.seq_len, args.batch, steps=args.model_steps)
    ratio = pipe["tokens_per_s"] / model["tokens_per_s"]
    result = {"pipeline_one_core": pipe, "model_all_cores": model, "ratio": ratio, "goal": GOAL,
              "meets_goal": ratio >= GOAL, "vocabulary": args.vocabulary, "seq_len": args.seq_len,
              "batch": args.batch, "mixture": "phi1",
              "machine": {**cond.finish(args.settle), "python": platform.python_version()}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"input pipeline (1 core, {args.vocabulary}): {pipe['tokens_per_s']:,.0f} tokens/s "
          f"(packing efficiency {pipe['efficiency']:.3f})")
    print(f"model {model['preset']} training step (all cores): {model['tokens_per_s']:,.0f} tokens/s")
    print(f"ratio {ratio:.1f}x (goal >= {GOAL:.0f}x) -> {args.out}")
    if tmp is not None:
        tmp.cleanup()
    print(cond.headline(f"input pipeline tokens/s on one core ({args.vocabulary}) / {model['preset']} training "
                        "consumption", ratio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The decode benchmarks: the memory-traffic figure equals what the model's parameters and KV cache hold, and the
decode-step benchmark runs its variants to the same tokens."""

import json

import os
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from bench import decode_step, serve_throughput  # noqa: E402


@pytest.mark.parametrize("preset,tied", [("phi-cpu-1m", False), ("llama-cpu-1m", False), ("llama-cpu-1m", True)])
def test_bytes_per_step_counts_weights_and_the_cache_filled_so_far(preset, tied):
    from textbooks.model import decode
    from textbooks.model.config import get_preset
    from textbooks.model.causal_lm import init_params

    config = get_preset(preset).replace(vocab_size=1000, tie_word_embeddings=tied)  # llama: 2 KV heads of 4
    batch, prompt, new = 4, 10, 6
    requests = [([5] * prompt, new)] * batch
    params = init_params(config, 0)
    # A step gathers one row per token from an untied embedding table; a tied one is the LM head, read whole.
    weights = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                  if tied or "embed_tokens" not in jax.tree_util.keystr(path))
    cache = decode.init_cache(config, batch, 64)
    per_slot = sum(x.size for x in jax.tree.leaves(cache) if x.ndim >= 4) / 64  # keys and values, all layers
    mean_filled = np.mean([prompt + i for i in range(new)])  # step i attends over prompt + i cached positions
    assert serve_throughput.bytes_per_step(config, requests) == pytest.approx(4 * (weights + per_slot * mean_filled))


def test_decode_step_benchmark_compares_the_variants_on_the_same_tokens(tmp_path, capsys):
    from textbooks.model import cpu_kernels

    if not cpu_kernels.status().ok:
        pytest.skip(f"CPU decode kernels unavailable: {cpu_kernels.status().reason}")
    out = tmp_path / "decode_step.json"
    assert decode_step.main(["--preset", "phi-cpu-1m", "--vocab_size", "300", "--batch", "3", "--prompt", "5",
                             "--new", "6", "--rounds", "2", "--settle", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"xla", "attention kernel", "both, unpacked", "both kernels"}
    for v in result["variants"].values():
        assert v["same_tokens_as_xla"] == "3/3" and len(v["ms_per_step_rounds"]) == 2 and v["ms_per_step"] > 0
    # Each round of the variants is one round of the machine record; the last line is the headline, marked
    # when the machine was busy.
    record = result["machine"]
    assert len(record["rounds"]) == 2 and isinstance(record["quiet"], bool) and record["load_average_after"] >= 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("phi-cpu-1m decode ms/step, XLA ops / both kernels: ")
    assert record["date"] in last and record["cpu_model"] in last
    assert ("NOT A HEADLINE" in last) is (not record["quiet"])

"""usage.completion_tokens of a completion cut by a stop string counts the tokens kept (those that spell the
returned text), not the tokens decoded past the stop (the rest of a chunk, or max_tokens); the client's and the
generation runner's token and cost totals follow it."""

import asyncio
import importlib.util
import json
import os
import urllib.request

import pytest
import torch
import transformers

from textbooks.serve import client as client_lib
from textbooks.serve.answers import Usage
from textbooks.synth import completions
from textbooks.progress import Progress
from textbooks.synth.prompts import PromptSpec

PROMPT = "def read_config(path):\n    \"\"\"Reads the settings file.\"\"\"\n"
MAX_TOKENS = 40
CHUNK = 16  # the `served` fixture's --chunk_tokens


def _serve_conftest():
    """This folder's conftest (server start and stop), loaded by path: several test folders have a conftest."""
    spec = importlib.util.spec_from_file_location("serve_conftest", os.path.join(os.path.dirname(__file__),
                                                                                 "conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference(served):
    """transformers' greedy continuation of PROMPT (the token ids), and a stop string that cuts it after
    ``kept`` tokens: the text of the first ``kept`` tokens is returned, the stop string starts right after it."""
    model = transformers.PhiForCausalLM.from_pretrained(served["dir"]).eval()
    sp = served["processor"]
    prompt_ids = sp.encode(PROMPT)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=MAX_TOKENS, do_sample=False, num_beams=1,
                             eos_token_id=sp.eos_id(), pad_token_id=0)
    ids = out[0, len(prompt_ids):].tolist()
    if sp.eos_id() in ids:
        ids = ids[:ids.index(sp.eos_id())]
    full = sp.decode(ids)
    for kept in range(3, len(ids) - 2):
        if kept % CHUNK == 0:  # a cut at a chunk's end would not tell kept tokens from decoded ones
            continue
        text = sp.decode(ids[:kept])
        stop = full[len(text):len(text) + 4]
        if (full.startswith(text) and sp.decode(ids[:kept - 1]) != text and len(stop) == 4 and stop.strip()
                and full.find(stop) == len(text)):
            return {"prompt_ids": prompt_ids, "ids": ids, "kept": kept, "text": text, "stop": stop}
    pytest.fail(f"no usable stop string in the greedy text {full!r}")


def _complete(url, **body):
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps({"model": "phi-tiny", **body}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


def _check_cut(out, ref):
    assert out["choices"][0]["text"] == ref["text"] and out["choices"][0]["finish_reason"] == "stop"
    p, k = len(ref["prompt_ids"]), ref["kept"]
    assert out["usage"] == {"prompt_tokens": p, "completion_tokens": k, "total_tokens": p + k}


def test_continuous_batching_counts_the_kept_tokens(served, reference):
    # Decoded in 16-token chunks: before the fix the count was the chunks' tokens (16, 32 or 40).
    out = _complete(served["url"], prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stop=[reference["stop"]])
    _check_cut(out, reference)


def test_static_batches_count_the_kept_tokens_not_max_tokens(tiny_checkpoint, reference):
    servers = _serve_conftest()
    proc, url = servers.start_server(tiny_checkpoint, "--max_batch_size", "2", "--chunk_tokens", "0",
                                     "--min_length_bucket", "128")
    try:
        out = _complete(url, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stop=[reference["stop"]])
    finally:
        servers.stop_server(proc)
    _check_cut(out, reference)


def test_client_and_runner_totals_follow_the_kept_tokens(served, reference, tmp_path):
    pricing = client_lib.Pricing(prompt_per_1k=1.0, completion_per_1k=3.0)
    p, k = len(reference["prompt_ids"]), reference["kept"]
    sampling = {"max_tokens": MAX_TOKENS, "temperature": 0, "stop": [reference["stop"]]}
    specs = [PromptSpec(id=f"p{i}", template_id="t", role="synthetic_textbooks", format="completion",
                        sampling=sampling, prompt=PROMPT) for i in range(3)]
    completions.write_manifest(str(tmp_path), specs, {"test": True})

    async def go():
        async with client_lib.OpenAIClient(served["url"], "phi-tiny", api_key_env=None, pricing=pricing,
                                           timeout=300) as plain, \
                client_lib.OpenAIClient(served["url"], "phi-tiny", api_key_env=None, pricing=pricing, stream=True,
                                        timeout=300) as streaming:
            streamed = await streaming.complete(PROMPT, **sampling)
            progress = Progress(len(specs), stream=None)
            result = await completions.execute(str(tmp_path), plain, progress=progress)
            return streamed, streaming.stats, result, progress

    streamed, stream_stats, result, progress = asyncio.run(go())
    # Streaming: the text arrives in pieces and the final usage event has the same count.
    assert streamed.text == reference["text"] and streamed.usage == Usage(p, k)
    assert stream_stats.usage == Usage(p, k)
    assert stream_stats.cost == pytest.approx((p * 1.0 + k * 3.0) / 1000)
    # The generation runner: per-record usage, client totals and the progress summary.
    assert result.completed == 3 and result.failed == 0
    records = list(completions.collect_outputs(str(tmp_path)).values())
    assert [r["usage"] for r in records] == [{"prompt_tokens": p, "completion_tokens": k, "total_tokens": p + k}] * 3
    assert result.client_stats["usage"] == {"prompt_tokens": 3 * p, "completion_tokens": 3 * k,
                                            "total_tokens": 3 * (p + k)}
    assert result.client_stats["cost"] == pytest.approx(3 * (p * 1.0 + k * 3.0) / 1000)
    assert (progress.counts["prompt_tokens"], progress.counts["completion_tokens"]) == (3 * p, 3 * k)
    assert progress.counts["cost"] == pytest.approx(3 * (p * 1.0 + k * 3.0) / 1000)

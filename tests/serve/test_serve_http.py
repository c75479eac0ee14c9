"""`textbooks serve` on a CPU-size checkpoint: OpenAI responses checked against transformers, batching,
streaming, request validation; and a full generation run against it (topics -> prompts -> shards -> seqio)."""

import asyncio
import json
import os
import urllib.error
import urllib.request

import pytest

from textbooks.data import records
from textbooks.data.manifest import read_manifest
from textbooks.serve import client as client_lib
from textbooks.synth import generate as generate_lib
from textbooks.synth import postprocess

PROMPT = "def read_config(path):\n    \"\"\"Reads the settings file.\"\"\"\n"


def _request(url, path, body=None, *, raw=None, method=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _complete(url, **body):
    status, text = _request(url, "/v1/completions", {"model": "phi-tiny", **body})
    assert status == 200, text
    return json.loads(text)


@pytest.fixture(scope="module")
def hf_greedy(served):
    """Greedy continuation of PROMPT by transformers' PhiForCausalLM on the same weights (the reference)."""
    import torch
    import transformers
    model = transformers.PhiForCausalLM.from_pretrained(served["dir"]).eval()
    ids = served["processor"].encode(PROMPT)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, num_beams=1,
                             eos_token_id=served["processor"].eos_id(), pad_token_id=0)
    new = out[0, len(ids):].tolist()
    return ids, [t for t in new if t != served["processor"].eos_id()]


def test_models_and_health(served):
    status, text = _request(served["url"], "/v1/models")
    assert status == 200
    data = json.loads(text)["data"]
    assert data[0]["id"] == "phi-tiny" and data[0]["max_model_len"] == served["config"].max_len
    status, text = _request(served["url"], "/health")
    assert status == 200
    from textbooks.model import cpu_kernels

    # The server decodes with the compiled attention kernel wherever it can be built.
    assert json.loads(text)["kernels"] == ("cpu_kernel" if cpu_kernels.status().ok else "xla")


def test_greedy_completion_matches_transformers(served, hf_greedy):
    prompt_ids, reference = hf_greedy
    out = _complete(served["url"], prompt=PROMPT, max_tokens=40, temperature=0)
    choice = out["choices"][0]
    assert choice["text"] == served["processor"].decode(reference)
    # 40 tokens in three 16-token chunks: chunked decoding re-reads its own output correctly.
    assert out["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": len(reference),
                            "total_tokens": len(prompt_ids) + len(reference)}
    assert choice["finish_reason"] == ("length" if len(reference) == 40 else "stop")
    assert out["object"] == "text_completion" and out["model"] == "phi-tiny"
    # Token-id prompts give the same answer.
    assert _complete(served["url"], prompt=prompt_ids, max_tokens=40, temperature=0)["choices"][0]["text"] == \
        choice["text"]


def _stop_string(text: str, width: int = 3) -> str:
    """The non-blank ``width``-character piece of ``text`` whose first occurrence is nearest its middle (the
    earliest such piece on a tie); in a text that only repeats itself that may be at 0 (an empty completion)."""
    starts = sorted({text.find(text[i:i + width]) for i in range(len(text) - width + 1)
                     if text[i:i + width].strip()})
    assert starts, f"the greedy continuation {text!r} has no non-blank {width}-character piece"
    start = min(starts, key=lambda i: abs(i - len(text) // 2))
    return text[start:start + width]


def test_stop_strings(served, hf_greedy):
    full = served["processor"].decode(hf_greedy[1])
    stop = _stop_string(full)
    out = _complete(served["url"], prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "\x00never"])
    assert out["choices"][0]["text"] == full[:full.find(stop)]
    assert out["choices"][0]["finish_reason"] == "stop"


async def _stream_and_batch(url):
    sampling = dict(max_tokens=24, temperature=0.9, top_p=0.95)
    async with client_lib.OpenAIClient(url, "phi-tiny", api_key_env=None, concurrency=8, timeout=300) as plain, \
            client_lib.OpenAIClient(url, "phi-tiny", api_key_env=None, stream=True, timeout=300) as streaming:
        alone = await plain.complete(PROMPT, seed=11, **sampling)
        together = await asyncio.gather(*[plain.complete(PROMPT + str(i), seed=i, **sampling) for i in range(6)],
                                        plain.complete(PROMPT, seed=11, **sampling))
        streamed = await streaming.complete(PROMPT, seed=11, **sampling)
        chat = await plain.chat([{"role": "user", "content": "Explain variables."}], seed=5, **sampling)
        chat_streamed = await streaming.chat([{"role": "user", "content": "Explain variables."}], seed=5, **sampling)
        return alone, together, streamed, chat, chat_streamed


def test_sampling_is_seeded_batching_and_streaming_invariant(served):
    alone, together, streamed, chat, chat_streamed = asyncio.run(_stream_and_batch(served["url"]))
    assert together[-1].text == alone.text  # batched with 6 others: same text for the same seed
    assert streamed.text == alone.text and streamed.usage == alone.usage  # SSE deltas add up to the same text
    assert len({r.text for r in together}) > 3
    assert chat_streamed.text == chat.text and "\nUser:" not in chat.text
    assert alone.usage.completion_tokens <= 24


@pytest.mark.parametrize("raw,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"prompt": "x", "max_tokens": 4, "frobnicate": True}), 400, "unknown field(s): frobnicate"),
    (json.dumps({"prompt": "x", "max_tokens": -3}), 400, "'max_tokens' must be an integer >= 1"),
    (json.dumps({"prompt": "x", "max_tokens": 0}), 400, "'max_tokens' must be an integer >= 1"),
    (json.dumps({"prompt": "x", "max_tokens": "10"}), 400, "'max_tokens' must be integer or null"),
    (json.dumps({"prompt": "x", "temperature": True}), 400, "'temperature' must be"),
    (json.dumps({"prompt": "x", "temperature": 3}), 400, "'temperature' must be between 0 and 2"),
    (json.dumps({"prompt": 42}), 400, "'prompt' must be"),
    (json.dumps({"prompt": "x", "n": 2}), 400, "'n' must be 1"),
    (json.dumps({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), 400, "at most 4"),
    (json.dumps({"max_tokens": 4}), 400, "missing required field 'prompt'"),
    (json.dumps({"prompt": "word " * 400, "max_tokens": 4}), 400, "maximum context length is 256 tokens"),
    (json.dumps({"prompt": "x", "max_tokens": 300}), 400, "maximum context length is 256 tokens"),
    (json.dumps({"prompt": "x", "model": "gpt-4"}), 404, "the model 'gpt-4' does not exist"),
    (json.dumps({"prompt": [99999999]}), 400, "token ids must be in"),
    (json.dumps({"prompt": "x" * 20000}), 400, "maximum context length is 256 tokens"),
])
def test_bad_completion_requests(served, raw, status, needle):
    got, text = _request(served["url"], "/v1/completions", raw=raw.encode() if isinstance(raw, str) else raw)
    assert got == status, text
    err = json.loads(text)["error"]
    assert needle in err["message"] and err["type"]
    assert served["proc"].poll() is None


def test_bad_chat_and_route_requests_then_still_serving(served):
    cases = [
        ({"messages": []}, 400, "non-empty array"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role must be one of"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content must be a string"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "'tools' must be"),
    ]
    for body, status, needle in cases:
        got, text = _request(served["url"], "/v1/chat/completions", body)
        assert got == status and needle in json.loads(text)["error"]["message"], text
    got, text = _request(served["url"], "/v1/nothing", {"x": 1})
    assert got == 404 and "no route" in json.loads(text)["error"]["message"]
    got, text = _request(served["url"], "/v1/completions", method="GET")
    assert got == 405 and json.loads(text)["error"]
    got, text = _request(served["url"], "/v1/completions", raw=b'{"prompt": "' + b"a" * (5 << 20) + b'"}')
    assert got == 413 and json.loads(text)["error"]["code"] == "request_entity_too_large"
    got, text = _request(served["url"], "/v1/completions", raw=b'{"prompt": "odd \\ud800 text", "max_tokens": 2}')
    assert got in (200, 400), text  # a lone surrogate: tokenized or refused, never a server error
    assert served["proc"].poll() is None
    out = _complete(served["url"], prompt="still here", max_tokens=4, temperature=0.5, seed=-7)
    assert out["usage"]["completion_tokens"] >= 1


def test_reset_prefix_cache_route(served):
    _complete(served["url"], prompt=PROMPT, max_tokens=2, temperature=0)  # leaves its beginning behind
    got, text = _request(served["url"], "/reset_prefix_cache", {})
    assert got == 200 and json.loads(text)["dropped"] >= 1, text
    got, text = _request(served["url"], "/reset_prefix_cache", {})
    assert got == 200 and json.loads(text) == {"dropped": 0}, text
    got, text = _request(served["url"], "/nothing", {})
    assert got == 404 and "POST /reset_prefix_cache" in json.loads(text)["error"]["message"]


TEMPLATES = """\
templates:
  - id: tiny.lesson
    role: synthetic_textbooks
    slots: {topic: subtopic, audience: audiences}
    prompt: "Lesson on {topic} for {audience}.\\n"
  - id: tiny.code
    role: code_textbooks
    format: chat
    slots: {topic: topic}
    prompt: "Teach {topic} with code."
"""


def test_generate_end_to_end_against_serve(served, tmp_path, monkeypatch):
    (tmp_path / "t.yaml").write_text(TEMPLATES)
    (tmp_path / "seeds.txt").write_text("Loops\nStrings\n")
    out = tmp_path / "run"
    result = generate_lib.generate(
            endpoint=served["url"], model="phi-tiny", templates=[str(tmp_path / "t.yaml")],
            topics_file=str(tmp_path / "seeds.txt"), topics_per_subject=2, subtopics_per_topic=0,
            topic_sampling={"max_tokens": 24, "temperature": 0.8}, output_dir=str(out), num_samples=8,
            sampling={"max_tokens": 32, "temperature": 0.8}, concurrency=4, stream=True, api_key_env=None,
            timeout=300, progress_interval=1000.0, stand_in="random-init phi-cpu-1m (test)",
            postprocess_config=postprocess.PostprocessConfig(min_chars=1, min_words=1,
                                                             decontamination_benchmarks=("humaneval",)))
    run = result["run"]
    assert run["completed"] == 8 and run["remaining"] == 0 and run["failed"] == 0
    assert run["client_stats"]["usage"]["completion_tokens"] > 0
    summary = result["finalize"]
    assert summary["postprocess"]["decontamination"]["status"] == "applied"
    kept = summary["postprocess"]["kept"]
    got = []
    for role in ("synthetic_textbooks", "code_textbooks"):
        if os.path.isdir(out / role):
            report = records.ReadReport()
            got += list(records.iter_records(str(out / role), on_error="raise", report=report))
            assert read_manifest(str(out / role)).stand_in == "random-init phi-cpu-1m (test)"
    assert len(got) == kept >= 1
    assert all(r.meta["teacher"] == "phi-tiny" and r.meta["usage"]["completion_tokens"] >= 1 for r in got)
    assert (out / "topics.jsonl").exists() and (out / "diversity.md").exists()
    # The mixtures' seqio task for the role reads the shards.
    import mixtures

    role = got[0].role
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(out))
    task = mixtures.get_role_task(role, "byte")
    examples = list(task.get_dataset({"targets": 4096}, split="train", shuffle=False).as_numpy_iterator())
    assert len(examples) == sum(r.role == role and r.split == "train" for r in got)

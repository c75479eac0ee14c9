"""The LLM judge: score parsing, a local OpenAI-compatible server, the Beam stage and judge-labeled training."""

import asyncio
import json
import os
import socket
import threading

import pytest
from aiohttp import web

import curate_testdata as td
from textbooks.curate import judge
from textbooks.curate.classifier import ClassifierConfig
from textbooks.curate.embeddings import EncoderSpec
from textbooks.curate.pipeline import curate
from textbooks.curate.training import train_classifier
from textbooks.data import records


@pytest.mark.parametrize("answer,score", [
    ("The extract is a clear tutorial.\nEducational score: 4", 4.0),
    ("Reasoning...\n**Educational Score:** **3**", 3.0),
    ("Total score: 2/5", 2.0),
    ("I would award 5 points to this extract.", 5.0),
    ("Points: +1 (basic info) +1 (relevant).\nFinal score: 2", 2.0),
    ("Score: 3 out of 5", 3.0),
    ("criterion 1 met, criterion 2 met\n\n3", 3.0),
    ("Educational score: 7", None),          # out of range
    ("I cannot grade this text.", None),
    ("", None),
])
def test_parse_score(answer, score):
    assert judge.parse_score(answer) == score


def test_rubrics_are_data_files_with_placeholder():
    for name in ("edu_web", "edu_code"):
        text = judge.load_rubric(name)
        assert "{document}" in text and "Educational score" in text
    prompt = judge.build_prompt("x" * 50, judge.load_rubric("edu_web"), max_chars=10)
    assert "xxxxxxxxxx\n[...]" in prompt and "{document}" not in prompt
    with pytest.raises(FileNotFoundError, match="edu_web"):
        judge.load_rubric("no_such_rubric")


def _answer(prompt: str) -> tuple[int, str]:
    """The fake teacher: documents marked LOW-VALUE get 1, GARBLED an answer without a score, REJECT-ME an
    HTTP 400, the rest 4."""
    doc = prompt.split("<extract>")[1].split("</extract>")[0] if "<extract>" in prompt else prompt
    if "REJECT-ME" in doc:
        return 400, json.dumps({"error": {"message": "content policy"}})
    if "GARBLED" in doc:
        return 200, "I am not sure what to say about this one."
    if "LOW-VALUE" in doc:
        return 200, "Mostly boilerplate with little to learn.\n**Educational score: 1**"
    return 200, "Coherent explanations of a technical topic.\nEducational score: 4"


@pytest.fixture(scope="module")
def server():
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that grades by simple rules; stopped after the tests."""
    seen = []

    async def chat(request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        seen.append(body)
        status, text = _answer(prompt)
        if status != 200:
            return web.Response(status=status, text=text, content_type="application/json")
        return web.json_response({"id": "x", "model": body["model"], "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 12,
                      "total_tokens": len(prompt.split()) + 12}})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{port}/v1", "seen": seen}
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _config(server, **kw):
    return judge.JudgeConfig(base_url=server["url"], model="teacher", api_key_env=None, max_retries=0, timeout=30,
                             **kw)


def test_judge_texts_against_local_server(server):
    good = td.textbook_like(1, seed=7)[0][1]
    texts = [good, "LOW-VALUE Click here!!! BEST PRICES", "GARBLED " + good, "REJECT-ME " + good]
    results = judge.judge_texts(texts, _config(server))
    assert [r.score for r in results] == [4.0, 1.0, None, None]
    assert results[2].error is None and "not sure" in results[2].answer
    assert results[3].error is not None and "400" in results[3].error
    sent = server["seen"][-1]
    assert sent["model"] == "teacher" and sent["temperature"] == 0.0 and "additive" not in sent  # fields as sent


def test_judge_stage_in_pipeline(server, tmp_path):
    docs = [(f"good{i}", t) for i, (_, t) in enumerate(td.textbook_like(4, seed=8))] + \
        [(f"noise{i}", "LOW-VALUE " + t) for i, (_, t) in enumerate(td.web_like_noise(3, seed=8))] + \
        [("garbled", "GARBLED text")]
    recs = [{"id": i, "text": t, "role": "web_raw", "source": i.rstrip("0123456789"), "license": "x",
             "split": "train", "meta": {}} for i, t in docs]
    records.write_shards(recs, tmp_path / "in", "train", 1)
    out = str(tmp_path / "out")
    report = curate(inputs=[str(tmp_path / "in")], role="web_filtered", output_dir=out, splits=("train",),
                    judge=_config(server, min_score=3.0), direct_running_mode="in_memory", direct_num_workers=1)
    assert report["reconciliation"]["balanced"]
    kept = {r.id: r for r in records.iter_records(out)}
    assert set(kept) == {f"good{i}" for i in range(4)}
    assert all(r.meta["scores"]["edu_judge"] == 4.0 and r.meta["labels"]["edu_judge"] == 4.0 for r in kept.values())
    judge_row = next(s for s in report["stages"] if s["stage"] == "judge")
    assert judge_row["dropped_by_reason"] == {"below_min_score": 3, "no_score": 1}
    assert judge_row["other"]["unparsed"] == 1 and judge_row["other"]["scored"] == 7
    assert report["histograms"][0]["name"] == "edu_judge" and report["histograms"][0]["n"] == 7


def test_train_classifier_from_judge_labels(server, tmp_path):
    docs = td.textbook_like(12, seed=9) + [(i, "LOW-VALUE " + t) for i, t in td.web_like_noise(12, seed=9)]
    recs = [{"id": f"d{i}", "text": t, "role": "web_raw", "source": "mix", "license": "x", "split": "train",
             "meta": {}} for i, (_, t) in enumerate(docs)]
    records.write_shards(recs, tmp_path / "pool", "train", 1)
    out = str(tmp_path / "clf")
    meta = train_classifier(output_dir=out, label_source="judge", inputs=[str(tmp_path / "pool")],
                            judge=_config(server), label_name="edu_judge", name="edu_judge_test",
                            encoder=EncoderSpec(max_length=64), config=ClassifierConfig(model="ridge", threshold=3.0),
                            max_docs_per_class=24)
    assert meta["label_source"] == "judge" and meta["judge_counts"] == {"sent": 24, "scored": 24, "unparsed": 0,
                                                                         "failed": 0}
    labels = {r.id: r.meta["labels"]["edu_judge"] for r in records.iter_records(os.path.join(out, "labels"))}
    assert sorted(set(labels.values())) == [1.0, 4.0]
    assert "f1" in meta["metrics"]["held_out"] and "mse" in meta["metrics"]["held_out"]

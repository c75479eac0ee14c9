"""Generation runs against a fault-injecting server: exactly-once outputs, SIGKILL + resume, cache, errors."""

import collections
import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fault_server import FaultServer, answer_text
from textbooks.data import records
from textbooks.data.manifest import read_manifest
from textbooks.synth import generate as generate_lib
from textbooks.synth import completions
from textbooks.synth.postprocess import PostprocessConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES = """\
templates:
  - id: test.lesson
    role: synthetic_textbooks
    slots: {topic: subtopic, audience: audiences, style: styles}
    prompt: "Write {style} on {topic} for {audience}."
  - id: test.code_lesson
    role: code_textbooks
    format: chat
    system: "You teach Python."
    slots: {topic: topic, audience: audiences}
    prompt: "Teach {topic} to {audience}."
"""
TOPICS = "\n".join(f"Subject {s} > Topic {s}.{t} > Sub {s}.{t}.{u}" for s in "ABC" for t in range(3) for u in range(3))


@pytest.fixture
def run_files(tmp_path):
    (tmp_path / "t.yaml").write_text(TEMPLATES)
    (tmp_path / "topics.txt").write_text(TOPICS + "\n")
    return {"templates": [str(tmp_path / "t.yaml")], "topics_file": str(tmp_path / "topics.txt")}


def _kwargs(run_files, url, out, **kw):
    base = dict(endpoint=url, model="teacher", output_dir=str(out), num_samples=60, concurrency=4, timeout=0.5,
                max_retries=30, backoff_base=0.01, backoff_max=0.1, api_key_env=None, client_seed=0,
                progress_interval=1000.0, postprocess_config=PostprocessConfig(decontaminate=False), **run_files)
    base.update(kw)
    return base


def _shard_ids(out):
    ids = collections.Counter()
    texts = {}
    for role in ("synthetic_textbooks", "code_textbooks"):
        if os.path.isdir(out / role):
            for rec in records.iter_records(str(out / role), on_error="raise"):
                ids[rec.meta["prompt_id"]] += 1
                texts[rec.meta["prompt_id"]] = rec
    return ids, texts


def _part_lines(out):
    return [json.loads(line) for p in sorted(glob.glob(str(out / "parts" / "*.jsonl")))
            for line in open(p, "rb") if line.endswith(b"\n")]


def test_faults_every_prompt_completes_exactly_once(run_files, tmp_path):
    out = tmp_path / "run"
    with FaultServer(seed=1, fault_rate=0.35, hang_s=1.5) as server:
        result = generate_lib.generate(**_kwargs(run_files, server.url, out))
    assert result["run"]["completed"] == 60 and result["run"]["failed"] == 0 and result["run"]["remaining"] == 0
    assert all(server.injected[f] > 0 for f in ("500", "503", "429", "hang", "malformed", "truncated"))
    assert result["run"]["client_stats"]["retries"] == sum(v for k, v in server.injected.items() if k != "ok")
    specs = completions.load_manifest(str(out))
    ids, recs = _shard_ids(out)
    assert set(ids) == {s.id for s in specs} and set(ids.values()) == {1}
    by_id = {s.id: s for s in specs}
    for pid, rec in recs.items():
        spec = by_id[pid]
        prompt = spec.prompt if spec.format == "completion" else spec.messages[-1]["content"]
        assert rec.text == answer_text(prompt, spec.sampling["seed"])  # the answer to this prompt, not another's
        assert rec.role == spec.role and rec.meta["template_id"] == spec.template_id
        assert rec.meta["slots"] == spec.meta["slots"] and rec.meta["sampling"]["seed"] == spec.sampling["seed"]
        assert rec.source == "synth:teacher" and rec.split in ("train", "validation")
    for role in ("synthetic_textbooks", "code_textbooks"):
        manifest = read_manifest(str(out / role))
        assert set(manifest.splits) == {"train", "validation"} and manifest.meta["teacher"] == "teacher"
    report = json.load(open(out / "diversity.json"))
    assert report["num_docs"] == 60 and report["distinct"]["templates"] == 2
    assert os.path.exists(out / "diversity.md") and os.path.exists(out / "diversity.png")


def _gin_file(tmp_path, run_files, url, out, n):
    text = textwrap.dedent(f"""\
        generate.endpoint = '{url}'
        generate.model = 'teacher'
        generate.templates = {run_files['templates']!r}
        generate.topics_file = '{run_files['topics_file']}'
        generate.output_dir = '{out}'
        generate.num_samples = {n}
        generate.concurrency = 4
        generate.timeout = 0.5
        generate.max_retries = 30
        generate.backoff_base = 0.01
        generate.backoff_max = 0.1
        generate.api_key_env = None
        generate.progress_interval = 0.2
        """)
    path = tmp_path / "run.gin"
    path.write_text(text)
    return str(path)


def test_sigkill_midway_then_resume(run_files, tmp_path):
    out = tmp_path / "run"
    n = 80
    with FaultServer(seed=2, fault_rate=0.2, hang_s=1.0, delay_s=0.05) as server:
        gin_file = _gin_file(tmp_path, run_files, server.url, out, n)
        env = {**os.environ, "PYTHONPATH": REPO}
        proc = subprocess.Popen([sys.executable, "-m", "textbooks.cli", "generate", f"--gin_file={gin_file}"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(_part_lines(out)) < 20 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        done_at_kill = len(_part_lines(out))
        assert 20 <= done_at_kill < n, err.decode()[-2000:]
        assert not os.path.isdir(out / "synthetic_textbooks")  # killed before finalizing
        # A crash in the middle of a write leaves a torn last line: simulate one on top of the kill.
        newest = max(glob.glob(str(out / "parts" / "*.jsonl")), key=os.path.getmtime)
        with open(newest, "ab") as f:
            f.write(b'{"prompt_id": "torn-lin')
        done_ids = {x["prompt_id"] for x in _part_lines(out)}
        first_request = len(server.bodies)
        # Rerun the same command (resume), without decontamination to keep the test short.
        rerun = subprocess.run([sys.executable, "-m", "textbooks.cli", "generate", f"--gin_file={gin_file}",
                                "--gin.generate.postprocess_config=@PostprocessConfig()",
                                "--gin.PostprocessConfig.decontaminate=False"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        asked_again = {(b.get("prompt") or b["messages"][-1]["content"], b["seed"])
                       for b in server.bodies[first_request:]}
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{n - done_at_kill} completions (0 from cache)" in rerun.stderr
    assert f"{done_at_kill} were done before; 0 failed; 0 remain" in rerun.stderr
    assert "generate.num_samples = 80" in (out / "config.gin").read_text()
    summary = json.loads((out / "summary.json").read_text())
    specs = completions.load_manifest(str(out))
    done_keys = {(s.prompt or s.messages[-1]["content"], s.sampling["seed"]) for s in specs if s.id in done_ids}
    assert not done_keys & asked_again  # nothing done before the kill was asked for (and paid for) again
    lines = _part_lines(out)
    assert len(lines) == n and len({x["prompt_id"] for x in lines}) == n  # no duplicates, nothing lost
    assert summary["part_files"] == {"torn_lines": 1} and summary["missing"] == 0
    ids, _ = _shard_ids(out)
    assert len(ids) == n and set(ids.values()) == {1}
    assert set(ids) == {s.id for s in completions.load_manifest(str(out))}


def test_cache_avoids_paying_twice_and_rerun_is_a_no_op(run_files, tmp_path):
    out = tmp_path / "run"
    with FaultServer() as server:
        first = generate_lib.generate(**_kwargs(run_files, server.url, out, num_samples=12))
        assert server.requests == 12
        again = generate_lib.generate(**_kwargs(run_files, server.url, out, num_samples=12))
        assert server.requests == 12 and again["run"]["done_before"] == 12 and again["run"]["completed"] == 0
        for p in glob.glob(str(out / "parts" / "*")):  # lose the outputs, keep the cache
            os.remove(p)
        third = generate_lib.generate(**_kwargs(run_files, server.url, out, num_samples=12))
        assert server.requests == 12 and third["run"]["cached"] == 12
    assert first["finalize"]["postprocess"]["kept"] == third["finalize"]["postprocess"]["kept"] == 12


def test_changed_config_is_refused(run_files, tmp_path):
    out = tmp_path / "run"
    with FaultServer() as server:
        generate_lib.generate(**_kwargs(run_files, server.url, out, num_samples=5))
        with pytest.raises(completions.RunError, match="lists 5 prompts but this configuration gives 6"):
            generate_lib.generate(**_kwargs(run_files, server.url, out, num_samples=6))


def test_locked_run_is_refused(run_files, tmp_path):
    out = tmp_path / "run"
    with FaultServer() as server:
        generate_lib.generate(**_kwargs(run_files, server.url, out, num_samples=3, finalize=False))
        with completions.run_lock(str(out)):
            with pytest.raises(completions.RunError, match=f"pid {os.getpid()}.* is working on"):
                generate_lib.generate(**_kwargs(run_files, server.url, out, num_samples=3))


def test_fatal_and_per_prompt_client_errors(run_files, tmp_path):
    with FaultServer(script=["404"]) as server:
        with pytest.raises(completions.RunError, match="refused the run: HTTP 404 .*model 'teacher' not found"):
            generate_lib.generate(**_kwargs(run_files, server.url, tmp_path / "a", num_samples=4, concurrency=1))
    # A 400 fails one prompt (recorded, retried by the next run); the others complete.
    with FaultServer(script=["400"]) as server:
        result = generate_lib.generate(**_kwargs(run_files, server.url, tmp_path / "b", num_samples=4,
                                                 concurrency=1))
        assert result["run"]["failed"] == 1 and result["run"]["remaining"] == 1
        failures = [json.loads(x) for x in open(tmp_path / "b" / "failures.jsonl")]
        assert failures[0]["kind"] == "http_400" and "rejected by policy" in failures[0]["error"]
        result = generate_lib.generate(**_kwargs(run_files, server.url, tmp_path / "b", num_samples=4))
        assert result["run"]["completed"] == 1 and result["run"]["remaining"] == 0
    # Everything failing aborts the run instead of grinding through it.
    with FaultServer(script=["400"] * 100) as server:
        with pytest.raises(completions.RunError, match="prompts failed"):
            generate_lib.generate(**_kwargs(run_files, server.url, tmp_path / "c", num_samples=40))
        assert server.requests < 40


def test_unreachable_endpoint_is_a_clear_error(run_files, tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONPATH": REPO}
    gin_file = _gin_file(tmp_path, run_files, f"http://127.0.0.1:{port}/v1", tmp_path / "run", 3)
    proc = subprocess.run([sys.executable, "-m", "textbooks.cli", "generate", f"--gin_file={gin_file}",
                           "--gin.generate.max_retries=2"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert re.search(f"error: cannot reach http://127.0.0.1:{port}/v1/(chat/)?completions after 3 attempts", proc.stderr)


def test_web_seeded_run_reads_extracts_from_shards(tmp_path):
    web = tmp_path / "web_filtered"
    docs = [records.Record(id=f"web-{i}", text=(f"Document {i} explains tides and the moon. " * 30), role="web_filtered",
                           source="owt", license="unknown", split="train") for i in range(5)]
    docs.append(records.Record(id="web-short", text="Too short.", role="web_filtered", source="owt",
                               license="unknown", split="train"))
    records.write_shards(docs, str(web), "train", num_shards=2)
    out = tmp_path / "run"
    with FaultServer(answer_words=150) as server:  # the template asks for at least 500 characters
        result = generate_lib.generate(endpoint=server.url, model="teacher", templates=["web_seeded"], topics_file=None,
                                       seed_shards=str(web / "train-*.jsonl.gz"), seed_max_chars=300,
                                       output_dir=str(out), num_samples=10, api_key_env=None,
                                       progress_interval=1000.0,
                                       postprocess_config=PostprocessConfig(decontaminate=False))
    assert result["run"]["completed"] == 10
    specs = completions.load_manifest(str(out))
    used = {s.meta["seed_text_id"] for s in specs}
    assert used == {f"web-{i}" for i in range(5)}  # every long document, the short one never
    for s in specs:
        extract = s.prompt.split('"')[1]
        assert len(extract) <= 300 and extract.startswith(f"Document {s.meta['seed_text_id'][4:]} explains")
    ids, recs = _shard_ids(out)
    assert len(ids) == 10 and all(r.meta["seed_text_id"].startswith("web-") for r in recs.values())

"""`textbooks demo` end to end at micro size, run as a user runs it (a subprocess with gin bindings and
``--teacher`` pointing at a scripted teacher on 127.0.0.1): every stage (corpora, curation, teacher, three
trainings, evaluation, samples, report) runs, and the report holds the teacher's roles in place of the
stand-ins, the realized mixture proportions within one packed row of the paper's request, the common held-out
set scored on identical documents for every variant, every variant's benchmark table, the samples and the
curation reconciliation, each checked against the files the stages wrote."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
from scripted_teacher import MODEL, FaultServer, ScriptedTeacher

from textbooks import demo, demo_teacher
from textbooks.data import records
from textbooks.data.manifest import read_manifest
from textbooks.train.metrics import read_jsonl

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS, BATCH, SEQ_LEN = 6, 4, 128
EVAL_TASKS = ("arc_easy", "piqa")
EVAL_LIMIT = 4
MAX_DOCS = 120
# The micro size, as `--gin.DemoConfig.X=Y` flags (gin values: strings quoted).
MICRO = {"preset": "'phi-cpu-1m'", "steps": STEPS, "batch_size": BATCH, "seq_len": SEQ_LEN, "eval_every": STEPS,
         "eval_batches": 2, "eval_tasks": repr(",".join(EVAL_TASKS)), "eval_limit": EVAL_LIMIT,
         "classifier_docs": 16, "classifier_max_length": 64, "curate_workers": 1, "corpora_max_docs": MAX_DOCS,
         "sample_tokens": 8, "heldout_docs": 6}
TEACHER = {"textbooks": 4, "code_textbooks": 3, "code_exercises": 4, "concurrency": 4}

# The papers' token fractions (phi-1.5 report: 80% synthetic + 20% phi-1 data, or 40/40/20 with web; phi-1's data
# is about 6B tokens of filtered code and under 1B of synthetic textbooks, split 6:1).
CODE = {"code_filtered": 0.2 * 6 / 7, "code_textbooks": 0.2 / 7}
PAPER = {"phi15": {"synthetic_textbooks": 0.8, **CODE},
         "phi15_web_only": {"web_filtered": 0.8, "code_filtered": 0.2},
         "phi15_web": {"web_filtered": 0.4, "synthetic_textbooks": 0.4, **CODE}}


def _num_docs(manifest_dir):
    with open(os.path.join(manifest_dir, "manifest.json")) as f:
        return sum(split["num_docs"] for split in json.load(f)["splits"].values())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Runs `textbooks demo --out OUT` at micro size; returns (out dir, report.json, report.md, seconds)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    env = dict(os.environ)
    # One CPU device (the test session's 8 simulated devices would not divide the batch), quick compiles and a
    # compilation cache shared by the three variants' identical programs.
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    with FaultServer(answer=ScriptedTeacher()) as teacher:
        cmd = [sys.executable, "-m", "textbooks.cli", "demo", "--out", str(out), "--teacher", teacher.url,
               "--teacher_model", MODEL, *[f"--gin.DemoConfig.{k}={v}" for k, v in MICRO.items()],
               *[f"--gin.TeacherConfig.{k}={v}" for k, v in TEACHER.items()]]
        load = os.getloadavg()[0]
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.monotonic() - start
    print(f"textbooks demo (micro) took {seconds:.0f} s; 1-minute load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for k in range(1, 7):
        assert f"=== [{k}/6]" in proc.stdout, f"stage {k} did not run:\n{proc.stdout[-3000:]}"
    with open(out / "report.json") as f:
        report = json.load(f)
    with open(out / "report.md") as f:
        markdown = f.read()
    return out, report, markdown, seconds


def test_every_variant_is_trained_on_its_micro_settings(demo_run):
    out, report, _, _ = demo_run
    assert report["config"]["steps"] == STEPS and report["config"]["preset"] == "phi-cpu-1m"
    assert set(report["runs"]) == {name for name, _, _ in demo.VARIANTS}
    for name, mixture, _ in demo.VARIANTS:
        run = report["runs"][name]
        assert run["mixture"] == mixture
        assert run["train"]["final_step"] == STEPS and run["train"]["stopped_by"] == "completed"
        # The trainer's per-component validation loss covers the common held-out set, whatever the mixture.
        assert set(report["component_loss"][name]) == set(demo.HELDOUT_ROLES)


def test_realized_proportions_are_within_one_row_of_the_request(demo_run):
    out, report, markdown, _ = demo_run
    rows = STEPS * BATCH
    for name, mixture, _ in demo.VARIANTS:
        got = report["proportions"][name]
        assert got["requested"] == pytest.approx(PAPER[mixture], rel=1e-12)
        # Every trained row is a full packed row of one role: the run trained rows x SEQ_LEN tokens, so one
        # row is 1 / rows of the total and each role's share is a whole number of rows.
        assert got["tokens"] == rows * SEQ_LEN
        assert set(got["realized"]) == set(PAPER[mixture])
        assert sum(got["realized"].values()) == pytest.approx(1.0, abs=1e-12)
        for role, share in got["realized"].items():
            assert share * rows == pytest.approx(round(share * rows), abs=1e-9), (name, role, share)
            # The stratified schedule keeps each role within one row of its share at every step.
            assert abs(share - PAPER[mixture][role]) <= 1 / rows + 1e-12, (name, role, share)
            assert f"| {name} | `{mixture}` | {role} | {PAPER[mixture][role]:.3f} | {share:.3f} |" in markdown
        # The report's figures are the run's own metrics (each step once).
        train = {r["step"]: r for r in read_jsonl(os.path.join(out, "runs", name, "metrics", "train.jsonl"))}
        assert sorted(train) == list(range(1, STEPS + 1))
        tokens = {role: sum(r.get(f"tokens/{role}", 0.0) for r in train.values()) for role in PAPER[mixture]}
        assert {role: t / (rows * SEQ_LEN) for role, t in tokens.items()} == pytest.approx(got["realized"])


def test_every_variant_has_its_benchmark_table(demo_run):
    out, report, markdown, _ = demo_run
    names = [name for name, _, _ in demo.VARIANTS]
    assert list(report["benchmarks"]) == names
    for name in names:
        with open(os.path.join(out, "eval", name, "results.json")) as f:
            results = json.load(f)
        assert sorted(report["benchmarks"][name]) == sorted(EVAL_TASKS)
        for task in EVAL_TASKS:
            entry = results["tasks"][task]
            assert "error" not in entry and entry["n"] == EVAL_LIMIT
            got = report["benchmarks"][name][task]
            assert got == {m: v["value"] for m, v in entry["metrics"].items()}
            assert {"acc", "acc_norm", "p_correct", "bpb"} <= set(got)
            assert 0.0 <= got["acc"] <= 1.0 and got["bpb"] > 0
    header = "| task | metric | " + " | ".join(names) + " |"
    assert header in markdown
    for task in EVAL_TASKS:
        for metric in ("acc", "bpb"):
            row = next((line for line in markdown.splitlines() if line.startswith(f"| {task} | {metric} |")), None)
            assert row is not None, f"no {task}/{metric} row in report.md"
            cells = row.strip("|").split("|")[2:]
            assert len(cells) == len(names) and all(c.strip() != "–" for c in cells), row
    assert "Failed tasks" not in markdown


def test_samples_of_every_variant_are_in_the_report(demo_run):
    _, report, markdown, _ = demo_run
    for name, _, _ in demo.VARIANTS:
        samples = report["runs"][name]["samples"]
        assert list(samples) == list(demo.SAMPLE_PROMPTS)
        assert f"### {name}" in markdown
        for prompt, text in samples.items():
            assert isinstance(text, str)
            assert "```\n" + prompt + text + "\n```" in markdown


def test_curation_reconciles_documents_in_with_kept_and_dropped_by_reason(demo_run):
    out, report, markdown, _ = demo_run
    rec = report["curation"]
    # Independent counts: the records of web_raw (curation's input) and of the web_filtered it wrote.
    documents_in = _num_docs(os.path.join(out, "data", "web_raw"))
    kept = _num_docs(os.path.join(out, "data", "web_filtered"))
    assert documents_in == MAX_DOCS
    assert (rec["documents_in"], rec["kept"]) == (documents_in, kept)
    assert 0 < kept < documents_in  # at micro size the heuristics still drop some web pages
    assert all(n > 0 and "/" in reason for reason, n in rec["dropped_by_reason"].items())
    assert documents_in == kept + sum(rec["dropped_by_reason"].values()) + sum(rec["rejected_by_reason"].values())
    assert rec["balanced"] is True
    line = next((x for x in markdown.splitlines() if x.startswith("Reconciliation:")), None)
    assert line is not None, "no reconciliation line in report.md"
    dropped = sum(rec["dropped_by_reason"].values())
    assert line.startswith(f"Reconciliation: documents in {documents_in} = kept {kept} + dropped {dropped} (")
    assert line.endswith(": balanced")
    for reason, n in rec["dropped_by_reason"].items():
        assert f"{reason} {n}" in line


def test_the_teachers_roles_replaced_the_stand_ins(demo_run):
    out, report, markdown, _ = demo_run
    assert report["data"]["status"] == "generated"
    sources = {row["role"]: row for row in report["data"]["sources"]}
    for role in demo_teacher.ROLES:
        manifest = read_manifest(os.path.join(out, "data", role))
        assert manifest.stand_in is None and manifest.meta["teacher"] == MODEL, role
        assert manifest.meta["generation"]["num_samples"] > 0
        assert sources[role]["stand_in"] is None and MODEL in sources[role]["holds"]
        shards = os.path.join(out, "data", role, "*.jsonl.gz")
        assert all(r.meta["teacher"] == MODEL for r in records.iter_records(shards))
    assert sources["web_filtered"]["stand_in"] and sources["code_filtered"]["stand_in"]  # named as stand-ins
    assert "STAGE FAILED" not in markdown and "## The teacher" in markdown


def test_every_variant_is_scored_on_identical_held_out_documents(demo_run):
    """The common held-out set: each role's validation documents (at most heldout_docs), fingerprinted here
    from the shard files independently of the demo, and equal to what every variant recorded."""
    out, report, markdown, _ = demo_run
    roles = report["heldout"]["roles"]
    assert sorted(roles) == sorted(demo.HELDOUT_ROLES)
    for role in roles:
        digest = hashlib.sha256()
        for n, rec in enumerate(records.iter_records(os.path.join(out, "data", role, "validation-*.jsonl.gz"))):
            if n < MICRO["heldout_docs"]:
                digest.update(hashlib.sha256(f"{rec.id}\0{rec.text}".encode("utf-8")).digest())
        for name, _, _ in demo.VARIANTS:
            with open(os.path.join(out, "eval", name, "heldout.json")) as f:
                scored = json.load(f)["roles"][role]
            assert scored["fingerprint"] == digest.hexdigest(), (name, role)
            assert scored["documents"] >= 1 and scored["bpb"] > 0
    assert all(report["heldout"]["identical"].values())
    assert "sha256 fingerprints equal): yes" in markdown
    # The trainer's periodic validation read the same batches for every variant: equal token counts per step.
    evals = {name: read_jsonl(os.path.join(out, "runs", name, "metrics", "eval.jsonl"))
             for name, _, _ in demo.VARIANTS}
    assert len({tuple((r["step"], r["tokens"]) for r in rows) for rows in evals.values()}) == 1

"""The demo's teacher stage against a scripted OpenAI-compatible teacher on 127.0.0.1 (tests/serve/fault_server.py):
answers shaped like the small-teacher templates' (sections with code blocks, exercises whose own check() passes
or fails as planted), then errors mid-run and an unreachable endpoint. The stage installs the teacher's roles
only when they are complete, names the teacher and the settings in their manifests, counts exercise passes
exactly, keeps the stand-ins (loudly) when the teacher fails, and resumes on the next run."""

import json
import math
import os
import socket

import pytest

from textbooks import demo_sections, demo_teacher
from textbooks.corpora import build as corpora_build
from textbooks.data.manifest import read_manifest

from scripted_teacher import MODEL, FaultServer, ScriptedTeacher

pytestmark = pytest.mark.slow  # the exercises run in the evaluation sandbox

COUNTS = {"textbooks": 6, "code_textbooks": 4, "code_exercises": 9}


def _config(url: str, **kw) -> demo_teacher.TeacherConfig:
    return demo_teacher.TeacherConfig(endpoint=url, model=MODEL, concurrency=4, request_timeout_s=30,
                                      validation_fraction=0.2, **{**COUNTS, **kw})


@pytest.fixture()
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    corpora_build.build_corpora(str(root), max_docs=40, verbose=False)
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(root))  # web-seeded prompts read web_filtered from here
    return str(root)


def _manifests(data_root):
    return {role: read_manifest(os.path.join(data_root, role)) for role in demo_teacher.ROLES}


def test_the_teachers_roles_replace_the_stand_ins(data_root, tmp_path):
    before = _manifests(data_root)
    assert all(m.stand_in for m in before.values())  # the corpora's stand-ins
    teacher = ScriptedTeacher()
    with FaultServer(answer=teacher) as server:
        summary = demo_teacher.synthesize(data_root, str(tmp_path / "out"), _config(server.url))
        assert summary["status"] == "generated", summary.get("error") or summary.get("stand_in_roles")
        requests = server.requests
        again = demo_teacher.synthesize(data_root, str(tmp_path / "out"), _config(server.url))
        assert server.requests == requests and again == json.loads(json.dumps(summary, default=str))  # cached

    assert summary["runs"]["nlp"]["prompts"] == COUNTS["textbooks"]
    assert summary["runs"]["code"]["prompts"] == COUNTS["code_textbooks"]
    assert summary["runs"]["exercises"]["prompts"] == COUNTS["code_exercises"]
    for role, manifest in _manifests(data_root).items():
        assert manifest.stand_in is None, role
        assert manifest.meta["teacher"] == MODEL and manifest.meta["endpoint"] == server.url
        assert manifest.meta["generation"]["num_samples"] > 0 and manifest.meta["templates"]
        assert manifest.splits["train"].num_docs >= 1 and manifest.splits["validation"].num_docs >= 1
        kept = manifest.splits["train"].num_docs + manifest.splits["validation"].num_docs
        assert manifest.splits["validation"].num_docs == math.ceil(kept / 5), role  # exactly a fifth, rounded up
        aside = read_manifest(os.path.join(str(tmp_path / "out"), "teacher", "stand_ins", role))
        assert aside.stand_in == before[role].stand_in  # the stand-in is kept aside, not lost

    # Every planted exercise ran in the sandbox; exactly the planted failures were rejected as tests_failed.
    passes = sum(teacher.planted.values())
    ex = summary["exercises"]
    assert ex["executed"] == len(teacher.planted) and ex["passed"] == passes
    assert ex["failed"] == len(teacher.planted) - passes > 0
    assert ex["kept_by_test_kind"] == {"function": passes}
    assert summary["usage"]["completion_tokens"] > 0 and summary["tokens_per_s"] > 0
    assert all(len(summary["samples"][r]) >= 1 for r in demo_teacher.ROLES)

    lines, data = demo_sections.teacher_section(
        [{"role": r, "stand_in": None} for r in (*demo_teacher.ROLES, "web_filtered")], summary)
    text = "\n".join(lines)
    assert "STAGE FAILED" not in text and f"`{MODEL}`" in text
    assert {r["role"]: r["stand_in"] for r in data["sources"]}["synthetic_textbooks"] is None
    assert {r["role"]: r["stand_in"] for r in data["sources"]}["web_filtered"]  # named as a stand-in


def test_errors_mid_run_keep_the_stand_ins_then_a_rerun_resumes(data_root, tmp_path):
    out = str(tmp_path / "out")
    before = _manifests(data_root)
    # The first three requests are answered, then the teacher refuses every request.
    with FaultServer(answer=ScriptedTeacher(), script=["ok"] * 3 + ["400"] * 200) as server:
        failed = demo_teacher.synthesize(data_root, out, _config(server.url))
    assert failed["status"] == "failed" and "without an answer" in failed["error"]
    after = _manifests(data_root)
    assert {r: m.stand_in for r, m in after.items()} == {r: m.stand_in for r, m in before.items()}
    assert not os.path.exists(os.path.join(out, "teacher", "stand_ins", "synthetic_textbooks"))
    lines, data = demo_sections.teacher_section([{"role": r, "stand_in": before[r].stand_in}
                                                 for r in demo_teacher.ROLES], failed)
    assert "WARNING: THE TEACHER STAGE FAILED" in "\n".join(lines) and data["status"] == "failed"
    assert all(row["stand_in"] for row in data["sources"])

    with pytest.raises(demo_teacher.TeacherStageError, match="Rerun the same command"):
        with FaultServer(answer=ScriptedTeacher(), script=["400"] * 200) as server:
            demo_teacher.synthesize(data_root, out, _config(server.url, on_failure="stop"))

    with FaultServer(answer=ScriptedTeacher()) as server:
        resumed = demo_teacher.synthesize(data_root, out, _config(server.url))
        asked = server.requests
    assert resumed["status"] == "generated"
    total = sum(COUNTS.values())
    assert asked == total - 3  # the three answers received before the failure were not asked for again
    assert sum(run["cached"] + run["completed"] for run in resumed["runs"].values()) >= total - 3


def test_an_unreachable_teacher_is_reported(data_root, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    summary = demo_teacher.synthesize(data_root, str(tmp_path / "out"),
                                      _config(f"http://127.0.0.1:{port}/v1"))
    assert summary["status"] == "failed"
    assert "unreachable" in summary["error"].lower() or "connect" in summary["error"].lower(), summary["error"]
    assert all(m.stand_in for m in _manifests(data_root).values())


def test_a_partial_teacher_stage_names_the_roles_left_as_stand_ins():
    summary = {"status": "partial", "teacher": {"name": MODEL}, "stand_in_roles": {"code_exercises": "no documents"},
               "runs": {}, "usage": {}, "generation_s": 1.0, "exercises": {}, "role_stats": {}, "samples": {}}
    corpora = [{"role": r, "stand_in": f"{r} stand-in"} for r in demo_teacher.ROLES]
    lines, data = demo_sections.teacher_section(corpora, summary)
    text = "\n".join(lines)
    assert "NO USABLE TEXT FOR SOME ROLES" in text and "`code_exercises`: no documents" in text
    sources = {row["role"]: row["stand_in"] for row in data["sources"]}
    assert sources == {"synthetic_textbooks": None, "code_textbooks": None, "code_exercises": "code_exercises stand-in"}
    assert data["status"] == "partial" and data["teacher"] == {"name": MODEL}

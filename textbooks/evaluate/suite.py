"""The evaluation suite: ``evaluate``, the gin entry point of ``textbooks eval``, and what it runs.

``evaluate`` (gin: ``evaluate.*``; like every verb's entry point it is named after the verb) loads a
checkpoint, runs each task with the :class:`SuiteSettings` and writes ``results.json``, ``results.md`` (the
phi-1.5 tables), ``results.png`` and per-item records. A task that fails (missing files, a prompt that does not
fit, a model error) is recorded with its error and the run goes on; generated programs that crash are per-item
failures inside their task. :class:`BenchmarkEvalHook` runs the same tasks on the parameters of a model being
trained, from a Python training loop.

gin names: ``SuiteSettings`` was called ``EvalSettings`` before; that name still works (an alias of the same
configurable), so ``EvalSettings.limit = 200`` and ``SuiteSettings.limit = 200`` set the same value.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import traceback
from typing import Any, Mapping, Sequence

import gin

from textbooks import gin_utils
from textbooks.evaluate import benchmarks, code_eval, continuous, gsm8k, multiple_choice, prompts, report, squad
from textbooks.evaluate import sandbox as sandbox_lib
from textbooks.evaluate.lm import EvalModel
from textbooks.evaluate.report import metric_entry
from textbooks.model.load import load_model
from textbooks.progress import Progress

log = logging.getLogger(__name__)

PHI15_SUITE: tuple[str, ...] = tuple(t for group in report.GROUPS.values() for t in group)
SUITES: dict[str, tuple[str, ...]] = {
    "phi15": PHI15_SUITE,
    "all": PHI15_SUITE,
    "common_sense": report.GROUPS["Common sense reasoning"],
    "language": report.GROUPS["Language understanding and knowledge"],
    "reasoning": report.GROUPS["Multi-step reasoning"],
    "code": ("humaneval", "mbpp"),
    "multiple_choice": tuple(t for t in PHI15_SUITE if benchmarks.benchmark_kind(t) == "multiple_choice"),
}


class EvalError(RuntimeError):
    """The evaluation cannot start (bad task list, checkpoint that does not load); the message says why."""


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """Expands suite names (``phi15``, ``common_sense``, ``language``, ``reasoning``, ``code``,
    ``multiple_choice``) and checks task names.

    Raises:
        EvalError: an unknown name (the message lists the tasks and suites).
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    out: list[str] = []
    for name in names:
        expanded = SUITES.get(name, (name,))
        for t in expanded:
            if t not in benchmarks.BENCHMARKS:
                raise EvalError(f"unknown task {t!r}; tasks: {', '.join(benchmarks.BENCHMARKS)}; "
                                f"suites: {', '.join(SUITES)}")
            if t not in out:
                out.append(t)
    if not out:
        raise EvalError(f"no tasks given; tasks: {', '.join(benchmarks.BENCHMARKS)}; suites: {', '.join(SUITES)}")
    return out


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SuiteSettings:
    """How the evaluation suite is run (gin: ``SuiteSettings.*``, formerly ``EvalSettings.*``).

    Attributes:
        limit: items per task (a seeded subset); None for all.
        seed: seed of that subset and of sampling.
        num_fewshot: per-task shot overrides (default: the phi-1.5 protocol, MMLU 2-shot, others 0).
        code_samples: completions per HumanEval/MBPP problem (n of pass@k).
        code_ks: the k of pass@k.
        code_temperature: sampling temperature for code (None: greedy for one sample, 0.8 otherwise).
        code_max_new_tokens: completion budget for code.
        gsm8k_mode: 'code' (phi-1.5: write a Python solution, run it) or 'cot' (extract the final number).
        gsm8k_max_new_tokens: completion budget for GSM8K.
        squad_max_new_tokens: answer budget for SQuAD.
        tokens_per_batch: padded tokens per log-likelihood batch.
        min_length_bucket: shortest padded length of log-likelihood batches.
        decode_min_length_bucket: shortest prompt/cache bucket of generation (the model's max_len: one shape).
        sandbox_timeout_s: wall-clock limit per program.
        sandbox_workers: programs run at once (default: CPU count).
        sandbox_isolation: 'auto', 'namespaces' or 'rlimits' (see textbooks.evaluate.sandbox).
    """

    limit: int | None = None
    seed: int = 0
    num_fewshot: Mapping[str, int] | None = None
    code_samples: int = 1
    code_ks: tuple[int, ...] = (1,)
    code_temperature: float | None = None
    code_max_new_tokens: int = 384
    gsm8k_mode: str = "code"
    gsm8k_max_new_tokens: int = 256
    squad_max_new_tokens: int = 32
    tokens_per_batch: int = 4096
    min_length_bucket: int = 32
    decode_min_length_bucket: int = 16
    sandbox_timeout_s: float = 10.0
    sandbox_workers: int | None = None
    sandbox_isolation: str = "auto"

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"SuiteSettings.limit must be a positive number of items per task (or None for all), "
                             f"got {self.limit}")


gin_utils.register_alias("EvalSettings", SuiteSettings)


def _sandbox(settings: SuiteSettings) -> sandbox_lib.Sandbox:
    return sandbox_lib.Sandbox(sandbox_lib.SandboxConfig(timeout_s=settings.sandbox_timeout_s,
                                                         isolation=settings.sandbox_isolation),
                               workers=settings.sandbox_workers)


def _progress(label: str) -> Progress:
    """The ``(done, total)`` callback that reports a task's progress."""
    return Progress(0, label, interval=10.0)


def _gold_bpb(model, items, task) -> dict:
    gold = continuous.score_gold(model, items, progress=_progress(f"{task} gold bpb"))
    return metric_entry(gold.bpb, "bootstrap")


def _run_task(model, task: str, items: list[dict], settings: SuiteSettings, sandbox_cache: dict
              ) -> tuple[dict, list[dict]]:
    kind = benchmarks.benchmark_kind(task)
    entry: dict[str, Any] = {"kind": kind, "split": items[0]["split"], "n": len(items), "metrics": {}}
    if kind == "multiple_choice":
        shots = prompts.fewshot_for(task, settings.num_fewshot)
        res = multiple_choice.score_items(model, items, num_fewshot=shots, progress=_progress(task))
        entry["metrics"]["acc"] = metric_entry(res.values("acc"), "wilson")
        if res.values("acc_norm"):
            entry["metrics"]["acc_norm"] = metric_entry(res.values("acc_norm"), "wilson")
        entry["metrics"]["bpb"] = metric_entry(res.values("bpb"), "bootstrap")
        entry["metrics"]["p_correct"] = metric_entry(res.values("p_correct"), "bootstrap")
        secondary = multiple_choice.SECONDARY_METRIC.get(task)
        entry.update(primary=multiple_choice.PRIMARY_METRIC.get(task, "acc"),
                     secondary=secondary if secondary in entry["metrics"] else None, chance=res.chance,
                     num_fewshot=res.num_fewshot, truncated=res.truncated)
        return entry, res.items
    if "sandbox" not in sandbox_cache and task in ("humaneval", "mbpp", "gsm8k"):
        sandbox_cache["sandbox"] = _sandbox(settings)
    if task in ("humaneval", "mbpp"):
        res = code_eval.evaluate_code(model, items, samples=settings.code_samples, ks=settings.code_ks,
                                      temperature=settings.code_temperature,
                                      max_new_tokens=settings.code_max_new_tokens, seed=settings.seed,
                                      sandbox=sandbox_cache["sandbox"], progress=_progress(f"{task} programs"))
        for k in sorted(res.pass_at):
            per_problem = res.per_problem_pass(k)
            method = "wilson" if settings.code_samples == 1 else "bootstrap"
            entry["metrics"][f"pass@{k}"] = metric_entry(per_problem, method)
        entry["metrics"]["bpb"] = _gold_bpb(model, items, task)
        entry.update(primary="pass@1" if 1 in res.pass_at else None, chance=None, num_fewshot=0,
                     samples=settings.code_samples, errors=res.error_counts())
        return entry, res.problems
    if task == "gsm8k":
        res = gsm8k.evaluate_gsm8k(model, items, mode=settings.gsm8k_mode,
                                   max_new_tokens=settings.gsm8k_max_new_tokens, sandbox=sandbox_cache.get("sandbox"),
                                   progress=_progress("gsm8k programs"))
        entry["metrics"]["accuracy"] = metric_entry([float(r["correct"]) for r in res.items], "wilson")
        entry["metrics"]["bpb"] = _gold_bpb(model, items, task)
        errors: dict[str, int] = {}
        for r in res.items:
            if r["error_type"]:
                errors[r["error_type"]] = errors.get(r["error_type"], 0) + 1
        entry.update(primary="accuracy", chance=None, num_fewshot=0, mode=res.mode, errors=errors)
        return entry, res.items
    if task == "squad":
        contexts = [prompts.context_for(item) for item in items]
        outs = model.generate(contexts, max_new_tokens=settings.squad_max_new_tokens, stop=squad.STOPS)
        records = []
        for item, out in zip(items, outs):
            pred = out[0].strip()
            records.append({"id": item["id"], "prediction": pred, "answers": item["answers"],
                            "exact_match": squad.exact_match(pred, item["answers"]),
                            "f1": squad.f1(pred, item["answers"])})
        entry["metrics"]["exact_match"] = metric_entry([r["exact_match"] for r in records], "wilson")
        entry["metrics"]["f1"] = metric_entry([r["f1"] for r in records], "bootstrap")
        entry["metrics"]["bpb"] = _gold_bpb(model, items, task)
        entry.update(primary="exact_match", secondary="f1", chance=None, num_fewshot=0, subset=squad.SUBSET_NOTE)
        return entry, records
    raise EvalError(f"no evaluation procedure for task {task!r}")


def evaluate_model(model, tasks: str | Sequence[str] = "phi15", settings: SuiteSettings | None = None
                   ) -> tuple[dict, dict[str, list[dict]]]:
    """Runs ``tasks`` on ``model`` (an :class:`textbooks.evaluate.lm.EvalModel`).

    Returns:
        (results, per-item records by task). ``results['tasks'][task]`` holds kind, split, n, metrics (each
        with value, ci_low, ci_high, ci_method, n), primary (the phi-1.5 report's metric), secondary (the other
        metric shown beside it, or None), chance, num_fewshot, seconds - or ``error``.
    """
    settings = settings or SuiteSettings()
    task_list = resolve_tasks(tasks)
    results: dict[str, Any] = {"tasks": {}, "settings": dataclasses.asdict(settings),
                               "ci": dict(report.CI_METHODS)}
    per_item: dict[str, list[dict]] = {}
    sandbox_cache: dict = {}
    start = time.monotonic()
    for i, task in enumerate(task_list, 1):
        t0 = time.monotonic()
        log.info("[%d/%d] %s", i, len(task_list), task)
        try:
            items = benchmarks.load_benchmark(task, limit=settings.limit, seed=settings.seed)
            if not items:
                raise EvalError(f"task {task} has no items")
            entry, records = _run_task(model, task, items, settings, sandbox_cache)
            per_item[task] = records
        except Exception as e:  # One task's failure is recorded; the others still run.
            log.error("task %s failed: %s\n%s", task, e, traceback.format_exc())
            entry = {"kind": benchmarks.benchmark_kind(task), "error": f"{type(e).__name__}: {e}",
                     "metrics": {}, "n": 0}
        entry["seconds"] = round(time.monotonic() - t0, 2)
        results["tasks"][task] = entry
        if "error" not in entry and entry.get("primary") in entry["metrics"]:
            m = entry["metrics"][entry["primary"]]
            log.info("%s %s = %.4f [%.4f, %.4f] (n=%d)", task, entry["primary"], m["value"], m["ci_low"],
                     m["ci_high"], m["n"])
    if "sandbox" in sandbox_cache:
        results["sandbox"] = sandbox_cache["sandbox"].isolation()
    results["elapsed_s"] = round(time.monotonic() - start, 2)
    return results, per_item


def flatten_metrics(results: Mapping[str, Any], prefix: str = "bench") -> dict[str, float]:
    """``{'bench/<task>/<metric>': value}`` for scalar logging (TensorBoard, JSONL)."""
    out = {}
    for task, entry in results.get("tasks", {}).items():
        for name, m in entry.get("metrics", {}).items():
            if m.get("value") is not None and math.isfinite(m["value"]):
                out[f"{prefix}/{task}/{name}"] = float(m["value"])
    return out


@gin.configurable
def evaluate(checkpoint: str | None = None, tasks: str | Sequence[str] = "phi15", out_dir: str | None = None,
             settings: SuiteSettings | None = None, model=None) -> dict:
    """Evaluates a checkpoint on a suite and writes the report (gin binds this function, T5X style).

    Args:
        checkpoint: orbax model dir, step dir, or transformers-format folder.
        tasks: task and suite names (comma-separated string or list).
        out_dir: where results.json / results.md / results.png / items/ go (None: not written).
        settings: :class:`SuiteSettings` (gin-configurable).
        model: an already built :class:`textbooks.evaluate.lm.EvalModel` (skips loading ``checkpoint``).

    Returns:
        The results dict (see :func:`evaluate_model`), with checkpoint, step, model and report paths.

    Raises:
        EvalError: unknown task names, or the checkpoint does not load.
    """
    settings = settings or SuiteSettings()
    task_list = resolve_tasks(tasks)  # fail on bad names before the (slow) model load
    if model is None and not checkpoint:
        raise EvalError("no checkpoint given: pass --checkpoint DIR (or bind evaluate.checkpoint)")
    info: dict[str, Any] = {"checkpoint": checkpoint}
    if model is None:
        model, info = load_eval_model(checkpoint, settings)
    results, per_item = evaluate_model(model, task_list, settings)
    results = {**info, "model": model.config.to_dict(), "vocabulary": repr(model.vocabulary), **results}
    if out_dir:
        results["report"] = report.write_report(results, out_dir, per_item)
        log.info("report written to %s", results["report"].get("markdown"))
    return results


def load_eval_model(checkpoint: str, settings: SuiteSettings | None = None):
    """Loads ``checkpoint`` into an EvalModel; returns (model, {'checkpoint', 'step'}).

    Raises:
        EvalError: the checkpoint does not load (the message names the path and the reason).
    """
    settings = settings or SuiteSettings()
    try:
        loaded = load_model(checkpoint)
    except Exception as e:
        raise EvalError(f"checkpoint {checkpoint!r} does not load: {type(e).__name__}: {e}. Pass an orbax model "
                        "dir (newest step), one step dir, or a transformers-format folder (config.json + "
                        "safetensors).") from e
    model = EvalModel(loaded.config, loaded.params, loaded.vocabulary, tokens_per_batch=settings.tokens_per_batch,
                      min_length_bucket=settings.min_length_bucket,
                      decode_min_length_bucket=settings.decode_min_length_bucket)
    return model, {"checkpoint": checkpoint, "step": getattr(loaded, "step", None)}


class BenchmarkEvalHook:
    """Benchmark evaluation the trainer can call every N steps: ``hook(params, mesh) -> {name: value}``.

    The model wrapper (and its compiled scoring functions) is built on the first call and reused; each call
    scores the same seeded subset of items, so the curves are comparable across steps.
    """

    def __init__(self, config, vocabulary, tasks: str | Sequence[str], settings: SuiteSettings,
                 out_dir: str | None = None, every: int = 0):
        self.config, self.vocabulary = config, vocabulary
        self.tasks = resolve_tasks(tasks)
        self.settings, self.out_dir, self.every = settings, out_dir, every
        self._model = None
        self.history: list[tuple[int | None, dict[str, float]]] = []

    def should_run(self, step: int) -> bool:
        return bool(self.every) and step > 0 and step % self.every == 0

    def __call__(self, params: Any, mesh: Any = None, step: int | None = None) -> dict[str, float]:
        if self._model is None:
            self._model = EvalModel(self.config, params, self.vocabulary, mesh=mesh,
                                    tokens_per_batch=self.settings.tokens_per_batch,
                                    min_length_bucket=self.settings.min_length_bucket,
                                    decode_min_length_bucket=self.settings.decode_min_length_bucket)
        else:
            self._model.set_params(params)
        results, per_item = evaluate_model(self._model, self.tasks, self.settings)
        if self.out_dir:
            name = f"step_{step:08d}" if step is not None else f"eval_{len(self.history):04d}"
            report.write_report({"checkpoint": name, "step": step, **results}, os.path.join(self.out_dir, name),
                                per_item)
        metrics = flatten_metrics(results)
        self.history.append((step, metrics))
        return metrics


def failed_tasks(results: Mapping[str, Any]) -> list[str]:
    """The tasks of ``results`` that recorded an error instead of metrics (``textbooks eval`` then exits 1)."""
    return [task for task, entry in results.get("tasks", {}).items() if entry.get("error")]


def summarize(results: Mapping[str, Any]) -> str:
    """One line per task: the headline metric with its interval, then the second metric (for logs and the CLI)."""
    lines = []
    for task, e in results.get("tasks", {}).items():
        if e.get("error"):
            lines.append(f"{task:14s} ERROR {e['error']}")
            continue
        m = e["metrics"].get(e.get("primary") or "", None)
        if m:
            chance = f" chance {e['chance']:.3f}" if e.get("chance") is not None else ""
            other = e["metrics"].get(e.get("secondary") or "", None)
            also = f" | {e['secondary']} {other['value']:.4f}" if other else ""
            lines.append(f"{task:14s} {e['primary']:11s} {m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}] "
                         f"n={m['n']}{chance}{also}")
    return "\n".join(lines)


__all__ = ["BenchmarkEvalHook", "EvalError", "PHI15_SUITE", "SUITES", "SuiteSettings", "evaluate", "evaluate_model",
           "failed_tasks", "flatten_metrics", "load_eval_model", "resolve_tasks", "summarize"]

"""The downstream evaluation every sweep trial runs at its end: a fixed, seeded benchmark subset, continuous metrics.

A mixture sweep ranks small proxy runs, so it needs metrics that move smoothly at small scale (DataDecide,
OLMES): for each multiple-choice task of the phi-1.5 suite, the bits per byte of the gold answer (``bpb``), the
probability of the correct choice among the choices (``p_correct``) and ``acc``; for HumanEval and MBPP, the bits
per byte of the canonical solution given the prompt (``bpb``; nothing is generated or executed). The scoring is
:mod:`textbooks.evaluate.multiple_choice` and :mod:`textbooks.evaluate.continuous`, as ``textbooks eval`` does.

Every trial of a sweep scores the same items: :meth:`TrialBench.items` takes ``items_per_task`` items of each task
with :func:`textbooks.evaluate.benchmarks.load_benchmark`'s seeded subset, and :meth:`TrialBench.fingerprint`
(a hash of the settings and the item ids) is recorded next to the metrics, so a table can show that every row was
computed on identical items (and, with the sweep's one vocabulary and model length, on identical tokens).

Cost: scoring is cheap for proxy-size models; compiling the scoring function for each batch shape (about ten)
is not. Every trial compiles the same shapes, so :meth:`TrialBench.score_checkpoint` keeps them in JAX's
persistent compilation cache (``compilation_cache_dir``): the first trial of a sweep compiles, the others load.

gin: ``TrialBench.tasks``, ``TrialBench.items_per_task``, ``TrialBench.seed``, ``TrialBench.tokens_per_batch``,
``TrialBench.compilation_cache_dir``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, Mapping, Sequence

import gin

from textbooks.compilation_cache import use_compilation_cache
from textbooks.evaluate import benchmarks, continuous, multiple_choice, prompts

# The phi-1.5 multiple-choice suite (SQuAD and GSM8K are generation tasks) and the phi-1 code targets.
MC_TASKS: tuple[str, ...] = ("winogrande", "arc_easy", "arc_challenge", "boolq", "siqa", "piqa", "hellaswag",
                             "mmlu", "openbookqa")
GOLD_TASKS: tuple[str, ...] = ("humaneval", "mbpp")
PREFIX = "bench/"
# Bookkeeping columns recorded beside the metrics (not targets: no "bench/" prefix).
FINGERPRINT_KEY, SECONDS_KEY, REQUESTS_KEY, TRUNCATED_KEY = ("bench_items", "bench_s", "bench_requests",
                                                             "bench_truncated")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrialBench:
    """What each sweep trial scores after training (see the module docstring).

    Attributes:
        tasks: benchmark names; multiple-choice tasks give bpb, p_correct and acc, the others the bpb of their
            gold continuation (HumanEval, MBPP: the canonical solution after the prompt).
        items_per_task: size of each task's seeded subset (None: every item).
        seed: seed of the subsets (the same for every trial of a sweep).
        tokens_per_batch: padded tokens per log-likelihood batch.
        min_length_bucket: shortest padded length of those batches.
        compilation_cache_dir: JAX's persistent compilation cache for the scoring shapes (None: off; ``~`` is
            expanded). :meth:`score_checkpoint` points the process's JAX at it, replacing a cache set before,
            and keeps every program there however quick it compiled. It changes no score, only the time; it is
            not part of the sweep's fingerprint.
    """

    tasks: Sequence[str] = MC_TASKS + GOLD_TASKS
    items_per_task: int | None = 40
    seed: int = 1234
    tokens_per_batch: int = 8192
    min_length_bucket: int = 64
    compilation_cache_dir: str | None = "~/.cache/textbooks/jax_compilation_cache"

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("TrialBench.tasks is empty: name at least one benchmark (e.g. 'piqa', 'humaneval')")
        for t in self.tasks:
            if t not in benchmarks.BENCHMARKS:
                raise ValueError(f"TrialBench.tasks: unknown benchmark {t!r}; known: {', '.join(benchmarks.BENCHMARKS)}")
        if self.items_per_task is not None and self.items_per_task < 1:
            raise ValueError(f"TrialBench.items_per_task must be a positive number of items (or None for all), "
                             f"got {self.items_per_task}")

    def settings(self) -> dict[str, Any]:
        """The settings as plain JSON (part of a sweep's fingerprint)."""
        return {"tasks": list(self.tasks), "items_per_task": self.items_per_task, "seed": self.seed}

    def items(self) -> dict[str, list[dict]]:
        """``{task: items}``: the seeded subset of each task, identical on every call and in every process."""
        return {t: benchmarks.load_benchmark(t, limit=self.items_per_task, seed=self.seed) for t in self.tasks}

    def fingerprint(self, items: Mapping[str, Sequence[Mapping]] | None = None) -> str:
        """16 hex digits of SHA-256 over the settings and the ids of the items scored."""
        items = self.items() if items is None else items
        payload = {"settings": self.settings(), "ids": {t: [i["id"] for i in v] for t, v in items.items()}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def score(self, model) -> dict[str, Any]:
        """Scores ``model`` (an :class:`textbooks.evaluate.lm.EvalModel`) on the subset.

        Returns:
            ``{'bench/<task>/<metric>': value}`` plus ``bench_items`` (the fingerprint), ``bench_requests``
            (log-likelihood requests scored), ``bench_truncated`` (requests cut on the left to fit the model)
            and ``bench_s`` (seconds).
        """
        start = time.monotonic()
        items = self.items()
        out: dict[str, Any] = {}
        requests = truncated = 0
        for task, task_items in items.items():
            if not task_items:
                raise ValueError(f"benchmark {task!r} gave no items")
            if benchmarks.benchmark_kind(task) == "multiple_choice":
                res = multiple_choice.score_items(model, task_items, num_fewshot=prompts.fewshot_for(task))
                for metric in ("bpb", "p_correct", "acc"):
                    out[f"{PREFIX}{task}/{metric}"] = res.mean(metric)
                requests += sum(len(r["logprobs"]) for r in res.items)
                truncated += res.truncated
            else:
                gold = continuous.score_gold(model, task_items)
                out[f"{PREFIX}{task}/bpb"] = gold.mean_bpb()
                requests += len(gold.bpb)
                truncated += gold.truncated
        out.update({FINGERPRINT_KEY: self.fingerprint(items), REQUESTS_KEY: requests, TRUNCATED_KEY: truncated,
                    SECONDS_KEY: round(time.monotonic() - start, 3)})
        return out

    def score_checkpoint(self, checkpoint: str) -> dict[str, Any]:
        """Loads ``checkpoint`` (a trainer's model dir: its newest step) and scores it (see :meth:`score`)."""
        from textbooks.evaluate import suite  # deferred: loading a checkpoint pulls in the model stack

        start = time.monotonic()
        if self.compilation_cache_dir:
            use_compilation_cache(self.compilation_cache_dir, replace=True, keep_all=True)
        model, _ = suite.load_eval_model(checkpoint, suite.SuiteSettings(tokens_per_batch=self.tokens_per_batch,
                                                                         min_length_bucket=self.min_length_bucket))
        out = self.score(model)
        out[SECONDS_KEY] = round(time.monotonic() - start, 3)
        return out


__all__ = ["FINGERPRINT_KEY", "GOLD_TASKS", "MC_TASKS", "PREFIX", "REQUESTS_KEY", "SECONDS_KEY", "TRUNCATED_KEY",
           "TrialBench"]

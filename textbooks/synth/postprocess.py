"""Post-processing of teacher outputs: boilerplate cleanup, length and format filters, exercise checks
(syntax, required function, tests run in the evaluation sandbox), in-run near-duplicate removal and
benchmark decontamination through the curation stage.

Every output ends up kept (possibly cleaned) or rejected with a reason; nothing is dropped silently. The
per-template ``postprocess`` section of a template file switches on the checks that fit it::

    postprocess: {min_chars: 120, syntax_check: true, require_function: function_name, run_tests: check}

``require_function`` names the *slot* whose value is the function name the exercise must define;
``run_tests`` names a function of the generated code to call (its asserts are the tests). An exercise that does
not define that function is tested by its doctests instead (``doctest.testmod``); one with neither is rejected
as ``no_tests``. Which kind ran is recorded in ``meta.postprocess.tests_kind``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging
import os
import re
import warnings
from typing import Any, Callable, Mapping, Sequence

from textbooks.curate import decontam
from textbooks.curate import dedup as curate_dedup
from textbooks.curate import heuristics
from textbooks.evaluate import sandbox

logger = logging.getLogger(__name__)

# Opening lines that talk to the requester instead of being part of the text.
_OPENERS = re.compile(
        r"^\s*(?:(?:sure|certainly|of course|absolutely|okay|ok|great(?: question)?|alright)\b[^\n]*\n"
        r"|(?:here(?:'s| is| are)|below (?:is|are)|the following is)\b[^\n]*:[ \t]*\n)", re.I)
# Closing lines that offer more help.
_CLOSERS = re.compile(
        r"\n[ \t]*(?:i hope (?:this|that) helps|let me know if|feel free to (?:ask|reach)|if you have any (?:other |more )?"
        r"questions|happy (?:coding|learning)!?|is there anything else)[^\n]*\s*$", re.I)
# Sentences that reveal the teacher ("As an AI language model, I ...").
_AI_SENTENCE = re.compile(r"(?:^|(?<=[.!?]\s))[^.!?\n]*\bas an ai(?: language model| assistant| model)?\b[^.!?\n]*[.!?]?\s*",
                          re.I)
# A fenced block; the last one may be cut off by the answer's length limit (no closing fence).
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


@dataclasses.dataclass
class PostprocessConfig:
    """Filters applied to every output (templates may tighten ``min_chars`` and switch on code checks).

    Attributes:
        strip_boilerplate: remove assistant openers/closers and "as an AI" sentences.
        min_chars / max_chars: length limits on the cleaned text.
        min_words: fewest whitespace-separated words.
        trim_loops: cut prose at the first line (of at least ``loop_min_words`` words, outside code fences) that
            repeats an earlier line: small teachers fall into loops that repeat a sentence to the length limit.
            What precedes the loop is kept when it still passes the length limits (meta ``postprocess.
            trimmed_loop`` records the cut); exercises (``syntax_check`` templates) are left alone.
        loop_min_words: shortest line that counts as a repeat for ``trim_loops``.
        gopher_repetition: also reject outputs that fail the Gopher repetition rules
            (``textbooks.curate.heuristics.GopherRepetitionConfig``, web-scale thresholds: at 135M parameters
            they reject most outputs, so off by default).
        drop_truncated: reject outputs whose finish_reason is 'length' (else keep them, flagged in meta).
        syntax_check: honour templates' ``syntax_check`` (ast.parse of the code).
        run_tests: honour templates' ``run_tests`` by executing the code in ``textbooks.evaluate.sandbox``.
        sandbox_timeout_s: wall-clock limit per executed exercise.
        near_dedup: drop near duplicates within the run (MinHash LSH over word 5-grams; see :func:`near_dedup`).
        near_dup_threshold: Jaccard similarity above which two outputs are near duplicates.
        decontaminate: drop outputs that overlap benchmark items (``textbooks.curate.decontam``).
        decontamination_benchmarks: benchmark names for it (empty: the curation stage's defaults).
        decontaminate_code: also run phi-1's embedding + AST similarity on exercises (loads an encoder).
    """

    strip_boilerplate: bool = True
    min_chars: int = 200
    max_chars: int = 200_000
    min_words: int = 20
    trim_loops: bool = True
    loop_min_words: int = 4
    gopher_repetition: bool = False
    drop_truncated: bool = False
    syntax_check: bool = True
    run_tests: bool = False
    sandbox_timeout_s: float = 5.0
    near_dedup: bool = True
    near_dup_threshold: float = 0.8
    decontaminate: bool = True
    decontamination_benchmarks: Sequence[str] = ()
    decontaminate_code: bool = False


@dataclasses.dataclass
class Sample:
    """One output on its way to a record."""

    id: str
    text: str
    role: str
    meta: dict
    template_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    slot_values: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reject_reason: str | None = None
    reject_detail: str = ""

    def reject(self, reason: str, detail: str = "") -> None:
        if self.reject_reason is None:
            self.reject_reason, self.reject_detail = reason, detail


def clean_boilerplate(text: str) -> tuple[str, list[str]]:
    """Removes assistant chatter; returns the cleaned text and the names of the rules that fired."""
    fired = []
    t = text.replace("\r\n", "\n")
    new = _OPENERS.sub("", t, count=1)
    if new != t:
        fired.append("opener")
        t = new
    new = _AI_SENTENCE.sub("", t)
    if new != t:
        fired.append("as_an_ai")
        t = new
    for _ in range(3):
        new = _CLOSERS.sub("", t)
        if new == t:
            break
        fired.append("closer")
        t = new
    return t.strip(), fired


def trim_loop(text: str, min_words: int = 4) -> tuple[str, int | None]:
    """Cuts ``text`` before the first line of at least ``min_words`` words, outside fenced code, that repeats an
    earlier such line; returns the text and the 1-based line number of the cut (None when nothing repeats)."""
    lines = text.split("\n")
    seen: set[str] = set()
    in_fence = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence or len(stripped.split()) < min_words:
            continue
        if stripped in seen:
            return "\n".join(lines[:number - 1]).rstrip(), number
        seen.add(stripped)
    return text, None


def extract_code(text: str) -> str:
    """The Python code of an answer: the fenced blocks tagged python (or untagged) joined, else the whole text."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    return "\n\n".join(b.rstrip() for b in blocks) if blocks else text.strip()


def complete_prefix(code: str) -> str | None:
    """The longest prefix of ``code`` made of whole top-level statements that parses (an answer cut off by its
    length limit loses its unfinished last statement), or None when no such prefix holds a statement."""
    lines = code.splitlines()
    starts = [i for i, line in enumerate(lines) if line[:1] not in ("", " ", "\t", "#", ")", "]", "}")]
    for end in reversed(starts[1:]):
        prefix = "\n".join(lines[:end]).rstrip()
        if prefix and syntax_error(prefix) is None:
            return prefix
    return None


def syntax_error(code: str) -> str | None:
    """None when ``code`` parses, else the message and line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(code)
    except SyntaxError as e:
        return f"{e.msg} (line {e.lineno})"
    except (ValueError, RecursionError, MemoryError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def defined_functions(code: str) -> set[str]:
    """Names of the top-level functions defined by ``code`` (empty if it does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def check_sample(sample: Sample, config: PostprocessConfig) -> None:
    """Cleans ``sample.text`` and applies the per-sample filters (marks it rejected with a reason)."""
    opts = sample.template_options
    if config.strip_boilerplate:
        sample.text, fired = clean_boilerplate(sample.text)
        if fired:
            sample.meta.setdefault("postprocess", {})["cleaned"] = fired
    if not sample.text.strip():
        sample.reject("empty")
        return
    if config.drop_truncated and sample.meta.get("finish_reason") == "length":
        sample.reject("truncated", "finish_reason is 'length'")
    if config.trim_loops and not opts.get("syntax_check"):
        sample.text, cut = trim_loop(sample.text, config.loop_min_words)
        if cut is not None:
            sample.meta.setdefault("postprocess", {})["trimmed_loop"] = {"at_line": cut}
    if config.gopher_repetition:
        failed = heuristics.gopher_repetition(sample.text, heuristics.GopherRepetitionConfig())
        if failed is not None:
            sample.reject("repetitive", f"{failed[0]}: {failed[1]}")
    min_chars = max(config.min_chars, int(opts.get("min_chars", 0)))
    if len(sample.text) < min_chars:
        sample.reject("too_short", f"{len(sample.text)} < {min_chars} characters")
    elif len(sample.text) > config.max_chars:
        sample.reject("too_long", f"{len(sample.text)} > {config.max_chars} characters")
    elif len(sample.text.split()) < config.min_words:
        sample.reject("too_few_words", f"{len(sample.text.split())} < {config.min_words} words")
    if opts.get("require_code_block") and not _FENCE.search(sample.text):
        sample.reject("no_code_block", "the template asks for ```python blocks and there are none")
    if config.syntax_check and opts.get("syntax_check"):
        code = extract_code(sample.text)
        err = syntax_error(code)
        if err is not None and sample.meta.get("finish_reason") == "length":
            prefix = complete_prefix(code)
            if prefix is not None:
                code, err = prefix, None
                sample.meta.setdefault("postprocess", {})["cut_unfinished_tail"] = True
        if err is not None:
            sample.reject("syntax_error", err)
            return
        sample.text = code  # Exercises are stored as plain code.
        wanted_slot = opts.get("require_function")
        if wanted_slot:
            name = sample.slot_values.get(str(wanted_slot), str(wanted_slot))
            if name not in defined_functions(code):
                sample.reject("missing_function", f"no top-level function named {name!r}")


_DOCTEST_RUNNER = """

import doctest as _doctest
_result = _doctest.testmod()
if _result.failed:
    raise AssertionError(f"{_result.failed} of {_result.attempted} doctest examples failed")
"""


def exercise_test_program(code: str, test_fn: str) -> tuple[str, str] | None:
    """``(kind, program)`` that tests an exercise: its own ``test_fn()`` called when the code defines it
    (kind ``'function'``), else its doctests run (kind ``'doctest'``); None when it has neither."""
    if test_fn in defined_functions(code):
        return "function", f"{code}\n\n{test_fn}()\n"
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return None
    docstrings = (ast.get_docstring(n) or "" for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    if any(">>> " in d for d in docstrings):
        return "doctest", code + _DOCTEST_RUNNER
    return None


def run_exercise_tests(samples: Sequence[Sample], config: PostprocessConfig,
                       runner: Callable[[list[str]], list[Any]] | None = None) -> int:
    """Executes each kept exercise with its ``run_tests`` function called, in the evaluation sandbox.

    Args:
        samples: samples (those rejected already or without ``run_tests`` are skipped).
        config: limits.
        runner: programs -> results with ``.passed``/``.status``/``.error_type`` (default: the sandbox).

    Returns:
        How many programs ran. Failures are rejected with reason ``tests_failed``.
    """
    todo, programs = [], []
    for s in samples:
        test_fn = s.template_options.get("run_tests")
        if s.reject_reason is not None or not test_fn:
            continue
        program = exercise_test_program(s.text, str(test_fn))
        if program is None:
            s.reject("no_tests", f"neither a {test_fn}() function nor doctest examples to run")
            continue
        s.meta.setdefault("postprocess", {})["tests_kind"] = program[0]
        todo.append(s)
        programs.append(program[1])
    if not todo:
        return 0
    if runner is None:
        cfg = sandbox.SandboxConfig(timeout_s=config.sandbox_timeout_s)
        runner = lambda programs: sandbox.run_programs(programs, cfg)  # noqa: E731
    for s, result in zip(todo, runner(programs)):
        s.meta.setdefault("postprocess", {})["tests"] = result.status
        if not result.passed:
            s.reject("tests_failed", f"{result.status}: {result.error_type or ''}".strip())
    return len(todo)


def near_dedup(samples: Sequence[Sample], threshold: float) -> int:
    """Rejects near duplicates (per role), keeping one sample per cluster; returns how many were rejected.

    Uses the curation stage's in-memory MinHash LSH (``textbooks.curate.dedup.near_duplicate_clusters``, word
    5-grams, 14 x 8 bands, pairs verified at ``threshold``; the smallest id of a cluster survives).
    """
    dropped = 0
    by_role: dict[str, list[Sample]] = {}
    for s in samples:
        if s.reject_reason is None:
            by_role.setdefault(s.role, []).append(s)
    config = curate_dedup.MinHashConfig(verify_threshold=threshold)
    for group in by_role.values():
        by_id = {s.id: s for s in group}
        for cluster in curate_dedup.near_duplicate_clusters([(s.id, s.text) for s in group], config):
            for other in cluster[1:]:
                by_id[other].reject("near_duplicate", f"of {cluster[0]}")
                dropped += 1
    return dropped


def _decontam_index(dcfg: decontam.DecontamConfig, cache_dir: str | None) -> decontam.DecontamIndex:
    """The curation stage's benchmark index, loaded from ``cache_dir`` when an equal one was saved there."""
    if cache_dir is None:
        return decontam.build_index(dcfg)
    key = json.dumps({"benchmarks": list(dcfg.benchmarks), "ngram_size": dcfg.ngram_size,
                      "min_item_tokens": dcfg.min_item_tokens, "max_items_per_ngram": dcfg.max_items_per_ngram,
                      "code": dcfg.code is not None}, sort_keys=True)
    prefix = os.path.join(cache_dir, "decontam-" + hashlib.sha1(key.encode()).hexdigest()[:12])
    if os.path.exists(prefix + ".npz") and os.path.exists(prefix + ".json"):
        return decontam.DecontamIndex.load(prefix)
    index = decontam.build_index(dcfg)
    os.makedirs(cache_dir, exist_ok=True)
    index.save(prefix)
    return index


def decontaminate(samples: Sequence[Sample], config: PostprocessConfig, cache_dir: str | None = None) -> dict:
    """Rejects samples that overlap benchmark items, with the curation stage's check
    (``textbooks.curate.decontam``: 13-gram overlap, and for exercises optionally phi-1's embedding + AST
    similarity against benchmark solutions).

    Args:
        samples: the samples (already rejected ones are skipped).
        config: ``decontaminate``, ``decontamination_benchmarks`` (empty: the curation defaults: HumanEval,
            MBPP, GSM8K and the phi-1.5 suite) and ``decontaminate_code``.
        cache_dir: where the benchmark index is saved and reused (building it reads every benchmark).

    Returns:
        ``{"status": "applied"|"off"|"failed", "dropped": n, ...}``; when the check cannot run,
        the reason is logged and returned (the run's summary and manifest show it) and nothing is dropped.
    """
    if not config.decontaminate:
        return {"status": "off", "dropped": 0}
    benchmarks = tuple(config.decontamination_benchmarks) or tuple(decontam.DEFAULT_BENCHMARKS)
    dcfg = decontam.DecontamConfig(benchmarks=benchmarks,
                                   code=decontam.CodeDecontamConfig() if config.decontaminate_code else None)
    try:
        index = _decontam_index(dcfg, cache_dir)
    except Exception as e:  # noqa: BLE001 - missing benchmark files must not lose a finished run
        logger.error("decontamination failed to load the benchmarks (%s: %s); outputs were NOT checked: run "
                     "`textbooks curate` on the shards before training", type(e).__name__, e)
        return {"status": "failed", "dropped": 0, "error": f"{type(e).__name__}: {e}"}
    dropped = 0
    for s in samples:
        if s.reject_reason is not None:
            continue
        match = decontam.find_contamination(s.text, index, dcfg, is_python=bool(s.template_options.get("syntax_check")))
        if match:
            s.meta["contamination"] = match
            s.reject("contaminated", f"{match['benchmark']}:{match['item_id']} ({match['method']})")
            dropped += 1
    return {"status": "applied", "dropped": dropped, "benchmarks": list(benchmarks)}


def process(samples: Sequence[Sample], config: PostprocessConfig,
            test_runner: Callable[[list[str]], list[Any]] | None = None, cache_dir: str | None = None) -> dict:
    """Runs every step over ``samples`` (in place); returns counts by outcome and reason.

    Args:
        samples: the outputs.
        config: the settings.
        test_runner: replaces the sandbox for executing exercises.
        cache_dir: where the decontamination index is cached.
    """
    for s in samples:
        check_sample(s, config)
    trimmed = sum("trimmed_loop" in s.meta.get("postprocess", {}) for s in samples)
    executed = run_exercise_tests(samples, config, test_runner) if config.run_tests else 0
    dups = near_dedup(samples, config.near_dup_threshold) if config.near_dedup else 0
    decon = decontaminate(samples, config, cache_dir)
    reasons: dict[str, int] = {}
    for s in samples:
        if s.reject_reason:
            reasons[s.reject_reason] = reasons.get(s.reject_reason, 0) + 1
    return {"input": len(samples), "kept": sum(s.reject_reason is None for s in samples),
            "rejected": sum(reasons.values()), "reasons": dict(sorted(reasons.items())),
            "trimmed_loops": trimmed, "exercises_executed": executed, "near_duplicates": dups,
            "decontamination": decon}

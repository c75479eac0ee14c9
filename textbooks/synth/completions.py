"""The teacher's completions of every prompt, resumably: prompt manifest, append-only part files, response cache.

A run lives in one folder::

    <run_dir>/run.json                 what the run is (endpoint, model, templates, sampling; never the API key)
    <run_dir>/prompts.jsonl            the manifest: every prompt with its id, written (atomically) first
    <run_dir>/parts/part-*.jsonl       completions, one JSON line per prompt id, appended and flushed per line;
                                       one new file per process, so a crash can only tear the last line of the
                                       file that process was writing
    <run_dir>/failures.jsonl           prompts that failed in some attempt, with the error (retried on rerun)
    <run_dir>/cache.sqlite             (model, prompt, sampling) -> completion, so nothing is paid for twice
    <run_dir>/.lock                    held (flock) while a process works on the run

Running again skips the prompt ids already in the part files; a torn last line is ignored and its prompt is
generated again. :func:`collect_outputs` merges the part files (first answer per id wins) for finalizing
(:mod:`textbooks.synth.finalize`). Progress goes through :class:`textbooks.progress.Progress`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
from typing import Any, Iterator, Mapping, Sequence

from textbooks.progress import Progress
from textbooks.serve import client as client_lib
from textbooks.serve.answers import Usage
from textbooks.synth.prompts import PromptSpec

logger = logging.getLogger(__name__)

MANIFEST = "prompts.jsonl"
RUN_INFO = "run.json"
PARTS = "parts"
FAILURES = "failures.jsonl"
CACHE = "cache.sqlite"


class RunError(RuntimeError):
    """The run cannot go on (manifest mismatch, locked folder, endpoint down, too many failures)."""


@dataclasses.dataclass
class RunResult:
    """What one call of :func:`execute` did."""

    total: int
    done_before: int
    completed: int
    cached: int
    failed: int
    failure_reasons: dict[str, int]
    client_stats: dict
    elapsed_s: float

    @property
    def remaining(self) -> int:
        return self.total - self.done_before - self.completed

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "remaining": self.remaining}


class ResponseCache:
    """A sqlite table of completions keyed by a hash of (model, prompt or messages, sampling parameters).

    Args:
        path: the database file (created with its folder).
    """

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
                         "created REAL NOT NULL)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(model: str, spec: PromptSpec) -> str:
        body = {"model": model, "format": spec.format, "prompt": spec.prompt, "messages": spec.messages,
                "sampling": spec.sampling}
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO completions (key, value, created) VALUES (?, ?, ?)",
                         (key, json.dumps(value, ensure_ascii=False), time.time()))
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    def close(self) -> None:
        self._db.close()


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    """Holds an exclusive lock on ``run_dir`` (released by the OS even if the process is killed).

    Raises:
        RunError: another process holds it.
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RunError(f"another process (pid {holder}) is working on {run_dir}; wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _atomic_write_lines(path: str, lines: Sequence[str]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(run_dir: str, specs: Sequence[PromptSpec], info: Mapping[str, Any]) -> list[PromptSpec]:
    """Writes the prompt manifest and run info the first time; later, checks the new specs match.

    Returns:
        The specs of the manifest (the existing one when resuming).

    Raises:
        RunError: the folder holds a run with other prompts (a changed config); the message says how they
            differ and what to do.
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, MANIFEST)
    if os.path.exists(path):
        existing = load_manifest(run_dir)
        old_ids, new_ids = [s.id for s in existing], [s.id for s in specs]
        if old_ids != new_ids:
            only_old, only_new = set(old_ids) - set(new_ids), set(new_ids) - set(old_ids)
            raise RunError(f"{path} lists {len(old_ids)} prompts but this configuration gives {len(new_ids)} "
                           f"({len(only_old)} only in the folder, {len(only_new)} only in the config): the templates, "
                           f"topics, seed or num_samples changed. Use a new output_dir, or restore the config.")
        return existing
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        dup = [i for i, n in collections.Counter(ids).items() if n > 1][:3]
        raise RunError(f"prompt ids repeat ({dup}); this is a bug in prompt expansion")
    _atomic_write_lines(os.path.join(run_dir, RUN_INFO), [json.dumps(dict(info), indent=2, sort_keys=True)])
    _atomic_write_lines(path, [json.dumps(s.to_dict(), ensure_ascii=False, sort_keys=True) for s in specs])
    return list(specs)


def load_manifest(run_dir: str) -> list[PromptSpec]:
    """Reads ``prompts.jsonl``.

    Raises:
        RunError: missing or unreadable (names the file and line).
    """
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.exists(path):
        raise RunError(f"{path} does not exist: this folder holds no generation run")
    specs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                specs.append(PromptSpec.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise RunError(f"{path}:{lineno}: unreadable manifest line ({e}); the manifest is written "
                               f"atomically, so the file was edited by hand") from None
    return specs


def iter_part_lines(run_dir: str, stats: collections.Counter | None = None) -> Iterator[dict]:
    """Yields the completion objects of every part file in name order; torn or bad lines are counted and skipped."""
    parts_dir = os.path.join(run_dir, PARTS)
    if not os.path.isdir(parts_dir):
        return
    for name in sorted(os.listdir(parts_dir)):
        if not name.endswith(".jsonl"):
            continue
        path = os.path.join(parts_dir, name)
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    logger.info("%s:%d: ignoring a torn last line (the writer was interrupted)", path, lineno)
                    if stats is not None:
                        stats["torn_lines"] += 1
                    continue
                try:
                    obj = json.loads(raw)
                    if not isinstance(obj, dict) or not isinstance(obj.get("prompt_id"), str) or \
                            not isinstance(obj.get("text"), str):
                        raise ValueError("missing prompt_id or text")
                except ValueError as e:
                    logger.warning("%s:%d: skipping a bad part line (%s)", path, lineno, e)
                    if stats is not None:
                        stats["bad_lines"] += 1
                    continue
                yield obj


def collect_outputs(run_dir: str, stats: collections.Counter | None = None) -> dict[str, dict]:
    """Prompt id -> completion object, first answer per id (later duplicates are counted in ``stats``)."""
    out: dict[str, dict] = {}
    for obj in iter_part_lines(run_dir, stats):
        if obj["prompt_id"] in out:
            if stats is not None:
                stats["duplicate_ids"] += 1
            continue
        out[obj["prompt_id"]] = obj
    return out


class _PartWriter:
    """Appends completion lines to this process's part file; flush per line, fsync every ``fsync_every``."""

    def __init__(self, run_dir: str, fsync_every: int = 16):
        parts_dir = os.path.join(run_dir, PARTS)
        os.makedirs(parts_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.path = os.path.join(parts_dir, f"part-{stamp}-{os.getpid()}-{os.urandom(3).hex()}.jsonl")
        self._f = open(self.path, "ab")
        self._pending = 0
        self.fsync_every = max(1, fsync_every)
        self.count = 0

    def write(self, obj: Mapping[str, Any]) -> None:
        self._f.write((json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
        self._f.flush()
        self.count += 1
        self._pending += 1
        if self._pending >= self.fsync_every:
            os.fsync(self._f.fileno())
            self._pending = 0

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if self.count == 0:
            os.remove(self.path)


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e


def _failure_kind(error: BaseException) -> str:
    if isinstance(error, client_lib.APIStatusError):
        return f"http_{error.status}"
    if isinstance(error, client_lib.RetriesExhaustedError):
        return "retries_exhausted"
    return type(error).__name__


async def execute(run_dir: str, client: client_lib.OpenAIClient, *, cache: ResponseCache | None = None,
                  progress: Progress | None = None, max_failure_rate: float = 0.5, min_attempts_for_rate: int = 20,
                  fsync_every: int = 16, workers: int | None = None) -> RunResult:
    """Generates every prompt of the manifest that has no completion yet.

    Args:
        run_dir: the run folder (its manifest must exist: see :func:`write_manifest`).
        client: the teacher client.
        cache: response cache (None: no cache).
        progress: progress display (None: a silent one).
        max_failure_rate: abort when more than this fraction of the prompts attempted in this process failed
            (after ``min_attempts_for_rate`` attempts): something is systematically wrong.
        fsync_every: fsync the part file every this many lines (each line is flushed to the OS at once).
        workers: coroutines pulling prompts (default ``2 * client.concurrency``).

    Returns:
        A :class:`RunResult`; prompts that failed are in ``failures.jsonl`` and are retried by the next run.

    Raises:
        RunError: the folder is locked by another process, the endpoint is unreachable, a fatal 4xx
            (401/403/404: key, permission or model name), or too many failures.
    """
    start = time.monotonic()
    with run_lock(run_dir):
        specs = load_manifest(run_dir)
        done = set(collect_outputs(run_dir))
        pending = [s for s in specs if s.id not in done]
        done_before = len(specs) - len(pending)
        progress = progress or Progress(len(specs), stream=None)
        progress.done = progress.already_done = done_before
        writer = _PartWriter(run_dir, fsync_every)
        failures_f = open(os.path.join(run_dir, FAILURES), "a", encoding="utf-8")
        counts = collections.Counter()
        reasons: collections.Counter = collections.Counter()
        queue = collections.deque(pending)

        def record_failure(spec: PromptSpec, error: BaseException) -> None:
            kind = _failure_kind(error)
            reasons[kind] += 1
            counts["failed"] += 1
            failures_f.write(json.dumps({"prompt_id": spec.id, "kind": kind, "error": str(error)[:2000],
                                         "time": time.time()}) + "\n")
            failures_f.flush()
            progress.update(failed=1)
            attempted = counts["completed"] + counts["failed"]
            if attempted >= min_attempts_for_rate and counts["failed"] > max_failure_rate * attempted:
                raise RunError(f"{counts['failed']} of {attempted} prompts failed (more than "
                               f"{max_failure_rate:.0%}); most common: {reasons.most_common(3)}; last error: {error}")

        async def one(spec: PromptSpec) -> None:
            key = ResponseCache.key(client.model, spec) if cache is not None else None
            hit = cache.get(key) if cache is not None else None
            if hit is not None:
                result, cached = hit, True
            else:
                try:
                    if spec.format == "chat":
                        c = await client.chat(spec.messages, **spec.sampling)
                    else:
                        c = await client.complete(spec.prompt, **spec.sampling)
                except client_lib.EndpointUnreachableError as e:
                    raise RunError(str(e)) from e
                except client_lib.APIStatusError as e:
                    if e.fatal:
                        raise RunError(f"the endpoint refused the run: {e}. Check the model name, the API key "
                                       f"variable ({client.api_key_env}) and permissions.") from e
                    record_failure(spec, e)
                    return
                except client_lib.RetriesExhaustedError as e:
                    record_failure(spec, e)
                    return
                result = {"text": c.text, "finish_reason": c.finish_reason, "model": c.model,
                          "usage": c.usage.to_dict() if c.usage else None, "attempts": c.attempts,
                          "latency_s": round(c.latency_s, 4)}
                cached = False
                if cache is not None:
                    cache.put(key, result)
            writer.write({**result, "prompt_id": spec.id, "cached": cached, "time": time.time()})
            counts["completed"] += 1
            counts["cached"] += cached
            usage = result.get("usage") or {}
            progress.update(done=1, cached=int(cached), prompt_tokens=0 if cached else usage.get("prompt_tokens", 0),
                            completion_tokens=0 if cached else usage.get("completion_tokens", 0),
                            cost=0.0 if cached or not usage else client.pricing.cost(Usage.from_dict(usage)))

        async def worker() -> None:
            while queue:
                await one(queue.popleft())

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(len(pending), workers or 2 * client.concurrency)):
                    group.create_task(worker())
        except* Exception as eg:
            errors = list(_leaves(eg))
            raise next((e for e in errors if isinstance(e, RunError)), errors[0]) from None
        finally:
            writer.close()
            failures_f.close()
            progress.close()
    return RunResult(total=len(specs), done_before=done_before, completed=counts["completed"], cached=counts["cached"],
                     failed=counts["failed"], failure_reasons=dict(reasons), client_stats=client.stats.to_dict(),
                     elapsed_s=round(time.monotonic() - start, 3))

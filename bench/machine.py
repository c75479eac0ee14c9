"""The conditions a benchmark ran under, and whether its headline ratio may be reported.

A ratio taken while other jobs share the cores is not a result: a loaded machine slows multi-threaded peers
(torch) more than single-threaded ones, so load can flip a comparison. Every benchmark here records, in its
JSON and on its last line:

* the date, the CPU model and the core count;
* the 1-minute load average when :class:`Conditions` is created (after waiting up to ``--wait_quiet``
  seconds for it to fall under :data:`QUIET_LOAD`; benchmarks create it before they import or start anything
  heavy, since the load average counts their own start-up too) and after the last round (after letting the
  benchmark's own load decay, up to ``--settle`` seconds);
* for each round, the cores that *other* processes kept busy while it ran: the machine's busy time from
  ``/proc/stat`` minus the CPU time of this process and its children, over the round's wall time.

The run is *quiet* when the load was under :data:`QUIET_LOAD` before and after and no round saw other
processes use more than :data:`QUIET_FOREIGN_CORES` cores. A busy run still writes its figures, but its
headline is marked ``busy`` and the ratio is printed with ``NOT A HEADLINE`` beside it.

A benchmark whose contender starts worker processes that outlive their parents (Beam's SDK workers run under
``/bin/sh -c``) calls :func:`adopt_orphans` in the contender's process and :func:`reap_orphans` before it
exits, so those workers' CPU time counts as the round's own rather than as other processes' load.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import resource
import time
from typing import Any

QUIET_LOAD = 0.5
QUIET_FOREIGN_CORES = 0.25


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _busy_seconds() -> float | None:
    """Seconds all cores spent busy since boot (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _descendants_cpu_seconds() -> float:
    """CPU seconds of running descendants of this process (servers, worker pools), read from /proc."""
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry)] = int(rest[1])
        cpu[int(entry)] = (int(rest[11]) + int(rest[12])) / tick
    total = 0.0
    for pid in cpu:
        p = parents.get(pid)
        while p and p != me:
            p = parents.get(p)
        if p == me and pid != me:
            total += cpu[pid]
    return total


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime + _descendants_cpu_seconds()


def _wait_for_load(limit_s: float) -> float:
    """Waits up to ``limit_s`` seconds for the 1-minute load average to fall under QUIET_LOAD; returns it."""
    deadline = time.monotonic() + max(limit_s, 0.0)
    load = os.getloadavg()[0]
    while load >= QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every benchmark shares: how long to wait for a quiet machine before and after."""
    parser.add_argument("--wait_quiet", type=float, default=0.0,
                        help=f"seconds to wait for the load average to fall under {QUIET_LOAD} before starting")
    parser.add_argument("--settle", type=float, default=150.0,
                        help="seconds to let the load average decay after the last round before reading it")


class Conditions:
    """Records the machine's conditions around a benchmark's rounds.

    Usage::

        cond = Conditions(args.wait_quiet)
        for r in range(rounds):
            with cond.round():
                ...  # one round of every contender
        result["machine"] = cond.finish(args.settle)
        print(cond.headline("ours/torch", ratio))
    """

    def __init__(self, wait_quiet: float = 0.0):
        self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.load_before = _wait_for_load(wait_quiet)
        self.rounds: list[dict[str, float]] = []
        self.load_after: float | None = None

    def round(self) -> "_Round":
        return _Round(self)

    @property
    def quiet(self) -> bool:
        foreign = [r["other_cores_busy"] for r in self.rounds if r.get("other_cores_busy") is not None]
        return (self.load_before < QUIET_LOAD and (self.load_after is None or self.load_after < QUIET_LOAD)
                and all(f <= QUIET_FOREIGN_CORES for f in foreign))

    def finish(self, settle: float = 150.0) -> dict[str, Any]:
        """Reads the load after the run (letting our own load decay first) and returns the record."""
        self.load_after = _wait_for_load(settle)
        return self.record()

    def record(self) -> dict[str, Any]:
        return {"date": self.started, "cpu_model": cpu_model(), "cpus": os.cpu_count(),
                "platform": platform.platform(), "load_average_before": round(self.load_before, 2),
                "load_average_after": None if self.load_after is None else round(self.load_after, 2),
                "rounds": self.rounds, "quiet": self.quiet,
                "quiet_rule": f"load average < {QUIET_LOAD} before and after, other processes <= "
                              f"{QUIET_FOREIGN_CORES} cores busy in every round"}

    def headline(self, label: str, value: float, unit: str = "x") -> str:
        """One line for the benchmark's headline figure, marked when the machine was busy."""
        text = f"{label}: {value:.2f}{unit}"
        where = (f"[{self.started}, {cpu_model()}, load {self.load_before:.2f} -> "
                 f"{'?' if self.load_after is None else f'{self.load_after:.2f}'}]")
        if self.quiet:
            return f"{text} {where}"
        worst = max((r.get("other_cores_busy") or 0.0 for r in self.rounds), default=0.0)
        return (f"{text} NOT A HEADLINE: the machine was busy {where}, other processes kept up to "
                f"{worst:.2f} cores busy")


class _Round:
    def __init__(self, cond: Conditions):
        self.cond = cond

    def __enter__(self) -> "_Round":
        self.t0, self.busy0, self.own0 = time.monotonic(), _busy_seconds(), _own_cpu_seconds()
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc) -> None:
        wall = time.monotonic() - self.t0
        busy1, own1 = _busy_seconds(), _own_cpu_seconds()
        other = None
        if self.busy0 is not None and busy1 is not None and wall > 0:
            other = max(0.0, ((busy1 - self.busy0) - (own1 - self.own0)) / wall)
        self.cond.rounds.append({"seconds": round(wall, 3), "load_average_start": round(self.load0, 2),
                                 "load_average_end": round(os.getloadavg()[0], 2),
                                 "other_cores_busy": None if other is None else round(other, 3)})


_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> bool:
    """Makes this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``): a
    worker whose parent exits first (Beam starts each SDK worker under ``/bin/sh -c``) is re-parented here
    instead of to init, so a sampler of this process's descendants (RSS) still sees it and, once :func:`reap_orphans` waits for it, its CPU
    time is in this process's ``RUSAGE_CHILDREN`` and so in the round's own CPU time (:class:`Conditions`)
    rather than counted as another process's load. Returns whether the kernel accepted it."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(timeout: float = 60.0) -> int:
    """Waits for every remaining child (adopted orphans included; after ``timeout`` seconds they are killed:
    they are this process's own workers) so that their CPU time is accounted; returns how many there were."""
    import psutil

    children = psutil.Process().children()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=10)
    while True:  # zombies psutil did not list
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                break
        except ChildProcessError:
            break
    return len(children)

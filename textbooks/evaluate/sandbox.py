"""Runs untrusted, model-written Python programs in isolation, one process tree per program.

Every program runs through :mod:`textbooks.evaluate._jail` in a fresh session, with a wall-clock deadline
enforced here (the whole process group is SIGKILLed at the deadline) and captured, size-capped stdout/stderr.
What the isolation guarantees depends on what the kernel permits; :func:`probe_isolation` finds out once per
process by running a trivial program, and :meth:`Sandbox.isolation` reports it. How a run ended (status, error
type) is decided by :func:`textbooks.evaluate.execution.classify`.

Mode ``namespaces`` (the evaluator runs as root, or has CAP_SYS_ADMIN and CAP_SETUID):
  * **network** - a new network namespace with only a loopback interface that is down: connecting anywhere,
    127.0.0.1 included, fails with ENETUNREACH. This is kernel isolation, not a Python patch.
  * **file system** - a new mount namespace; the program's root is a read-only tmpfs holding read-only bind
    mounts of the system folders and the interpreter's prefix only (``pivot_root`` then the old root is
    detached). The project tree, home folders and the host's /tmp do not exist for it. The one writable place
    is ``/sandbox`` (cwd and HOME; ``/tmp`` points into it), a size-capped tmpfs that vanishes with the run.
  * **identity** - the program runs under an unprivileged uid/gid of its own (one per pool slot, not in the
    password database), with ``no_new_privs`` (set-uid binaries cannot raise it back) and no capabilities. It
    cannot signal or ptrace the evaluator (different uid, and host pids are invisible in its pid namespace).
  * **processes** - a new pid namespace: when the program's init exits or is killed, the kernel kills every
    process left in it, so forks, daemons and ``setsid`` escapes cannot outlive the run. RLIMIT_NPROC counts
    processes per real uid, which is why each slot has its own uid (a fork bomb in one program cannot starve
    the evaluator or the other slots).
  * **resources** - RLIMIT_CPU (SIGXCPU), RLIMIT_AS (MemoryError), RLIMIT_FSIZE (SIGXFSZ), RLIMIT_NOFILE,
    no core files; stdout and stderr are capped (the run is killed once a stream exceeds the cap).
  * **lifetime** - the launcher and the namespace's init carry PR_SET_PDEATHSIG=SIGKILL, so the tree dies with
    the evaluator; after each run any process still owned by the slot's uid is killed.
  Not provided: seccomp system call filtering and a cgroup memory/pid controller; the kernel surface is that of
  an ordinary unprivileged process.

Mode ``rlimits`` (fallback when namespaces are refused, e.g. an unprivileged user): the same resource limits,
a new session, a private temporary working directory and HOME, isolated interpreter flags (``-I``: no
PYTHONPATH, no user site), and ``socket`` replaced by a function that raises. The program runs as the
evaluator's user and can read whatever that user can; a determined program can undo the socket guard (e.g.
via ``_socket``) and RLIMIT_NPROC is shared with the evaluator's user. Use it only for trusted output.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import os
import selectors
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, Iterable, Sequence

from textbooks.evaluate import _launchers
from textbooks.evaluate.execution import FAILED, PASSED, SANDBOX_ERROR, ExecutionResult, classify

logger = logging.getLogger(__name__)

# Unprivileged uids for the programs: uid_base + pid * SLOTS_PER_PROCESS + slot, so that concurrent runs (in this
# process or in another evaluator process) never share a uid. None of them is in the password database.
DEFAULT_UID_BASE = 910_000
SLOTS_PER_PROCESS = 64
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits for one program run.

    Attributes:
        timeout_s: wall-clock limit; the process tree is killed at the deadline.
        cpu_s: RLIMIT_CPU in seconds (default: the wall-clock limit rounded up, plus one).
        memory_mb: RLIMIT_AS (address space) in MiB.
        max_processes: RLIMIT_NPROC for the program's uid (threads count too).
        file_size_mb: RLIMIT_FSIZE in MiB (largest file the program may write).
        max_open_files: RLIMIT_NOFILE.
        tmpfs_mb: size of the writable /sandbox tmpfs (namespaces mode).
        output_limit_bytes: cap on each of stdout and stderr; beyond it the run is killed.
        isolation: 'auto' (namespaces if permitted, else rlimits), 'namespaces' or 'rlimits'.
        uid_base: first uid of the per-slot unprivileged users (namespaces mode).
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    max_processes: int = 32
    file_size_mb: int = 16
    max_open_files: int = 256
    tmpfs_mb: int = 64
    output_limit_bytes: int = 1 << 20
    isolation: str = "auto"
    uid_base: int = DEFAULT_UID_BASE

    def __post_init__(self):
        if self.isolation not in ("auto", "namespaces", "rlimits"):
            raise ValueError(f"SandboxConfig.isolation={self.isolation!r}; use 'auto', 'namespaces' or 'rlimits'")
        if self.timeout_s <= 0:
            raise ValueError(f"SandboxConfig.timeout_s must be positive, got {self.timeout_s}")


def _real_python() -> str:
    """The base interpreter (not a venv shim), so that the venv's packages are not on the program's path."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def _ro_binds(python: str) -> list[str]:
    binds = [d for d in _SYSTEM_DIRS if os.path.lexists(d)]
    for extra in (os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(python))):
        if not any(extra == b or extra.startswith(b.rstrip("/") + "/") for b in binds if not os.path.islink(b)):
            binds.append(extra)
    return binds


class _UidSlots:
    """Hands out this process's program uids; a uid is used by at most one running program at a time."""

    def __init__(self):
        self._cond = threading.Condition()
        self._free = list(range(SLOTS_PER_PROCESS))

    @contextlib.contextmanager
    def take(self, uid_base: int):
        with self._cond:
            while not self._free:
                self._cond.wait()
            slot = self._free.pop()
        try:
            yield uid_base + os.getpid() * SLOTS_PER_PROCESS + slot
        finally:
            with self._cond:
                self._free.append(slot)
                self._cond.notify()


_UID_SLOTS = _UidSlots()
_PROBE_LOCK = threading.Lock()
_PROBED: dict[str, str] = {}


class Sandbox:
    """Runs programs under :class:`SandboxConfig` limits, optionally many at once.

    Args:
        config: the limits (defaults: 10 s, 1 GiB, 32 processes).
        workers: how many programs may run concurrently (default: the number of CPUs).
    """

    def __init__(self, config: SandboxConfig | None = None, workers: int | None = None):
        self.config = config or SandboxConfig()
        self.workers = max(1, int(workers or os.cpu_count() or 1))
        self.python = _real_python()
        self._running = threading.BoundedSemaphore(self.workers)
        self._mode: str | None = None
        self._server: _launchers.Zygote | None | bool = None  # False: not available
        self._server_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The isolation mode in use ('namespaces' or 'rlimits'), probed on first use."""
        if self._mode is None:
            self._mode = probe_isolation(self.config.isolation, self)
        return self._mode

    def isolation(self) -> dict:
        """Describes the isolation layers in effect (for reports)."""
        if self.mode == "namespaces":
            return {
                "mode": "namespaces",
                "network": "network namespace (loopback down)",
                "filesystem": "mount namespace; pivot_root into a read-only minimal root; writable tmpfs /sandbox",
                "identity": f"unprivileged uid {self.config.uid_base}+slot, no_new_privs",
                "processes": "pid namespace (all descendants killed on exit), RLIMIT_NPROC per slot uid",
                "limits": self._limits_text(),
            }
        return {
            "mode": "rlimits",
            "network": "socket module disabled in Python (bypassable)",
            "filesystem": "private temporary cwd/HOME only; the evaluator user's files stay readable",
            "identity": "evaluator's user",
            "processes": "new session, killed as a process group; RLIMIT_NPROC shared with the user",
            "limits": self._limits_text(),
        }

    def _limits_text(self) -> str:
        c = self.config
        return (f"wall {c.timeout_s:g}s, cpu {self._cpu_s()}s, address space {c.memory_mb} MiB, "
                f"{c.max_processes} processes, files {c.file_size_mb} MiB, output {c.output_limit_bytes} B")

    def _cpu_s(self) -> int:
        return int(self.config.cpu_s or math.ceil(self.config.timeout_s) + 1)

    # ------------------------------------------------------------------------------------------------------
    def run(self, program: str, *, timeout_s: float | None = None) -> ExecutionResult:
        """Runs one program to completion (or to a limit) and returns its result. Never raises for program faults."""
        mode = self.mode
        with self._running, _UID_SLOTS.take(self.config.uid_base) as uid:
            return self._run(program, mode, uid, timeout_s or self.config.timeout_s)

    def run_many(self, programs: Sequence[str], *, progress: Callable[[int, int], None] | None = None,
                 timeout_s: float | None = None) -> list[ExecutionResult]:
        """Runs ``programs`` on a bounded pool of ``workers`` threads; results are in input order."""
        self.mode  # Probe once, before the pool starts.
        results: list[ExecutionResult | None] = [None] * len(programs)
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox") as pool:
            futures = {pool.submit(self.run, p, timeout_s=timeout_s): i for i, p in enumerate(programs)}
            for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(done, len(programs))
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------------------
    def _config_for(self, mode: str, uid: int, workdir: str, program_path: str) -> dict:
        c = self.config
        nproc = c.max_processes
        if mode == "rlimits":
            # RLIMIT_NPROC counts all of this user's processes: allow the current ones plus the budget.
            nproc += len(_launchers.processes_of_uid(os.getuid()))
        home = "/sandbox" if mode == "namespaces" else os.path.join(workdir, "work")
        return {
            "mode": mode,
            "python": self.python,
            "program_path": program_path,
            "workdir": os.path.join(workdir, "work"),
            "newroot": os.path.join(workdir, "root"),
            "uid": uid,
            "gid": uid,
            "ro_binds": _ro_binds(self.python),
            "tmpfs_bytes": c.tmpfs_mb << 20,
            "limits": {"cpu_s": self._cpu_s(), "as_bytes": c.memory_mb << 20, "nproc": nproc,
                       "fsize_bytes": c.file_size_mb << 20, "nofile": c.max_open_files},
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home + "/tmp",
                    "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
        }

    def _run(self, program: str, mode: str, uid: int, timeout_s: float) -> ExecutionResult:
        workdir = tempfile.mkdtemp(prefix="textbooks-sandbox-")
        start = time.monotonic()
        try:
            program_path = os.path.join(workdir, "program.py")
            with open(program_path, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(program)
            os.mkdir(os.path.join(workdir, "root"), 0o755)
            os.mkdir(os.path.join(workdir, "work"), 0o700)
            cfg = self._config_for(mode, uid, workdir, program_path)
            config_path = os.path.join(workdir, "config.json")
            with open(config_path, "w", encoding="utf-8") as f:
                json.dump(cfg, f)
            return self._launch(cfg, config_path, timeout_s, start)
        except Exception as e:  # The sandbox itself failed; record it for this item, keep the run going.
            logger.exception("sandbox failure")
            return ExecutionResult(status=SANDBOX_ERROR, error_type=type(e).__name__, stderr=str(e),
                                   duration_s=time.monotonic() - start, mode=mode)
        finally:
            if mode == "namespaces":
                _launchers.kill_uid(uid)
            shutil.rmtree(workdir, ignore_errors=True)

    def _start(self, cfg: dict, config_path: str) -> "_launchers.Launcher":
        zygote = self._zygote() if cfg["mode"] == "namespaces" else None
        if zygote is not None:
            try:
                return zygote.spawn(config_path, cfg)
            except OSError as e:  # the server died: start launchers one by one from now on
                logger.warning("sandbox launcher server failed (%s); starting one launcher per program", e)
                self._server = False
        return _launchers.PopenLauncher(self.python, config_path, cfg)

    def _zygote(self) -> "_launchers.Zygote | None":
        with self._server_lock:
            if self._server is None:
                try:
                    self._server = _launchers.Zygote(self.python)
                except OSError as e:
                    logger.warning("cannot start the sandbox launcher server (%s)", e)
                    self._server = False
            return self._server or None

    def close(self) -> None:
        """Stops the launcher server (also happens when the evaluator process exits)."""
        with self._server_lock:
            if self._server:
                self._server.close()
            self._server = None

    def _launch(self, cfg: dict, config_path: str, timeout_s: float, start: float) -> ExecutionResult:
        limit = self.config.output_limit_bytes
        launcher = self._start(cfg, config_path)
        buffers = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray()}
        sel = selectors.DefaultSelector()
        for name, fd in launcher.fds.items():
            sel.register(fd, selectors.EVENT_READ, name)
        deadline = start + timeout_s
        timed_out = overflow = False
        exited_at = None
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    timed_out = not launcher.exited() or exited_at is None
                    break
                if exited_at is None and launcher.exited():
                    exited_at = now
                if exited_at is not None and now - exited_at > 0.5:
                    break  # Something outside the tree still holds a pipe (rlimits mode); stop reading.
                for key, _ in sel.select(timeout=min(0.1, deadline - now)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = buffers[key.data]
                    room = (limit if key.data != "status" else 1 << 16) - len(buf)
                    buf += chunk[:max(room, 0)]
                    if len(chunk) > room:
                        overflow = True
                if overflow:
                    break
        finally:
            if not launcher.exited():
                launcher.stop()
            launcher.wait()
            try:  # any status written before the end
                os.set_blocking(launcher.fds["status"], False)
                buffers["status"] += os.read(launcher.fds["status"], 1 << 16)
            except OSError:
                pass
            sel.close()
            launcher.close()
        duration = time.monotonic() - start
        stdout = buffers["stdout"].decode("utf-8", errors="replace")
        stderr = buffers["stderr"].decode("utf-8", errors="replace")
        status = {}
        text = buffers["status"].decode("utf-8", errors="replace").strip()
        if text:
            try:
                status = json.loads(text.splitlines()[0])
            except ValueError:
                status = {"setup_error": f"unreadable status {text[:200]!r}"}
        result = ExecutionResult(status=FAILED, stdout=stdout, stderr=stderr, truncated=overflow,
                                 duration_s=duration, cpu_s=status.get("cpu_s"), mode=cfg["mode"],
                                 returncode=status.get("exit_code"), signal=status.get("signal"))
        return classify(result, status, timed_out=timed_out, overflow=overflow)


def probe_isolation(requested: str = "auto", sandbox: Sandbox | None = None) -> str:
    """Returns the strongest isolation mode that works here ('namespaces' or 'rlimits'); cached per process.

    Raises:
        RuntimeError: 'namespaces' was requested explicitly and the kernel refused it (the message says why).
    """
    if requested == "rlimits":
        return "rlimits"
    with _PROBE_LOCK:
        if "result" in _PROBED:
            mode = _PROBED["result"]
        else:
            box = sandbox or Sandbox()
            with _UID_SLOTS.take(box.config.uid_base) as uid:
                probe = box._run("import os\nprint(os.getuid())\n", "namespaces", uid, 10.0)
            if probe.status == PASSED and probe.stdout.strip() == str(uid):
                mode = "namespaces"
            else:
                why = (probe.stderr or probe.status).strip().splitlines()[-1:] or [probe.status]
                logger.warning("sandbox: namespace isolation is not available here (%s); falling back to rlimits "
                               "(weaker: see textbooks.evaluate.sandbox)", why[0])
                _PROBED["why"] = why[0]
                mode = "rlimits"
            _PROBED["result"] = mode
    if requested == "namespaces" and mode != "namespaces":
        raise RuntimeError(f"namespace sandbox requested but unavailable: {_PROBED.get('why')}; run as root or "
                           "with CAP_SYS_ADMIN+CAP_SETUID, or use SandboxConfig(isolation='rlimits') for trusted code")
    return mode


def run_programs(programs: Iterable[str], config: SandboxConfig | None = None,
                 workers: int | None = None) -> list[ExecutionResult]:
    """Convenience wrapper: runs each program in a fresh :class:`Sandbox` pool."""
    return Sandbox(config, workers).run_many(list(programs))

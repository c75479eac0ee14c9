"""How a sandboxed program run ended: the outcome statuses, :class:`ExecutionResult`, and the classification of
an exit (exit code, signal, resource limit, timeout, output cap, traceback) into one status and error type.

:mod:`textbooks.evaluate.sandbox` runs the programs and fills the results in through :func:`classify`.
"""

from __future__ import annotations

import dataclasses
import re
import signal

# Outcome statuses.
PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
CPU_LIMIT = "cpu_limit"
MEMORY_LIMIT = "memory_limit"
FILE_SIZE_LIMIT = "file_size_limit"
OUTPUT_LIMIT = "output_limit"
KILLED = "killed"
SANDBOX_ERROR = "sandbox_error"



@dataclasses.dataclass
class ExecutionResult:
    """How one program run ended.

    Attributes:
        status: one of passed, failed, timeout, cpu_limit, memory_limit, file_size_limit, output_limit,
            killed, sandbox_error.
        error_type: the exception class of a failure (e.g. 'AssertionError', 'SyntaxError'), or the limit hit.
        returncode: the program's exit code (None when killed by a signal).
        signal: the signal that ended it, if any.
        stdout, stderr: captured text (each at most ``output_limit_bytes``; ``truncated`` says if cut).
        duration_s: wall-clock seconds from launch to exit.
        cpu_s: user+system CPU seconds of the program (as reported by its parent).
        mode: isolation mode used.
    """

    status: str
    error_type: str | None = None
    returncode: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    duration_s: float = 0.0
    cpu_s: float | None = None
    mode: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def to_dict(self, max_chars: int | None = 2000) -> dict:
        d = dataclasses.asdict(self)
        if max_chars is not None:
            d["stdout"] = d["stdout"][-max_chars:]
            d["stderr"] = d["stderr"][-max_chars:]
        return d


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Iteration))\b(?::|$)")


def error_type_from_stderr(stderr: str) -> str | None:
    """Returns the exception class named by the last traceback line of ``stderr`` (e.g. 'AssertionError')."""
    for line in reversed(stderr.strip().splitlines()):
        m = _EXC_LINE.match(line.strip())
        if m:
            return m.group(1).rsplit(".", 1)[-1]
    return None


def classify(result: ExecutionResult, status: dict, *, timed_out: bool, overflow: bool) -> ExecutionResult:
    """Sets ``result.status`` and ``result.error_type`` from how the run ended, the first cause found winning.

    Args:
        result: the run's result with its output, exit code and signal filled in (status still open).
        status: the launcher's status report (``exit_code``, ``signal``, ``cpu_s``; ``setup_error`` when the
            sandbox could not be set up); empty when the launcher wrote none.
        timed_out: the wall-clock deadline passed before the program exited.
        overflow: stdout or stderr went past the output cap.

    Returns:
        ``result``, updated: output limit, then timeout, sandbox set-up error, no status (killed), a signal
        (CPU or file-size limit, else killed), exit code 0 (passed), else failed with the traceback's exception
        class (a MemoryError meaning the memory limit).
    """
    if overflow:
        result.status, result.error_type = OUTPUT_LIMIT, "OutputLimitExceeded"
    elif timed_out:
        result.status, result.error_type = TIMEOUT, "Timeout"
    elif "setup_error" in status:
        result.status, result.error_type = SANDBOX_ERROR, "SandboxSetupError"
        result.stderr = (result.stderr + "\n" + status["setup_error"]).strip()
    elif not status:
        result.status, result.error_type = KILLED, "NoStatus"
    elif result.signal is not None:
        sig = result.signal
        if sig == signal.SIGXCPU:
            result.status, result.error_type = CPU_LIMIT, "CPUTimeLimit"
        elif sig == signal.SIGXFSZ:
            result.status, result.error_type = FILE_SIZE_LIMIT, "FileSizeLimit"
        else:
            result.status = KILLED
            result.error_type = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    elif result.returncode == 0:
        result.status = PASSED
    else:
        exc = error_type_from_stderr(result.stderr)
        if exc == "MemoryError":
            result.status, result.error_type = MEMORY_LIMIT, exc
        else:
            result.status, result.error_type = FAILED, exc or f"ExitCode{result.returncode}"
    return result

"""`textbooks serve` as a child process on the loopback interface: start it, learn its URL, stop it.

The demo starts its teacher this way, and tests start their servers the same way, so there is one place that
knows how the server announces itself (its first stdout line, ``serving NAME on URL``) and how it is stopped
(SIGTERM, then SIGKILL after a grace period)::

    with ServerProcess.start("smollm2-135m-instruct") as server:
        print(server.url)  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from typing import Mapping

ANNOUNCEMENT = "serving "


class ServerStartError(RuntimeError):
    """`textbooks serve` exited or stayed silent before announcing its URL; the message holds its stderr."""


class ServerProcess:
    """A running ``textbooks serve`` child process bound to 127.0.0.1 on a port the kernel picked.

    Attributes:
        proc: the child process.
        url: the OpenAI-compatible base URL (``http://127.0.0.1:PORT/v1``).
        model_name: the name the server answers to (from its announcement).
        started_s: seconds from launch to the announcement (loading the checkpoint, compiling unless
            ``--no_warmup``).
    """

    def __init__(self, proc: subprocess.Popen, url: str, model_name: str, started_s: float):
        self.proc, self.url, self.model_name, self.started_s = proc, url, model_name, started_s

    @classmethod
    def start(cls, checkpoint: str, *args: str, timeout: float = 600.0, cwd: str | None = None,
              env: Mapping[str, str] | None = None, python: str = sys.executable) -> "ServerProcess":
        """Launches ``python -m textbooks.cli serve --checkpoint CHECKPOINT --host 127.0.0.1 --port 0 ARGS``.

        Args:
            checkpoint: what ``serve --checkpoint`` takes (a folder, a ``.gguf`` file or a registered name).
            args: more ``serve`` flags (``--max_batch_size 16``, ``--vocabulary spm8k`` ...).
            timeout: seconds to wait for the announcement.
            cwd, env: the child's working folder and environment (default: this process's).
            python: the interpreter.

        Raises:
            ServerStartError: the server exited, or did not announce itself within ``timeout``; the message
                holds the end of its stderr.
        """
        cmd = [python, "-m", "textbooks.cli", "serve", "--checkpoint", checkpoint, "--host", "127.0.0.1",
               "--port", "0", *args]
        begin = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=dict(os.environ if env is None else env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = begin + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(f"textbooks serve --checkpoint {checkpoint} exited with {proc.returncode} "
                                       f"before serving: {proc.stderr.read()[-3000:]}")
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
                if line.startswith(ANNOUNCEMENT) and " on " in line:
                    name, url = line[len(ANNOUNCEMENT):].rsplit(" on ", 1)
                    return cls(proc, url.strip(), name.strip(), time.monotonic() - begin)
        stop(proc)
        raise ServerStartError(f"textbooks serve --checkpoint {checkpoint} did not announce its URL within "
                               f"{timeout:.0f} s: {proc.stderr.read()[-3000:]}")

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Stops the server (SIGTERM, then SIGKILL after ``grace_s``); returns its exit status."""
        return stop(self.proc, grace_s)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> int | None:
    """Terminates ``proc`` (SIGTERM, then SIGKILL after ``grace_s``) and closes its pipes; returns its status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


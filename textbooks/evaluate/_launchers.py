"""How a sandboxed program is started and stopped: one launcher interpreter per program, or a launcher server.

:class:`PopenLauncher` starts ``python -I -S _jail.py CONFIG STATUS_FD`` per program. :class:`Zygote` runs
``_jail.py --serve`` once and asks it over a Unix socket to fork a launcher per program (saving an interpreter
start-up per run, about half of a trivial run's cost); a forked launcher is watched and stopped through a pidfd,
so a reused pid can never be signalled by mistake. Either way the evaluator reads three pipes (stdout, stderr,
status) and, in namespaces mode, stops a run by killing every process of its uid.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time

JAIL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_jail.py")
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def processes_of_uid(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid == uid:
                pids.append(int(name))
        except OSError:
            continue
    return pids


def kill_uid(uid: int) -> int:
    """SIGKILLs every process owned by ``uid`` (a slot uid, never the evaluator's); returns how many."""
    if uid == os.getuid() or uid == 0:
        return 0
    killed = 0
    for _ in range(3):
        pids = processes_of_uid(uid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        time.sleep(0.01)
    return killed


class Launcher:
    """A started launcher: the read ends of its stdout, stderr and status pipes, and how to end it."""

    fds: dict[str, int]

    def exited(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def wait(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


class PopenLauncher(Launcher):
    """One interpreter per program: ``python -I -S _jail.py CONFIG STATUS_FD`` in a new session."""

    def __init__(self, python: str, config_path: str, cfg: dict):
        self.cfg = cfg
        status_r, status_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                    [python, "-I", "-S", JAIL, config_path, str(status_w)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(status_w,), start_new_session=True, close_fds=True,
                    env=_ENV, cwd="/")
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        self.fds = {"stdout": self.proc.stdout.fileno(), "stderr": self.proc.stderr.fileno(), "status": status_r}

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> None:
        """In namespaces mode the program's processes (the namespace's init included) are killed by uid first,
        so the launcher survives to reap init after the kernel has torn the pid namespace down; the process
        group is the backstop."""
        if self.cfg["mode"] == "namespaces":
            kill_uid(self.cfg["uid"])
            try:
                self.proc.wait(timeout=5.0)
                return
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> None:
        self.proc.wait()

    def close(self) -> None:
        self.proc.stdout.close()
        self.proc.stderr.close()
        try:
            os.close(self.fds["status"])
        except OSError:
            pass


class ForkedLauncher(Launcher):
    """A launcher forked by the :class:`Zygote`, watched through a pidfd (no pid-reuse races)."""

    def __init__(self, pid: int, pidfd: int | None, fds: dict[str, int], cfg: dict):
        self.pid, self.pidfd, self.fds, self.cfg = pid, pidfd, fds, cfg

    def exited(self) -> bool:
        if self.pidfd is None:
            return True
        ready, _, _ = select.select([self.pidfd], [], [], 0)
        return bool(ready)

    def stop(self) -> None:
        kill_uid(self.cfg["uid"])  # init and the program: the namespace goes, then the launcher exits
        if not self._wait(5.0) and self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass

    def _wait(self, timeout: float) -> bool:
        if self.pidfd is None:
            return True
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        return bool(ready)

    def wait(self) -> None:
        if not self._wait(10.0):
            self.stop()
            self._wait(5.0)

    def close(self) -> None:
        super().close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Zygote:
    """The launcher server of :func:`textbooks.evaluate._jail.serve`: forks a launcher per program, which saves
    an interpreter start per run. Requests are serialized by a lock (each takes a fork's time)."""

    def __init__(self, python: str):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                    [python, "-I", "-S", JAIL, "--serve", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                    env=_ENV, cwd="/")
        finally:
            theirs.close()
        self.sock = ours
        self.lock = threading.Lock()

    def spawn(self, config_path: str, cfg: dict) -> ForkedLauncher:
        pipes = [os.pipe() for _ in range(3)]
        try:
            with self.lock:
                socket.send_fds(self.sock, [config_path.encode()], [w for _, w in pipes])
                reply, fds, _, _ = socket.recv_fds(self.sock, 64, 1)
        except BaseException:
            for r, _ in pipes:
                os.close(r)
            raise
        finally:
            for _, w in pipes:
                os.close(w)
        if not reply:
            for r, _ in pipes:
                os.close(r)
            raise OSError("the sandbox launcher server exited")
        names = ("stdout", "stderr", "status")
        return ForkedLauncher(int(reply), fds[0] if fds else None, {n: r for n, (r, _) in zip(names, pipes)}, cfg)

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

"""Launcher that runs one untrusted Python program inside the sandbox (standard library only).

The evaluator starts this file as ``python -I -S _jail.py CONFIG_JSON STATUS_FD`` in a new session, with the
program's stdout/stderr connected to capped pipes, or once as ``python -I -S _jail.py --serve CONTROL_FD``, a
small server that forks one such launcher per request (see :func:`serve`). It is trusted code: it reads the configuration and the program
while it still has the evaluator's privileges, builds the isolation, drops the privileges and execs the program.
Exactly one JSON object describing how the program ended (or why the sandbox could not be built) is written to
``STATUS_FD``.

Process layout, mode ``namespaces`` (needs root / CAP_SYS_ADMIN)::

    launcher (host pid namespace, root)        waits for init, exits with its code
      └─ init (pid 1 of a new pid namespace)   mounts the jail, pivots into it, drops to the slot uid, reaps
           └─ program (slot uid, rlimits)      ``python -I -B /sandbox/main.py``

``unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID)`` gives the program its own
mount table, a network stack with only a loopback interface that is down, private SysV IPC, and its own pids
(the evaluator's processes are invisible to it). When init exits the kernel kills every process left in the pid
namespace, so nothing the program forks outlives it. Init and the launcher both carry ``PR_SET_PDEATHSIG``, so the
whole tree dies with the evaluator.

Mode ``rlimits`` (fallback where namespaces are not permitted) runs the program as the evaluator's own user
with the same resource limits, a private working directory and a guard that disables ``socket``; it cannot hide
the file system or the network at the kernel level.
"""

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PIVOT_ROOT_SYSCALL = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own libc symbols


class SetupError(Exception):
    """The jail could not be built (the message says which step failed)."""


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(source, target, fstype, flags, data=None):
    _check(_libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(),
                       ctypes.c_ulong(flags), data and data.encode()), f"mount {source} on {target}")


def _prctl(option, value):
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def _write_status(fd, status):
    try:
        os.write(fd, (json.dumps(status) + "\n").encode())
    except OSError:
        pass


def _set_limits(limits):
    """Applies the per-program resource limits (called in the program's process, before exec)."""
    pairs = {
        "cpu_s": resource.RLIMIT_CPU,
        "as_bytes": resource.RLIMIT_AS,
        "nproc": resource.RLIMIT_NPROC,
        "fsize_bytes": resource.RLIMIT_FSIZE,
        "nofile": resource.RLIMIT_NOFILE,
    }
    for key, which in pairs.items():
        value = limits.get(key)
        if value is not None:
            resource.setrlimit(which, (int(value), int(value)))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _drop_privileges(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise SetupError("could not drop privileges")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def _build_root(cfg, program):
    """Mounts a minimal read-only root at cfg['newroot'] and pivots into it (runs as pid 1 of the namespace)."""
    root = cfg["newroot"]
    uid, gid = cfg["uid"], cfg["gid"]
    # Keep every mount change inside this namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    for path in cfg["ro_binds"]:
        target = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
            continue
        if not os.path.isdir(path):
            continue
        os.makedirs(target, exist_ok=True)
        _mount(path, target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(root + "/dev", exist_ok=True)
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            open(root + "/dev/" + name, "w").close()
            _mount("/dev/" + name, root + "/dev/" + name, None, MS_BIND)
    os.makedirs(root + "/etc", exist_ok=True)
    with open(root + "/etc/passwd", "w") as f:
        f.write(f"root:x:0:0::/:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}::/sandbox:/usr/sbin/nologin\n")
    with open(root + "/etc/group", "w") as f:
        f.write(f"root:x:0:\nsandbox:x:{gid}:\n")
    with open(root + "/etc/hosts", "w") as f:
        f.write("127.0.0.1 localhost\n")
    # The only writable place: a size-capped tmpfs owned by the program's uid; /tmp points into it.
    os.makedirs(root + "/sandbox")
    _mount("tmpfs", root + "/sandbox", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={int(cfg['tmpfs_bytes'])},mode=0700,uid={uid},gid={gid}")
    os.symlink("/sandbox/tmp", root + "/tmp")
    os.mkdir(root + "/sandbox/tmp")
    os.chown(root + "/sandbox/tmp", uid, gid)
    with open(root + "/sandbox/main.py", "w", encoding="utf-8") as f:
        f.write(program)
    os.chown(root + "/sandbox/main.py", uid, gid)
    os.mkdir(root + "/oldroot")
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    os.chdir(root)
    number = PIVOT_ROOT_SYSCALL.get(os.uname().machine)
    pivoted = False
    if number is not None:
        if _libc.syscall(number, b".", b"oldroot") == 0:
            os.chroot(".")
            _check(_libc.umount2(b"/oldroot", MNT_DETACH), "umount old root")
            pivoted = True
    if not pivoted:  # pivot_root refused (e.g. rootfs); a chroot still hides the host tree from non-root users.
        os.chroot(".")
    os.chdir("/sandbox")
    try:
        _libc.sethostname(b"sandbox", 7)
    except Exception:
        pass


def _wait_program(pid):
    """Reaps children until ``pid`` ends; returns its status dict."""
    while True:
        try:
            got, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return {"exit_code": None, "signal": None, "lost": True}
        except InterruptedError:
            continue
        if got == pid:
            out = {"cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}
            if os.WIFSIGNALED(status):
                out.update(exit_code=None, signal=os.WTERMSIG(status))
            else:
                out.update(exit_code=os.WEXITSTATUS(status), signal=None)
            return out


def _exec_program(cfg, argv):
    _set_limits(cfg["limits"])
    os.execve(argv[0], argv, cfg["env"])


def _run_namespaces(cfg, program, status_fd):
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    _check(_libc.unshare(flags), "unshare(mount, net, ipc, uts, pid namespaces)")
    init = os.fork()
    if init == 0:  # pid 1 of the new namespace.
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _build_root(cfg, program)
            _drop_privileges(cfg["uid"], cfg["gid"])
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the uid change; set again.
            argv = [cfg["python"], "-I", "-S", "-B", "/sandbox/main.py"]
            child = os.fork()
            if child == 0:
                try:
                    os.close(status_fd)
                    _exec_program(cfg, argv)
                except BaseException as e:  # exec failed: report on stderr, distinct code.
                    os.write(2, f"sandbox: exec failed: {e!r}\n".encode())
                finally:
                    os._exit(127)
            _write_status(status_fd, dict(_wait_program(child), mode="namespaces"))
        except BaseException as e:
            _write_status(status_fd, {"setup_error": f"{type(e).__name__}: {e}", "mode": "namespaces"})
        finally:
            os._exit(0)  # Killing pid 1 takes every leftover process of the namespace with it.
    os.close(status_fd)
    while True:
        try:
            _, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    return 0


_GUARD = """\
import runpy, socket, sys
def _no_network(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")
socket.socket = socket.create_connection = socket.socketpair = socket.fromfd = _no_network
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


def _run_rlimits(cfg, program, status_fd):
    workdir = cfg["workdir"]
    with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
        f.write(program)
    with open(os.path.join(workdir, "_guard.py"), "w", encoding="utf-8") as f:
        f.write(_GUARD)
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    os.chdir(workdir)
    child = os.fork()
    if child == 0:
        try:
            os.close(status_fd)
            _exec_program(cfg, [cfg["python"], "-I", "-S", "-B", os.path.join(workdir, "_guard.py")])
        except BaseException as e:
            os.write(2, f"sandbox: exec failed: {e!r}\n".encode())
        finally:
            os._exit(127)
    _write_status(status_fd, dict(_wait_program(child), mode="rlimits"))
    return 0


def _launch(config_path, status_fd):
    """Reads the configuration and the program, then runs it in the configured mode (one launcher)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        with open(config_path, encoding="utf-8") as f:
            cfg = json.load(f)
        with open(cfg["program_path"], encoding="utf-8") as f:
            program = f.read()
        if cfg["mode"] == "namespaces":
            return _run_namespaces(cfg, program, status_fd)
        return _run_rlimits(cfg, program, status_fd)
    except BaseException as e:
        _write_status(status_fd, {"setup_error": f"{type(e).__name__}: {e}"})
        return 0


def serve(control_fd):
    """Forks one launcher per request instead of starting an interpreter per program (saves its start-up).

    Each request on the control socket (AF_UNIX, SOCK_SEQPACKET) is a config path with three file descriptors
    (the program's stdout, stderr and the status pipe). The forked launcher starts a new session, takes those as
    fds 1, 2 and its status fd, and proceeds as :func:`_launch`. The reply is the launcher's pid with a pidfd
    for it (or none if it already ended). The server exits when the evaluator closes its end of the socket (or
    dies); launchers carry PR_SET_PDEATHSIG, so they and their namespaces go with it.
    """
    import socket

    control = socket.socket(fileno=control_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # launchers are reaped by the kernel
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 16, 3)
        except InterruptedError:
            continue
        except OSError:
            break
        if not message:
            for fd in fds:
                os.close(fd)
            break
        pid = os.fork()
        if pid == 0:
            status_fd = fds[2] if len(fds) == 3 else -1
            code = 0
            try:
                control.close()
                os.setsid()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                for fd in (null, fds[0], fds[1]):
                    os.close(fd)
                code = _launch(message.decode(), status_fd)
            except BaseException as e:
                _write_status(status_fd, {"setup_error": f"launcher: {type(e).__name__}: {e}"})
            finally:
                os._exit(code or 0)
        for fd in fds:
            os.close(fd)
        reply_fds = []
        try:
            reply_fds.append(os.pidfd_open(pid))
        except OSError:  # already ended and reaped
            pass
        try:
            socket.send_fds(control, [str(pid).encode()], reply_fds)
        except OSError:
            break
        finally:
            for fd in reply_fds:
                os.close(fd)
    return 0


def main(argv):
    if argv[1] == "--serve":
        return serve(int(argv[2]))
    return _launch(argv[1], int(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))

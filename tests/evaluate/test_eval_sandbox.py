"""The code sandbox: hostile programs are stopped within their limits and leave the evaluator and machine intact."""

import os
import socket
import time
import uuid

import pytest

from textbooks.evaluate import sandbox as sandbox_lib
from textbooks.evaluate.sandbox import Sandbox, SandboxConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sandbox_processes(box: Sandbox) -> list[int]:
    """Live processes owned by this test process's sandbox uids (namespaces mode)."""
    low = box.config.uid_base + os.getpid() * sandbox_lib.SLOTS_PER_PROCESS
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                uid = os.stat(f"/proc/{name}").st_uid
            except OSError:
                continue
            if low <= uid < low + sandbox_lib.SLOTS_PER_PROCESS:
                found.append(int(name))
    return found


def _children() -> set[int]:
    me = str(os.getpid())
    kids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                kids.add(int(name))
    return kids


@pytest.fixture(scope="module")
def box():
    return Sandbox(SandboxConfig(timeout_s=3.0, memory_mb=512, max_processes=16, output_limit_bytes=64 << 10),
                   workers=2)


def test_isolation_mode_is_the_strongest_this_kernel_permits(box):
    info = box.isolation()
    if os.geteuid() == 0:
        assert info["mode"] == "namespaces", info
    else:
        assert info["mode"] in ("namespaces", "rlimits")
    r = box.run("import os, socket\nprint(os.getuid(), os.getcwd(), os.environ['HOME'])\n")
    assert r.passed, r.stderr
    uid, cwd, home = r.stdout.split()
    if info["mode"] == "namespaces":
        assert int(uid) != os.getuid() and int(uid) >= box.config.uid_base
        assert cwd == home == "/sandbox"


def test_ordinary_outcomes_are_classified(box):
    assert box.run("print('hi')").stdout == "hi\n"
    failed = box.run("assert 1 == 2, 'nope'")
    assert (failed.status, failed.error_type) == ("failed", "AssertionError")
    syntax = box.run("def f(:\n    return 1\n")
    assert (syntax.status, syntax.error_type) == ("failed", "SyntaxError")
    exit_code = box.run("import sys\nsys.exit(3)")
    assert exit_code.status == "failed" and exit_code.returncode == 3


HOSTILE = {
    "infinite_loop": ("while True:\n    pass\n", {"timeout", "cpu_limit"}),
    "sleep_forever": ("import time\ntime.sleep(1000)\n", {"timeout"}),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  {"timeout", "cpu_limit", "failed", "killed"}),
    "memory_bomb": ("x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n", {"memory_limit", "killed"}),
    "stdout_flood": ("while True:\n    print('x' * 10000)\n", {"output_limit"}),
    "daemon_escape": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n"
                      "print('parent exits')\n", {"passed"}),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_stopped_within_limits(box, name):
    program, statuses = HOSTILE[name]
    before = _children()
    start = time.monotonic()
    r = box.run(program)
    elapsed = time.monotonic() - start
    assert r.status in statuses, (name, r.status, r.error_type, r.stderr[-300:])
    assert elapsed < box.config.timeout_s + 3.0, elapsed
    assert len(r.stdout.encode()) <= box.config.output_limit_bytes
    time.sleep(0.2)
    assert _children() <= before, "a launcher or program process outlived its run"
    if box.mode == "namespaces":
        assert _sandbox_processes(box) == [], f"{name} left processes behind"
    # The evaluator still works normally afterwards.
    assert box.run("print(6 * 7)").stdout.strip() == "42"


def test_writes_outside_the_sandbox_do_not_reach_the_host(box, tmp_path):
    if box.mode != "namespaces":
        pytest.skip("the rlimits fallback does not isolate the file system (see textbooks.evaluate.sandbox)")
    outside = f"/tmp/outside-{uuid.uuid4().hex}"
    in_repo = os.path.join(REPO, f"PWNED-{uuid.uuid4().hex}")
    in_home = os.path.join(os.path.expanduser("~"), f"PWNED-{uuid.uuid4().hex}")
    program = f"""
import os
results = []
for path in {[outside, in_repo, in_home, str(tmp_path / 'x')]!r}:
    try:
        with open(path, 'w') as f:
            f.write('pwned')
        results.append('wrote')
    except OSError as e:
        results.append(type(e).__name__)
try:
    open({os.path.join(REPO, 'setup.cfg')!r}).read()
    results.append('read-repo')
except OSError as e:
    results.append(type(e).__name__)
print(results)
"""
    r = box.run(program)
    assert r.passed, r.stderr
    for path in (outside, in_repo, in_home, str(tmp_path / "x")):
        assert not os.path.exists(path), f"sandboxed program created {path}"
    assert "read-repo" not in r.stdout, "the project tree is readable from the sandbox"


def test_network_is_unreachable_even_on_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        r = box.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                    "s.sendall(b'exfiltrated')\nprint('connected')\n")
        # A connection would sit completed in the listen backlog even though nobody called accept().
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    assert r.status == "failed" and "connected" not in r.stdout, (r.status, r.stdout)
    assert r.error_type in ("OSError", "PermissionError", "ConnectionRefusedError"), r.error_type


def test_signalling_the_parent_or_the_evaluator_fails(box):
    program = f"""
import os, signal
outcomes = []
for pid in (os.getppid(), {os.getpid()}, 1):
    try:
        os.kill(pid, signal.SIGKILL)
        outcomes.append('sent')
    except OSError as e:
        outcomes.append(type(e).__name__)
print(outcomes)
"""
    r = box.run(program)
    # The evaluator (this process) is alive if we get here; the program ran to completion.
    assert r.status == "passed", (r.status, r.stderr)
    assert box.run("print('still fine')").stdout.strip() == "still fine"


def test_results_of_many_programs_come_back_in_order(box):
    programs = [f"print({i})" for i in range(12)] + ["raise ValueError('x')"]
    results = box.run_many(programs)
    assert [r.stdout.strip() for r in results[:12]] == [str(i) for i in range(12)]
    assert results[-1].error_type == "ValueError"
    assert all(r.duration_s > 0 for r in results)


def test_rlimits_fallback_still_enforces_limits(tmp_path):
    weak = Sandbox(SandboxConfig(timeout_s=2.0, memory_mb=512, isolation="rlimits"), workers=1)
    assert weak.isolation()["mode"] == "rlimits"
    assert weak.run("print(1 + 1)").stdout.strip() == "2"
    assert weak.run("while True: pass").status in ("timeout", "cpu_limit")
    assert weak.run("x = bytearray(4 << 30)").status == "memory_limit"
    net = weak.run("import socket\nsocket.create_connection(('127.0.0.1', 9))")
    assert net.error_type == "PermissionError"


def test_explicit_namespaces_request_reports_why_when_unavailable(monkeypatch):
    monkeypatch.setattr(sandbox_lib, "_PROBED", {"result": "rlimits", "why": "unshare: Operation not permitted"})
    with pytest.raises(RuntimeError, match="namespace sandbox requested but unavailable"):
        sandbox_lib.probe_isolation("namespaces")

""".ci/check_skips.py fails a run with a skip the allowlist does not name, and passes one whose skips it names;
the repository's allowlist is well-formed; .ci/run fails when make fails or a skip is not allowed."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(REPO, ".ci", "check_skips.py")
RUN = os.path.join(REPO, ".ci", "run")
ALLOWLIST = os.path.join(REPO, ".ci", "allowed_skips.toml")

# As pytest writes it: a passing test, a skip in a test body, a parametrized class method, a module skipped at
# collection (empty classname, reason in the text).
REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="0" failures="0" skipped="{skipped}" tests="{tests}">
{cases}
</testsuite></testsuites>
"""
PASSED = '<testcase classname="tests.test_partitioning" name="test_rules" time="0.1"/>'
SKIPS = {
    "kernel": '<testcase classname="tests.model.test_cpu_kernels" name="test_kernel_equals_the_masked_softmax[1]">'
              '<skipped type="pytest.skip" message="CPU decode kernels unavailable: no C++ compiler: `c++` is not '
              'on PATH (set CXX or install g++)">tests/model/test_cpu_kernels.py:21: ...</skipped></testcase>',
    "tpu": '<testcase classname="" name="tests.train.test_tpu_aot"><skipped message="collection skipped">'
           '(\'/r/tests/train/test_tpu_aot.py\', 16, "Skipped: could not import \'libtpu\': No module named '
           '\'libtpu\'")</skipped></testcase>',
    "torch": '<testcase classname="tests.train.test_optimizer.TestAdamW" name="test_matches_torch[a b]">'
             '<skipped type="pytest.skip" message="could not import \'torch\': No module named \'torch\'">'
             '</skipped></testcase>',
    "kernel_broken": '<testcase classname="tests.model.test_cpu_kernels" name="test_small_matmul">'
                     '<skipped type="pytest.skip" message="CPU decode kernels unavailable: build or load failed: '
                     'error: expected \';\'"></skipped></testcase>',
}


def _module():
    spec = importlib.util.spec_from_file_location("check_skips", CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(tmp_path, *names, passed=1, allowlist=ALLOWLIST):
    report = tmp_path / "report.xml"
    cases = [PASSED] * passed + [SKIPS[n] for n in names]
    report.write_text(REPORT.format(skipped=len(names), tests=len(cases), cases="\n".join(cases)))
    return subprocess.run([sys.executable, CHECK, str(report), "--allowlist", str(allowlist), "--root", REPO],
                          capture_output=True, text=True, timeout=60)


def test_only_allowed_skips_pass(tmp_path):
    out = _check(tmp_path, "kernel", "tpu")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 tests, 2 skipped (2 allowed, 0 not)" in out.stdout
    assert "allowed  tests/model/test_cpu_kernels.py::test_kernel_equals_the_masked_softmax[1]" in out.stdout
    assert "allowed  tests/train/test_tpu_aot.py: " in out.stdout


def test_an_unlisted_skip_fails_and_is_named(tmp_path):
    out = _check(tmp_path, "kernel", "torch")
    assert out.returncode == 1
    assert "NOT ALLOWED  tests/train/test_optimizer.py::TestAdamW::test_matches_torch[a b]: could not import " \
           "'torch'" in out.stdout
    assert "1 test(s) skipped without an entry" in out.stderr


def test_a_listed_test_skipped_for_another_reason_fails(tmp_path):
    # The kernels may be missing for want of a compiler, not because they fail to build.
    out = _check(tmp_path, "kernel_broken")
    assert out.returncode == 1
    assert "NOT ALLOWED  tests/model/test_cpu_kernels.py::test_small_matmul: CPU decode kernels unavailable: " \
           "build or load failed" in out.stdout


def test_a_report_without_tests_fails(tmp_path):
    out = _check(tmp_path, passed=0)
    assert out.returncode == 1 and "holds no test case" in out.stderr


def test_a_missing_report_or_a_bad_allowlist_fails(tmp_path):
    out = subprocess.run([sys.executable, CHECK, str(tmp_path / "absent.xml")], capture_output=True, text=True)
    assert out.returncode == 1 and "cannot read" in out.stderr
    bad = tmp_path / "allow.toml"
    bad.write_text('[[skip]]\ntest = "tests/*"\nreason = "*"\n')
    out = _check(tmp_path, "kernel", allowlist=bad)
    assert out.returncode == 1 and "entry 1 has no why" in out.stderr


def test_the_repository_allowlist_names_only_optional_parts():
    entries = _module().load_allowlist(ALLOWLIST)
    assert entries
    for entry in entries:
        files = glob.glob(os.path.join(REPO, entry.test.split("::")[0]))
        assert files, f"{ALLOWLIST}: {entry.test} names no test file"
        assert entry.reason.strip("*"), f"{ALLOWLIST}: {entry.test} allows any reason"
        for core in ("tensorflow", "seqio", "torch", "transformers", "nbformat", "nbclient", "ipykernel",
                     "assets", "vocabulary", "benchmark files"):
            assert core not in entry.reason, f"{ALLOWLIST}: {entry.test} allows skipping for {core}"


@pytest.mark.parametrize("classname,name,want", [
    ("tests.model.test_cpu_kernels", "test_k[1]", "tests/model/test_cpu_kernels.py::test_k[1]"),
    ("tests.data.test_records.TestX", "test_y", "tests/data/test_records.py::TestX::test_y"),
    ("", "tests.colab.test_notebooks", "tests/colab/test_notebooks.py"),
    ("elsewhere.test_mod.TestA", "test_b[x.y]", "elsewhere/test_mod.py::TestA::test_b[x.y]"),
])
def test_node_ids_from_junit_names(classname, name, want):
    assert _module().node_id(classname, name, REPO) == want


# Stands in for `make`: writes the report named in PYTEST_ARGS (unless told not to) and exits as told.
FAKE_MAKE = """#!/usr/bin/env bash
echo "make $*" >> "$FAKE_MAKE_LOG"
[ "$1" != lint ] || exit "${FAKE_LINT_STATUS:-0}"
for arg in "$@"; do
  case "$arg" in PYTEST_ARGS=*)
    for word in ${arg#PYTEST_ARGS=}; do
      case "$word" in --junitxml=*) [ -z "$FAKE_REPORT" ] || cp "$FAKE_REPORT" "${word#--junitxml=}";; esac
    done;;
  esac
done
exit "$FAKE_MAKE_STATUS"
"""


@pytest.mark.parametrize("make_status,skips,want,lint", [
    (0, ("kernel",), 0, 0),            # only allowed skips
    (0, ("kernel", "torch"), 1, 0),    # an unlisted skip
    (1, ("kernel",), 1, 0),            # a failing test
    (2, None, 2, 0),                   # make stopped before pytest (an asset could not be installed)
    (0, None, 1, 0),                   # make says 0 but no report was written
    (0, ("kernel",), 1, 1),            # the tests pass but an import breaks the layers (make lint)
])
def test_ci_run_fails_on_make_or_on_an_unlisted_skip(tmp_path, make_status, skips, want, lint):
    if not os.path.exists(os.path.join(REPO, ".venv", "bin", "python")):
        pytest.fail(".ci/run runs the check with .venv/bin/python; create it with `make venv`")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(FAKE_MAKE)
    (bin_dir / "make").chmod(0o755)
    report = ""
    if skips is not None:
        cases = [PASSED] + [SKIPS[n] for n in skips]
        (tmp_path / "report.xml").write_text(REPORT.format(skipped=len(skips), tests=len(cases),
                                                           cases="\n".join(cases)))
        report = str(tmp_path / "report.xml")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_REPORT": report,
           "FAKE_MAKE_STATUS": str(make_status), "FAKE_MAKE_LOG": str(tmp_path / "make.log"),
           "FAKE_LINT_STATUS": str(lint)}
    env.pop("PYTEST_ARGS", None)  # set when this suite itself runs under .ci/run
    out = subprocess.run(["bash", RUN], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == want, out.stdout + out.stderr
    call = (tmp_path / "make.log").read_text()
    assert call.startswith("make test PYTEST_ARGS=-rs --junitxml=")
    assert call.splitlines()[1] == "make lint"
    if want and skips and "torch" in skips:
        assert "NOT ALLOWED  tests/train/test_optimizer.py::TestAdamW::test_matches_torch[a b]" in out.stdout

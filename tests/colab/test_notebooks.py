"""The Colab notebooks run top to bottom at tiny size on CPU and produce their figures and tables.

Each notebook is executed with nbclient in a kernel that runs this interpreter (a kernelspec written to a
temporary JUPYTER_PATH), with ``TEXTBOOKS_NOTEBOOK_TINY=1``, ``JAX_PLATFORMS=cpu`` and a temporary working
folder. The notebooks share one small data root built once per session.
"""

from __future__ import annotations

import json
import os
import sys
import time

import ipykernel  # noqa: F401 - the kernel the notebooks run in
import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = ("quickstart", "mixture_explorer", "ablation_analysis")
CELL_TIMEOUT_S = 600


def _kernel_dir(tmp_path) -> str:
    """A JUPYTER_PATH entry whose ``python3`` kernelspec runs this interpreter (the venv's)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (textbooks venv)", "language": "python"}))
    return str(tmp_path / "jupyter")


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    return str(tmp_path_factory.mktemp("notebook_data") / "data")


def run_notebook(name: str, tmp_path, monkeypatch, data_dir: str) -> tuple[str, float, object]:
    """Executes colab/<name>.ipynb; returns (output folder, seconds, executed notebook). Fails with the failing cell's error."""
    out_dir = tmp_path / "out"
    monkeypatch.setenv("JUPYTER_PATH", _kernel_dir(tmp_path))
    monkeypatch.setenv("TEXTBOOKS_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("TEXTBOOKS_NOTEBOOK_OUT", str(out_dir))
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", data_dir)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device, as on a plain CPU runtime
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.time()
    client.execute()
    seconds = time.time() - start
    print(f"{name}: {seconds:.1f} s")
    executed = tmp_path / f"{name}.executed.ipynb"
    nbformat.write(nb, str(executed))
    return str(out_dir), seconds, nb


def _stream_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_stored_clean(name):
    nb = nbformat.read(os.path.join(COLAB, f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: stored with outputs"
    first = nb.cells[1].source
    assert "find_spec(\"textbooks\") is None" in first and "constraints.txt" in first
    params = nb.cells[2].source
    assert "TEXTBOOKS_NOTEBOOK_TINY" in params


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch, shared_data):
    out, _, nb = run_notebook("quickstart", tmp_path, monkeypatch, shared_data)
    text = _stream_text(nb)
    # The kernel ran this interpreter and found the project installed.
    assert "textbooks from " + os.path.join(ROOT, "textbooks") in text
    assert os.path.getsize(os.path.join(out, "quickstart_loss.png")) > 5000
    with open(os.path.join(out, "quickstart_run", "metrics", "train.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if line.strip() and "loss" in json.loads(line)]
    assert steps[-1] == 6
    with open(os.path.join(out, "quickstart_samples.json")) as f:
        samples = json.load(f)
    assert len(samples) == 3 and all(isinstance(s["greedy"], str) and s["sampled"] for s in samples.values())
    for role in ("synthetic_textbooks", "code_filtered", "web_filtered"):
        assert os.path.exists(os.path.join(shared_data, role, "manifest.json"))


@pytest.mark.slow
def test_mixture_explorer(tmp_path, monkeypatch, shared_data):
    out, _, nb = run_notebook("mixture_explorer", tmp_path, monkeypatch, shared_data)
    assert os.path.getsize(os.path.join(out, "proportions.png")) > 5000
    assert os.path.getsize(os.path.join(out, "factory_proportions.png")) > 5000
    with open(os.path.join(out, "proportions.json")) as f:
        tables = json.load(f)
    # phi15_web: 40% web / 40% synthetic / 20% code split 6:1, by tokens.
    requested = tables["mixture"]["requested"]
    assert requested["web_filtered"] == pytest.approx(0.4) and requested["code_filtered"] == pytest.approx(0.2 * 6 / 7)
    for table in tables.values():
        assert sum(table["realized"].values()) == pytest.approx(1.0)
        assert sum(table["tokens"].values()) > 1000
        # 24 packed rows at tiny size: each role within about one row's share of its rate.
        for role in table["roles"]:
            assert abs(table["realized"][role] - table["requested"][role]) < 0.06, (table["mixture"], role)
    assert set(tables["factory"]["realized"]) == {"web_filtered", "code_exercises", "synthetic_textbooks"}
    assert "=== code_filtered ===" in _stream_text(nb)


@pytest.mark.slow
def test_ablation_analysis(tmp_path, monkeypatch, shared_data):
    out, _, nb = run_notebook("ablation_analysis", tmp_path, monkeypatch, shared_data)
    with open(os.path.join(out, "ablation_summary.json")) as f:
        summary = json.load(f)
    assert summary["trial"] == "bigram" and summary["runs"] == 10
    for path in summary["figures"].values():
        assert os.path.getsize(path) > 5000
    ratios = summary["proposal"]["ratios"]
    assert sum(ratios.values()) == pytest.approx(1.0, abs=1e-6)
    assert summary["proposal"]["distance_to_prior"] <= 0.6 + 1e-6
    assert summary["mixture"].startswith("mix_")
    # The law is fitted to real measurements: it ranks held-out mixtures better than chance.
    assert summary["cv"]["spearman"] > 0.3
    assert "registered_mixture.ratios" in open(os.path.join(out, "proposal.gin")).read()

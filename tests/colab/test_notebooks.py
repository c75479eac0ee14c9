"""The Colab notebooks run top to bottom at tiny size on CPU and produce their figures and tables.

Each notebook is executed with nbclient in a kernel that runs this interpreter (a kernelspec written to a
temporary JUPYTER_PATH), with ``TEXTBOOKS_NOTEBOOK_TINY=1``, ``JAX_PLATFORMS=cpu`` and a temporary working
folder. The notebooks share one small data root built once per session.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
import time

import ipykernel  # noqa: F401 - the kernel the notebooks run in
import nbclient
import nbformat
import pytest

from textbooks import demo_sections
from textbooks.corpora import sources as corpora_sources

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = ("quickstart", "mixture_explorer", "ablation_analysis")
CELL_TIMEOUT_S = 600
PARAMETERS_CELL = 2


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


def run_notebook(name: str, tmp_path, monkeypatch, data_dir: str,
                 cells: "tuple[str, ...] | None" = None) -> tuple[str, float, object]:
    """Executes colab/<name>.ipynb (only the parameters cell and the cells of ids ``cells``, when given); returns
    (output folder, seconds, executed notebook). Fails with the failing cell's error."""
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
    if cells is not None:
        nb.cells = [nb.cells[PARAMETERS_CELL]] + [c for c in nb.cells if c.get("id") in cells]
        assert [c.get("id") for c in nb.cells[1:]] == list(cells), f"{name}: no cell with each of the ids {cells}"
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
    params = nb.cells[PARAMETERS_CELL].source
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


# The demo report the ablation notebook reads: its "data" and "heldout" entries made by the demo's own section
# functions from a small teacher summary and held-out scores, as textbooks.demo_report writes them. The corpora
# rows carry the stand-in notes of the local corpora builder (what the synthetic roles hold without a teacher).
DEMO_CORPORA = [{"role": r, "stand_in": corpora_sources.ROLE_INFO[r].stand_in} for r in
                ("synthetic_textbooks", "code_textbooks", "code_exercises", "code_filtered", "web_filtered")]
HELDOUT_ROLES = ("synthetic_textbooks", "code_filtered", "web_filtered")
HELDOUT_BPB = {"phi15": {"synthetic_textbooks": 2.412, "code_filtered": 1.873, "web_filtered": 2.655},
               "phi15_web_only": {"synthetic_textbooks": 2.706, "code_filtered": 2.218, "web_filtered": 2.391},
               "phi15_web": {"synthetic_textbooks": 2.517, "code_filtered": 1.962, "web_filtered": 2.468}}


def _teacher_summary(status: str) -> dict:
    """A teacher stage summary as textbooks.demo_teacher.synthesize returns it, for ``status``."""
    if status == "skipped":
        return {"skipped": True}
    if status == "failed":
        return {"status": "failed", "error": "RuntimeError: the 'nlp' generation has 12 prompts without an answer"}
    role_stats = {"synthetic_textbooks": {"prompts": 24, "train": 18, "validation": 2,
                                          "rejected": {"near_duplicate": 1, "too_short": 3}},
                  "code_textbooks": {"prompts": 12, "train": 9, "validation": 1, "rejected": {"no_code": 2}},
                  "code_exercises": {"prompts": 16, "train": 9, "validation": 1, "rejected": {"tests_failed": 5,
                                                                                              "no_code": 1}}}
    usage = {"prompt_tokens": 41_000, "completion_tokens": 18_750}
    return {"status": "generated", "server_start_s": 4.0, "generation_s": 250.0, "usage": usage,
            "tokens_per_s": usage["completion_tokens"] / 250.0,
            "teacher": {"name": "smollm2-135m-instruct", "parameters": 134_515_008,
                        "quantization": {"Q4_1": 106_000_000, "F32": 28_515_008}},
            "runs": {name: {"prompts": n, "completed": n, "cached": 0, "failed": 0, "elapsed_s": 80.0,
                            "usage": {"prompt_tokens": 0, "completion_tokens": 0}}
                     for name, n in (("nlp", 24), ("code", 12), ("exercises", 16))},
            "role_stats": role_stats,
            "exercises": {"executed": 15, "passed": 10, "failed": 5, "pass_rate": 10 / 15,
                          "kept_by_test_kind": {"function": 10}, "not_run": {"no_code": 1}},
            "samples": {r: ["def add(a, b):\n    return a + b"] for r in role_stats}}


def write_demo_report(path, status: str, differing_role: "str | None" = None) -> dict:
    """Writes {"data", "heldout"} to ``path``; ``differing_role``'s documents differ for one variant."""
    runs = {}
    for i, (name, per_role) in enumerate(HELDOUT_BPB.items()):
        roles = {r: {"bpb": v, "documents": 8,
                     "fingerprint": f"{r}-{i}" if r == differing_role and i else f"{r}-docs"}
                 for r, v in per_role.items()}
        runs[name] = {"heldout": {"roles": roles, "mean_bpb": sum(per_role.values()) / len(per_role)}}
    _, data = demo_sections.teacher_section(DEMO_CORPORA, _teacher_summary(status))
    _, heldout = demo_sections.heldout_section(runs, HELDOUT_ROLES)
    report = {"data": data, "heldout": heldout}
    path.write_text(json.dumps(report, indent=2))
    return report


def _markdown_text(nb) -> str:
    return "\n".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "display_data")


def check_heldout_view(view: dict, report: dict) -> None:
    """The notebook's held-out table and bar plot hold the report's numbers."""
    assert view["heldout"]["roles"] == list(HELDOUT_ROLES)
    assert view["heldout"]["bpb"] == report["heldout"]["bpb"]
    assert view["heldout"]["identical"] == report["heldout"]["identical"]
    for name, per_role in HELDOUT_BPB.items():
        # Bar heights are the reported floats, stored as they are: equal, not close.
        assert view["heldout"]["bar_heights"][name] == {**per_role, "mean": report["heldout"]["bpb"][name]["mean"]}
    assert os.path.getsize(view["figure"]) > 5000


@pytest.mark.slow
def test_ablation_analysis(tmp_path, monkeypatch, shared_data):
    report = write_demo_report(tmp_path / "report.json", "generated")
    monkeypatch.setenv("TEXTBOOKS_DEMO_REPORT", str(tmp_path / "report.json"))
    out, _, nb = run_notebook("ablation_analysis", tmp_path, monkeypatch, shared_data)
    with open(os.path.join(out, "ablation_summary.json")) as f:
        summary = json.load(f)
    # Real training trials: 3 mixtures x 2 seeds of 8 trainer steps, each with its metrics and checkpoint.
    assert summary["trial"] == "training" and summary["runs"] == 6
    trial_dirs = sorted(glob.glob(os.path.join(summary["sweep_dir"], "trials", "*")))
    assert len(trial_dirs) == 6
    cells, eval_tokens, eval_losses = set(), set(), []
    for trial_dir in trial_dirs:
        assert os.path.exists(os.path.join(trial_dir, "DONE")), trial_dir
        with open(os.path.join(trial_dir, "trial.json")) as f:
            trial = json.load(f)
        cells.add((trial["point"], trial["seed"]))
        model = os.path.join(trial_dir, "model")
        with open(os.path.join(model, "metrics", "train.jsonl")) as f:
            train_rows = [json.loads(line) for line in f if line.strip()]
        assert train_rows[-1]["step"] == 8 and math.isfinite(train_rows[-1]["loss"])
        with open(os.path.join(model, "metrics", "eval.jsonl")) as f:
            last_eval = [json.loads(line) for line in f if line.strip()][-1]
        assert last_eval["step"] == 8
        assert all(math.isfinite(last_eval[f"loss/{role}"]) for role in HELDOUT_ROLES)
        eval_tokens.add(last_eval["tokens"])
        eval_losses.append(last_eval["loss"])
        assert os.path.isdir(os.path.join(model, "checkpoints", "8"))
        with open(os.path.join(model, "summary.json")) as f:
            assert json.load(f)["final_step"] == 8
    assert cells == {(point, seed) for point in range(3) for seed in (0, 1)}
    assert len(eval_tokens) == 1  # every trial was scored on the same validation documents
    cv = summary["cv"]
    assert sorted(cv["y"]) == sorted(eval_losses)  # the law is fitted on the trainer's validation losses
    # Eight steps of a 1M-parameter model leave seed-to-seed noise as large as the spread between mixtures, so
    # a better-than-chance rank correlation is not something this size can promise (the bigram proxy and the
    # full size are where the law ranks mixtures). What must hold: the cross-validation is the grouped one,
    # each fold holding out whole mixtures (both seeds) and predicting them from a law fitted without them.
    groups, folds = cv["groups"], cv["folds"]
    assert cv["num_folds"] == len(set(groups)) == 3 and sorted(set(folds)) == [0, 1, 2]
    assert all(len({f for f, g in zip(folds, groups) if g == group}) == 1 for group in set(groups))
    assert all(math.isfinite(v) for v in cv["oof"])
    errors = [o - t for o, t in zip(cv["oof"], cv["y"])]
    # Same float64 mean of six squares as in fit.cross_validate, up to summation order.
    assert cv["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / len(errors)), rel=1e-12)
    assert math.isfinite(cv["spearman"]) and -1 <= cv["spearman"] <= 1
    for path in summary["figures"].values():
        assert os.path.getsize(path) > 5000
    ratios = summary["proposal"]["ratios"]
    assert sum(ratios.values()) == pytest.approx(1.0, abs=1e-6)
    assert summary["proposal"]["distance_to_prior"] <= 0.6 + 1e-6
    assert summary["mixture"].startswith("mix_") and summary["mixture"].endswith("_byte")
    assert "registered_mixture.ratios" in open(os.path.join(out, "proposal.gin")).read()

    # The demo report section: sources, the teacher's statistics, the held-out table and plot.
    with open(os.path.join(out, "demo_report_view.json")) as f:
        view = json.load(f)
    assert view["found"] and view["status"] == "generated" and view["warning"] is None
    assert view["sources"] == report["data"]["sources"]
    assert view["teacher"] == {"name": "smollm2-135m-instruct", "parameters": 134_515_008, "quantization": "Q4_1",
                               "prompt_tokens": 41_000, "completion_tokens": 18_750, "generation_s": 250.0,
                               "tokens_per_s": 75.0, "exercises_executed": 15, "exercises_passed": 10,
                               "pass_rate": 10 / 15}
    assert view["role_stats"]["code_exercises"] == {"prompts": 16, "train": 9, "validation": 1,
                                                    "rejected": {"tests_failed": 5, "no_code": 1}}
    check_heldout_view(view, report)
    shown = _markdown_text(nb)
    assert "`smollm2-135m-instruct`" in shown and "135M" in shown and "10 of 15" in shown and "0.67" in shown
    assert "| phi15_web_only | 2.706 | 2.218 | 2.391 |" in shown
    assert "**stand-in**" in shown and "STAND-INS" not in _stream_text(nb)


@pytest.mark.slow
@pytest.mark.parametrize("status", ["failed", "skipped"])
def test_ablation_demo_report_without_teacher_data(status, tmp_path, monkeypatch, shared_data):
    """Only the parameters and the demo report cells: a loud warning, then the held-out comparison."""
    report = write_demo_report(tmp_path / "report.json", status, differing_role="web_filtered")
    monkeypatch.setenv("TEXTBOOKS_DEMO_REPORT", str(tmp_path / "report.json"))
    out, _, nb = run_notebook("ablation_analysis", tmp_path, monkeypatch, shared_data,
                              cells=("demo-report-md", "demo-report"))
    with open(os.path.join(out, "demo_report_view.json")) as f:
        view = json.load(f)
    assert view["status"] == status and view["teacher"] is None
    loud = {"failed": "WARNING: THE TEACHER STAGE FAILED", "skipped": "WARNING: THE TEACHER STAGE WAS SKIPPED"}[status]
    assert view["warning"].startswith(loud) and loud in _stream_text(nb)
    # Every role stands in for its paper counterpart when the teacher wrote nothing, and the warning names them.
    stand_ins = [r["role"] for r in view["sources"] if r["stand_in"]]
    assert sorted(stand_ins) == sorted(r["role"] for r in DEMO_CORPORA)
    assert ", ".join(stand_ins) + " held STAND-INS" in view["warning"]
    if status == "failed":
        assert "12 prompts without an answer" in view["warning"]
    assert report["heldout"]["identical"] == {"synthetic_textbooks": True, "code_filtered": True,
                                              "web_filtered": False}
    check_heldout_view(view, report)
    assert "`web_filtered` **NO**" in _markdown_text(nb)
    assert "not scored on identical documents" in _stream_text(nb)


@pytest.mark.slow
def test_ablation_demo_report_missing(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("TEXTBOOKS_DEMO_REPORT", str(tmp_path / "no_demo" / "report.json"))
    out, _, nb = run_notebook("ablation_analysis", tmp_path, monkeypatch, shared_data,
                              cells=("demo-report-md", "demo-report"))
    with open(os.path.join(out, "demo_report_view.json")) as f:
        assert json.load(f) == {"report": str(tmp_path / "no_demo" / "report.json"), "found": False}
    assert "make demo" in _stream_text(nb)
    assert not os.path.exists(os.path.join(out, "ablation_figures", "demo_heldout_bpb.png"))

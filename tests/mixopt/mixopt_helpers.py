"""Helpers of the mixopt tests: a stand-in trial command with a known law."""

from __future__ import annotations

import math
import os

FAKE_TRIAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_trial.py")
COMPONENTS = ["web_filtered", "code_filtered", "synthetic_textbooks"]
# fake_trial.py's law over the sorted component names (code_filtered, synthetic_textbooks, web_filtered).
FAKE_T = {"code_filtered": -2.0, "synthetic_textbooks": 1.5, "web_filtered": -1.0}


def fake_loss(ratios: dict, seed: int) -> float:
    """The loss fake_trial.py reports (an independent restatement of its formula)."""
    return 2.0 + math.exp(sum(FAKE_T[c] * ratios.get(c, 0.0) for c in FAKE_T)) + 0.01 * (seed - 0.5)


def fake_command() -> str:
    return (f"{{python}} {FAKE_TRIAL} --ratios {{ratios_json}} --seed {{seed}} --run_dir {{run_dir}} "
            "--trial_id {trial_id}")


def write_role_corpora(data_dir: str, monkeypatch) -> None:
    """Small synthetic corpora of the three roles under ``data_dir``, made the data root of this test (and one
    CPU device per trial process)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", "import sys; from mixtures import testing; "
                    "testing.write_corpora(sys.argv[1], sys.argv[2].split(','), "
                    "num_docs={'train': 40, 'validation': 8}, num_shards=1)", str(data_dir), ",".join(COMPONENTS)],
                   check=True, cwd=root, timeout=300)
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("XLA_FLAGS", "")

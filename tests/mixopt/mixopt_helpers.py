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

"""The per-role token counts the trainer logs each step (summed by reports into realized proportions)."""

import numpy as np

from textbooks.train import metrics


def test_summarize_reports_loss_and_tokens_per_role():
    raw = {"loss": np.float32(2.0), "weight_sum": np.float32(30.0),
           "role_loss_sum": np.array([0.0, 20.0, 0.0, 15.0]), "role_weight_sum": np.array([0.0, 10.0, 0.0, 20.0])}
    out = metrics.summarize(raw, ["pad", "web_filtered", "code_filtered", "synthetic_textbooks"])
    assert out["tokens"] == 30.0
    assert out["loss/web_filtered"] == 2.0 and out["loss/synthetic_textbooks"] == 0.75
    assert out["tokens/web_filtered"] == 10.0 and out["tokens/synthetic_textbooks"] == 20.0
    # Roles without tokens in the step are left out rather than logged as zero-loss.
    assert "tokens/code_filtered" not in out and "loss/code_filtered" not in out


def test_realized_proportions_sum_logged_steps():
    from textbooks.demo_report import realized_proportions

    rows = [{"step": 1, "tokens/a": 30.0, "tokens/b": 10.0}, {"step": 2, "tokens/a": 10.0, "tokens/b": 50.0}]
    assert realized_proportions(rows) == {"a": 0.4, "b": 0.6}

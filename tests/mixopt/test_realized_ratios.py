"""A training trial records the fractions its mixture realized (repetition-capped), and the fit uses them."""

from textbooks.mixopt import results
from textbooks.mixopt.training_trial import realized_ratio_metrics
from textbooks.train import metrics, run_record

COMPS = ["code_exercises", "web_raw", "code_filtered"]


def test_realized_ratios_come_from_the_run_record_and_feed_the_design(tmp_path):
    requested = {"code_exercises": 0.5, "web_raw": 0.5}
    capped = {"code_exercises": 0.125, "web_raw": 0.875}
    writer = metrics.MetricsLogger(str(tmp_path), tensorboard=False)
    record = run_record.RunRecord(str(tmp_path), enabled=True, writer=writer, metadata={}, start_step=0,
                                  mixture={"name": "m", "requested": requested, "capped": capped})
    record.write(10)
    writer.close()
    got = realized_ratio_metrics(str(tmp_path))
    assert got == {"realized_ratio/code_exercises": 0.125, "realized_ratio/web_raw": 0.875}

    row = {"ratio/code_exercises": 0.5, "ratio/web_raw": 0.5, "ratio/code_filtered": 0.0, "status": "done",
           "valid/loss": 2.0, **got}
    assert results.design_ratios(row, COMPS) == [0.125, 0.875, 0.0]
    # Without a record (other trial kinds, older runs) the requested ratios are the design.
    plain = {k: v for k, v in row.items() if not k.startswith("realized_ratio/")}
    assert results.design_ratios(plain, COMPS) == [0.5, 0.5, 0.0]
    # Realized ratios are inputs, not targets.
    assert results.metric_names([row], COMPS) == ["valid/loss"]
    assert realized_ratio_metrics(str(tmp_path / "no_run")) == {}


def test_run_record_without_a_mixture_gives_no_realized_ratios(tmp_path):
    writer = metrics.MetricsLogger(str(tmp_path), tensorboard=False)
    run_record.RunRecord(str(tmp_path), enabled=True, writer=writer, metadata={}, start_step=0,
                         mixture=None).write(1)
    writer.close()
    assert realized_ratio_metrics(str(tmp_path)) == {}
    assert run_record.read_run_record(str(tmp_path))["tokens_per_role"] == {}

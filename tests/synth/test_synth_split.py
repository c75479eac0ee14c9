"""The train/validation split of finalized generation runs: exactly ceil(fraction x kept) documents per role are
held out, chosen by a hash of the id, with ``min_validation_docs`` as a floor that never takes the last train
document."""

import fractions
import hashlib
import math

import pytest

from fault_server import FaultServer
from textbooks.data import records
from textbooks.synth import finalize
from textbooks.synth import generate as generate_lib
from textbooks.synth.postprocess import PostprocessConfig

TEMPLATES = """\
templates:
  - id: test.lesson
    role: synthetic_textbooks
    slots: {topic: subtopic}
    prompt: "Write a lesson on {topic}."
"""
TOPICS = "\n".join(f"Subject {s} > Topic {s}.{t} > Sub {s}.{t}.{u}" for s in "ABC" for t in range(3) for u in range(3))


def _expected(kept: int, fraction: str, minimum: int) -> int:
    """The count from exact rational arithmetic (no float rounding), floored by the minimum, one train left."""
    if fractions.Fraction(fraction) >= 1:
        return kept
    wanted = max(math.ceil(fractions.Fraction(fraction) * kept), minimum)
    return max(0, min(wanted, kept - 1))


@pytest.mark.parametrize("fraction", ["0", "0.01", "0.1", "0.2", "0.25", "0.3", "0.5", "0.7", "0.99", "1"])
@pytest.mark.parametrize("minimum", [0, 1, 3])
def test_validation_count_is_the_ceiling_of_the_fraction(fraction, minimum):
    for kept in range(0, 101):
        assert finalize.validation_count(kept, float(fraction), minimum) == _expected(kept, fraction, minimum), kept


def test_validation_count_examples():
    assert finalize.validation_count(27, 0.2) == 6  # a hash threshold held out 2 of these 27
    assert finalize.validation_count(15, 0.2) == 3  # 0.2 * 15 is 3.0000000000000004 in floats
    assert finalize.validation_count(1, 0.2, 1) == 0  # the only document stays in train
    assert finalize.validation_count(4, 0.01, 2) == 2
    with pytest.raises(ValueError, match="must be at least 0"):
        finalize.validation_count(5, -0.1)


def test_assign_splits_holds_out_the_first_ids_by_hash():
    recs = [records.Record(id=f"synth-{i:04d}", text="x", role="r", source="s", license="l", split="train")
            for i in range(27)]
    finalize.assign_splits(recs, 0.2)
    held = sorted(r.id for r in recs if r.split == "validation")
    ranked = sorted((r.id for r in recs), key=lambda i: hashlib.sha1(i.encode("utf-8")).hexdigest())
    assert held == sorted(ranked[:6])
    assert {r.split for r in recs} == {"train", "validation"}
    # The choice depends on the ids only, not on their order.
    again = list(reversed([records.Record(id=r.id, text="x", role="r", source="s", license="l", split="train")
                           for r in recs]))
    finalize.assign_splits(again, 0.2)
    assert sorted(r.id for r in again if r.split == "validation") == held


def test_finalized_run_holds_out_the_ceiling_per_role(tmp_path):
    (tmp_path / "t.yaml").write_text(TEMPLATES)
    (tmp_path / "topics.txt").write_text(TOPICS + "\n")
    out = tmp_path / "run"
    with FaultServer() as server:
        result = generate_lib.generate(
            endpoint=server.url, model="teacher", templates=[str(tmp_path / "t.yaml")],
            topics_file=str(tmp_path / "topics.txt"), output_dir=str(out), num_samples=27, concurrency=4,
            timeout=5.0, api_key_env=None, progress_interval=1000.0, validation_fraction=0.2,
            min_validation_docs=1, postprocess_config=PostprocessConfig(decontaminate=False))
    shards = result["finalize"]["shards"]["synthetic_textbooks"]
    kept = shards["train"] + shards["validation"]
    assert kept == 27 and shards["validation"] == 6
    held = [r for r in records.iter_records(str(out / "synthetic_textbooks"), on_error="raise")
            if r.split == "validation"]
    assert len(held) == 6

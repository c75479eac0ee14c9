"""Repetition caps: a component over ``max_epochs`` within the token budget is capped and its excess goes to the
others in proportion to their rates; a long stream from the input pipeline realizes the capped fractions."""

import logging

import gin
import numpy as np
import pytest

import mixtures  # noqa: F401  (registers the tasks and mixtures)
from mixtures import factory, mixing, testing
from textbooks.data.roles import ROLES, role_name
from textbooks.inputs import pipeline
from textbooks.tokens import stats as token_stats

# One small component (code_exercises), one that runs out once the excess is given to it (web_raw), and two
# large ones that keep their requested 2:1 ratio.
MEAN_CHARS = {"code_exercises": 250, "web_raw": 400, "code_filtered": 8000, "synthetic_textbooks": 3000}
REQUEST = {"code_exercises": 0.4, "web_raw": 0.3, "code_filtered": 0.2, "synthetic_textbooks": 0.1}
MAX_EPOCHS = 2.0
LENGTH, BATCH, STEPS = 128, 16, 200
BUDGET = LENGTH * BATCH * STEPS


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("roles"))
    return testing.write_corpora(root, list(MEAN_CHARS), mean_chars=MEAN_CHARS,
                                 num_docs={"train": 40, "validation": 4}, num_shards=2)


@pytest.fixture(autouse=True)
def _byte_data(data_root, monkeypatch):
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", data_root)
    gin.bind_parameter("mixtures.roles.vocabulary_name.name", "byte")


def test_cap_fractions_known_answers():
    # a is capped at 10 tokens of 100 (0.1); b and c share the 0.9 left 3:2; b then exceeds its cap of 0.5
    # and c takes the rest.
    capped, roles, excess = mixing.cap_fractions({"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 10, "b": 100, "c": 100},
                                                 100, 1.0)
    assert capped == pytest.approx({"a": 0.1, "b": 0.54, "c": 0.36}) and roles == ["a"] and excess == 0
    capped, roles, _ = mixing.cap_fractions({"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 10, "b": 50, "c": 100}, 100, 1.0)
    assert capped == pytest.approx({"a": 0.1, "b": 0.5, "c": 0.4}) and roles == ["a", "b"]
    # Nothing over its cap: unchanged.
    assert mixing.cap_fractions({"a": 0.5, "b": 0.5}, {"a": 100, "b": 100}, 100, 1.0)[0] == {"a": 0.5, "b": 0.5}
    # All capped: 60 tokens of capacity for a budget of 100; mixed by capacity, 40 tokens short.
    capped, roles, excess = mixing.cap_fractions({"a": 0.5, "b": 0.5}, {"a": 10, "b": 50}, 100, 1.0)
    assert capped == pytest.approx({"a": 1 / 6, "b": 5 / 6}) and roles == ["a", "b"]
    assert excess == pytest.approx(40)


def test_long_stream_respects_the_cap_and_redistributes_in_proportion(caplog):
    caplog.set_level(logging.WARNING)  # the warning is checked whatever level an earlier test left
    name = factory.register_mixture(REQUEST, name="cap_test_four_roles", max_epochs=MAX_EPOCHS)
    it = pipeline.make_train_iterator(name, task_feature_lengths=LENGTH, batch_size=BATCH, seed=0,
                                      num_train_steps=STEPS)
    sizes = {r: token_stats.get_token_stats(r, "byte").num_tokens for r in REQUEST}
    report = it.mixture.fraction_report
    requested, capped = report["requested"], report["capped"]
    assert requested == pytest.approx(REQUEST)
    assert report["token_budget"] == BUDGET and report["max_epochs"] == MAX_EPOCHS
    cap = {r: MAX_EPOCHS * sizes[r] / BUDGET for r in REQUEST}
    # The set-up: the two small components are over their caps as requested, the two large ones are not.
    assert REQUEST["code_exercises"] > cap["code_exercises"] and REQUEST["web_raw"] > cap["web_raw"]
    assert report["capped_roles"] == ["code_exercises", "web_raw"]
    assert sum(capped.values()) == pytest.approx(1.0, abs=1e-12)
    for role in report["capped_roles"]:
        assert capped[role] == pytest.approx(cap[role], rel=1e-12)
    # The excess went to the others in proportion to their requested fractions (2:1), each within its cap.
    assert capped["code_filtered"] / capped["synthetic_textbooks"] == pytest.approx(2.0, rel=1e-12)
    assert capped["code_filtered"] <= cap["code_filtered"] and capped["synthetic_textbooks"] <= cap[
        "synthetic_textbooks"]
    assert any("code_exercises would be repeated" in r.getMessage() and "capped" in r.getMessage()
               for r in caplog.records)

    # Stream the whole budget (every token of every row, padding excluded) and count tokens per role.
    counts = np.zeros(len(ROLES) + 1)
    for _ in range(STEPS):
        batch = next(it)
        real = batch["decoder_loss_weights"] > 0
        counts += np.bincount(batch["decoder_role_ids"][real], minlength=len(counts))
    realized = {role_name(i): counts[i] for i in range(1, len(counts)) if counts[i]}
    assert set(realized) == set(REQUEST)
    # Rows are packed per component and interleaved in a balanced order: each component is within one row
    # (LENGTH tokens) of its capped share of the tokens streamed, so within one row of its cap in epochs.
    total = counts.sum()
    for role, tokens in realized.items():
        assert abs(tokens - capped[role] * total) <= LENGTH, (role, tokens, capped[role] * total)
        assert tokens / sizes[role] <= MAX_EPOCHS + LENGTH / sizes[role], (role, tokens / sizes[role])
    # Without the cap code_exercises would have been read about 2.5x as often as the cap allows.
    assert REQUEST["code_exercises"] * BUDGET / sizes["code_exercises"] > 2 * MAX_EPOCHS


def test_budget_beyond_all_data_at_the_cap_is_reported(caplog):
    caplog.set_level(logging.WARNING)  # the warning is checked whatever level an earlier test left
    name = factory.register_mixture({"code_exercises": 0.5, "web_raw": 0.5}, name="cap_test_too_small",
                                    max_epochs=1.0)
    mixture = mixing.seqio.get_mixture_or_task(name)
    sizes = {r: token_stats.get_token_stats(r, "byte").num_tokens for r in ("code_exercises", "web_raw")}
    budget = 3 * sum(sizes.values())
    report = {r["role"]: r for r in mixture.check_repetition(budget)}
    fr = mixture.fraction_report
    assert fr["budget_over_capacity_tokens"] == 2 * sum(sizes.values())
    # Mixed by capacity: both components are repeated equally often (3 epochs, over the cap of 1).
    for role, size in sizes.items():
        assert report[role]["capped_epochs"] == pytest.approx(3.0, rel=1e-9)
    assert any("exceeds all of its data at max_epochs=1.0" in r.getMessage()
               and f"by {2 * sum(sizes.values())} tokens" in r.getMessage() for r in caplog.records)

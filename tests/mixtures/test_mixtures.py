"""Mixtures: realized token proportions, the factory's names and validation, temperature and repetition caps."""

import logging
import math

import gin
import numpy as np
import pytest
import seqio

import mixtures  # noqa: F401  (registers the tasks and mixtures)
from mixtures import factory, phi, roles, testing
from textbooks.data.roles import ROLES, role_name
from textbooks.inputs import pipeline
from textbooks.tokens import stats as token_stats

# Mean characters (= byte tokens) per document: roles differ by >= 10x (code_filtered vs web_filtered 27x).
MEAN_CHARS = {"synthetic_textbooks": 3000, "code_textbooks": 400, "code_exercises": 250, "code_filtered": 8000,
              "web_filtered": 300, "web_raw": 800}
LENGTH = 2048
MIN_TOKENS = 1_000_000

# The papers' mixtures, typed from the reports (token shares), independently of mixtures.phi:
# phi-1's CodeTextbook is about 6B tokens of filtered code plus under 1B of synthetic textbooks, mixed by size;
# its finetuning set is CodeExercises alone. phi-1.5 trains on 80% new synthetic textbooks and 20% phi-1's
# data; phi-1.5-web-only on 80% filtered web text and 20% code; phi-1.5-web on 40% filtered web, 20% phi-1's
# code data and 40% synthetic textbooks.
_CODE_B, _CODE_TEXTBOOK_B = 6.0, 1.0
_PHI1 = {"code_filtered": _CODE_B / (_CODE_B + _CODE_TEXTBOOK_B),
         "code_textbooks": _CODE_TEXTBOOK_B / (_CODE_B + _CODE_TEXTBOOK_B)}
PAPER_FRACTIONS = {
    "phi1": _PHI1,
    "phi1_finetune": {"code_exercises": 1.0},
    "phi15": {"synthetic_textbooks": 0.80, **{k: 0.20 * v for k, v in _PHI1.items()}},
    "phi15_web_only": {"web_filtered": 0.80, "code_filtered": 0.20},
    "phi15_web": {"web_filtered": 0.40, "synthetic_textbooks": 0.40, **{k: 0.20 * v for k, v in _PHI1.items()}},
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("roles"))
    return testing.write_corpora(root, mean_chars=MEAN_CHARS, num_docs={"train": 120, "validation": 10})


@pytest.fixture(autouse=True)
def _byte_data(data_root, monkeypatch):
    monkeypatch.setenv("TEXTBOOKS_DATA_DIR", data_root)
    gin.bind_parameter("mixtures.roles.vocabulary_name.name", "byte")


def realized_fractions(name, *, min_tokens=MIN_TOKENS, batch_size=64, seed=0, mixing=None):
    it = pipeline.make_train_iterator(name, task_feature_lengths=LENGTH, batch_size=batch_size, seed=seed,
                                      mixing=mixing)
    counts = np.zeros(len(ROLES) + 1)
    total = real = 0
    while counts.sum() < min_tokens:
        batch = next(it)
        weights = batch["decoder_loss_weights"] > 0
        counts += np.bincount(batch["decoder_role_ids"][weights], minlength=len(counts))
        real += weights.sum()
        total += weights.size
    fractions = {role_name(i): counts[i] / counts.sum() for i in range(1, len(counts)) if counts[i]}
    return fractions, real / total, counts.sum()


def test_paper_mixtures_are_the_papers():
    assert set(phi.MIXTURES) == set(PAPER_FRACTIONS)
    for name, want in PAPER_FRACTIONS.items():
        got = phi.MIXTURES[name]
        assert set(got) == set(want), name
        for role, fraction in want.items():
            assert math.isclose(got[role], fraction, rel_tol=1e-12), (name, role, got[role], fraction)


@pytest.mark.parametrize("name", ["phi1", "phi15", "phi15_web_only", "phi15_web"])
def test_realized_token_fractions_match_request(name):
    requested = PAPER_FRACTIONS[name]
    fractions, efficiency, tokens = realized_fractions(name)
    assert tokens >= MIN_TOKENS
    assert set(fractions) == set(requested)
    for role, want in requested.items():
        assert abs(fractions[role] - want) <= 0.01, (role, fractions[role], want)
    assert efficiency >= 0.98


def test_phi1_finetune_is_code_exercises_only():
    fractions, efficiency, _ = realized_fractions("phi1_finetune", min_tokens=100_000)
    assert fractions == {"code_exercises": 1.0}
    assert efficiency >= 0.98


def test_documents_mode_uses_token_stats_example_rates():
    mixture = seqio.get_mixture_or_task("phi15_web")
    rates = mixture.example_rates(LENGTH)
    # Independent reference: mean tokens per document piece counted from the records themselves.
    for role, fraction in phi.MIXTURES["phi15_web"].items():
        docs = [r for r in testing.make_records(role, "train", 120, MEAN_CHARS[role])]
        lengths = [len(r.text.encode()) + 1 for r in docs]
        pieces = sum(math.ceil(n / LENGTH) for n in lengths)
        assert rates[role] == pytest.approx(fraction / (sum(lengths) / pieces), rel=1e-9)
        task = seqio.TaskRegistry.get(roles.task_name(role))
        assert mixture.get_rate(task) == pytest.approx(rates[role])
    # Sampling documents is right in expectation only (rows mode is the exact one); the spread of document
    # lengths within a role leaves an error of about a point at 1M tokens.
    fractions, _, _ = realized_fractions("phi15_web", mixing="documents")
    for role, want in phi.MIXTURES["phi15_web"].items():
        assert abs(fractions[role] - want) <= 0.02, (role, fractions[role], want)


def test_factory_names_are_deterministic_and_idempotent():
    ratios = {"web_filtered": 0.4, "code_filtered": 0.2, "synthetic_textbooks": 0.4}
    name = factory.register_mixture(ratios)
    assert name == "mix_st40_cf20_wf40"
    assert factory.register_mixture({"synthetic_textbooks": 2, "web_filtered": 2, "code_filtered": 1}) == name
    thirds = factory.register_mixture({"web_raw": 1, "code_exercises": 1, "code_filtered": 1})
    assert thirds.startswith("mix_ce33.33_cf33.33_wr33.33_h")
    assert factory.register_mixture({"web_raw": 1, "code_exercises": 1, "code_filtered": 1}) == thirds
    with pytest.raises(ValueError, match="already registered"):
        factory.register_mixture({"web_raw": 1.0}, name=name)
    spm = factory.register_mixture(ratios, vocabulary="spm8k")
    assert spm == "mix_st40_cf20_wf40_spm8k"
    assert {t.name for t in seqio.get_mixture_or_task(spm).tasks} == {
        "synthetic_textbooks_spm8k", "code_filtered_spm8k", "web_filtered_spm8k"}


def test_factory_mixture_realizes_its_ratios():
    name = factory.register_mixture({"web_raw": 0.25, "code_filtered": 0.5, "code_exercises": 0.25})
    fractions, _, _ = realized_fractions(name, min_tokens=1_000_000)
    assert fractions["web_raw"] == pytest.approx(0.25, abs=0.01)
    assert fractions["code_filtered"] == pytest.approx(0.5, abs=0.01)
    assert fractions["code_exercises"] == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("ratios, error, match", [
    ({"web_filtered": -0.1, "code_filtered": 1.0}, ValueError, "'web_filtered' is negative"),
    ({"web_filtered": float("nan")}, ValueError, "'web_filtered' is nan"),
    ({"web_filtered": float("inf")}, ValueError, "'web_filtered' is inf"),
    ({"web_filtered": 0.0, "code_filtered": 0}, ValueError, "all ratios are zero"),
    ({"webb_filtered": 1.0}, ValueError, "unknown role 'webb_filtered'"),
    ({"web_filtered": "0.5"}, TypeError, "'web_filtered' must be a real number"),
    ({}, ValueError, "empty"),
])
def test_factory_rejects_bad_ratios(ratios, error, match):
    with pytest.raises(error, match=match):
        factory.register_mixture(ratios)


def test_factory_rejects_bad_options():
    with pytest.raises(ValueError, match="temperature"):
        factory.register_mixture({"web_filtered": 1}, temperature=0)
    with pytest.raises(ValueError, match="max_epochs"):
        factory.register_mixture({"web_filtered": 1}, max_epochs=-1)
    with pytest.raises(ValueError, match="unknown vocabulary"):
        factory.register_mixture({"web_filtered": 1}, vocabulary="gpt9")


def test_temperature_sampling_follows_sizes():
    name = factory.register_mixture({"code_filtered": 1, "web_filtered": 1}, temperature=2.0)
    mixture = seqio.get_mixture_or_task(name)
    sizes = {r: token_stats.get_token_stats(r, "byte").num_tokens for r in ("code_filtered", "web_filtered")}
    expected = {r: s ** 0.5 for r, s in sizes.items()}
    total = sum(expected.values())
    fractions = mixture.token_fractions()
    for role in sizes:
        assert fractions[role] == pytest.approx(expected[role] / total)
    natural = seqio.get_mixture_or_task(factory.register_mixture({"code_filtered": 1, "web_filtered": 1},
                                                                 temperature=1.0)).token_fractions()
    assert natural["code_filtered"] == pytest.approx(sizes["code_filtered"] / sum(sizes.values()))


def test_repetition_cap_warns_and_records(caplog):
    caplog.set_level(logging.WARNING)  # the warning is checked whatever level an earlier test left
    name = factory.register_mixture({"code_exercises": 0.5, "code_filtered": 0.5}, max_epochs=2)
    it = pipeline.make_train_iterator(name, task_feature_lengths=LENGTH, batch_size=8, num_train_steps=100)
    report = {r["role"]: r for r in it.repetition_report}
    exercises = token_stats.get_token_stats("code_exercises", "byte").num_tokens
    assert report["code_exercises"]["epochs"] == pytest.approx(0.5 * 100 * 8 * LENGTH / exercises)
    assert report["code_exercises"]["over_cap"] is True
    assert report["code_filtered"]["over_cap"] is (report["code_filtered"]["epochs"] > 2)
    assert any("code_exercises would be repeated" in r.getMessage() for r in caplog.records)


def test_alias_tasks_follow_the_gin_vocabulary():
    alias = seqio.get_mixture_or_task("code_filtered")
    assert alias.resolve().name == "code_filtered_byte"
    gin.bind_parameter("mixtures.roles.vocabulary_name.name", "spm8k")
    assert alias.resolve().name == "code_filtered_spm8k"
    assert factory.with_vocabulary("phi15", "phi") == "phi15_phi"
    assert {t.name for t in seqio.get_mixture_or_task("phi15_phi").tasks} == {
        "synthetic_textbooks_phi", "code_filtered_phi", "code_textbooks_phi"}

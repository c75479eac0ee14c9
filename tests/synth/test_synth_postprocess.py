"""Post-processing (cleanup, filters, exercise checks and execution) and the diversity report on planted data."""

import dataclasses
import json
import random

import pytest

from textbooks.synth import diversity, minhash, postprocess
from textbooks.synth.postprocess import PostprocessConfig, Sample

PROSE = " ".join(f"word{i}" for i in range(60)) + "."


def _sample(text, **opts):
    return Sample(id="s", text=text, role="synthetic_textbooks", meta={}, template_options=opts,
                  slot_values={"function_name": "count_vowels"})


@pytest.mark.parametrize("raw,clean,rules", [
    ("Sure! Here is a textbook section on loops:\n\n# Loops\nBody.", "# Loops\nBody.", ["opener"]),
    ("Here's an engaging blog post about tides:\nTides rise.", "Tides rise.", ["opener"]),
    ("Tides rise. As an AI language model, I cannot swim. Tides fall.", "Tides rise. Tides fall.", ["as_an_ai"]),
    ("# Title\nText.\n\nI hope this helps! Let me know if you have questions.", "# Title\nText.", ["closer"]),
    ("# Title\nSure enough, the text stays.", "# Title\nSure enough, the text stays.", []),
])
def test_clean_boilerplate(raw, clean, rules):
    assert postprocess.clean_boilerplate(raw) == (clean, rules)


def test_filters_and_reasons():
    cfg = PostprocessConfig(min_chars=50, min_words=5)
    cases = {
        "empty": _sample("Sure, here is the text:\n"),
        "too_short": _sample("Tiny text here, just a few words."),
        "too_few_words": _sample("x" * 80),
        "no_code_block": _sample(PROSE, require_code_block=True),
        "ok": _sample("Intro " + PROSE + "\n```python\nprint(1)\n```\n", require_code_block=True),
    }
    for expected, s in cases.items():
        postprocess.check_sample(s, cfg)
        assert (s.reject_reason or "ok") == expected, (expected, s.reject_detail)
    long = _sample(PROSE)
    postprocess.check_sample(long, PostprocessConfig(min_chars=10, max_chars=100))
    assert long.reject_reason == "too_long"


EXERCISE = '''Here is the exercise:
```python
def count_vowels(text: str) -> int:
    """Counts the vowels of text.

    >>> count_vowels("banana")
    3
    """
    return sum(c in "aeiou" for c in text.lower())


def check():
    assert count_vowels("banana") == 3
    assert count_vowels("") == 0
    assert count_vowels("AEIOU") == %s
```
'''


def test_exercise_checks():
    cfg = PostprocessConfig(min_chars=20, min_words=5)
    opts = {"syntax_check": True, "require_function": "function_name", "run_tests": "check"}
    good = _sample(EXERCISE % "5", **opts)
    postprocess.check_sample(good, cfg)
    assert good.reject_reason is None and good.text.startswith("def count_vowels")  # stored as plain code
    bad_syntax = _sample(EXERCISE.replace("def check():", "def check(:") % "5", **opts)
    postprocess.check_sample(bad_syntax, cfg)
    assert bad_syntax.reject_reason == "syntax_error" and "line 10" in bad_syntax.reject_detail
    wrong_name = _sample((EXERCISE % "5").replace("count_vowels", "vowel_count"), **opts)
    postprocess.check_sample(wrong_name, cfg)
    assert wrong_name.reject_reason == "missing_function"


def test_exercise_tests_run_in_the_sandbox():
    cfg = PostprocessConfig(min_chars=20, min_words=5, run_tests=True, near_dedup=False, decontaminate=False,
                            sandbox_timeout_s=20)
    opts = {"syntax_check": True, "require_function": "function_name", "run_tests": "check"}
    samples = [_sample(EXERCISE % "5", **opts), _sample(EXERCISE % "4", **opts)]
    summary = postprocess.process(samples, cfg)
    assert summary["exercises_executed"] == 2
    assert samples[0].reject_reason is None and samples[0].meta["postprocess"]["tests"] == "passed"
    assert samples[1].reject_reason == "tests_failed" and "AssertionError" in samples[1].reject_detail


def _random_doc(rng, n=100):
    return " ".join("".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(n))


def test_near_dedup_and_report_on_planted_duplicates(tmp_path):
    rng = random.Random(0)
    unique = [_random_doc(rng) for _ in range(20)]
    exact = unique[:5]
    near = []
    for doc in unique[5:10]:
        words = doc.split()
        words[50] = "changed"  # one word of 100: word-5-gram Jaccard 91/101 = 0.90
        near.append(" ".join(words))
    texts = unique + exact + near
    assert minhash.jaccard(minhash.word_shingles(unique[5]), minhash.word_shingles(near[0])) == pytest.approx(91 / 101)
    stats = diversity.near_duplicate_stats(texts, threshold=0.8)
    assert stats["near_duplicates"] == 10 and stats["near_duplicate_rate"] == pytest.approx(10 / 30)
    assert stats["clusters_with_duplicates"] == 10 and stats["largest_cluster"] == 2
    samples = [Sample(id=f"d{i:02d}", text=t, role="r", meta={}) for i, t in enumerate(texts)]
    assert postprocess.near_dedup(samples, 0.8) == 10
    assert [s.reject_reason for s in samples[20:]] == ["near_duplicate"] * 10
    assert samples[20].reject_detail == "of d00" and samples[25].reject_detail == "of d05"

    docs = [{"text": t, "meta": {"template_id": f"t{i % 3}", "topic_id": f"topic{i % 7}",
                                 "topic_path": [f"S{i % 2}", "x"], "slots": {"audience": f"a{i % 4}", "style": "blog"}}}
            for i, t in enumerate(texts)]
    report = diversity.diversity_report(docs, threshold=0.8)
    assert report["num_docs"] == 30
    assert report["distinct"] == {"templates": 3, "topics": 7, "subjects": 2, "seed_texts": 0, "slot:audience": 4,
                                  "slot:style": 1}
    assert report["counts"]["slot:style"] == {"blog": 30}
    assert report["near_duplicates"]["near_duplicate_rate"] == pytest.approx(10 / 30)
    paths = diversity.write_report(report, str(tmp_path), lengths=[100] * 30)
    assert json.load(open(paths["json"]))["num_docs"] == 30
    md = open(paths["markdown"]).read()
    assert "| near-duplicate rate (Jaccard >= 0.8) | 0.3333 |" in md and "![distributions](diversity.png)" in md


def test_distinct_n_by_hand():
    texts = ["a b c", "a b d"]
    # unigrams a b c a b d: 4 distinct of 6; bigrams ab bc ab bd: 3 of 4; trigrams abc abd: 2 of 2.
    assert diversity.distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert diversity.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert diversity.distinct_n(texts, 3) == 1.0
    assert diversity.distinct_n(["same words here"] * 4, 2) == pytest.approx(2 / 8)
    assert diversity.distinct_n([], 1) == 0.0


def test_decontamination_through_the_curation_stage(tmp_path):
    from textbooks.evaluate.benchmarks import benchmark_texts

    item_id, item = next(iter(benchmark_texts("humaneval")))
    leaked = Sample(id="leak", text="A lesson on lists.\n\n" + item + "\nThat is all.", role="code_textbooks", meta={})
    clean = Sample(id="clean", text=PROSE, role="code_textbooks", meta={})
    cfg = PostprocessConfig(min_chars=10, min_words=5, near_dedup=False, decontamination_benchmarks=("humaneval",))
    summary = postprocess.process([leaked, clean], cfg, cache_dir=str(tmp_path))
    assert summary["decontamination"] == {"status": "applied", "dropped": 1, "benchmarks": ["humaneval"]}
    assert leaked.reject_reason == "contaminated" and leaked.reject_detail.startswith(f"humaneval:{item_id} (ngram)")
    assert leaked.meta["contamination"]["benchmark"] == "humaneval" and clean.reject_reason is None
    assert len(list(tmp_path.glob("decontam-*.npz"))) == 1  # the index is cached for the next finalize
    again = Sample(id="leak2", text=item, role="code_textbooks", meta={})
    postprocess.process([again], cfg, cache_dir=str(tmp_path))
    assert again.reject_reason == "contaminated"
    off = Sample(id="leak3", text=item, role="code_textbooks", meta={})
    assert postprocess.process([off], PostprocessConfig(min_chars=10, min_words=5, decontaminate=False))[
        "decontamination"]["status"] == "off"


DOCTEST_EXERCISE = '''def double(x: int) -> int:
    """Returns twice x.

    >>> double(2)
    %s
    """
    return 2 * x
'''


def test_exercises_without_a_check_function_run_their_doctests():
    """An exercise without check() is tested by its doctests; one with neither is rejected as no_tests."""
    cfg = PostprocessConfig(min_chars=20, min_words=5, run_tests=True, near_dedup=False, decontaminate=False,
                            sandbox_timeout_s=20)
    opts = {"syntax_check": True, "require_function": "function_name", "run_tests": "check"}
    untested = "def double(x: int) -> int:\n    \"\"\"Returns twice x.\"\"\"\n    return 2 * x\n"
    samples = [Sample(id=str(i), text=text, role="code_exercises", meta={}, template_options=opts,
                      slot_values={"function_name": "double"})
               for i, text in enumerate([DOCTEST_EXERCISE % "4", DOCTEST_EXERCISE % "5", untested])]
    summary = postprocess.process(samples, cfg)
    assert summary["exercises_executed"] == 2
    assert samples[0].reject_reason is None, samples[0].reject_detail
    assert samples[0].meta["postprocess"] == {"tests_kind": "doctest", "tests": "passed"}
    assert samples[1].reject_reason == "tests_failed" and "AssertionError" in samples[1].reject_detail
    assert samples[2].reject_reason == "no_tests"


def test_an_answer_cut_by_its_length_limit_keeps_its_whole_statements():
    """An exercise cut off mid-statement (finish_reason 'length', no closing fence) keeps the top-level
    statements before the cut; the same text with finish_reason 'stop' is a syntax error."""
    cut = ("```python\ndef double(x):\n    \"\"\"Twice x.\"\"\"\n    return 2 * x\n\n\ndef check():\n"
           "    assert double(2) == 4\n\n\ndef unfinished(y):\n    return [y,")
    opts = {"syntax_check": True, "require_function": "function_name"}
    results = {}
    for reason in ("length", "stop"):
        sample = Sample(id=reason, text=cut, role="code_exercises", meta={"finish_reason": reason},
                        template_options=opts, slot_values={"function_name": "double"})
        postprocess.check_sample(sample, PostprocessConfig(min_chars=10, min_words=3))
        results[reason] = sample
    kept = results["length"]
    assert kept.reject_reason is None and kept.meta["postprocess"]["cut_unfinished_tail"]
    assert kept.text.endswith("assert double(2) == 4") and "unfinished" not in kept.text
    assert results["stop"].reject_reason == "syntax_error"


def test_a_teacher_loop_is_cut_where_it_starts_and_a_pure_loop_is_rejected():
    """A section that falls into a loop keeps what precedes the first repeated line; one that is nothing but the
    loop ends too short; repeated lines inside code fences and short repeated lines are not loops."""
    intro = "Energy is what makes things move, and a bicycle shows it well.\n\n" + PROSE
    looping = intro + "\n\nThe reader will understand the dialogue.\n\n" + \
        "\n\n".join(["The reader will understand the dialogue."] * 6)
    loop_only = "\n\n".join(["A little suffering is good for the soul."] * 12)
    code = ("Counting words:\n```python\nfor word in words:\n    counts[word] = counts.get(word, 0) + 1\n"
            "for word in words:\n    counts[word] = counts.get(word, 0) + 1\n```\nSo so.\nSo so.\n" + PROSE)
    cfg = PostprocessConfig(min_chars=100, min_words=5)
    samples = [_sample(t) for t in (looping, loop_only, code)]
    summary = postprocess.process(samples, dataclasses.replace(cfg, decontaminate=False, near_dedup=False))
    first, only, fenced = samples
    assert first.reject_reason is None
    assert first.text == intro + "\n\nThe reader will understand the dialogue."
    assert first.meta["postprocess"]["trimmed_loop"] == {"at_line": 7}
    assert only.reject_reason == "too_short" and only.text == "A little suffering is good for the soul."
    assert fenced.reject_reason is None and fenced.text == code.strip() and "postprocess" not in fenced.meta
    assert summary["trimmed_loops"] == 2
    # Exercises are code: never trimmed. Switched off, prose is kept whole.
    off = _sample(looping)
    postprocess.check_sample(off, dataclasses.replace(cfg, trim_loops=False))
    assert off.text == looping.strip() and off.reject_reason is None


def test_gopher_repetition_rules_reject_with_the_failed_rule():
    looping = PROSE + "\n\n" + "\n\n".join(["The reader will understand the dialogue."] * 6)
    s = _sample(looping)
    postprocess.check_sample(s, PostprocessConfig(min_chars=10, min_words=3, trim_loops=False,
                                                  gopher_repetition=True))
    assert s.reject_reason == "repetitive" and s.reject_detail.startswith("gopher_repetition.dup_para_frac")
    clean = _sample(PROSE)
    postprocess.check_sample(clean, PostprocessConfig(min_chars=10, min_words=3, gopher_repetition=True))
    assert clean.reject_reason is None

"""Heuristic rules: each named rule fires on text built to break it, and not on clean prose/code."""

import pytest

from textbooks.curate import heuristics as h

PROSE = (
    "The history of the printing press is closely tied to the spread of literacy in Europe. "
    "Before movable type, books were copied by hand, which made them rare and expensive. "
    "Gutenberg combined several existing technologies, and the result was a machine that could "
    "produce pages quickly and with consistent quality. Within a few decades, printing shops had "
    "opened in many cities, and the number of books in circulation grew enormously. This change "
    "made it possible for scholars to share ideas with each other across long distances, and it "
    "helped to standardize spelling and grammar in several languages.\n\n"
    "Historians still debate how quickly these effects were felt by ordinary people. Some argue that "
    "the press mainly served the church and the universities at first, while others point to the "
    "pamphlets and broadsheets that reached a much wider audience during the Reformation."
)


def test_clean_prose_passes_all_prose_rules():
    cfg = h.HeuristicsConfig(gopher_quality=h.GopherQualityConfig(), gopher_repetition=h.GopherRepetitionConfig(),
                             c4=h.C4Config())
    result = h.apply_heuristics(PROSE, {}, cfg)
    assert result.keep, result
    assert result.text == PROSE  # every line ends in punctuation: nothing removed, paragraphs intact


@pytest.mark.parametrize("text,reason", [
    ("too short to be a document", "gopher_quality.min_doc_words"),
    (("Supercalifragilisticexpialidocious " * 60).strip(), "gopher_quality.max_avg_word_length"),
    (" ".join(["the a of to and in is it be"] * 10), "gopher_quality.min_avg_word_length"),
    (PROSE + " #tag" * 30, "gopher_quality.max_symbol_word_ratio"),
    ("\n".join(f"- item number {i} of the list with the words and that" for i in range(60)),
     "gopher_quality.max_bullet_lines_ratio"),
    ("\n".join(f"this is the line {i} that goes on and with ..." for i in range(60)),
     "gopher_quality.max_ellipsis_lines_ratio"),
    (PROSE + " " + " ".join(["12345 6789 --- 42 !!"] * 80), "gopher_quality.min_alpha_words_ratio"),
    (" ".join(f"alpha beta gamma delta {i}" for i in range(20)), "gopher_quality.min_stop_words"),
])
def test_gopher_quality_rules(text, reason):
    failed = h.gopher_quality(text, h.GopherQualityConfig())
    assert failed is not None and failed[0] == reason, failed


def test_gopher_quality_threshold_none_disables_rule():
    assert h.gopher_quality("too short", h.GopherQualityConfig(min_doc_words=None, min_stop_words=None,
                                                               min_avg_word_length=None)) is None


def test_repetition_rules_match_definitions():
    lines = ["a line that repeats itself here"] * 5 + [f"unique line number {i} with text" for i in range(5)]
    frac, char_frac = h.duplicate_fractions(lines)
    assert frac == pytest.approx(4 / 10)
    assert char_frac == pytest.approx(4 * len(lines[0]) / sum(len(x) for x in lines))
    failed = h.gopher_repetition("\n".join(lines), h.GopherRepetitionConfig(max_dup_para_frac=None,
                                                                             max_dup_para_char_frac=None))
    assert failed[0] == "gopher_repetition.dup_line_frac"


def test_top_and_duplicate_ngram_fractions():
    from textbooks.curate.textnorm import hash_words
    import numpy as np

    words = "x y x y x y a b c d".split()
    hashes, lens = hash_words(words), np.array([len(w) for w in words])
    # Most frequent bigram "x y" occurs 3 times, 2 chars each time: 6 of 10 chars.
    assert h.top_ngram_char_fraction(hashes, lens, 2) == pytest.approx(0.6)
    words = "one two three four five one two three four five six".split()
    hashes, lens = hash_words(words), np.array([len(w) for w in words])
    # The second "one two three four five" repeats a 5-gram: its characters are covered.
    expected = sum(len(w) for w in words[5:10]) / sum(len(w) for w in words)
    assert h.duplicate_ngram_char_fraction(hashes, lens, 5) == pytest.approx(expected)
    text = " ".join(["spam eggs ham bacon beans toast"] * 20) + " " + PROSE
    assert h.gopher_repetition(text, h.GopherRepetitionConfig())[0].startswith("gopher_repetition.")


def test_c4_rules():
    cfg = h.C4Config()
    assert h.c4_filter(PROSE + " Lorem ipsum dolor sit amet.", cfg).reason == "c4.lorem_ipsum"
    assert h.c4_filter(PROSE + " function() { return 1; }", cfg).reason == "c4.curly_braces"
    page = (PROSE + "\nPlease enable JavaScript in your browser to continue.\nMenu\nThis site uses cookies, see "
            "our cookie policy for more details.\n")
    result = h.c4_filter(page, cfg)
    assert result.keep
    assert "JavaScript" not in result.text and "Menu" not in result.text and "cookie policy" not in result.text
    assert result.text == PROSE  # only the bad lines went; the paragraph break stays
    assert h.c4_filter("Menu\nHome\nContact us", cfg).reason == "c4.no_lines_left"
    assert h.c4_filter("Only one sentence here that is long enough.", cfg).reason == "c4.min_sentences"
    keep_lines = h.C4Config(remove_lines=False, max_bad_lines_frac=0.2)
    assert h.c4_filter(page, keep_lines).reason == "c4.bad_lines_frac"


def test_code_rules():
    cfg = h.CodeConfig(default_language="python")
    good = "def add(a, b):\n    \"\"\"Adds two numbers.\"\"\"\n    return a + b\n"
    assert h.code_filter(good, {}, cfg) is None
    assert h.code_filter("x = '" + "a" * 1200 + "'\n", {}, cfg)[0] == "code.max_line_length"
    assert h.code_filter("\n".join(["y = " + "1" * 150] * 5), {}, cfg)[0] == "code.max_mean_line_length"
    assert h.code_filter("# ~~~ %%% ^^^ &&& *** ((( ))) !!! @@@ ~~~\n" * 3, {}, cfg)[0] == "code.min_alphanum_frac"
    assert h.code_filter("# This file is auto-generated. Do not edit.\n" + good, {}, cfg)[0] == "code.autogenerated"
    failed = h.code_filter("print 'hello'\n", {}, cfg)
    assert failed[0] == "code.python_syntax_error" and "line 1" in failed[1]
    # Not Python by meta: no syntax check.
    assert h.code_filter("print 'hello'\n", {"path": "x.rb"}, h.CodeConfig()) is None
    assert h.record_language({"path": "pkg/mod.py"}) == "python"


def test_heuristic_filter_beam_stage_counts_and_reasons():
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    records = [{"id": "good", "text": PROSE, "role": "web_raw", "source": "t", "license": "x", "split": "train",
                "meta": {}},
               {"id": "short", "text": "tiny text", "role": "web_raw", "source": "t", "license": "x",
                "split": "train", "meta": {}}]
    cfg = h.HeuristicsConfig(gopher_quality=h.GopherQualityConfig())
    with beam.Pipeline(runner="DirectRunner") as p:
        out = p | beam.Create(records) | h.HeuristicFilter(cfg)
        assert_that(out["kept"] | "kid" >> beam.Map(lambda r: r["id"]), equal_to(["good"]), label="kept")
        assert_that(out["dropped"] | "did" >> beam.Map(lambda r: (r["id"], r["meta"]["curation"]["reason"])),
                    equal_to([("short", "gopher_quality.min_doc_words")]), label="dropped")

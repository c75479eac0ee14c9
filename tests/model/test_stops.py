"""Stop strings: the earliest occurrence wins, the stop is dropped, empty stops are ignored; checked against a
regular-expression search (the leftmost match of an alternation of the escaped stops) on random texts."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from textbooks.model.stops import cut_at_stop, find_stop

_ALPHABET = "ab\n\t é"


def _reference(text: str, stops: list[str]) -> int | None:
    pattern = "|".join(re.escape(s) for s in stops if s)
    match = re.search(pattern, text) if pattern else None
    return match.start() if match else None


def test_the_earliest_stop_wins_whatever_the_order_of_the_list():
    text = "    return x\n\ndef other():\n    pass\nclass Y: pass"
    assert find_stop(text, ["\nclass", "\ndef"]) == text.index("\ndef")
    assert cut_at_stop(text, ["\nclass", "\ndef"]) == "    return x\n"
    assert cut_at_stop(text, ["\ndef", "\nclass"]) == "    return x\n"


def test_overlapping_stops_cut_at_the_earlier_start():
    assert cut_at_stop("xxabcd", ["bcd", "abc"]) == "xx"
    assert cut_at_stop("xxabcd", ["ab", "abcd"]) == "xx"


def test_no_stop_keeps_the_text_and_empty_stops_are_ignored():
    assert find_stop("hello", ["zz"]) is None and cut_at_stop("hello", ["zz"]) == "hello"
    assert cut_at_stop("hello", []) == "hello"
    assert cut_at_stop("hello", ["", "l"]) == "he"
    assert find_stop("hello", [""]) is None and cut_at_stop("", ["a"]) == ""


def test_a_stop_at_the_start_leaves_nothing():
    assert find_stop("\nUser: hi", ["\nUser:"]) == 0 and cut_at_stop("\nUser: hi", ["\nUser:"]) == ""


@settings(max_examples=300, deadline=None)
@given(st.text(_ALPHABET, max_size=40), st.lists(st.text(_ALPHABET, max_size=4), max_size=4))
def test_matches_a_regex_search(text, stops):
    expected = _reference(text, stops)
    assert find_stop(text, stops) == expected
    cut = cut_at_stop(text, stops)
    assert cut == (text if expected is None else text[:expected])
    assert not any(s and s in cut for s in stops)  # no stop survives in the kept text

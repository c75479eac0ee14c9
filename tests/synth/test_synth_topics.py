"""Topic trees: robust list parsing, normalized and near-duplicate rejection, growth with a teacher, files."""

import asyncio
import json

import pytest

from textbooks.serve import client as client_lib
from textbooks.synth import topics
from textbooks.synth.topics import Topic, TopicTree


@pytest.mark.parametrize("answer,expected", [
    ("Here are 3 topics:\n1. Variables\n2) **Loops**: repeating work with for and while\n3. Functions.\n\nHope this helps!",
     ["Variables", "Loops", "Functions"]),
    ("- Recursion\n* Base cases\n• Call stack depth", ["Recursion", "Base cases", "Call stack depth"]),
    ('```json\n["Lists", "Tuples", "Sets"]\n```', ["Lists", "Tuples", "Sets"]),
    ("Sure! Below are the sections:\nIntroduction to sorting\nBubble sort\nMerge sort",
     ["Introduction to sorting", "Bubble sort", "Merge sort"]),
    ("Lists, dictionaries, sets", ["Lists", "dictionaries", "sets"]),
    ("1. Gravity - the force that pulls objects toward each other\n2. Friction — why things slow down on floors",
     ["Gravity", "Friction"]),
    ("1. This is a very long sentence that is not a title at all because it goes on and on and on forever more\n"
     "2. Short title", ["Short title"]),
])
def test_parse_list(answer, expected):
    assert topics.parse_list(answer) == expected


def test_normalization_and_near_duplicates():
    tree = TopicTree()
    assert tree.add(Topic("Python", "Lists in Python"))
    assert not tree.add(Topic("Python", "python lists"))  # same words after normalization (order, plural, "in")
    assert not tree.add(Topic("Python", "The Lists of Python!"))
    assert tree.add(Topic("Python", "Dictionaries"))
    assert not tree.add(Topic("Python", "Dictionarys"))  # near duplicate (a typo)
    assert tree.add(Topic("Python", "Sets"))
    # Topics are unique within their subject; the same title may appear in another subject.
    assert tree.add(Topic("Data structures", "Lists in Python"))
    assert tree.num_rejected == 3
    assert len(tree) == 4


def test_subtopics_are_unique_globally():
    tree = TopicTree([Topic("A", "t1", "Binary search"), Topic("B", "t2", "Merge sort")])
    assert not tree.add(Topic("C", "t3", "binary searches"))
    assert tree.add(Topic("C", "t3", "Quick sort"))


def test_tens_of_thousands_of_topics():
    adjectives = ("practical", "visual", "historical", "advanced", "gentle", "formal", "hands-on", "applied",
                  "classic", "modern", "intuitive", "rigorous", "playful", "quantitative", "comparative", "everyday")
    nouns = ("recursion", "probability", "photosynthesis", "erosion", "democracy", "fractions", "magnetism",
             "friendship", "nutrition", "volcanoes", "sorting", "inflation", "grammar", "orbits", "bacteria",
             "geometry", "electricity", "migration", "poetry", "hashing", "acids", "glaciers", "memory", "tides",
             "trade")
    readers = ("for beginners", "for engineers", "in daily life", "through puzzles", "with examples",
               "for teachers", "in nature", "at home", "in museums", "with experiments", "for artists",
               "in cities", "through games", "for nurses", "in space", "with stories", "on farms", "at sea",
               "in sports", "for lawyers", "in kitchens", "with maps", "for pilots", "in music", "in deserts",
               "in forests", "in hospitals", "with code", "for children", "in factories")
    titles = [f"{a} {n} {r}" for a in adjectives for n in nouns for r in readers]
    assert len(titles) == 12_000
    tree = TopicTree()
    added = sum(tree.add(Topic("Everything", t)) for t in titles)
    assert added == len(tree) == 12_000  # all distinct: none is a near duplicate of another
    assert not tree.add(Topic("Everything", "Practical Recursion for Beginners."))
    assert not tree.add(Topic("Everything", "practicall recursion for beginner"))  # a typo: near duplicate


class _FakeTeacher:
    """Answers topic prompts with numbered lists; one subject's request fails."""

    model = "fake"

    def __init__(self):
        self.prompts = []

    async def complete(self, prompt, **sampling):
        self.prompts.append(prompt)
        await asyncio.sleep(0.001 * (len(self.prompts) % 3))  # answers arrive out of order
        if '"Broken"' in prompt:
            raise client_lib.RetriesExhaustedError("failed", 3, "HTTP 500")
        if "chapter" in prompt:  # subtopics
            chapter = prompt.split('the chapter "')[1].split('"')[0]
            text = "\n".join(f"{i + 1}. {chapter} part {i}" for i in range(3)) + "\n4. Introduction"
        else:
            subject = prompt.split('textbook on "')[1].split('"')[0]
            text = f"Sure!\n1. {subject} basics\n2. Advanced {subject}\n3. {subject} basics."
        return client_lib.Completion(text=text, finish_reason="stop", usage=None, model="fake")


def test_grow_topic_tree_with_teacher():
    teacher = _FakeTeacher()
    tree = asyncio.run(topics.grow_topic_tree(teacher, ["Sound", "Light", "Broken"], topics_per_subject=3,
                                              subtopics_per_topic=3, max_failures=1))
    paths = [t.path for t in tree]
    # "Broken" failed and stays a bare subject; each subject gave 2 distinct topics (the third is a duplicate).
    assert ("Broken",) in paths
    sound = [p for p in paths if p[0] == "Sound"]
    assert len({p[1] for p in sound}) == 2
    # Each topic has 3 own subtopics; "Introduction" is accepted once globally.
    assert sum(p[-1] == "Introduction" for p in paths) == 1
    assert len([p for p in paths if len(p) == 3]) == 4 * 3 + 1
    # Same answers -> same tree, whatever the order the answers arrived in.
    again = asyncio.run(topics.grow_topic_tree(_FakeTeacher(), ["Sound", "Light", "Broken"], topics_per_subject=3,
                                               subtopics_per_topic=3, max_failures=1))
    assert [t.path for t in again] == paths


def test_grow_gives_up_after_too_many_failures():
    with pytest.raises(client_lib.RetriesExhaustedError):
        asyncio.run(topics.grow_topic_tree(_FakeTeacher(), ["Broken", "Broken too"], max_failures=0))


def test_files_roundtrip_and_errors(tmp_path):
    tree = TopicTree([Topic("S", "T", "U"), Topic("S", "T2"), Topic("S2")])
    for name in ("t.jsonl", "t.txt"):
        path = tree.save(str(tmp_path / name))
        assert [t.path for t in TopicTree.load(path)] == [t.path for t in tree]
    assert json.loads(open(tmp_path / "t.jsonl").readline())["subtopic"] == "U"
    assert len(TopicTree.load("code")) >= 30 and len(TopicTree.load("world")) >= 30
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"subject": "ok"}\n{"topic": "no subject"}\n')
    with pytest.raises(topics.TopicError, match=r"bad.jsonl:2: expected an object with a non-empty 'subject'"):
        TopicTree.load(str(bad))
    bad_txt = tmp_path / "bad.txt"
    bad_txt.write_text("a > b > c > d\n")
    with pytest.raises(topics.TopicError, match=r"bad.txt:1: expected 'subject"):
        TopicTree.load(str(bad_txt))
    with pytest.raises(topics.TopicError, match="not found"):
        TopicTree.load(str(tmp_path / "missing.txt"))


def test_a_fatal_refusal_stops_growth_at_once_without_warnings(caplog):
    """A 404 (wrong model name) would refuse every request alike: the first one ends the growth, with no
    warning per subject (a 400 for one prompt is still counted and warned about)."""

    class Refusing:
        model = "nope"
        calls = 0

        async def complete(self, prompt, **sampling):
            Refusing.calls += 1
            raise client_lib.APIStatusError(404, "the model 'nope' does not exist", "http://127.0.0.1:1/v1")

        chat = complete

    subjects = [f"Subject {i}" for i in range(16)]
    with caplog.at_level("WARNING"), pytest.raises(client_lib.APIStatusError, match="404"):
        asyncio.run(topics.grow_topic_tree(Refusing(), subjects, max_failures=100))
    assert not [r for r in caplog.records if "expanding" in r.getMessage()]
    assert client_lib.APIStatusError(400, "bad", "u").fatal is False

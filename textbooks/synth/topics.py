"""The topic tree (subject -> topic -> subtopic): grown by the teacher from seed subjects, or loaded from a file.

Growing asks the teacher for the topics of each seed subject and then the subtopics of each topic, with the
prompts of ``templates/topics.yaml``; the answers are parsed as lists whatever their shape (numbered,
bulleted, JSON arrays, "Title: explanation" lines, preambles). New titles are deduplicated against everything
already in the tree: exactly after normalization (case, punctuation, articles, plurals, word order) and
approximately (character 3-gram Jaccard similarity, candidates found with MinHash LSH and then verified
exactly), so a tree of tens of thousands of topics stays free of "Python lists" / "Lists in Python" pairs.

Files: JSONL (one ``{"subject", "topic", "subtopic"}`` object a line, as :meth:`TopicTree.save` writes) or
TXT (one path a line, levels separated by " > " or tabs; a line with one level is a bare subject).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
import unicodedata
from typing import Any, Iterable, Iterator, Mapping, Sequence

from textbooks.serve import client as client_lib
from textbooks.synth import minhash
from textbooks.synth import templates as templates_lib

logger = logging.getLogger(__name__)

_TEMPLATES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
BUILTIN_SEEDS = {
    "code": os.path.join(_TEMPLATES_DIR, "seeds_code.txt"),
    "world": os.path.join(_TEMPLATES_DIR, "seeds_world.txt"),
    # Fixed trees of full paths, used as is (no growing): for small teachers and quick runs.
    "code_topics": os.path.join(_TEMPLATES_DIR, "topics_code.txt"),
    "world_topics": os.path.join(_TEMPLATES_DIR, "topics_world.txt"),
}
_STOPWORDS = frozenset("a an the and or of in on to for with into about its your using how what".split())
_ITEM_RE = re.compile(r"^\s*(?:(?:\d+|[a-zA-Z])[.)]|[-*+\u2022\u2023\u25cf\u2013]|#+)\s+(?P<item>.+?)\s*$")
_PREAMBLE_RE = re.compile(r"^(sure|certainly|of course|here (is|are)|below (is|are)|these are|the following)\b",
                          re.I)


class TopicError(ValueError):
    """A topic file is malformed; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Topic:
    """A leaf of the tree. ``subtopic`` (and ``topic``) may be empty for shallower trees."""

    subject: str
    topic: str = ""
    subtopic: str = ""

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(p for p in (self.subject, self.topic, self.subtopic) if p)

    @property
    def title(self) -> str:
        """The most specific level."""
        return self.path[-1]

    @property
    def id(self) -> str:
        """A stable id from the normalized path."""
        key = "/".join(normalize_title(p) for p in self.path)
        return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]

    def slot_values(self) -> dict[str, str]:
        """Values for the topic-tree slot sources; missing levels fall back to the level above."""
        topic = self.topic or self.subject
        return {"subject": self.subject, "topic": topic, "subtopic": self.subtopic or topic,
                "topic_path": " > ".join(self.path)}

    def to_dict(self) -> dict:
        return {"id": self.id, "subject": self.subject, "topic": self.topic, "subtopic": self.subtopic}


def normalize_title(text: str) -> str:
    """Canonical form for exact deduplication: NFKC, lower case, no punctuation or markup, no stop words,
    simple plurals folded, words sorted."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = re.sub(r"[`*_\"'“”‘’()\[\]{}:;,.!?/\\|]+", " ", t)
    words = []
    for w in t.split():
        if w in _STOPWORDS:
            continue
        if len(w) > 4 and w.endswith("ies"):
            w = w[:-3] + "y"
        elif len(w) > 4 and w.endswith(("sses", "ches", "shes", "xes", "zes")):
            w = w[:-2]
        elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        words.append(w)
    return " ".join(sorted(words))


def clean_title(text: str) -> str:
    """Strips markdown emphasis, quotes, trailing punctuation and a trailing explanation from a list item."""
    t = re.sub(r"\*\*|__|`", "", text).strip()
    t = t.strip("\"'“”‘’ ")
    for sep in (": ", " - ", " – ", " — "):
        head, found, tail = t.partition(sep)
        if found and head and len(head.split()) <= 10 and len(tail.split()) >= 3:
            t = head
            break
    return t.rstrip(" .;,:").strip("\"'“”‘’ ")


def parse_list(text: str, *, max_words: int = 16) -> list[str]:
    """Extracts list items from a model's answer.

    Handles JSON arrays (also inside ```json fences), numbered or bulleted lists (ignoring preambles and
    closing remarks), and plain one-item-per-line answers. Items longer than ``max_words`` words are dropped
    (they are sentences, not titles).
    """
    body = re.sub(r"```(?:json|text|markdown)?", "", text).strip()
    start, end = body.find("["), body.rfind("]")
    if 0 <= start < end:
        try:
            arr = json.loads(body[start:end + 1])
            if isinstance(arr, list) and arr and all(isinstance(x, str) for x in arr):
                return _keep([clean_title(x) for x in arr], max_words)
        except ValueError:
            pass
    lines = [ln for ln in body.splitlines() if ln.strip()]
    items = [m.group("item") for m in map(_ITEM_RE.match, lines) if m]
    if not items:
        items = [ln for ln in lines if not _PREAMBLE_RE.match(ln.strip()) and not ln.rstrip().endswith(":")]
        if len(items) == 1 and "," in items[0]:
            items = items[0].split(",")
    return _keep([clean_title(x) for x in items], max_words)


def _keep(items: Iterable[str], max_words: int) -> list[str]:
    return [x for x in items if x and len(x.split()) <= max_words and any(c.isalpha() for c in x)]


class TopicTree:
    """An insertion-ordered set of :class:`Topic` leaves with exact and near-duplicate rejection.

    Args:
        near_dup_threshold: Jaccard similarity (char 3-grams of the normalized title) above which a new title
            is a near duplicate of an existing one at the same level; 1.0 disables near-duplicate checks.
    """

    def __init__(self, topics: Iterable[Topic] = (), *, near_dup_threshold: float = 0.85):
        self.near_dup_threshold = near_dup_threshold
        self._hasher = minhash.MinHasher(num_perm=64, seed=7)
        self._leaves: dict[str, Topic] = {}
        self._exact: set[tuple[str, str]] = set()
        self._lsh: dict[str, minhash.LSHIndex] = {}
        self._shingles: list[set[str]] = []
        self.num_rejected = 0
        for t in topics:
            self.add(t)

    def __len__(self) -> int:
        return len(self._leaves)

    def __iter__(self) -> Iterator[Topic]:
        return iter(self._leaves.values())

    def __getitem__(self, i: int) -> Topic:
        return list(self._leaves.values())[i]

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(t.subject for t in self))

    def _level_scope(self, topic: Topic) -> str:
        # Subjects are unique globally, topics within their subject, subtopics globally (two sections with
        # the same title would make the same textbook text).
        depth = len(topic.path)
        return "subject" if depth == 1 else (f"topic:{normalize_title(topic.subject)}" if depth == 2 else "subtopic")

    def _duplicate_of(self, scope: str, key: str) -> tuple[bool, set[str], object]:
        if not key or (scope, key) in self._exact:
            return True, set(), None
        if self.near_dup_threshold >= 1.0:
            return False, set(), None
        shingles = minhash.char_shingles(key)
        sig = self._hasher.signature(shingles)
        index = self._lsh.get(scope)
        if index is not None:
            # LSH finds candidates; the exact Jaccard of the (short) shingle sets decides.
            for other in index.candidates(sig):
                if minhash.jaccard(shingles, self._shingles[other]) >= self.near_dup_threshold:
                    return True, shingles, sig
        return False, shingles, sig

    def is_duplicate(self, topic: Topic) -> bool:
        """Whether ``topic`` repeats (exactly after normalization, or nearly) one at its level."""
        return self._duplicate_of(self._level_scope(topic), normalize_title(topic.title))[0]

    def add(self, topic: Topic) -> bool:
        """Adds ``topic`` unless it duplicates one already there; returns whether it was added."""
        scope, key = self._level_scope(topic), normalize_title(topic.title)
        duplicate, shingles, sig = self._duplicate_of(scope, key)
        if duplicate:
            self.num_rejected += 1
            return False
        self._exact.add((scope, key))
        if sig is not None:
            index = self._lsh.setdefault(scope, minhash.LSHIndex(64, self.near_dup_threshold))
            item = len(self._shingles)
            self._shingles.append(shingles)
            index.insert(item, sig)
        self._leaves[topic.id] = topic
        return True

    def replace_leaf(self, parent: Topic, children: Sequence[Topic]) -> int:
        """Replaces leaf ``parent`` by those of ``children`` that are new; keeps ``parent`` if none is."""
        added = [c for c in children if self.add(c)]
        if added and parent.id in self._leaves:
            del self._leaves[parent.id]
        return len(added)

    def save(self, path: str) -> str:
        """Writes the leaves as JSONL (or TXT paths when ``path`` ends in .txt); returns ``path``."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for t in self:
                f.write((" > ".join(t.path) if path.endswith(".txt") else json.dumps(t.to_dict(), ensure_ascii=False))
                        + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str, *, near_dup_threshold: float = 0.85) -> "TopicTree":
        """Reads a JSONL or TXT topic file (see the module docstring), or a built-in set: seed subjects ('code', 'world') or fixed
        trees ('code_topics', 'world_topics').

        Raises:
            TopicError: a line is malformed (names the file and line) or the file holds no topics.
        """
        path = BUILTIN_SEEDS.get(path, path)
        if not os.path.isfile(path):
            raise TopicError(f"topic file {path!r} not found (built-in seed sets: {', '.join(BUILTIN_SEEDS)})")
        tree = cls(near_dup_threshold=near_dup_threshold)
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                tree.add(_parse_topic_line(line, path, lineno, jsonl=path.endswith((".jsonl", ".json"))))
        if not len(tree):
            raise TopicError(f"{path}: no topics found")
        if tree.num_rejected:
            logger.info("%s: skipped %d duplicate topics", path, tree.num_rejected)
        return tree


def _parse_topic_line(line: str, path: str, lineno: int, jsonl: bool) -> Topic:
    if jsonl:
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise TopicError(f"{path}:{lineno}: not JSON ({e})") from None
        if isinstance(obj, str):
            obj = {"subject": obj}
        if not isinstance(obj, Mapping) or not isinstance(obj.get("subject"), str) or not obj["subject"].strip():
            raise TopicError(f"{path}:{lineno}: expected an object with a non-empty 'subject' string")
        levels = [obj.get("subject", ""), obj.get("topic") or "", obj.get("subtopic") or ""]
        if not all(isinstance(x, str) for x in levels):
            raise TopicError(f"{path}:{lineno}: 'topic' and 'subtopic' must be strings")
    else:
        levels = [p.strip() for p in re.split(r"\t| > ", line)]
        if len(levels) > 3 or not all(levels):
            raise TopicError(f"{path}:{lineno}: expected 'subject[ > topic[ > subtopic]]', got {line!r:.100}")
        levels += [""] * (3 - len(levels))
    subject, topic, subtopic = (x.strip() for x in levels)
    if subtopic and not topic:
        raise TopicError(f"{path}:{lineno}: a subtopic needs a topic")
    return Topic(subject, topic, subtopic)


async def grow_topic_tree(client: Any, seeds: TopicTree | Sequence[str], *, templates: Any = None,
                          topics_per_subject: int = 10, subtopics_per_topic: int = 8,
                          sampling: Mapping[str, Any] | None = None, near_dup_threshold: float = 0.85,
                          max_failures: int | None = None, progress: Any = None) -> TopicTree:
    """Grows subjects into topics and topics into subtopics with the teacher.

    Args:
        client: an :class:`~textbooks.serve.client.OpenAIClient` (or anything with ``async complete``).
        seeds: seed subjects (strings) or a tree whose leaves are subjects.
        templates: a TemplateSet holding ``topics.topics_of_subject`` and ``topics.subtopics_of_topic``
            (default: the built-in ``topics`` templates).
        topics_per_subject / subtopics_per_topic: how many items to ask for at each level (0 stops there).
        sampling: sampling fields for the listing requests (default temperature 0.7, 512 tokens).
        near_dup_threshold: see :class:`TopicTree`.
        max_failures: give up (raise) after this many failed requests (default: a quarter of the requests).
        progress: optional :class:`~textbooks.progress.Progress`-like object with ``update(...)``.

    Returns:
        A tree of (subject, topic, subtopic) leaves; a node whose expansion failed or gave nothing new stays
        a leaf at its level.
    """
    templates = templates or templates_lib.load_templates("topics")
    sampling = {"max_tokens": 512, "temperature": 0.7, **(sampling or {})}
    subjects = [t.subject for t in seeds] if isinstance(seeds, TopicTree) else list(seeds)
    tree = TopicTree(near_dup_threshold=near_dup_threshold)
    for s in subjects:
        tree.add(Topic(s))
    failures = 0
    limit = max_failures

    async def expand(parent: Topic, template_id: str, n: int) -> list[Topic]:
        nonlocal failures
        values = {**parent.slot_values(), "n": str(n)}
        rendered = templates[template_id].render(values)
        try:
            answer = await client.complete(rendered["prompt"], **sampling) if "prompt" in rendered else \
                await client.chat(rendered["messages"], **sampling)
        except client_lib.EndpointUnreachableError:
            raise
        except client_lib.ClientError as e:
            if getattr(e, "fatal", False):  # every other request would be refused alike: stop now, warn nothing
                raise
            failures += 1
            logger.warning("expanding %s failed: %s", " > ".join(parent.path), e)
            if failures > limit:
                raise
            return []
        finally:
            if progress is not None:
                progress.update(done=1)
        return [Topic(parent.subject, t) if not parent.topic else Topic(parent.subject, parent.topic, t)
                for t in parse_list(answer.text)[: 2 * n]]

    for template_id, n, depth in (("topics.topics_of_subject", topics_per_subject, 1),
                                  ("topics.subtopics_of_topic", subtopics_per_topic, 2)):
        parents = [t for t in tree if len(t.path) == depth]
        if n <= 0 or not parents:
            continue
        if progress is not None:
            progress.add_total(len(parents))
        limit = max_failures if max_failures is not None else max(1, len(parents) // 4)
        failures = 0
        children = await asyncio.gather(*(expand(p, template_id, n) for p in parents))
        for parent, kids in zip(parents, children):  # Parent order, so the tree does not depend on timing.
            tree.replace_leaf(parent, kids)
    return tree

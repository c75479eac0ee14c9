"""Small synthetic role corpora in the shard format, for tests, benchmarks and demos of the input pipeline.

Documents are deterministic pseudo-text (ASCII words, newlines, the occasional non-ASCII character) whose
lengths are drawn per role around a chosen mean, so the roles can differ in document length by 10x or more.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np

from textbooks.data import records
from textbooks.data.manifest import Manifest, write_manifest
from textbooks.data.roles import ROLES

_WORDS = ("the", "a", "def", "return", "class", "value", "list", "for", "in", "range", "import", "print",
          "textbook", "energy", "cell", "graph", "proof", "lemma", "x", "y", "=", "+", "(", ")", ":", "é", "λ")

# Mean document length (characters) per role: long code files, short exercises, mid-size prose.
DEFAULT_MEAN_CHARS: dict[str, int] = {
    "synthetic_textbooks": 3000,
    "code_textbooks": 1500,
    "code_exercises": 300,
    "code_filtered": 6000,
    "web_filtered": 2500,
    "web_raw": 1200,
}


def make_text(rng: np.random.Generator, num_chars: int) -> str:
    """Pseudo-text of about ``num_chars`` characters."""
    words = rng.choice(len(_WORDS), size=max(1, num_chars // 4 + 1))
    text = " ".join(_WORDS[i] for i in words)
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return "\n".join(lines)[:num_chars]


def make_records(role: str, split: str, num_docs: int, mean_chars: int, *, seed: int = 0,
                 spread: float = 0.5) -> list[records.Record]:
    """``num_docs`` records whose lengths are uniform in ``mean_chars * (1 +/- spread)``."""
    rng = np.random.default_rng([seed, ROLES.index(role), 0 if split == "train" else 1])
    lows, highs = max(1, int(mean_chars * (1 - spread))), max(2, int(mean_chars * (1 + spread)))
    lengths = rng.integers(lows, highs, size=num_docs)
    return [records.Record(id=f"{role}-{split}-{i:06d}", text=make_text(rng, int(n)), role=role,
                           source="synthetic", license="CC0-1.0", split=split, meta={"n": int(n)})
            for i, n in enumerate(lengths)]


def write_role(root: str, role: str, *, num_docs: Mapping[str, int] | None = None, mean_chars: Optional[int] = None,
               num_shards: int = 4, seed: int = 0, spread: float = 0.5) -> str:
    """Writes ``<root>/<role>/`` with train and validation splits and a manifest; returns the folder."""
    num_docs = dict(num_docs or {"train": 200, "validation": 20})
    mean = mean_chars or DEFAULT_MEAN_CHARS[role]
    directory = os.path.join(root, role)
    splits = {}
    for split, n in num_docs.items():
        with records.ShardWriter(directory, split, num_shards=num_shards if split == "train" else 1) as w:
            for r in make_records(role, split, n, mean, seed=seed, spread=spread):
                w.write(r)
        splits[split] = w.stats
    write_manifest(directory, Manifest(role=role, splits=splits, stand_in="synthetic test data",
                                       description="deterministic pseudo-text"))
    return directory


def write_corpora(root: str, roles: Optional[list[str]] = None, *, mean_chars: Optional[Mapping[str, int]] = None,
                  num_docs: Optional[Mapping[str, int]] = None, num_shards: int = 4, seed: int = 0,
                  spread: float = 0.5) -> str:
    """Writes every role (or ``roles``) under ``root``; returns ``root``."""
    for role in roles or ROLES:
        write_role(root, role, num_docs=num_docs, mean_chars=(mean_chars or {}).get(role), num_shards=num_shards,
                   seed=seed, spread=spread)
    return root

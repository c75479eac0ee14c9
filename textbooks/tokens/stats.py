"""Token counts of a role's split under a vocabulary, computed once and cached next to the data.

Mixture rates are token fractions, while seqio samples examples; converting one to the other, sizing
components for temperature sampling and checking how often a component repeats all need token counts. This
module tokenizes a split once (the way the tasks do: one end-of-text per document) and keeps the histogram of
document lengths, from which the number and mean size of the examples after splitting documents at any
sequence length ``L`` follow exactly: a document of ``n`` tokens gives ``ceil(n / L)`` examples.

Stats are cached in ``<role_dir>/token_stats.json`` keyed by vocabulary (name plus a fingerprint of the
vocabulary itself) and by a fingerprint of the data (the manifest and each shard's size and modification
time); when the data changes they are recomputed. If the folder is read-only the cache goes to
``~/.cache/textbooks/token_stats/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from typing import Iterable, Mapping, Optional

import seqio
import tensorflow as tf

from textbooks.data import files, paths, records
from textbooks.data.counts import ReadReport
from textbooks.data.manifest import MANIFEST_NAME, Manifest, read_manifest
from textbooks.vocab.registry import get_vocabulary

logger = logging.getLogger(__name__)

STATS_FILE = "token_stats.json"
STATS_FORMAT = 1
_BATCH = 256


@dataclasses.dataclass
class TokenStats:
    """Token counts of one split. ``length_counts`` maps a document length (tokens, with end-of-text) to
    how many documents have it."""

    role: str
    split: str
    vocabulary: str
    fingerprint: str
    num_docs: int
    num_tokens: int
    length_counts: dict[int, int]
    num_rejected: int = 0

    def num_examples(self, max_length: Optional[int] = None) -> int:
        """Examples after cutting documents into pieces of at most ``max_length`` tokens."""
        if not max_length:
            return self.num_docs
        return sum(c * max(1, math.ceil(n / max_length)) for n, c in self.length_counts.items())

    def mean_tokens_per_example(self, max_length: Optional[int] = None) -> float:
        """Mean tokens per example after splitting at ``max_length`` (per document when None)."""
        examples = self.num_examples(max_length)
        if examples == 0:
            raise ValueError(f"split {self.split!r} of role {self.role!r} holds no documents")
        return self.num_tokens / examples

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["length_counts"] = {str(k): v for k, v in sorted(self.length_counts.items())}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "TokenStats":
        d = dict(d)
        d["length_counts"] = {int(k): int(v) for k, v in d["length_counts"].items()}
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------
# Vocabularies and fingerprints.


def vocabulary_fingerprint(name: str, vocabulary=None) -> str:
    """Name plus a digest of what defines the vocabulary (size, eos, the SentencePiece model bytes)."""
    vocabulary = vocabulary if vocabulary is not None else get_vocabulary(name)
    h = hashlib.sha256(f"{type(vocabulary).__name__}:{vocabulary.vocab_size}:{vocabulary.eos_id}".encode())
    model = getattr(vocabulary, "sp_model", None)
    if isinstance(model, (bytes, bytearray)):
        h.update(bytes(model))
    return f"{name}@{h.hexdigest()[:12]}"


def _shard_files(directory: str, split: str) -> tuple[list[str], Optional[Manifest]]:
    if not files.isdir(directory):
        raise FileNotFoundError(f"data folder {directory!r} does not exist; set the data root (gin "
                                f"textbooks.data.paths.data_root.path or ${paths.ENV_VAR}) or build the data")
    manifest = read_manifest(directory) if files.exists(files.join(directory, MANIFEST_NAME)) \
        else None
    if manifest is not None and split in manifest.splits:
        shards = manifest.shard_paths(split)
    else:
        shards = files.glob(records.shard_pattern(directory, split))
    if not shards:
        raise FileNotFoundError(f"no {split!r} shards in {directory!r}")
    return shards, manifest


def _stat(path: str) -> tuple[int, int]:
    if files.is_url(path):
        st = tf.io.gfile.stat(path)
        return st.length, st.mtime_nsec
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def data_fingerprint(directory: str, split: str) -> str:
    """Digest of the manifest and of each shard's name, size and modification time."""
    shards, _ = _shard_files(directory, split)
    h = hashlib.sha256(split.encode())
    manifest_path = files.join(directory, MANIFEST_NAME)
    if files.exists(manifest_path):
        with files.open_file(manifest_path, "rb") as f:
            h.update(f.read())
    for path in shards:
        size, mtime = _stat(path)
        h.update(f"{os.path.basename(path)}:{size}:{mtime}".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Computing.


def _token_lengths(vocabulary, texts: list[str]) -> Iterable[int]:
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return (len(t.encode("utf-8", "surrogatepass")) for t in texts)
    if hasattr(vocabulary, "encode_batch"):
        return (len(ids) for ids in vocabulary.encode_batch(texts))
    return (len(vocabulary.encode(t)) for t in texts)


def compute_token_stats(directory: str, vocabulary_name: str, split: str = "train", *,
                        role: Optional[str] = None, log_every_s: float = 30.0) -> TokenStats:
    """Tokenizes every document of ``split`` in ``directory`` and counts tokens (one end-of-text each).

    Bad lines are skipped and counted exactly as the training readers skip them.
    """
    vocabulary = get_vocabulary(vocabulary_name)
    shards, manifest = _shard_files(directory, split)
    fingerprint = data_fingerprint(directory, split)
    total = manifest.splits[split].num_docs if manifest is not None and split in manifest.splits else None
    report = ReadReport()
    counts: dict[int, int] = {}
    num_docs = num_tokens = 0
    start = last_log = time.monotonic()
    batch: list[str] = []

    def flush():
        nonlocal num_docs, num_tokens
        for n in _token_lengths(vocabulary, batch):
            n += 1  # end-of-text
            counts[n] = counts.get(n, 0) + 1
            num_docs += 1
            num_tokens += n
        batch.clear()

    for record in records.iter_records(shards, on_error="skip", report=report):
        batch.append(record.text)
        if len(batch) >= _BATCH:
            flush()
            now = time.monotonic()
            if now - last_log >= log_every_s:
                last_log = now
                rate = num_docs / (now - start)
                eta = f", ETA {(total - num_docs) / rate:.0f}s" if total and rate > 0 else ""
                logger.info("token stats %s/%s [%s]: %d/%s docs, %.0f docs/s%s", role or directory, split,
                            vocabulary_name, num_docs, total if total is not None else "?", rate, eta)
    flush()
    logger.info("token stats %s/%s [%s]: %d docs, %d tokens in %.1fs", role or directory, split,
                vocabulary_name, num_docs, num_tokens, time.monotonic() - start)
    return TokenStats(role=role or (manifest.role if manifest else os.path.basename(directory.rstrip("/"))),
                      split=split, vocabulary=vocabulary_fingerprint(vocabulary_name, vocabulary),
                      fingerprint=fingerprint, num_docs=num_docs, num_tokens=num_tokens, length_counts=counts,
                      num_rejected=report.num_rejected)


# ----------------------------------------------------------------------------------------------------------
# Cache.


def _fallback_path(directory: str) -> str:
    digest = hashlib.sha1(directory.encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser("~"), ".cache", "textbooks", "token_stats", f"{digest}.json")


def _load(path: str) -> dict:
    if not files.exists(path):
        return {}
    try:
        with files.open_file(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable token stats cache %s (%s)", path, e)
        return {}
    return data if isinstance(data, dict) and data.get("format") == STATS_FORMAT else {}


def _store(path: str, data: dict) -> None:
    files.makedirs(os.path.dirname(path))
    tmp = f"{path}.tmp-{os.getpid()}"
    with files.open_file(tmp, "wb") as f:
        f.write((json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    files.rename(tmp, path)


def stats_paths(directory: str) -> list[str]:
    """Where cached stats for ``directory`` are looked up, in order."""
    return [files.join(directory, STATS_FILE), _fallback_path(directory)]


def get_token_stats(role: str, vocabulary_name: str, split: str = "train", *, directory: Optional[str] = None,
                    recompute: bool = False) -> TokenStats:
    """Cached token stats of ``role``'s ``split`` (computed when missing or when the data changed).

    Args:
        role: data role; its folder is ``paths.role_dir(role)`` unless ``directory`` is given.
        vocabulary_name: 'phi', 'spm8k', 'byte' or 'spm:PATH'.
        recompute: ignore the cache.

    Raises:
        FileNotFoundError: the folder or the split's shards are missing.
    """
    directory = directory or paths.role_dir(role)
    vocab_key = vocabulary_fingerprint(vocabulary_name)
    fingerprint = data_fingerprint(directory, split)
    if not recompute:
        for path in stats_paths(directory):
            entry = _load(path).get("entries", {}).get(vocab_key, {}).get(split)
            if entry and entry.get("fingerprint") == fingerprint:
                return TokenStats.from_dict(entry)
    stats = compute_token_stats(directory, vocabulary_name, split, role=role)
    for path in stats_paths(directory):
        try:
            data = _load(path) or {"format": STATS_FORMAT, "entries": {}}
            data.setdefault("entries", {}).setdefault(vocab_key, {})[split] = stats.to_dict()
            _store(path, data)
            break
        except OSError as e:
            logger.info("cannot write token stats to %s (%s); trying the next location", path, e)
    return stats

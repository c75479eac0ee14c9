"""Builds the local corpora: one shard folder per data role, with train/validation splits and a manifest.

For each role the sources' chunks are interleaved round-robin (so ``max_docs`` keeps every source),
exact duplicates are dropped, long documents are chunked (:mod:`textbooks.corpora.chunking`), each
document is assigned to ``validation`` when the hash of its id falls below ``validation_fraction`` (chunks
follow their document; each split gets at least one document when there are two or more), records are
ordered by the hash of their id, and the splits are written with :func:`textbooks.data.records.write_shards`.
Building twice gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import sys
import time
from typing import Callable, Iterable, Iterator, Sequence

from textbooks.corpora import chunking, python_code, python_docs, web
from textbooks.corpora.assets import AssetMissingError
from textbooks.corpora.document import Document
from textbooks.corpora.sources import ROLE_INFO, SOURCES
from textbooks.data import paths, records
from textbooks.data.manifest import Manifest, write_manifest
from textbooks.data.records import Record
from textbooks.data.roles import ROLES, check_role

BUILDER_VERSION = 1
DEFAULT_VALIDATION_FRACTION = 0.05
TARGET_SHARD_BYTES = 8 << 20


def _role_sources(role: str) -> dict[str, Iterator[Document]]:
    """Per-source document iterators for ``role`` (sources that are not installed are skipped)."""
    if role == "code_filtered":
        return {"cpython-stdlib": python_code.module_documents()}
    if role == "code_exercises":
        return {"cpython-stdlib": python_code.exercise_documents()}
    if role in ("code_textbooks", "synthetic_textbooks"):
        try:
            return {"python-docs": python_docs.documents(role)}
        except AssetMissingError as e:
            print(f"warning: {e}; role {role} has no source", file=sys.stderr)
            return {}
    if role == "web_raw":
        return web.web_raw_sources()
    if role == "web_filtered":
        return web.web_filtered_sources()
    raise ValueError(f"no builder for role {role!r}; roles: {', '.join(ROLES)}")


def _hash_fraction(key: str) -> float:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _interleave(iterators: Sequence[Iterator]) -> Iterator:
    active = list(iterators)
    while active:
        still = []
        for it in active:
            item = next(it, None)
            if item is not None:
                yield item
                still.append(it)
        active = still


@dataclasses.dataclass
class RoleResult:
    """What was built for one role."""

    role: str
    manifest: Manifest | None
    out_dir: str
    duplicates: int = 0
    seconds: float = 0.0
    skipped_reason: str = ""


def _records_for_role(role: str, max_docs: int | None, max_chars: int,
                      validation_fraction: float, progress: Callable[[int], None]) -> tuple[list[Record], int]:
    """The role's records (train and validation), ordered by id hash, and the number of duplicates dropped."""
    info = ROLE_INFO[role]
    sources = _role_sources(role)
    seen_text: set[bytes] = set()
    duplicates = [0]

    def source_chunks(docs: Iterator[Document]) -> Iterator[tuple[Document, str, int, int]]:
        for doc in docs:
            digest = hashlib.sha256(doc.text.encode("utf-8", "replace")).digest()
            if digest in seen_text:
                duplicates[0] += 1
                continue
            seen_text.add(digest)
            kind = SOURCES[doc.source].kind
            pieces = chunking.chunk_text(doc.text, max_chars, kind) if doc.chunkable else [doc.text]
            for k, piece in enumerate(pieces):
                yield doc, piece, k, len(pieces)

    chunks: list[tuple[Document, str, int, int]] = []  # (document, chunk text, chunk index, chunk count)
    for item in _interleave([source_chunks(sources[k]) for k in sorted(sources)]):
        chunks.append(item)
        progress(len(chunks))
        if max_docs is not None and len(chunks) >= max_docs:
            break
    # Split by document id.
    doc_ids = sorted({doc.id for doc, *_ in chunks}, key=_hash_fraction)
    validation = {d for d in doc_ids if _hash_fraction(d) < validation_fraction}
    if len(doc_ids) >= 2 and validation_fraction > 0:
        if not validation:
            validation = {doc_ids[0]}
        elif len(validation) == len(doc_ids):
            validation.discard(doc_ids[-1])
    out = []
    for doc, piece, k, n in chunks:
        meta = dict(doc.meta)
        meta.setdefault("stand_in", info.stand_in)
        if n > 1:
            meta.update(chunk=k, num_chunks=n, parent_id=doc.id)
        rid = doc.id if n == 1 else f"{doc.id}#{k:03d}"
        src = SOURCES[doc.source]
        out.append(Record(id=rid, text=_clean_text(piece), role=role, source=src.name, license=src.license,
                          split="validation" if doc.id in validation else "train", meta=meta))
    out.sort(key=lambda r: (_hash_fraction(r.id), r.id))
    return out, duplicates[0]


def _clean_text(text: str) -> str:
    # Lone surrogates cannot be written as UTF-8; NULs upset many tools downstream.
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")


def build_role(role: str, out_root: str, *, max_docs: int | None = None,
               max_chars: int = chunking.DEFAULT_MAX_CHARS,
               validation_fraction: float = DEFAULT_VALIDATION_FRACTION, verbose: bool = True) -> RoleResult:
    """Builds ``<out_root>/<role>/`` (shards of both splits and ``manifest.json``).

    Args:
        role: one of :data:`textbooks.data.roles.ROLES`.
        out_root: the data root to write into.
        max_docs: keep at most this many records (chunks) in the role; None for all.
        max_chars: the largest chunk, in characters.
        validation_fraction: share of documents (by id hash) in the validation split.
        verbose: print progress to stderr.
    """
    check_role(role)
    start = time.time()
    last = [start]

    def progress(n: int) -> None:
        now = time.time()
        if verbose and now - last[0] > 2.0:
            last[0] = now
            total = f"/{max_docs}" if max_docs else ""
            print(f"  {role}: {n}{total} records, {n / max(now - start, 1e-9):.0f}/s", file=sys.stderr)

    recs, duplicates = _records_for_role(role, max_docs, max_chars, validation_fraction, progress)
    out_dir = paths.role_dir(role, out_root)
    if not recs:
        return RoleResult(role, None, out_dir, duplicates, time.time() - start,
                          skipped_reason="no source installed (python -m textbooks.corpora.assets install)")
    splits = {}
    for split in paths.SPLITS:
        part = [r for r in recs if r.split == split]
        nbytes = sum(r.num_bytes for r in part)
        num_shards = max(1, min(64, math.ceil(nbytes / TARGET_SHARD_BYTES)))
        with records.ShardWriter(out_dir, split, num_shards) as writer:
            for r in part:
                writer.write(r)
        splits[split] = writer.stats
    info = ROLE_INFO[role]
    manifest = Manifest(
        role=role, splits=splits, stand_in=info.stand_in, description=info.description,
        meta={"builder": "textbooks.corpora", "builder_version": BUILDER_VERSION, "note": info.note,
              "max_docs": max_docs, "max_chars": max_chars, "validation_fraction": validation_fraction,
              "duplicates_dropped": duplicates,
              "sources": {name: {"origin": SOURCES[name].origin, "license": SOURCES[name].license,
                                 "license_note": SOURCES[name].license_note}
                          for name in sorted({r.source for r in recs})}})
    write_manifest(out_dir, manifest)
    result = RoleResult(role, manifest, out_dir, duplicates, time.time() - start)
    if verbose:
        print(f"  {role}: {manifest.num_docs} records, {manifest.num_bytes / 1e6:.2f} MB in "
              f"{result.seconds:.1f}s -> {out_dir}", file=sys.stderr)
    return result


def build_corpora(out_root: str | None = None, roles: Iterable[str] | None = None, *,
                  max_docs: int | None = None, max_chars: int = chunking.DEFAULT_MAX_CHARS,
                  validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                  verbose: bool = True) -> list[RoleResult]:
    """Builds every role (or ``roles``) under ``out_root`` (default: the data root)."""
    out_root = out_root or paths.data_root()
    roles = list(roles or ROLES)
    for role in roles:
        check_role(role)
    results = []
    for i, role in enumerate(roles, 1):
        if verbose:
            print(f"[{i}/{len(roles)}] building {role}", file=sys.stderr)
        results.append(build_role(role, out_root, max_docs=max_docs, max_chars=max_chars,
                                  validation_fraction=validation_fraction, verbose=verbose))
    return results


def summary_table(results: Sequence[RoleResult]) -> str:
    """A plain-text table: role x documents (train/validation) x MB x sources x licenses x stand-in."""
    header = ("role", "train", "valid", "MB", "sources", "licenses", "stand-in")
    rows = []
    for r in results:
        m = r.manifest
        if m is None:
            rows.append((r.role, "0", "0", "0", "-", "-", f"SKIPPED: {r.skipped_reason}"))
            continue
        rows.append((r.role, str(m.splits["train"].num_docs), str(m.splits["validation"].num_docs),
                     f"{m.num_bytes / 1e6:.2f}", ", ".join(m.sources), ", ".join(m.licenses),
                     _short(m.stand_in) if m.stand_in else "no (real data)"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    return "\n".join(lines)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def iter_training_text(max_bytes: int | None = None) -> Iterator[str]:
    """Python documentation pages and standard-library modules, whole (for tokenizer training)."""
    total = 0
    sources = []
    try:
        sources.append(python_docs.documents("code_textbooks"))
        sources.append(python_docs.documents("synthetic_textbooks"))
    except AssetMissingError as e:
        print(f"warning: {e}; training on code only", file=sys.stderr)
    sources.append(python_code.module_documents())
    for doc in itertools.chain(*sources):
        yield doc.text
        total += len(doc.text)
        if max_bytes is not None and total >= max_bytes:
            return

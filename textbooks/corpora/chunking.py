"""Splitting long documents into chunks at sane boundaries, so every role holds usable-sized documents.

Prose breaks at blank lines (section headers preferred); code breaks at blank lines followed by an
unindented line (top-level ``def``/``class``/statements). Pieces are packed greedily up to ``max_chars``; a
block longer than that is split at line ends, and a single line longer than a chunk is cut. Joining the
chunks gives back the text exactly.
"""

from __future__ import annotations

import re

DEFAULT_MAX_CHARS = 8000
_REST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{2,}\s*$")


def _blocks(text: str, kind: str) -> list[str]:
    """Splits ``text`` into consecutive blocks whose concatenation is ``text``."""
    lines = text.splitlines(keepends=True)
    blocks: list[str] = []
    current: list[str] = []
    prev_blank = False
    for i, line in enumerate(lines):
        blank = not line.strip()
        if current and prev_blank and not blank:
            boundary = True
            if kind == "code":
                boundary = not line[:1].isspace()
            if boundary:
                blocks.append("".join(current))
                current = []
        current.append(line)
        prev_blank = blank
    if current:
        blocks.append("".join(current))
    return blocks


def _is_heading(block: str) -> bool:
    lines = block.lstrip("\n").splitlines()
    return len(lines) >= 2 and bool(_REST_UNDERLINE.match(lines[1]) or _REST_UNDERLINE.match(lines[0]))


def chunk_text(text: str, max_chars: int = DEFAULT_MAX_CHARS, kind: str = "prose",
               min_chars: int = 200) -> list[str]:
    """Splits ``text`` into chunks of at most ``max_chars`` characters; ``"".join(chunks) == text``.

    Args:
        text: the document.
        max_chars: the largest chunk.
        kind: ``'prose'`` (break at blank lines, before section headings when possible) or ``'code'``
            (break before unindented lines that follow a blank line).
        min_chars: a chunk shorter than this is merged into its neighbour when that stays within
            ``max_chars``.
    """
    if kind not in ("prose", "code"):
        raise ValueError(f"kind must be 'prose' or 'code', got {kind!r}")
    if len(text) <= max_chars:
        return [text] if text else []
    chunks: list[str] = []
    current = ""
    for block in _blocks(text, kind):
        # Start a new chunk at a heading once the current one is reasonably full.
        if current and kind == "prose" and _is_heading(block) and len(current) >= max_chars // 2:
            chunks.append(current)
            current = ""
        if len(current) + len(block) <= max_chars:
            current += block
            continue
        if len(block) <= max_chars:
            chunks.append(current)
            current = block
            continue
        # A block longer than a chunk: fill line by line, cutting only lines that cannot fit in any chunk.
        for line in block.splitlines(keepends=True):
            while line:
                room = max_chars - len(current)
                if len(line) <= room:
                    current, line = current + line, ""
                elif current and len(line) <= max_chars:
                    chunks.append(current)
                    current = ""
                else:
                    chunks.append(current + line[:room])
                    current, line = "", line[room:]
    if current:
        chunks.append(current)
    # Merge a short tail into the previous chunk when it fits.
    if len(chunks) > 1 and len(chunks[-1]) < min_chars and len(chunks[-2]) + len(chunks[-1]) <= max_chars:
        chunks[-2] += chunks.pop()
    return chunks

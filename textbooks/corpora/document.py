"""The unit the corpus builders produce before chunking and splitting: one source document."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Document:
    """A document from a local source.

    Attributes:
        id: stable and unique within its role (e.g. ``cpython-stdlib:json/decoder.py``); chunks get
            ``#000``, ``#001``... appended, and the train/validation split is decided on this id so all
            chunks of a document land in the same split.
        text: the full text.
        source: a key of :data:`textbooks.corpora.sources.SOURCES`.
        meta: free-form metadata copied into each record's ``meta``.
        chunkable: False for documents that must stay whole (exercises).
    """

    id: str
    text: str
    source: str
    meta: dict = dataclasses.field(default_factory=dict)
    chunkable: bool = True

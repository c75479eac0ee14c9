"""The fixed beginning of a served model's chat prompts, found from its chat template, in token ids.

A chat template writes the same tokens before every conversation's first user message (SmolLM2's adds a
default system prompt when the conversation has none, then the user's role tag). The engine prefills them once
and each chat prompt that starts with them only prefills its rest (:mod:`textbooks.model.prefix_cache`).

:func:`template_prefix` renders a few one-message user conversations, differing from their first character on,
exactly as the server renders chats (the vocabulary's ``render_chat`` with the generation prompt), tokenizes
them as the server does, and keeps their common token prefix: tokens a merge with the user's text could change
end where the renders part. Admissions check every prompt's tokens against it all the same.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

# User messages starting with a letter, a digit, punctuation, a space and a newline: a template token that
# could merge with the text that follows would be tokenized differently in at least two of them.
PROBES = ("Hello, who are you?", "2 + 2 = ?", "(a) list three colors", " indented", "\nWhat is this?")


def common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """The longest list of ids every one of ``sequences`` starts with (empty for no sequences)."""
    if not sequences:
        return []
    first = list(sequences[0])
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences[1:]):
            return first[:i]
    return first[:n]


def template_prefix(vocabulary: Any, encode: Callable[[str], list[int]]) -> list[int]:
    """The token ids every chat prompt without a system message starts with under ``vocabulary``'s chat template
    (``encode``: the server's tokenization); empty when the vocabulary has no template or it fails to render."""
    if not getattr(vocabulary, "chat_template", None):
        return []
    try:
        rendered = [vocabulary.render_chat([{"role": "user", "content": text}], add_generation_prompt=True)
                    for text in PROBES]
    except ValueError as e:  # a template that refuses one-message conversations: nothing to reuse
        logger.warning("no chat prompt prefix: the chat template does not render a user message: %s", e)
        return []
    return common_prefix([encode(text) for text in rendered])


# The fewest tokens of a chat template's beginning worth its programs (one prefill per prompt bucket): role tags
# alone save a prompt less than its padding.
MIN_TEMPLATE_PREFIX = 16


def prompt_prefixes(vocabulary: Any, encode: Callable[[str], list[int]],
                    texts: Sequence[str] | None = None) -> list[list[int]]:
    """The prefixes an engine prefills once: ``texts`` encoded when given (an empty list turns reuse off), else the
    chat template's fixed beginning (:func:`template_prefix`) when it has at least :data:`MIN_TEMPLATE_PREFIX`
    tokens."""
    if texts is not None:
        return [ids for ids in (encode(t) for t in texts) if ids]
    found = template_prefix(vocabulary, encode)
    return [found] if len(found) >= MIN_TEMPLATE_PREFIX else []

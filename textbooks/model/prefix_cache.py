"""Fixed prompt beginnings prefilled once: a prompt that starts with one prefills only the rest of it.

Served chat prompts start with what the chat template writes before the user's text (a default system prompt,
role tags): the same tokens in every prompt. A token's keys and values depend only on the tokens up to it, so
those of a fixed beginning are the same in every prompt that starts with it. :class:`PromptPrefixes` holds such
beginnings, given up front as token ids (so what is reused, and which programs run, never depends on the order
requests arrive in): each is prefilled once into a one-row cache of exactly its length ``P``
(:meth:`textbooks.model.decode.Decoder.prefill_prefix`); a prompt whose tokens start with one (checked token by
token) prefills only its rest, at positions ``P, P + 1, ...``, attending over the prefix's keys and values and
its own with the batched products of a plain prefill (:meth:`textbooks.model.decode.Decoder.prefill_after`).

The rest is padded to the same buckets as a whole prompt (:meth:`textbooks.model.decode.Decoder.prompt_bucket`),
so a prefix adds one program per bucket, all compiled by :meth:`PromptPrefixes.prewarm`. A prompt takes the
longest prefix it starts with whose padded rest is shorter than its own padded length (fewer tokens to
prefill); other prompts prefill whole, as without prefixes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from textbooks.model.decode import Decoder, GenerationRequest


class PromptPrefixes:
    """Fixed prompt beginnings (token ids) and their cached keys and values (see the module docstring).

    Args:
        decoder: the decoder whose programs prefill them (and whose prompt buckets pad the rests).
        prefixes: token-id lists; empty ones are ignored, duplicates kept once.

    Raises:
        ValueError: a prefix holds ids outside the model's vocabulary or is too long for its ``max_len``.
    """

    def __init__(self, decoder: Decoder, prefixes: Sequence[Sequence[int]] = ()):
        self._decoder = decoder
        self.prefixes: list[tuple[int, ...]] = sorted({tuple(int(t) for t in p) for p in prefixes if len(p)},
                                                      key=lambda p: (-len(p), p))  # the longest first
        for p in self.prefixes:
            try:
                decoder.validate([GenerationRequest(prompt=list(p), max_new_tokens=1)])
            except ValueError as e:
                raise ValueError(f"prompt prefix of {len(p)} tokens {list(p[:8])}...: {e}; give prefixes that fit "
                                 "the model") from e
        self._caches: dict[tuple[int, ...], Any] = {}

    def __bool__(self) -> bool:
        return bool(self.prefixes)

    def match(self, prompt: Sequence[int]) -> tuple[int, ...] | None:
        """The longest prefix ``prompt`` starts with whose rest (but the prompt's last token) pads to fewer
        tokens than the whole prompt's, or None (then a plain prefill is no dearer)."""
        body = len(prompt) - 1
        whole = self._decoder.prompt_bucket(body)
        for p in self.prefixes:
            if len(p) < body and self._decoder.prompt_bucket(body - len(p)) < whole and \
                    all(int(a) == b for a, b in zip(prompt[:len(p)], p)):
                return p
        return None

    def part_length(self, prefix: Sequence[int], prompt: Sequence[int]) -> int:
        """Slots of the cache row :meth:`prefill` returns for ``prompt`` after ``prefix``."""
        return len(prefix) + self._decoder.prompt_bucket(len(prompt) - 1 - len(prefix))

    def cache(self, prefix: tuple[int, ...]) -> Any:
        """The one-row cache of ``prefix`` (exactly its length), prefilled on first use."""
        if prefix not in self._caches:
            self._caches[prefix] = self._decoder.prefill_prefix(prefix)
        return self._caches[prefix]

    def prefill(self, prefix: tuple[int, ...], request: GenerationRequest) -> tuple[Any, np.ndarray]:
        """``(cache row of part_length slots, last prompt token [1])`` of ``request``, whose prompt starts with
        ``prefix`` (from :meth:`match`): the prefix's keys and values, then its rest's."""
        return self._decoder.prefill_after(self.cache(prefix), request)

    def prewarm(self, prompt_tokens: int) -> list[Any]:
        """Prefills every prefix and a rest of every bucket that prompts up to ``prompt_tokens`` tokens take (each
        a compiled program); returns the rows of the rests (one per prefix and bucket: for the caller's row
        copies)."""
        parts = []
        for p in self.prefixes:
            self.cache(p)
            buckets = sorted({self._decoder.prompt_bucket(n) for n in range(1, max(1, prompt_tokens - len(p)))})
            for n in buckets:
                request = GenerationRequest(prompt=list(p) + [0] * (n + 1), max_new_tokens=1)
                parts.append(self.prefill(p, request)[0])
        return parts

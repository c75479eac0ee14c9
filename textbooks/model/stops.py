"""Stop strings on generated text: where the earliest one starts, and the text cut there.

Decoding stops on token sequences (:class:`textbooks.model.decode.GenerationRequest.stop_sequences`), but a
stop string can be spelled by tokens that are not its own encoding, so the decoded text is checked as well.
Every user of stop strings (the evaluation harness, the serving engine) cuts through these functions, so that
they agree on the rules: the earliest occurrence of any stop wins (not the first stop listed), the stop itself
is not kept, and empty stop strings are ignored (one would otherwise match at 0 and cut everything).
"""

from __future__ import annotations

from typing import Sequence


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest occurrence of any non-empty stop string in ``text`` starts; None if none occurs.

    Args:
        text: the generated text.
        stops: stop strings; empty ones are ignored.

    Returns:
        The smallest index ``i`` with ``text[i:].startswith(s)`` for some non-empty ``s`` in ``stops``, or None.
    """
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop string; all of it when no stop occurs.

    Args:
        text: the generated text.
        stops: stop strings; empty ones are ignored.

    Returns:
        ``text[:find_stop(text, stops)]``, or ``text`` when no stop string occurs in it.
    """
    cut = find_stop(text, stops)
    return text if cut is None else text[:cut]

"""Power-of-two shape buckets: how decoding and scoring bound the number of programs jit compiles.

A jit-compiled function compiles once per input shape. Rounding a batch's sizes (rows, prompt or sequence
length, cache length, new tokens) up to a power of two means requests of any size run on a handful of programs,
at the cost of at most doubling the padded work.
"""

from __future__ import annotations


def bucket(n: int, minimum: int, maximum: int | None = None) -> int:
    """The smallest power of two that is at least ``n``, raised to ``minimum`` and capped at ``maximum``.

    ``minimum`` and ``maximum`` need not be powers of two (e.g. a model's ``max_len``).
    """
    size = max(minimum, 1 << max(0, int(n) - 1).bit_length())
    return min(size, maximum) if maximum is not None else size

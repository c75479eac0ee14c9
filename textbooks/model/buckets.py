"""Shape buckets: how decoding and scoring bound the number of programs jit compiles.

A jit-compiled function compiles once per input shape. Rounding a batch's sizes (rows, prompt or sequence
length, cache length, new tokens) up to a power of two (:func:`bucket`) means requests of any size run on a
handful of programs, at the cost of at most doubling the padded work. Where padded work dominates (a prompt's
prefill costs every padded position a full forward), :func:`fine_bucket` splits each octave into ``steps``
equal sizes: ``steps`` times the programs per octave, padding at most ``1 / steps`` of the size asked for.
"""

from __future__ import annotations


def bucket(n: int, minimum: int, maximum: int | None = None) -> int:
    """The smallest power of two that is at least ``n``, raised to ``minimum`` and capped at ``maximum``.

    ``minimum`` and ``maximum`` need not be powers of two (e.g. a model's ``max_len``).
    """
    size = max(minimum, 1 << max(0, int(n) - 1).bit_length())
    return min(size, maximum) if maximum is not None else size


def fine_bucket(n: int, minimum: int, maximum: int | None = None, steps: int = 4) -> int:
    """The smallest size of the form ``k * 2**e / steps`` (``steps`` <= k <= 2 ``steps``) that is at least ``n``,
    raised to ``minimum`` and capped at ``maximum``, as :func:`bucket` does.

    With ``steps=4``: 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, ...; sizes are never larger than :func:`bucket`'s
    (every power of two is one), and above ``minimum`` a size pads ``n`` by less than ``n / steps``.

    Raises:
        ValueError: ``steps`` is not a power of two >= 1 (the sizes would not include the powers of two).
    """
    if steps < 1 or steps & (steps - 1):
        raise ValueError(f"steps must be a power of two >= 1, got {steps}")
    power = bucket(n, 1)  # n <= power < 2 n (n >= 1)
    step = max(1, power // (2 * steps))  # the octave (power / 2, power] in `steps` equal parts
    size = max(minimum, -(-max(1, int(n)) // step) * step)
    return min(size, maximum) if maximum is not None else size

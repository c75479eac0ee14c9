"""A progress line for long generation runs: done/total, failures, tokens/s, ETA, cost; then a summary.

On a terminal the line is redrawn in place; otherwise (logs, CI) one line is printed every ``interval``
seconds. Everything is written to a stream (stderr by default) so that stdout stays machine-readable.
"""

from __future__ import annotations

import sys
import time
from typing import IO


def format_duration(seconds: float) -> str:
    """``3725`` -> ``'1h02m05s'``; ``'?'`` for unknown."""
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts work and shows it.

    Args:
        total: units of work expected (may grow with :meth:`add_total`).
        desc: a short label printed first.
        stream: where to write (default stderr); None disables output (counts are still kept).
        interval: seconds between updates when ``stream`` is not a terminal (redraws are throttled to 0.1 s
            on a terminal).
        already_done: units done before this process started (a resumed run); excluded from rates.
    """

    def __init__(self, total: int, desc: str = "", *, stream: IO[str] | None = sys.stderr, interval: float = 10.0,
                 already_done: int = 0):
        self.total = total
        self.desc = desc
        self.stream = stream
        self.interval = interval
        self.done = already_done
        self.already_done = already_done
        self.failed = 0
        self.cached = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def add_total(self, n: int) -> None:
        self.total += n

    def update(self, *, done: int = 0, failed: int = 0, cached: int = 0, prompt_tokens: int = 0,
               completion_tokens: int = 0, cost: float = 0.0) -> None:
        """Adds counts and redraws when due."""
        self.done += done
        self.failed += failed
        self.cached += cached
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost += cost
        now = time.monotonic()
        if now - self._last_draw >= (0.1 if self._tty else self.interval):
            self._last_draw = now
            self._draw()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / max(self.elapsed, 1e-9)

    @property
    def eta_s(self) -> float:
        fresh = self.done + self.failed - self.already_done
        remaining = self.total - self.done - self.failed
        if fresh <= 0:
            return float("nan")
        return remaining * self.elapsed / fresh

    def line(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.desc}: " if self.desc else "",
                 f"{self.done}/{self.total} ({pct:.1f}%)",
                 f" | failed {self.failed}" if self.failed else "",
                 f" | cached {self.cached}" if self.cached else "",
                 f" | {self.tokens_per_s:,.0f} tok/s",
                 f" | ETA {format_duration(self.eta_s)}",
                 f" | ${self.cost:.4f}" if self.cost else ""]
        return "".join(parts)

    def _draw(self) -> None:
        if self.stream is None:
            return
        if self._tty:
            self.stream.write("\r\x1b[2K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draws the final state (and ends the in-place line)."""
        self._draw()
        if self._tty and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()

    def summary(self) -> dict:
        return {"total": self.total, "done": self.done, "failed": self.failed, "cached": self.cached,
                "done_before_this_process": self.already_done, "elapsed_s": round(self.elapsed, 3),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "completion_tokens_per_s": round(self.tokens_per_s, 2), "cost": round(self.cost, 6)}

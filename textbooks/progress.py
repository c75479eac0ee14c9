"""The one progress reporter of long work: done/total, failures, rate, ETA and running counts, throttled.

Training (steps), generation (prompts, tokens, cost), evaluation (items, programs), topic growth and sweeps
(trials) all report through :class:`Progress`::

    progress = Progress(total=len(items), desc="piqa", unit="item")
    for item in items:
        ...
        progress.update(done=1)                       # or failed=1; counts such as cached=1, cost=0.002
    progress.close()

    callback = Progress(0, "programs")                # as a ``(done, total)`` callback for library code
    sandbox.run_many(programs, progress=callback)

Where the line goes: on a terminal (or in a notebook) it is redrawn in place on ``stream``; otherwise one line
is emitted every ``interval`` seconds (or when an update says ``show=True``, e.g. at each logged training step)
and once at :meth:`Progress.close`, through :func:`emit`: the logger ``textbooks.progress`` at INFO when logging
is configured (every verb configures it: :mod:`textbooks.logs`), else ``stream`` (a script or notebook).
``stream=None`` or ``enabled=False`` keeps the counts and shows nothing.

Rates are measured from the first update on, once there is a later one and at least a second (and a tenth
of the start-up time) has passed since the first, so start-up time (compilation, connecting) does not inflate
the ETA and a burst of units finishing together does not show as a huge rate; until then, from the start. Units done before this process started
(``already_done``, a resumed run) count as done but not towards the rate.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import IO, Mapping

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``3725`` -> ``'1h02m05s'``; ``'?'`` for an unknown (NaN, infinite or negative) duration."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def emit(message: str, stream: IO[str] | None = None) -> None:
    """Logs ``message`` at INFO (logger ``textbooks.progress``), or writes it to ``stream`` (default stderr) when
    logging would not show it (a script or notebook that configured no logging)."""
    if logging.getLogger().hasHandlers() and log.isEnabledFor(logging.INFO):
        log.info("%s", message)
    else:
        stream = stream or sys.stderr
        stream.write(message + "\n")
        stream.flush()


def _format_value(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _format_rate(per_second: float, unit: str) -> str:
    """``'1,234 tok/s'``, ``'2.5 step/s'``; slow work per minute or hour (``'1.5 trial/min'``)."""
    rate, per = per_second, "s"
    for factor, name in ((60, "min"), (60, "h")):
        if 0 < rate < 0.1:
            rate, per = rate * factor, name
    number = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
    return f"{number} {unit}/{per}" if unit else f"{number}/{per}"


class Progress:
    """Counts units of work and reports them (see the module docstring for where the line goes).

    Args:
        total: units expected (may grow: :meth:`add_total`).
        desc: a short label printed first.
        unit: the name of a unit in the rate (``'step'`` -> ``'3.2 step/s'``).
        stream: the terminal or file of in-place redraws, and of lines when logging is not configured
            (default: ``sys.stderr`` when the reporter is made); None shows nothing.
        interval: seconds between emitted lines when not redrawing in place (0: every update).
        already_done: units done before this process started; excluded from the rate.
        enabled: False shows nothing (e.g. on every process but the first).
        redraw: redraw one line in place (default: when ``stream`` is a terminal or in a notebook).
        rate_of: the count whose per-second rate the line shows (default: units done), with ``rate_unit``.
    """

    def __init__(self, total: int, desc: str = "", *, unit: str = "", stream: IO[str] | str | None = "stderr",
                 interval: float = 10.0, already_done: int = 0, enabled: bool = True, redraw: bool | None = None,
                 rate_of: str | None = None, rate_unit: str | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        if stream == "stderr":  # the stderr of the moment (tests and notebooks replace sys.stderr)
            stream = sys.stderr
        self.stream = stream if enabled else None
        self.interval = interval
        self.done = self.already_done = already_done
        self.failed = 0
        self.counts: dict[str, float] = {}
        self.fields: dict[str, float] = {}
        self.rate_of, self.rate_unit = rate_of, rate_unit
        self.start = time.monotonic()
        self._first: tuple[float, int, float] | None = None  # (time, units, rated count) after the first update
        self._last_draw = 0.0
        self._drawn = 0  # characters of the line drawn in place
        if redraw is None:
            redraw = bool(getattr(stream, "isatty", lambda: False)()) or "ipykernel" in sys.modules
        self.redraw = bool(redraw and self.stream is not None)

    # -- counting ---------------------------------------------------------------------------------------------

    def add_total(self, n: int) -> None:
        self.total += n

    def update(self, *, done: int = 0, failed: int = 0, fields: Mapping[str, float] | None = None,
               show: bool | None = None, **counts: float) -> None:
        """Adds ``done`` / ``failed`` units and running ``counts`` (``cached=1``, ``cost=0.002``); ``fields``
        are latest values shown as they are (``{'loss': 2.31}``). Shows the line when it is due (``show``:
        True now, False not)."""
        self.done += done
        self.failed += failed
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0) + value
        if fields:
            self.fields.update(fields)
        if self._first is None:
            self._first = (time.monotonic(), self.done + self.failed, self._rated())
        if show or show is None and self._due():
            self._last_draw = time.monotonic()
            self._show()

    def advance_to(self, done: int, fields: Mapping[str, float] | None = None, show: bool | None = None) -> None:
        """Sets the units done to ``done`` (a step number); ``fields`` and ``show`` as in :meth:`update`."""
        self.update(done=done - self.done, fields=fields, show=show)

    def __call__(self, done: int, total: int) -> None:
        """The ``(done, total)`` callback form used by library code (evaluation, the sandbox)."""
        self.total = total
        self.advance_to(done)

    # -- numbers ----------------------------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def _rated(self) -> float:
        return self.counts.get(self.rate_of, 0) if self.rate_of else self.done + self.failed

    def _per_second(self, now_amount: float, start_amount: float, first_amount: float) -> float:
        if self._first is None:
            return 0.0
        now = time.monotonic()
        since_first = now - self._first[0]
        # Leave start-up out once a later update came and the window since the first one is long enough to
        # mean something (work that finishes in bursts, such as a batch of completions, would otherwise show
        # a burst's few milliseconds as its rate).
        if now_amount != first_amount and since_first >= max(1.0, 0.1 * (self._first[0] - self.start)):
            return (now_amount - first_amount) / since_first
        return (now_amount - start_amount) / max(now - self.start, 1e-9)

    @property
    def rate(self) -> float:
        """Per second, of ``rate_of`` (or of units done and failed); see the module docstring."""
        start = 0 if self.rate_of else self.already_done
        return self._per_second(self._rated(), start, self._first[2] if self._first else 0)

    @property
    def eta_s(self) -> float:
        """Seconds until ``total`` at the units' rate; NaN before any unit was done in this process."""
        remaining = self.total - self.done - self.failed
        if remaining <= 0:
            return 0.0
        units = self._per_second(self.done + self.failed, self.already_done, self._first[1] if self._first else 0)
        return remaining / units if units > 0 else float("nan")

    def line(self) -> str:
        """``desc: done/total (pct%) | failed n | rate | ETA | counts and fields``."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.done}/{self.total} ({pct:.1f}%)"]
        if self.failed:
            parts.append(f"failed {self.failed}")
        unit = self.rate_unit if self.rate_of else self.unit
        parts.append(_format_rate(self.rate, unit))
        parts.append(f"ETA {format_duration(self.eta_s)}")
        parts += [f"{name} {_format_value(value)}" for name, value in {**self.counts, **self.fields}.items()
                  if value and name != self.rate_of]
        return (f"{self.desc}: " if self.desc else "") + " | ".join(parts)

    def summary(self) -> dict:
        """The counts as a dict (for a run's summary file)."""
        return {"total": self.total, "done": self.done, "failed": self.failed,
                "done_before_this_process": self.already_done, "elapsed_s": round(self.elapsed, 3),
                "rate_per_s": round(self.rate, 3), **{k: round(v, 6) for k, v in self.counts.items()}}

    # -- output -----------------------------------------------------------------------------------------------

    def _due(self) -> bool:
        if self.stream is None:
            return False
        return time.monotonic() - self._last_draw >= (0.1 if self.redraw else self.interval)

    def _show(self) -> None:
        if self.stream is None:
            return
        if self.redraw:
            self._draw(self.line())
        else:
            emit(self.line(), self.stream)

    def _draw(self, text: str) -> None:
        """Overwrites the in-place line with ``text`` (carriage return and spaces: terminals and notebooks)."""
        self.stream.write("\r" + text + " " * max(self._drawn - len(text), 0))
        self.stream.flush()
        self._drawn = len(text)

    def write(self, message: str) -> None:
        """Shows a message (an evaluation result, a checkpoint note) without breaking the progress line."""
        if self.stream is None:
            return
        if self.redraw:
            self._draw(message)
            self.stream.write("\n")
            self._drawn = 0
            self._show()
        else:
            emit(message, self.stream)

    def close(self) -> None:
        """Shows the final state (and ends the in-place line)."""
        self._show()
        if self.redraw and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.redraw = False
        self.stream = None

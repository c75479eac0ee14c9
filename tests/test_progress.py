"""The one progress reporter (textbooks.progress): counts, rates and ETA on a controlled clock, where its lines
go (in place on a terminal, the logger when logging is configured, the stream otherwise) and its callback form."""

import io
import logging

import pytest

from textbooks import progress as progress_lib
from textbooks.progress import Progress, format_duration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_lib.time, "monotonic", c)
    return c


@pytest.fixture
def no_logging(monkeypatch):
    """As in a script that configured no logging (no handlers, the root logger at its WARNING default, whatever
    an earlier test in this process set up): lines go to the stream."""
    root, progress = logging.getLogger(), logging.getLogger("textbooks.progress")
    monkeypatch.setattr(root, "handlers", [])
    levels = root.level, progress.level
    # setLevel, not a plain attribute: it also clears the loggers' cached isEnabledFor answers, which an
    # earlier in-process CLI call (logging at INFO) would otherwise leave behind.
    root.setLevel(logging.WARNING)
    progress.setLevel(logging.NOTSET)
    yield
    root.setLevel(levels[0])
    progress.setLevel(levels[1])


def test_rate_and_eta_leave_start_up_and_earlier_runs_out(clock, no_logging):
    p = Progress(100, "train", unit="step", stream=io.StringIO(), already_done=10)
    clock.now += 50.0  # start-up (compilation): no unit done
    p.advance_to(11)
    assert p.rate == pytest.approx(1 / 50.0)  # one update only: measured from the start
    clock.now += 10.0
    p.advance_to(31)  # 20 steps in 10 s since the first update
    assert p.rate == pytest.approx(2.0)
    assert p.eta_s == pytest.approx((100 - 31) / 2.0)
    assert p.summary()["done_before_this_process"] == 10 and p.summary()["done"] == 31


def test_counts_the_rate_of_a_count_and_formats_the_line(clock, no_logging):
    p = Progress(10, "generate", unit="prompt", stream=None, rate_of="completion_tokens", rate_unit="tok")
    p.update(done=1, cached=1, completion_tokens=0)
    clock.now += 2.0
    p.update(done=2, completion_tokens=300, cost=0.25)
    p.update(failed=1)
    assert p.counts == {"cached": 1, "completion_tokens": 300, "cost": 0.25}
    assert p.rate == pytest.approx(150.0)  # tokens per second since the first update
    line = p.line()
    assert line.startswith("generate: 3/10 (30.0%) | failed 1 | 150 tok/s | ETA ")
    assert "cached 1" in line and "cost 0.25" in line and "completion_tokens" not in line


def test_slow_work_is_shown_per_minute_or_hour():
    assert progress_lib._format_rate(0.025, "trial") == "1.5 trial/min"
    assert progress_lib._format_rate(1 / 7200, "trial") == "0.5 trial/h"
    assert progress_lib._format_rate(1234.4, "tok") == "1,234 tok/s"
    assert format_duration(3725) == "1h02m05s" and format_duration(65) == "1m05s"
    assert format_duration(float("nan")) == "?" and format_duration(-1) == "?"


def test_lines_are_throttled_and_shown_on_request(clock, no_logging):
    out = io.StringIO()
    p = Progress(10, "items", stream=out, interval=10.0, redraw=False)
    p.update(done=1)  # the first line is due at once
    clock.now += 1.0
    p.update(done=1)  # throttled
    p.update(done=1, show=True)  # forced
    clock.now += 20.0
    p.update(done=1, show=False)  # suppressed even though due
    p.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["items: 1/10 (10.0%)", "items: 3/10 (30.0%)",
                                                       "items: 4/10 (40.0%)"]


def test_lines_go_to_the_logger_when_logging_is_configured(clock, caplog):
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="textbooks.progress"):
        p = Progress(2, "trials", stream=out, interval=0.0, redraw=False)
        p.update(done=1)
        p.write("trial t1 done")
    assert out.getvalue() == ""
    assert [r.getMessage().split(" |")[0] for r in caplog.records] == ["trials: 1/2 (50.0%)", "trial t1 done"]


def test_in_place_redraw_overwrites_the_line_and_ends_it_on_close(clock):
    out = io.StringIO()
    p = Progress(3, "x", stream=out, redraw=True)
    p.update(done=1)
    clock.now += 1.0
    p.write("note")
    p.close()
    text = out.getvalue()
    assert text.startswith("\rx: 1/3 (33.3%)") and "\rnote" in text and text.endswith("\n")
    assert "\n" not in text.split("note")[0]  # the line was redrawn, not printed line after line


def test_callback_form_and_silence(clock):
    p = Progress(0, "programs", stream=None)
    for done in range(1, 5):
        p(done, 4)
    assert (p.done, p.total) == (4, 4)
    disabled = Progress(5, stream=io.StringIO(), enabled=False)
    disabled.update(done=5)
    disabled.close()
    assert disabled.done == 5


def test_a_burst_of_units_right_after_the_first_is_not_shown_as_the_rate(clock, no_logging):
    """Completions that arrive together (a decoded batch) 0.01 s after the first one do not make the rate
    their count / 0.01 s: within the window the rate is measured from the start."""
    p = Progress(16, "generate", stream=io.StringIO(), rate_of="tokens")
    clock.now += 60.0
    p.update(done=1, tokens=200)
    clock.now += 0.01
    p.update(done=15, tokens=3000)
    assert p.rate == pytest.approx(3200 / 60.01)

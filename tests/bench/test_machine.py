"""bench.machine: a run is quiet only when the load average was low before and after and no round saw other
processes keep cores busy; the headline carries the date, CPU model and load, and a busy run's says NOT A
HEADLINE. The clock, load average and /proc readers are replaced by a simulated machine."""

import argparse
import datetime
import math
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from bench import machine  # noqa: E402

CPU = "Simulated CPU 9000 @ 1.00GHz"


class SimulatedMachine:
    """A clock, a 1-minute load average and the CPU-time counters machine.py reads from /proc."""

    def __init__(self, load: float):
        self.now = 1000.0
        self.load = load
        self.busy = 500.0  # all cores' busy seconds since boot
        self.own = 20.0  # this process and its children
        self.load_at = None  # optional function of the clock, overrides ``load``

    # time module stand-in
    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def getloadavg(self) -> tuple[float, float, float]:
        load = self.load_at(self.now) if self.load_at else self.load
        return load, load, load

    def work(self, seconds: float, own_cores: float = 1.0, other_cores: float = 0.0) -> None:
        """``seconds`` pass while we keep ``own_cores`` and other processes ``other_cores`` busy."""
        self.now += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


@pytest.fixture
def sim(monkeypatch):
    m = SimulatedMachine(load=0.2)
    monkeypatch.setattr(machine, "time", m)
    monkeypatch.setattr(machine.os, "getloadavg", m.getloadavg)
    monkeypatch.setattr(machine, "_busy_seconds", lambda: m.busy)
    monkeypatch.setattr(machine, "_own_cpu_seconds", lambda: m.own)
    monkeypatch.setattr(machine, "cpu_model", lambda: CPU)
    return m


def _run(sim, load_before: float, load_after: float, other_cores: list[float], settle: float = 0.0):
    sim.load = load_before
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    cond = machine.Conditions(wait_quiet=0.0)
    after = datetime.datetime.now(datetime.timezone.utc)
    for other in other_cores:
        with cond.round():
            sim.work(10.0, own_cores=2.0, other_cores=other)
    sim.load = load_after
    record = cond.finish(settle)
    assert before <= datetime.datetime.fromisoformat(record["date"]) <= after
    return cond, record


def test_low_load_and_no_other_processes_is_quiet_and_the_headline_says_when_where_and_how_loaded(sim):
    cond, record = _run(sim, 0.2, 0.2, [0.0, 0.0, 0.0])
    assert record["quiet"] is True and cond.quiet
    assert record["load_average_before"] == 0.2 and record["load_average_after"] == 0.2
    assert record["cpu_model"] == CPU and record["cpus"] == os.cpu_count()
    assert [r["other_cores_busy"] for r in record["rounds"]] == [0.0, 0.0, 0.0]
    assert [r["seconds"] for r in record["rounds"]] == [10.0, 10.0, 10.0]
    line = cond.headline("ours / peer", 1.754)
    assert line == f"ours / peer: 1.75x [{record['date']}, {CPU}, load 0.20 -> 0.20]"
    assert "NOT A HEADLINE" not in line


@pytest.mark.parametrize("load_before, load_after, other_cores, worst", [
    (0.7, 0.2, [0.0, 0.0], 0.0),  # loaded before the first round
    (0.2, 0.7, [0.0, 0.0], 0.0),  # loaded after the last round
    (0.2, 0.2, [0.0, 0.6, 0.0], 0.6),  # another process kept 0.6 cores busy during one round
])
def test_load_before_or_after_or_other_processes_in_a_round_make_the_run_busy(sim, load_before, load_after,
                                                                              other_cores, worst):
    cond, record = _run(sim, load_before, load_after, other_cores)
    assert record["quiet"] is False
    # other_cores_busy is (machine busy - own) / wall: the simulated 0.6 cores come back to the rounding.
    assert [r["other_cores_busy"] for r in record["rounds"]] == pytest.approx(other_cores, abs=1e-3)
    line = cond.headline("ours / peer", 2.0)
    assert line.startswith("ours / peer: 2.00x NOT A HEADLINE: the machine was busy")
    assert record["date"] in line and CPU in line and f"load {load_before:.2f} -> {load_after:.2f}" in line
    assert line.endswith(f"other processes kept up to {worst:.2f} cores busy")


def test_other_processes_up_to_the_threshold_still_count_as_quiet(sim):
    _, record = _run(sim, 0.2, 0.2, [machine.QUIET_FOREIGN_CORES - 0.01])
    assert record["quiet"] is True
    _, record = _run(sim, 0.2, 0.2, [machine.QUIET_FOREIGN_CORES + 0.05])
    assert record["quiet"] is False


def test_settle_waits_for_our_own_load_to_decay_before_reading_the_load_after(sim):
    """Our own two busy cores leave a load of 2 that decays like the kernel's 1-minute average (e^-t/60); with
    0.1 from other processes it falls under QUIET_LOAD (0.5) after 60 ln(2 / 0.4) = 97 s, so a 150 s settle
    reads it quiet and a 30 s one does not."""
    for settle, quiet in ((150.0, True), (30.0, False)):
        sim.load_at = None
        sim.load = 0.2
        cond = machine.Conditions(wait_quiet=0.0)
        with cond.round():
            sim.work(60.0, own_cores=2.0)
        end = sim.now
        sim.load_at = lambda t: 0.1 + 2.0 * math.exp(-(t - end) / 60.0)
        record = cond.finish(settle)
        assert record["quiet"] is quiet, (settle, record)
        waited = sim.now - end
        if quiet:  # the wait stops at the first 5 s poll under the threshold, not at the settle limit
            decayed = 60 * math.log(2.0 / (machine.QUIET_LOAD - 0.1))
            assert decayed <= waited < decayed + 5
        else:
            assert waited == pytest.approx(30.0, abs=5.0)


def test_the_shared_flags_default_to_no_wait_before_and_a_full_settle_after():
    parser = argparse.ArgumentParser()
    machine.add_arguments(parser)
    assert vars(parser.parse_args([])) == {"wait_quiet": 0.0, "settle": 150.0}
    assert vars(parser.parse_args(["--wait_quiet", "30", "--settle", "0"])) == {"wait_quiet": 30.0, "settle": 0.0}

"""The agent's report outbox (pilot/outbox.py) with a fake central and a test clock: order, backoff, outages."""

from __future__ import annotations

from typing import List

import pytest

from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.outbox import Outbox, Report


class FakeCentral:
    def __init__(self) -> None:
        self.up = True
        self.got: List[Report] = []
        self.attempts = 0
        self.refuse_state = None

    def send(self, report: Report) -> None:
        self.attempts += 1
        if not self.up:
            raise CentralUnreachable("http://central", "connection refused")
        if report.kind == "status" and report.body.get("state") == self.refuse_state:
            raise CentralError(409, "illegal_transition", "no")
        self.got.append(report)

    def texts(self) -> List[str]:
        out = []
        for r in self.got:
            out += [r.body["state"]] if r.kind == "status" else [e["text"] for e in r.body["entries"]]
        return out


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def setup():
    central, clock = FakeCentral(), Clock()
    return central, clock, Outbox(central.send, clock=clock, backoff_s=1.0, backoff_max_s=8.0)


def test_reports_keep_their_order_through_an_outage(setup):
    central, clock, box = setup
    box.status(state="RUNNING")
    assert box.flush()
    central.up = False
    box.trace("trace", "payload exited with 0")
    box.status(state="SAVING")
    box.status(state="DONE")
    assert not box.flush()
    # Backoff doubles to its cap; nothing is tried before it is due.
    tries = []
    for _ in range(6):
        before = central.attempts
        box.flush()
        assert central.attempts == before
        clock.t = box._next_try
        box.flush()
        tries.append(clock.t)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps == [2.0, 4.0, 8.0, 8.0, 8.0]
    central.up = True
    clock.t += 8.0
    assert box.flush()
    # The first report that gets through ends the outage; the outage line goes next, then the rest, in order.
    assert central.texts() == ["RUNNING", "payload exited with 0",
                               f"errorConnecting: central was unreachable for {clock.t - 1000.0:.0f} s",
                               "SAVING", "DONE"]


def test_an_outage_seen_by_a_heartbeat_counts_from_then(setup):
    central, clock, box = setup
    central.up = False
    box.note_unreachable()
    # Nothing queued: an empty flush is no sign that central is back.
    assert box.flush()
    assert central.got == []
    clock.t += 30
    central.up = True
    box.note_reachable()
    assert box.flush()
    assert central.texts() == ["errorConnecting: central was unreachable for 30 s"]


def test_a_refused_report_does_not_block_the_ones_after_it(setup):
    central, clock, box = setup
    central.refuse_state = "ERROR_E"
    box.status(state="ERROR_E")
    box.trace("trace", "after")
    assert box.flush()
    assert central.texts() == ["after"]
    assert [r.body["state"] for r, _ in box.rejected] == ["ERROR_E"]


def test_drain_waits_for_central_within_its_time(setup):
    central, clock, box = setup
    central.up = False
    box.status(state="DONE")

    def sleep(s: float) -> None:
        clock.t += s
        if clock.t >= 1020:
            central.up = True

    assert box.drain(60.0, sleep=sleep)
    assert central.texts()[0] == "DONE"
    box.status(state="X")
    central.up = False
    assert not box.drain(5.0, sleep=lambda s: setattr(clock, "t", clock.t + s))

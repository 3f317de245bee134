"""The agent's report queue: order kept, nothing lost while central is away, refusals do not block the rest."""

from __future__ import annotations

import pytest

from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.outbox import Outbox


class FakeCentral:
    """Stands in for the HTTP calls only; the real client and server are tested in the central and pilot tests."""

    def __init__(self) -> None:
        self.up = True
        self.got: list = []
        self.refuse: set = set()

    def send(self, report) -> None:
        if not self.up:
            raise CentralUnreachable("http://127.0.0.1:1", "connection refused")
        if report.kind == "status" and report.body.get("state") in self.refuse:
            raise CentralError(409, "illegal_transition", "no")
        self.got.append((report.kind, dict(report.body)))


def test_order_is_kept_through_an_outage():
    t = [0.0]
    c = FakeCentral()
    box = Outbox(c.send, clock=lambda: t[0])
    box.status(state="STARTED")
    assert box.flush()
    c.up = False
    box.status(state="RUNNING")
    box.trace("trace", "line 1", ts=1.0)
    box.trace("trace", "line 2", ts=2.0)
    box.status(state="SAVING")
    assert not box.flush()
    assert len(box.queue) == 3  # the two trace lines travel together
    t[0] += 0.5
    assert not box.flush()  # backing off: not even tried
    c.up = True
    t[0] += 40
    assert box.flush()
    kinds = [(k, b.get("state") or [e["text"] for e in b["entries"]]) for k, b in c.got]
    assert kinds[:4] == [("status", "STARTED"), ("status", "RUNNING"), ("trace", ["line 1", "line 2"]), ("status", "SAVING")]
    assert "errorConnecting" in c.got[-1][1]["entries"][0]["text"]


def test_a_refused_report_does_not_block_the_rest():
    c = FakeCentral()
    c.refuse = {"KILLED"}
    box = Outbox(c.send)
    box.status(state="KILLED")
    box.trace("trace", "after")
    assert box.flush()
    assert [k for k, _ in c.got] == ["trace"]
    assert box.rejected and "409" in box.rejected[0][1]


def test_drain_gives_up_after_its_timeout():
    t = [0.0]
    c = FakeCentral()
    c.up = False
    box = Outbox(c.send, clock=lambda: t[0])
    box.status(state="DONE")

    def sleep(s: float) -> None:
        t[0] += s

    assert box.drain(10, sleep=sleep) is False
    assert t[0] >= 10
    c.up = True
    assert box.drain(10, sleep=sleep) is True
    assert c.got[0][1]["state"] == "DONE"

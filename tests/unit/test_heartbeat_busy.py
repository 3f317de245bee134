"""A running job's heartbeats and control polls (pilot/heartbeat.py) when central answers that it is busy (503
overloaded, 429 rate_limited): no outage is counted, and the next poll waits at least the Retry-After."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.heartbeat import Heartbeats
from gridpilot.pilot.outbox import Outbox


class Central:
    def __init__(self) -> None:
        self.error: Optional[BaseException] = None
        self.calls: List[str] = []
        self.pace: Any = None

    def heartbeats_full(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        self.calls.append("heartbeat")
        if self.error is not None:
            raise self.error
        return {"commands": [], "rejected": []}

    def control(self, job_id: int, resubmission: int) -> Dict[str, Any]:
        self.calls.append("control")
        if self.error is not None:
            raise self.error
        return {"commands": [], "rejected": [], **({} if self.pace is None else {"poll_after": self.pace})}


def make() -> tuple:
    central = Central()
    box = Outbox(lambda r: None, clock=lambda: 0.0)
    hb = Heartbeats(central, 7, 0, box, interval=60.0, poll_interval=3.0)  # type: ignore[arg-type]
    return central, box, hb


def test_a_busy_central_is_no_outage_for_the_heartbeats():
    central, box, hb = make()
    central.error = CentralError(503, "overloaded", "busy", retry_after=5.0)
    assert hb.beat(100.0, dict) == []
    assert box.unreachable_since is None  # an outage would be: no errorConnecting, nothing against the node
    central.error = CentralUnreachable("http://c", "refused")
    hb.next = 0.0
    hb.beat(200.0, dict)
    assert box.unreachable_since is not None  # no answer at all still is one


def test_a_busy_control_poll_waits_at_least_the_retry_after():
    central, box, hb = make()
    hb.beat(100.0, dict)  # the heartbeat; the next poll 3 s later
    central.error = CentralError(429, "rate_limited", "slow down", retry_after=20.0)
    assert hb.beat(103.0, dict) == []
    assert 103.0 + 20.0 <= hb.next_poll <= 103.0 + 30.0  # Retry-After plus up to half of it
    assert box.unreachable_since is None
    central.error = None
    assert hb.beat(hb.next_poll, dict) == [] and central.calls[-1] == "control"




def test_the_agents_own_polls_keep_centrals_pace_after_a_heartbeat_too():
    # An agent polling on its own (its runner older than the bulk polls) takes central's pace (central/pacing.py)
    # as the runner does: 15 s between polls, and a heartbeat's answer starts the same 15 s again.
    central, box, hb = make()
    central.pace = 15.0
    hb.beat(100.0, dict)  # the heartbeat; the first poll 3 s later
    assert hb.beat(103.0, dict) == [] and central.calls == ["heartbeat", "control"]
    assert hb.next_poll == 118.0
    hb.beat(117.9, dict)
    assert central.calls == ["heartbeat", "control"]
    hb.next = 0.0
    hb.beat(150.0, dict)  # a heartbeat answered: the next poll a whole gap after it
    assert central.calls[-1] == "heartbeat" and hb.next_poll == 165.0

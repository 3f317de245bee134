"""The pieces of the bulk heartbeats without processes: the outbox's coalescing of trace lines (pilot/outbox.py),
the runner's spread and routing of answers (pilot/bulkbeats.py), the agent's handshake with its runner and its
fallback (pilot/runnerlink.py, pilot/heartbeat.py). The real runner and agents: tests/integration/
test_pilot_bulk_heartbeats.py."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import orjson
import pytest

from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.bulkbeats import BulkBeats
from gridpilot.pilot.heartbeat import Heartbeats
from gridpilot.pilot.outbox import COALESCE_LINES, Outbox, Report
from gridpilot.pilot.runnerlink import HELLO, handshake


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- coalescing -----------------------------------------------------------------------------------------------


def coalescing(clock: Clock) -> Tuple[Outbox, List[Report]]:
    sent: List[Report] = []
    box = Outbox(lambda r: sent.append(Report(r.kind, {k: (list(v) if isinstance(v, list) else v)
                                                         for k, v in r.body.items()})),
                 key_prefix="0.x.", clock=clock, hold_s=5.0)
    return box, sent


def test_lines_that_are_not_urgent_wait_up_to_the_hold_and_go_as_one_request():
    clock = Clock()
    box, sent = coalescing(clock)
    for i in range(3):
        box.trace("trace", f"line {i}")
        clock.t += 1
        assert box.flush() is False and sent == []
    assert box.next_try == 1000.0 + 5.0
    clock.t = 1005.0
    assert box.flush() is True
    assert [[e["text"] for e in r.body["entries"]] for r in sent] == [["line 0", "line 1", "line 2"]]
    assert [e["key"] for e in sent[0].body["entries"]] == ["0.x.1", "0.x.2", "0.x.3"]


def test_a_state_or_an_urgent_line_sends_everything_before_it_at_once_in_order():
    clock = Clock()
    box, sent = coalescing(clock)
    box.trace("trace", "a")
    box.status(state="RUNNING")
    box.trace("trace", "b")
    assert box.flush() is True
    assert [r.kind for r in sent] == ["trace", "status", "trace"]
    box.trace("trace", "c")
    assert box.flush() is False
    box.trace("trace", "killed", urgent=True)
    assert box.flush() is True
    assert [e["text"] for e in sent[-1].body["entries"]] == ["c", "killed"]


def test_a_full_batch_goes_without_waiting():
    clock = Clock()
    box, sent = coalescing(clock)
    for i in range(COALESCE_LINES):
        box.trace("trace", str(i))
    assert box.flush() is True and len(sent) == 1 and len(sent[0].body["entries"]) == COALESCE_LINES


def test_what_central_could_not_take_is_retried_without_being_held_again():
    clock = Clock()
    up = {"v": False}
    sent: List[Report] = []

    def send(r: Report) -> None:
        if not up["v"]:
            raise CentralUnreachable("http://central", "refused")
        sent.append(r)

    box = Outbox(send, clock=clock, hold_s=5.0, rng=lambda: 0.5)
    box.trace("trace", "a", urgent=True)
    assert box.flush() is False
    up["v"] = True
    clock.t = box.next_try
    box.trace("trace", "b")  # a line that could wait, behind one that waits for central: goes with it
    assert box.flush() is True
    texts = [e["text"] for r in sent if r.kind == "trace" for e in r.body["entries"]]
    assert texts[0] == "a" and texts[-1] == "b", texts


# -- the runner's end -------------------------------------------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.beats: List[List[Dict[str, Any]]] = []
        self.polls: List[List[Dict[str, Any]]] = []
        self.error: Any = None
        self.bad_item: Any = None
        #: What central's control answers carry as their pace (central/pacing.py); absent when None.
        self.pace: Any = None

    def heartbeats_full(self, items):
        self.beats.append([dict(i) for i in items])
        if self.error is not None:
            raise self.error
        for i, it in enumerate(items):
            if it["job_id"] == self.bad_item and it.get("sample") is not None:
                raise CentralError(400, "bad_request", f"heartbeats[{i}].sample.rss must be a number")
        return {"commands": [{"job_id": 2, "command": "kill", "reason": "kill requested"}],
                "rejected": [{"job_id": 3, "code": "stale_resubmission"}], "updated": len(items)}

    def control_many(self, runs):
        self.polls.append(list(runs))
        if self.error is not None:
            raise self.error
        answer = {"commands": [{"job_id": 1, "command": "spy", "request": 7}], "rejected": []}
        if self.pace is not None:
            answer["poll_after"] = self.pace
        return answer


def bulk(rng: float = 0.25) -> Tuple[BulkBeats, FakeClient, Clock, List[Tuple[Any, Dict[str, Any]]]]:
    clock, client, lines = Clock(), FakeClient(), []
    b = BulkBeats(client, 60.0, 3.0, lambda k, line: lines.append((k, line)), clock=clock,  # type: ignore[arg-type]
                  rng=lambda: rng)
    for key, jid in ((0, 1), (1, 2), (2, 3)):
        b.update(key, {"event": "heartbeat", "job_id": jid, "resubmission": 0, "sample": {"rss": jid}})
    return b, client, clock, lines


def test_the_first_heartbeat_comes_at_a_random_point_of_the_interval_then_every_interval():
    b, client, clock, _ = bulk(rng=0.25)
    assert b.next_beat == 1000.0 + 15.0
    beats = []
    while clock.t < 1000.0 + 200:
        clock.t += 0.5
        n = len(client.beats)
        b.step()
        if len(client.beats) > n:
            beats.append(clock.t)
    assert beats == [1015.0, 1075.0, 1135.0, 1195.0]
    # One request carries every job; the polls are one per poll interval for all of them too.
    assert all(len(items) == 3 for items in client.beats)
    assert 60 <= len(client.polls) <= 200 / 3 + 1 and all(len(p) == 3 for p in client.polls)


def test_each_agent_gets_its_part_of_the_answer():
    b, client, clock, lines = bulk(rng=0.0)
    b.step()
    beat = {k: line for k, line in lines if line["reply"] == "heartbeat"}
    assert beat[1]["commands"] == [{"job_id": 2, "command": "kill", "reason": "kill requested"}]
    assert beat[2]["rejected"] == [{"job_id": 3, "code": "stale_resubmission"}]
    assert beat[0]["commands"] == [] and beat[0]["outcome"] == "answered"
    poll = {k: line for k, line in lines if line["reply"] == "control"}
    assert poll[0]["commands"] == [{"job_id": 1, "command": "spy", "request": 7}] and poll[1]["commands"] == []


def test_one_jobs_bad_sample_does_not_cost_the_others_their_heartbeat():
    b, client, clock, lines = bulk(rng=0.0)
    client.bad_item = 2
    b.step()
    assert [it["sample"] for it in client.beats[-1]] == [{"rss": 1}, None, {"rss": 3}]
    assert all(line["outcome"] == "answered" for _, line in lines if line["reply"] == "heartbeat")


def test_an_outage_is_relayed_and_the_polls_back_off():
    b, client, clock, lines = bulk(rng=0.0)
    client.error = CentralUnreachable("http://central", "refused")
    b.step()
    assert {line["outcome"] for _, line in lines} == {"unreachable", "failed"}
    assert b.next_poll == clock.t + 6.0  # doubled
    client.error = CentralError(404, "not_found", "no route")
    clock.t = b.next_poll
    lines.clear()
    b.step()
    assert {line["outcome"] for _, line in lines} == {"no_bulk"} and b.next_poll == float("inf")


def test_central_busy_is_relayed_as_busy_and_the_polls_wait_its_retry_after():
    b, client, clock, lines = bulk(rng=0.0)
    client.error = CentralError(503, "overloaded", "too many requests in flight", retry_after=20.0)
    b.step()
    assert {line["outcome"] for _, line in lines if line["reply"] == "heartbeat"} == {"busy"}
    # No sooner than Retry-After (20 s, jittered up by at most half), though the outage backoff would say 6 s.
    assert clock.t + 20.0 <= b.next_poll <= clock.t + 30.0


@pytest.mark.parametrize("pace, gap", [
    (None, 3.0), (0.0, 3.0), (1.0, 3.0), (20.0, 20.0), (20.5, 20.5), (500.0, 60.0),
    ("20", 3.0), (True, 3.0), (float("nan"), 3.0), (float("inf"), 3.0), (-5.0, 3.0),
])
def test_the_runner_polls_at_centrals_pace_within_its_own_interval_and_the_heartbeats(pace, gap):
    # Central's pace lengthens the poll interval, never shortens it, and never past the heartbeat's 60 s; a pace
    # that is no finite number (an older central sends none) leaves the runner's own 3 s.
    b, client, clock, _ = bulk(rng=0.0)
    client.pace = pace
    clock.t = b.next_poll
    b.step()
    assert len(client.polls) == 1
    assert b.next_poll == clock.t + gap
    clock.t = b.next_poll - 0.01
    b.step()
    assert len(client.polls) == 1, "no poll before the gap"
    clock.t = b.next_poll
    b.step()
    assert len(client.polls) == 2


def test_an_agent_whose_job_ended_is_not_reported_on():
    b, client, clock, _ = bulk(rng=0.0)
    b.update(1, {"event": "heartbeat", "job_id": 2, "resubmission": 0, "end": True})
    b.forget(2)
    b.step()
    assert [it["job_id"] for it in client.beats[-1]] == [1]


# -- the agent's end ----------------------------------------------------------------------------------------------


def pipe_with(data: bytes, close: bool) -> Tuple[int, int]:
    r, w = os.pipe()
    os.write(w, data)
    if close:
        os.close(w)
        w = -1
    return r, w


def test_an_older_runner_writes_the_settings_and_closes():
    r, _ = pipe_with(b'{"a": 1}', close=True)
    settings, link = handshake(r)
    assert settings == b'{"a": 1}' and link is None
    os.close(r)


def test_a_bulk_runner_says_hello_and_keeps_the_link_open():
    r, w = pipe_with(b'{"a": 1}\n' + orjson.dumps(HELLO) + b'\n{"reply": "control", "job_id": 5}\n', close=False)
    settings, link = handshake(r)
    assert settings == b'{"a": 1}' and link is not None
    assert link.read() == [{"reply": "control", "job_id": 5}] and link.open
    os.close(w)
    assert link.read() == [] and not link.open
    link.close()


class FakeOutbox:
    def __init__(self) -> None:
        self.notes: List[str] = []

    def note_reachable(self) -> None:
        self.notes.append("up")

    def note_unreachable(self) -> None:
        self.notes.append("down")


class AgentClient:
    def __init__(self) -> None:
        self.calls: List[str] = []

    def heartbeats_full(self, items):
        self.calls.append("heartbeat")
        return {"commands": [], "rejected": []}

    def control(self, job_id, resubmission):
        self.calls.append("control")
        return {"commands": [{"job_id": job_id, "command": "kill", "reason": "kill requested"}], "rejected": []}


def linked(interval: float = 60.0) -> Tuple[Heartbeats, AgentClient, FakeOutbox, int, List[Dict[str, Any]]]:
    r, w = pipe_with(b"{}\n" + orjson.dumps(HELLO) + b"\n", close=False)
    _, link = handshake(r)
    events: List[Dict[str, Any]] = []
    client, outbox = AgentClient(), FakeOutbox()
    hb = Heartbeats(client, 5, 0, outbox, interval, 3.0, link=link,  # type: ignore[arg-type]
                    emit=lambda ev, **f: events.append({"event": ev, **f}))
    return hb, client, outbox, w, events


def test_the_agent_hands_its_sample_to_the_runner_and_acts_on_what_it_relays():
    hb, client, outbox, w, events = linked()
    assert hb.beat(0.0, lambda: {"rss": 1}) == []
    assert events == [{"event": "heartbeat", "job_id": 5, "resubmission": 0, "sample": {"rss": 1}}]
    os.write(w, orjson.dumps({"reply": "heartbeat", "job_id": 5, "outcome": "unreachable", "error": "x"}) + b"\n")
    os.write(w, orjson.dumps({"reply": "control", "job_id": 5, "outcome": "answered",
                              "commands": [{"job_id": 5, "command": "kill", "reason": "kill requested"}],
                              "rejected": []}) + b"\n")
    assert hb.beat(1.0, lambda: {}) == ["kill requested by central (kill requested)"]
    assert outbox.notes == ["down"] and client.calls == []
    hb.end()
    assert events[-1] == {"event": "heartbeat", "job_id": 5, "resubmission": 0, "end": True}
    os.close(w)


def test_central_busy_relayed_by_the_runner_is_not_an_outage_for_the_agent():
    hb, client, outbox, w, events = linked()
    hb.beat(0.0, lambda: {"rss": 1})
    os.write(w, orjson.dumps({"reply": "heartbeat", "job_id": 5, "outcome": "busy", "error": "overloaded"}) + b"\n")
    assert hb.beat(1.0, lambda: {}) == []
    assert outbox.notes == [] and client.calls == []
    os.close(w)


@pytest.mark.parametrize("how", ["closed", "silent"])
def test_the_agent_reports_on_its_own_when_its_runner_is_gone_or_silent(how):
    hb, client, outbox, w, events = linked(interval=10.0)
    hb.beat(0.0, lambda: {})
    if how == "closed":
        os.close(w)
        now = 1.0
    else:
        now = hb.silence_s + 1.0
    stops = hb.beat(now, lambda: {})
    assert hb.link is None
    assert client.calls[0] == "heartbeat"  # at once, on its own
    stops += hb.beat(now + 3.0, lambda: {})
    assert "control" in client.calls and stops == ["kill requested by central (kill requested)"]
    if how == "silent":
        os.close(w)

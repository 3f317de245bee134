"""The agent's report outbox (pilot/outbox.py) with a fake central and test clocks: order, backoff, outages, and what
each kind of answer does to the report at the head (retried, or only what central named dropped). The same against
a real central in tests/integration/test_outbox_refusals.py."""

from __future__ import annotations

from typing import List, Optional

import pytest

from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.outbox import POISON_AFTER, Outbox, Report


class FakeCentral:
    def __init__(self) -> None:
        self.up = True
        self.got: List[Report] = []
        self.attempts = 0
        self.refuse_state = None
        #: Answer this error to every report while set.
        self.error: Optional[CentralError] = None
        #: Answer this error to a trace batch holding a line with this text (naming it as central does).
        self.bad_text: Optional[str] = None
        self.bad_status = 400
        self.name_entry = "entries[{i}].text: must not contain NUL characters"

    def send(self, report: Report) -> None:
        self.attempts += 1
        if not self.up:
            raise CentralUnreachable("http://central", "connection refused")
        if self.error is not None:
            raise self.error
        if report.kind == "status" and report.body.get("state") == self.refuse_state:
            raise CentralError(409, "illegal_transition", "no")
        if report.kind == "status" and "\0" in str(report.body.get("message", "")):
            raise CentralError(400, "bad_request", "field 'message' must not contain NUL characters")
        if report.kind == "trace":
            texts = [e["text"] for e in report.body["entries"]]
            if self.bad_text in texts:
                raise CentralError(self.bad_status, "bad_request",
                                   self.name_entry.format(i=texts.index(self.bad_text)))
        # Stored as sent (a copy: the outbox may change a report it still holds).
        self.got.append(Report(report.kind, {k: (list(v) if isinstance(v, list) else v)
                                             for k, v in report.body.items()}))

    def texts(self) -> List[str]:
        out = []
        for r in self.got:
            out += [r.body["state"]] if r.kind == "status" else [e["text"] for e in r.body["entries"]]
        return out


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


#: The time of day at the test clock's start.
WALL0 = 1_800_000_000.0


@pytest.fixture
def setup():
    central, clock = FakeCentral(), Clock()
    # The wall clock moves with the test clock; the backoff's jitter is fixed at its top (whole steps).
    box = Outbox(central.send, clock=clock, wall=lambda: WALL0 + clock.t - 1000.0, backoff_s=1.0, backoff_max_s=8.0,
                 rng=lambda: 1.0)
    return central, clock, box


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
    assert central.texts() == [
        "[WARN] the pilot dropped the ERROR_E report: central answered 409 illegal_transition: no", "after"]
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


def test_the_outage_line_is_dated_when_the_outage_began_not_when_it_was_delivered(setup):
    central, clock, box = setup
    box.status(state="RUNNING")
    assert box.flush()
    clock.t += 5
    central.up = False
    box.note_unreachable()  # a heartbeat failed: the outage began now
    clock.t += 10
    box.trace("trace", "payload exited with 0")
    assert not box.flush()
    clock.t += 20
    central.up = True
    assert box.flush(force=True)
    (outage,) = [e for r in central.got if r.kind == "trace" for e in r.body["entries"]
                 if e["text"].startswith("errorConnecting")]
    assert outage["text"] == "errorConnecting: central was unreachable for 30 s"
    assert outage["ts"] == WALL0 + 5, "dated at the outage's start, not at its delivery (WALL0 + 35)"
    held = [e for r in central.got if r.kind == "trace" for e in r.body["entries"] if e["text"].startswith("payload")]
    assert held[0]["ts"] == WALL0 + 15, "a held line keeps the time it was written"


def test_a_500_is_retried_with_backoff_and_drops_nothing(setup):
    central, clock, box = setup
    central.error = CentralError(500, "internal", "Internal Server Error")
    box.trace("trace", "one")
    box.trace("trace", "two")
    box.status(state="RUNNING")
    for _ in range(POISON_AFTER * 2):  # central failing on everything, heartbeats too: no reason to give up
        assert not box.flush(force=True)
    assert central.got == [] and box.rejected == [] and len(box.queue) == 2
    central.error = None
    assert box.flush(force=True)
    assert central.texts() == ["one", "two", "RUNNING"]


def test_a_gateway_answering_for_an_absent_central_is_an_outage(setup):
    central, clock, box = setup
    central.error = CentralError(503, "http_503", "Service Unavailable")
    box.status(state="SAVING")
    assert not box.flush()
    clock.t += 12
    central.error = None
    assert box.flush(force=True)
    # As for no answer at all: the report that got through first, then the outage line.
    assert central.texts() == ["SAVING", "errorConnecting: central was unreachable for 12 s"]


@pytest.mark.parametrize("naming", ["entries[{i}].text: must not contain NUL characters",
                                    "trace entry {i}: text must be a string of at most 65536 characters"])
def test_a_bad_entry_is_dropped_alone_and_the_rest_of_its_batch_and_the_later_states_go_on(setup, naming):
    central, clock, box = setup
    central.name_entry = naming
    central.bad_text = "bad \0 line"
    for text in ("line 1", "bad \0 line", "line 3"):
        box.trace("trace", text)
    box.status(state="RUNNING")
    box.trace("trace", "line 4")
    box.status(state="DONE")
    assert box.flush()
    texts = central.texts()
    assert texts[1:] == ["line 1", "line 3", "RUNNING", "line 4", "DONE"]
    assert texts[0].startswith("[WARN] the pilot dropped trace line 2 ('bad \\x00 line'): central answered 400 ")
    assert box.rejected == [], "no report was dropped whole"


def test_a_batch_refused_without_a_name_is_halved_until_the_bad_line_is_alone(setup):
    central, clock, box = setup
    central.name_entry = "a trace entry is malformed"
    central.bad_text = "line 6"
    for i in range(8):
        box.trace("trace", f"line {i}")
    box.status(state="DONE")
    assert box.flush()
    texts = central.texts()
    assert [t for t in texts if not t.startswith("[WARN]")] == [f"line {i}" for i in range(8) if i != 6] + ["DONE"]
    (note,) = [t for t in texts if t.startswith("[WARN]")]
    assert note.startswith("[WARN] the pilot dropped trace line 7 ('line 6')")


def test_a_state_report_refused_for_its_message_is_sent_again_without_it(setup):
    central, clock, box = setup
    box.status(state="RUNNING", message="from the payload: \0")
    box.status(state="DONE", exit_code=0)
    assert box.flush()
    assert central.texts()[1:] == ["RUNNING", "DONE"]
    assert "message" not in central.got[1].body
    assert central.texts()[0].startswith("[WARN] the pilot dropped the message of the RUNNING report ('from the "
                                         "payload: \\x00'); the report is sent again without it: central answered 400")


def test_a_line_central_keeps_failing_on_while_it_answers_heartbeats_is_dropped_alone(setup):
    """A central bug (a 500 on one line, say a NUL on PostgreSQL before bounds were checked) must not hold back
    every later report: after POISON_AFTER failures with heartbeats answered meanwhile, the batch is halved until
    the line central fails on is alone, and only that line is dropped."""
    central, clock, box = setup
    central.bad_text = "poison"
    central.bad_status = 500
    central.name_entry = "Internal Server Error"
    for text in ("a", "b", "poison", "c"):
        box.trace("trace", text)
    box.status(state="RUNNING")
    tries = 0
    while box.queue and tries < 100:
        tries += 1
        box.flush(force=True)
        box.note_reachable()  # the agent's heartbeats get through meanwhile
    texts = central.texts()
    assert [t for t in texts if not t.startswith("[WARN]")] == ["a", "b", "c", "RUNNING"]
    (note,) = [t for t in texts if t.startswith("[WARN]")]
    assert "trace line 3 ('poison')" in note and "500" in note
    # POISON_AFTER tries for the batch, then one per half until the line is alone.
    assert tries <= POISON_AFTER + 4, tries


@pytest.mark.parametrize("status,code", [(503, "overloaded"), (429, "rate_limited"), (503, "database_unavailable")])
def test_central_busy_is_waited_out_as_it_says_and_is_no_outage_nor_a_failure_of_the_report(setup, status, code):
    central, clock, box = setup
    outages: List[float] = []
    box.on_outage = outages.append
    central.error = CentralError(status, code, "busy", retry_after=6.0)
    box.status(state="RUNNING")
    for _ in range(POISON_AFTER * 2):  # busy for long: the report is never taken as refused
        assert not box.flush()
        # Retry-After, plus up to half of it again (the test's jitter is at its top).
        assert box.next_try == clock.t + 9.0
        assert not box.flush()  # nothing sent before then
        clock.t += 9.0
    central.error = None
    box.note_reachable()  # a heartbeat got through: central has room again, the report goes at once
    assert box.next_try == 0.0 and box.flush()
    # No errorConnecting line and no outage for the runner to count against the node.
    assert central.texts() == ["RUNNING"] and outages == [] and box.rejected == []


def test_busy_after_an_outage_ends_the_outage(setup):
    central, clock, box = setup
    central.up = False
    box.status(state="RUNNING")
    assert not box.flush()
    clock.t += 30
    central.up = True
    central.error = CentralError(503, "overloaded", "busy", retry_after=2.0)
    assert not box.flush(force=True)
    central.error = None
    clock.t += 3
    assert box.flush()
    assert central.texts() == ["errorConnecting: central was unreachable for 30 s", "RUNNING"]

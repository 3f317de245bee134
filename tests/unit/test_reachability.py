"""Waiting out central: the backoff's bounds and the one-line-per-change log (gridpilot/reachability.py)."""

from __future__ import annotations

import random

from gridpilot.reachability import Backoff, Reachability


def test_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half():
    b = Backoff(1.0, 8.0, rng=random.Random(7).random)
    delays = [b.next() for _ in range(12)]
    for delay, step in zip(delays, [1, 2, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8]):
        assert step / 2 <= delay <= step, (delays, step)
    assert len({round(d, 6) for d in delays[3:]}) > 1, "capped delays still differ: jitter"
    b.reset()
    assert 0.5 <= b.next() <= 1.0


def test_one_line_when_central_goes_down_a_reminder_while_it_stays_down_one_when_it_is_back():
    now = [1000.0]
    lines = []
    r = Reachability("http://c:1", lines.append, clock=lambda: now[0], still_every_s=300, doing="matching paused")
    assert r.answered() is None and not lines, "answering while up says nothing"
    for _ in range(50):  # tries every 10 s for 500 s
        r.failed("connection refused")
        now[0] += 10
    r.failed("connection refused")  # at 500 s: the second reminder is not due before 600 s
    assert lines == [
        "central http://c:1 unreachable: connection refused; matching paused",
        "central http://c:1 still unreachable after 5 min: connection refused",
    ], lines
    now[0] += 130
    assert r.answered() == 630.0
    assert lines[-1] == "central http://c:1 answers again, after 10 min unreachable"
    assert r.answered() is None and len(lines) == 3
    r.failed("timeout")
    assert lines[-1] == "central http://c:1 unreachable: timeout; matching paused", "a new outage, a new line"

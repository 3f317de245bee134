from __future__ import annotations

from gridpilot.pilot.watchdog import Watchdog


def test_stuck_loop_reported_once_then_recovers():
    t = [0.0]
    seen = []
    w = Watchdog("agent", timeout_s=10, on_stuck=seen.append, clock=lambda: t[0])
    w.check()
    assert seen == []
    t[0] = 11
    w.check()
    w.check()
    assert len(seen) == 1 and "not advanced for 11 s" in seen[0]
    w.beat()
    w.check()
    t[0] = 30
    w.check()
    assert w.stuck_events == 2


def test_thread_starts_and_stops():
    w = Watchdog("x", timeout_s=0.05).start()
    w.stop()
    assert w._thread is not None and not w._thread.is_alive()


# -- the runner's watchdog of its agents' monitoring loops (StallWatch) and the agent's side (LoopBeat) --

from gridpilot.pilot.watchdog import BEAT, LoopBeat, StallWatch  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_loop_is_watched_from_its_first_beat_and_reported_once_past_the_limit():
    clock = Clock()
    w = StallWatch(limit_s=40, clock=clock)
    assert w.check() == [] and w.next_due() is None, "nothing is watched before a beat"
    assert w.beat(0, 7) is None
    assert w.next_due() == 1040
    clock.t += 40
    assert w.check() == [], "at the limit is not past it"
    clock.t += 1
    stalls = w.check()
    assert [(s.key, s.job_id, s.seconds, s.ended) for s in stalls] == [(0, 7, 41, None)]
    clock.t += 100
    assert w.check() == [] and w.next_due() is None, "reported once while it stays stalled"
    back = w.beat(0, 7)
    assert back is not None and back.seconds == 141 and back.ended == clock.t
    assert w.next_due() == clock.t + 40, "watched again from the beat"


def test_a_busy_loop_is_given_its_time_and_a_stopped_or_forgotten_one_is_not_watched():
    clock = Clock()
    w = StallWatch(limit_s=10, clock=clock)
    w.beat(1, 3)
    w.beat(1, 3, busy_s=60)  # a kill with a 60 s grace ahead
    clock.t += 65
    assert w.check() == []
    clock.t += 6
    assert [s.key for s in w.check()] == [1]
    w.beat(2, 4)
    w.beat(2, 4, watching=False)
    w.beat(3, 5)
    w.forget(3)
    clock.t += 1000
    assert w.check() == []


def test_two_loops_are_watched_apart():
    clock = Clock()
    w = StallWatch(limit_s=10, clock=clock)
    w.beat(0, 1)
    clock.t += 5
    w.beat(1, 2)
    clock.t += 6
    assert [s.job_id for s in w.check()] == [1]
    w.beat(0, 1)
    clock.t += 5
    assert [s.job_id for s in w.check()] == [2]


def test_the_agent_beats_at_most_twice_per_interval():
    clock = Clock()
    sent = []
    beat = LoopBeat(lambda event, **f: sent.append((event, f)), interval_s=10, clock=clock)
    for _ in range(100):
        beat.beat()
    assert sent == [(BEAT, {})], "one event for a loop that turns often"
    clock.t += 4.9
    beat.beat()
    clock.t += 0.2
    beat.beat()
    assert len(sent) == 2
    beat.busy(90.0)
    beat.stop()
    assert sent[-2:] == [(BEAT, {"busy_s": 90.0}), (BEAT, {"watching": False})]

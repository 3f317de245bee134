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

"""ARC CEs that fail are backed off: base, doubling, capped; a success clears it; the usable ones keep their order."""

from __future__ import annotations

from gridpilot.arc.backoff import CEBackoff


def test_backoff_doubles_up_to_the_cap_and_clears_on_success():
    now = [0.0]
    b = CEBackoff(30, 100, clock=lambda: now[0])
    assert b.usable(["a", "b", "c"]) == ["a", "b", "c"]
    assert [b.failed("b", "timeout") for _ in range(4)] == [30, 60, 100, 100]
    assert b.usable(["a", "b", "c"]) == ["a", "c"] and b.failures("b") == 4
    now[0] = 99.0
    assert not b.available("b") and 0 < (b.backed_off_for("b") or 0) <= 1.0
    now[0] = 100.0
    assert b.available("b")
    b.succeeded("b")
    assert b.failures("b") == 0 and b.failed("b", "again") == 30

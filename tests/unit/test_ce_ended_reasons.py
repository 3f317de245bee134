"""What the CE sends central of its pilots' ends by reason (factory.ended_for_central): within central's bound on
the number of reasons (pilots.MAX_REASONS), the rarest summed as `other`, the total kept."""

from __future__ import annotations

from collections import Counter

from gridpilot.ce.factory import MAX_REPORTED_REASONS, ended_for_central
from gridpilot.central.pilots import MAX_REASONS


def test_few_reasons_go_as_they_are():
    assert ended_for_central(Counter({"ok": 3, "signal_SIGKILL": 1})) == {"ok": 3, "signal_SIGKILL": 1}
    assert ended_for_central(Counter()) == {}


def test_many_reasons_are_cut_to_the_bound_keeping_the_total():
    reasons = Counter({f"exit_{i}": i + 1 for i in range(200)})
    sent = ended_for_central(reasons)
    assert MAX_REPORTED_REASONS <= MAX_REASONS and len(sent) == MAX_REPORTED_REASONS
    assert sum(sent.values()) == sum(reasons.values())
    assert sent["exit_199"] == 200 and "exit_0" not in sent and sent["other"] > 0

"""The decisions behind nodeBad (central/nodes.py), without a database: what counts once, what is not the node's
fault, and when the count makes a node bad. tests/integration/test_central_nodes.py runs them through the API on
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from gridpilot.central.nodes import (ERROR_CONNECTING, OOM_SYSTEM, SANDBOX_CREATE, STALL, Policy, is_repeat,
                                     is_shared_outage, span_of, verdict)


def test_a_lasting_failure_overlapping_a_counted_one_of_the_same_kind_is_a_repeat():
    counted = [(ERROR_CONNECTING, span_of(1000, 60))]
    assert is_repeat(ERROR_CONNECTING, span_of(1010, 60), counted)
    assert not is_repeat(ERROR_CONNECTING, span_of(1100, 30), counted), "after it ended: a new outage"
    assert not is_repeat(STALL, span_of(1010, 60), counted), "another kind"
    assert not is_repeat(OOM_SYSTEM, span_of(1000, 0), [(OOM_SYSTEM, span_of(1000, 0))]), "each job end counts"


@pytest.mark.parametrize("others, shared", [
    ([], False),
    ([("b", span_of(1000, 60))], False),
    ([("b", span_of(1000, 60)), ("b", span_of(1005, 60))], False),  # one other host, twice
    ([("b", span_of(1000, 60)), ("c", span_of(990, 30))], True),
    ([("b", span_of(1000, 60)), ("c", span_of(800, 30))], False),  # c's outage was long before
])
def test_an_outage_is_shared_when_two_other_hosts_saw_it_at_the_same_time(others, shared):
    assert is_shared_outage(ERROR_CONNECTING, span_of(1010, 60), others) is shared
    assert is_shared_outage(SANDBOX_CREATE, span_of(1010, 0), others) is False


def test_the_verdict_counts_within_the_window_since_the_last_clearing():
    policy = Policy(bad_after=3, window_s=100)
    fails = [(STALL, 950.0), (OOM_SYSTEM, 980.0), (SANDBOX_CREATE, 990.0)]
    reason = verdict(fails, 1000, None, policy)
    assert reason == ("3 failures within 100 s (1 stall, 1 sandbox_create, 1 oom_system), at least 3 make a node "
                      "bad")
    assert verdict(fails[1:], 1000, None, policy) is None
    assert verdict(fails, 1051, None, policy) is None, "the first left the window"
    assert verdict(fails, 1000, 960, policy) is None, "cleared after the first"
    assert verdict(fails, 1000, None, Policy(bad_after=0, window_s=100)) is None, "0: never"
    assert verdict(fails * 2, 1000, None, Policy(bad_after=1, window_s=100)).startswith("6 failures")

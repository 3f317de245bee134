"""Pure decisions of the JobAgent and the JobRunner about how a job ends (no processes, no central)."""

from __future__ import annotations

import pytest

from gridpilot.pilot.finalstate import final_path, log_tail
from gridpilot.pilot.runner import counts_against_node
from gridpilot.states import JobStatus as S
from gridpilot.states import is_allowed


@pytest.mark.parametrize(
    "current, wanted, path",
    [
        (S.RUNNING, S.ERROR_E, [S.ERROR_E]),
        (S.SAVING, S.ERROR_SV, [S.ERROR_SV]),
        (S.RUNNING, S.KILLED, [S.KILLED]),
        # Nothing reported yet (ASSIGNED): STARTED first, then the end.
        (None, S.ERROR_A, [S.STARTED, S.ERROR_A]),
        (None, S.WAITING, [S.WAITING]),
        (S.STARTED, S.WAITING, [S.WAITING]),
        # A wrapper lost before its payload ran ends ERROR_E (issue 5); from ASSIGNED, STARTED is reported first.
        (S.STARTED, S.ERROR_E, [S.ERROR_E]),
        (None, S.ERROR_E, [S.STARTED, S.ERROR_E]),
        # Where the table allows nothing closer, ERROR_A: the pilot could not run the job.
        (S.ASSIGNED, S.ERROR_SV, [S.STARTED, S.ERROR_A]),
    ],
)
def test_final_path_is_always_legal(current, wanted, path):
    got = final_path(current, wanted)
    assert got == path
    prev = current or S.ASSIGNED
    for step in got:
        assert is_allowed(prev, step)
        prev = step


@pytest.mark.parametrize(
    "state, reason, counts",
    [
        ("DONE", "OK", False),
        ("WAITING", "OK", False),
        ("ERROR_A", "OK", True),
        ("ERROR_IB", "INPUT_FILES", True),
        # A work directory, cgroups or container that cannot be made: the node's fault.
        ("ERROR_A", "SANDBOX_CREATE", True),
        # A JDL the broker handed out that the pilot cannot read: central's fault, not the node's.
        ("ERROR_A", "JOBBROKER", False),
        ("ERROR_E", "OK", True),  # the payload died at once: perhaps software missing on this node
        ("ERROR_E", "TTL", False),
        ("ERROR_E", "MEMORY_USAGE", False),
        ("ERROR_E", "KILLED", False),
        ("ERROR_V", "OK", False),
        ("ERROR_S", "OK", False),
        ("ERROR_VN", "OK", True),
    ],
)
def test_which_quick_failures_count_against_the_node(state, reason, counts):
    assert counts_against_node(state, reason) is counts


def test_log_tail_gives_the_last_lines_said(tmp_path):
    """What the agent traces of wrapper.log when the JobWrapper (or the container runtime around it) died without a
    final state: the last non-empty lines, bounded, the rest of a long log not read."""
    log = tmp_path / "wrapper.log"
    assert log_tail(log) == ""  # no log at all
    log.write_text("x" * 10000 + "\nfirst\n\nsecond\nError: creating container storage: name in use\n")
    assert log_tail(log, lines=2) == "second | Error: creating container storage: name in use"
    assert log_tail(log).startswith("x") and len(log_tail(log)) <= 1000
    log.write_bytes(b"\xff\xfe broken utf-8\n")
    assert "broken utf-8" in log_tail(log)

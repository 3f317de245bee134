"""Job states, kill reasons and the transition table."""

from __future__ import annotations

import itertools
import pickle
from typing import List, Tuple

import pytest

from support.paths import ROOT

from gridpilot.errors import GridpilotError, IllegalTransition
from gridpilot.states import (
    ACTIVE_STATES,
    HELD_STATES,
    KILL_REASON_TEXTS,
    TRANSITIONS,
    JobStatus,
    KillReason,
    allowed_next,
    check_transition,
    is_allowed,
)

S = JobStatus

STATUS_CODES = {
    "SPLIT": 3, "WAITING": 5, "ASSIGNED": 6, "STARTED": 7, "RUNNING": 10, "SAVING": 11, "DONE": 15, "DONE_WARN": 16,
    "ERROR_A": -1, "ERROR_I": -2, "ERROR_E": -3, "ERROR_IB": -4, "ERROR_S": -7, "ERROR_SV": -9, "ERROR_V": -10,
    "ERROR_VN": -11, "ERROR_VT": -16, "EXPIRED": -12, "KILLED": -14, "ZOMBIE": -15, "FAULTY": 24, "INCORRECT": 25,
}  # fmt: skip

KILL_CODES = {
    "OK": 0, "OOM": 10, "TTL": 20, "KILLED": 30, "OOM_PREEMPTED": 40, "IDLE_CPU": 50, "CORE_DUMP": 60,
    "DISK_USAGE": 70, "MEMORY_USAGE": 80, "OOM_SYSTEM": 90, "SANDBOX_CREATE": 201, "INPUT_FILES": 202,
    "PACKAGES": 203, "JOBBROKER": 301,
}  # fmt: skip


def test_status_codes_are_the_alice_ones() -> None:
    assert {s.name: s.value for s in JobStatus} == STATUS_CODES
    assert not hasattr(JobStatus, "SAVED")
    assert JobStatus(-15) is S.ZOMBIE and JobStatus["DONE_WARN"] == 16


def test_kill_reason_codes_are_the_alice_ones() -> None:
    assert {k.name: k.value for k in KillReason} == KILL_CODES


def test_classification() -> None:
    final = {s for s in S if s.is_final}
    assert final == {S.DONE, S.DONE_WARN, S.EXPIRED, S.KILLED, S.FAULTY, S.INCORRECT} | {
        s for s in S if s.name.startswith("ERROR_")
    }
    assert {s for s in S if s.is_error} == final - {S.DONE, S.DONE_WARN}
    assert {s for s in S if s.is_running} == {S.STARTED, S.RUNNING, S.SAVING}
    assert {s for s in S if s.is_active} == {S.WAITING, S.ASSIGNED, S.STARTED, S.RUNNING, S.SAVING}
    assert not S.ZOMBIE.is_final and not S.ZOMBIE.is_active and not S.ZOMBIE.is_error
    for s in S:
        assert not (s.is_final and s.is_active)


# Every transition the issue lists, spelled out by hand (not derived from the table under test).
_RESUBMITTABLE = [S.ERROR_A, S.ERROR_I, S.ERROR_E, S.ERROR_IB, S.ERROR_S, S.ERROR_SV, S.ERROR_V, S.ERROR_VN,
                  S.ERROR_VT, S.EXPIRED, S.KILLED, S.FAULTY]  # fmt: skip
ALLOWED: List[Tuple[JobStatus, JobStatus]] = [
    (S.WAITING, S.ASSIGNED),
    (S.ASSIGNED, S.STARTED),
    (S.STARTED, S.RUNNING),
    (S.RUNNING, S.SAVING),
    (S.SAVING, S.DONE),
    (S.SAVING, S.DONE_WARN),
    (S.STARTED, S.ERROR_IB),
    (S.STARTED, S.ERROR_A),
    (S.STARTED, S.ERROR_VN),
    (S.STARTED, S.ERROR_E),  # issue 5: the JobWrapper died before the payload ran
    (S.RUNNING, S.ERROR_E),
    (S.RUNNING, S.ERROR_V),
    (S.RUNNING, S.ERROR_VT),
    (S.SAVING, S.ERROR_S),
    (S.SAVING, S.ERROR_SV),
    # any active state -> KILLED
    (S.WAITING, S.KILLED),
    (S.ASSIGNED, S.KILLED),
    (S.STARTED, S.KILLED),
    (S.RUNNING, S.KILLED),
    (S.SAVING, S.KILLED),
    # a state held by a pilot -> ZOMBIE when its heartbeats stop
    (S.ASSIGNED, S.ZOMBIE),
    (S.STARTED, S.ZOMBIE),
    (S.RUNNING, S.ZOMBIE),
    (S.SAVING, S.ZOMBIE),
    (S.ZOMBIE, S.EXPIRED),
    # a job that never reached RUNNING goes back to WAITING
    (S.ASSIGNED, S.WAITING),
    (S.STARTED, S.WAITING),
    # resubmission of a failed job
    *[(s, S.WAITING) for s in _RESUBMITTABLE],
]


@pytest.mark.parametrize("old,new", ALLOWED, ids=[f"{o.name}->{n.name}" for o, n in ALLOWED])
def test_allowed_transition(old: JobStatus, new: JobStatus) -> None:
    check_transition(old, new)
    check_transition(int(old), int(new))  # codes straight from the database work too
    assert is_allowed(old, new) and new in allowed_next(old)


@pytest.mark.parametrize("back", sorted(HELD_STATES))
def test_zombie_returns_only_to_where_it_was(back: JobStatus) -> None:
    check_transition(S.ZOMBIE, back, before_zombie=back)
    assert allowed_next(S.ZOMBIE, before_zombie=back) == {S.EXPIRED, back}
    for other in HELD_STATES - {back}:
        with pytest.raises(IllegalTransition, match=f"ZOMBIE -> {other.name}.*before \\({back.name}\\)"):
            check_transition(S.ZOMBIE, other, before_zombie=back)
    with pytest.raises(IllegalTransition, match="was not given"):
        check_transition(S.ZOMBIE, back)
    check_transition(S.ZOMBIE, S.EXPIRED, before_zombie=back)


def test_the_table_is_exactly_the_listed_transitions() -> None:
    listed = set(ALLOWED) | {(S.ZOMBIE, s) for s in HELD_STATES}
    in_table = {(o, n) for o, targets in TRANSITIONS.items() for n in targets}
    assert in_table == listed
    assert set(TRANSITIONS) == set(S)


FORBIDDEN = [
    (S.WAITING, S.RUNNING),
    (S.WAITING, S.STARTED),
    (S.WAITING, S.DONE),
    (S.WAITING, S.ZOMBIE),  # a queued job sends no heartbeats
    (S.ASSIGNED, S.RUNNING),
    (S.STARTED, S.SAVING),
    (S.STARTED, S.DONE),
    (S.RUNNING, S.DONE),
    (S.RUNNING, S.WAITING),  # it reached RUNNING: no silent requeue
    (S.RUNNING, S.STARTED),
    (S.RUNNING, S.ERROR_IB),
    (S.RUNNING, S.ERROR_S),
    (S.RUNNING, S.RUNNING),
    (S.SAVING, S.RUNNING),
    (S.SAVING, S.ERROR_E),
    (S.SAVING, S.WAITING),
    (S.DONE, S.RUNNING),
    (S.DONE, S.WAITING),
    (S.DONE_WARN, S.WAITING),
    (S.DONE, S.KILLED),
    (S.INCORRECT, S.WAITING),
    (S.KILLED, S.RUNNING),
    (S.EXPIRED, S.RUNNING),
    (S.ERROR_E, S.DONE),
    (S.ZOMBIE, S.WAITING),
    (S.ZOMBIE, S.DONE),
    (S.ZOMBIE, S.KILLED),
    (S.ZOMBIE, S.ZOMBIE),
    (S.EXPIRED, S.ZOMBIE),
]


@pytest.mark.parametrize("old,new", FORBIDDEN, ids=[f"{o.name}->{n.name}" for o, n in FORBIDDEN])
def test_forbidden_transition_names_both_states(old: JobStatus, new: JobStatus) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(old, new)
    e = info.value
    assert isinstance(e, GridpilotError)
    assert f"{old.name} -> {new.name}" in str(e)
    assert (e.old, e.new) == (old, new)
    assert not is_allowed(old, new)


def test_every_pair_agrees_with_the_table() -> None:
    for old, new in itertools.product(S, S):
        if old is S.ZOMBIE and new in HELD_STATES:
            continue
        assert is_allowed(old, new) == (new in TRANSITIONS[old])


def test_final_states_lead_nowhere_but_resubmission() -> None:
    for s in S:
        if s.is_final:
            assert allowed_next(s) <= {S.WAITING}
    assert ACTIVE_STATES == {s for s in S if s.is_active}


def test_unknown_code_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        check_transition(99, 5)


def test_illegal_transition_pickles() -> None:
    e = IllegalTransition(S.RUNNING, S.WAITING, "because")
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) == "illegal job state transition RUNNING -> WAITING: because"


def test_every_kill_reason_has_alices_text() -> None:
    """One table (KILL_REASON_TEXTS) gives every reason its text: the trace, `gridpilot job` and the job's JSON all
    read it, so a reason without one would show nothing."""
    assert set(KILL_REASON_TEXTS) == set(KillReason)
    for reason in KillReason:
        assert reason.text.strip() and "\n" not in reason.text, reason
    assert len({r.text for r in KillReason}) == len(KillReason), "two reasons must not read the same"
    # The issue quotes ALICE's words for PACKAGES; TTL and KILLED are JAliEn's JobAgent's own lines.
    assert KillReason.PACKAGES.text == "Cannot set up the packages environment"
    assert KillReason.TTL.text == "Killing the job (it was running for longer than its TTL)"
    assert KillReason.KILLED.text == "Job was killed"


def test_a_kill_reason_is_described_with_its_code_and_text() -> None:
    assert KillReason.SANDBOX_CREATE.describe() == (
        "SANDBOX_CREATE (201): Error. The sandbox for the job could not be created (work directory, cgroups or "
        "container)")
    assert KillReason.JOBBROKER.describe().startswith("JOBBROKER (301): ")


def test_the_kill_reasons_page_lists_every_reason_with_its_code_and_text() -> None:
    page = (ROOT / "docs" / "kill-reasons.md").read_text()
    for reason in KillReason:
        assert f"| {reason.name} | {int(reason)} | {reason.text} |" in page, reason


#: Reasons gridpilot never produces (docs/kill-reasons.md says why), and PACKAGES, which the packages tests prove.
_NOT_PRODUCED_HERE = {KillReason.OK, KillReason.OOM, KillReason.OOM_PREEMPTED}


def test_every_reason_the_pilot_produces_has_an_end_to_end_test_showing_it() -> None:
    """Each reason is produced by a real failure in an integration test that also checks its text where users read
    it (support.pilot.Pilot.assert_kill_reason_shown); the docs page names those tests."""
    showing = [f.read_text() for f in sorted((ROOT / "tests" / "integration").glob("test_*.py"))
               if "assert_kill_reason_shown" in f.read_text()]
    for reason in set(KillReason) - _NOT_PRODUCED_HERE:
        assert any(f'"{reason.name}"' in text for text in showing), f"no end-to-end test shows {reason.name}"

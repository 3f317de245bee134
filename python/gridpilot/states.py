"""Job states, kill reasons and the one transition table that central and the pilot both check against.

The numeric codes are the ALICE ones, so dashboards built for ALICE read ours unchanged.
"""

from __future__ import annotations

import enum
from typing import Dict, FrozenSet, Mapping, Optional, Set, Union

from gridpilot.errors import IllegalTransition

__all__ = [
    "ACTIVE_STATES",
    "CONTAINER_GIVE_BACK",
    "HELD_STATES",
    "RESUBMITTABLE_STATES",
    "TRANSITIONS",
    "JobStatus",
    "KILL_REASON_TEXTS",
    "KillReason",
    "allowed_next",
    "check_transition",
    "is_allowed",
]


class JobStatus(enum.IntEnum):
    """The state of a job, with its ALICE code. There is no SAVED: SAVING ends in DONE, DONE_WARN or an error."""

    WAITING = 5
    ASSIGNED = 6
    STARTED = 7
    RUNNING = 10
    SAVING = 11
    DONE = 15
    DONE_WARN = 16
    ERROR_A = -1
    ERROR_I = -2
    ERROR_E = -3
    ERROR_IB = -4
    ERROR_S = -7
    ERROR_SV = -9
    ERROR_V = -10
    ERROR_VN = -11
    ERROR_VT = -16
    EXPIRED = -12
    KILLED = -14
    ZOMBIE = -15
    FAULTY = 24
    INCORRECT = 25

    @property
    def is_final(self) -> bool:
        """The job has ended: nothing runs for it any more (it may still be resubmitted)."""
        return self in _FINAL

    @property
    def is_error(self) -> bool:
        """The job ended without success: every final state except DONE and DONE_WARN."""
        return self in _FINAL and self not in (JobStatus.DONE, JobStatus.DONE_WARN)

    @property
    def is_running(self) -> bool:
        """The payload's processes exist on a worker node: STARTED, RUNNING or SAVING."""
        return self in (JobStatus.STARTED, JobStatus.RUNNING, JobStatus.SAVING)

    @property
    def is_active(self) -> bool:
        """Queued or held by a pilot: WAITING, ASSIGNED, STARTED, RUNNING or SAVING (not ZOMBIE, not final)."""
        return self in ACTIVE_STATES


class KillReason(enum.IntEnum):
    """Why the pilot ended a job, with its ALICE code. It always reaches central, whichever path ended the job."""

    OK = 0
    OOM = 10  # the JobWrapper itself ran out of memory
    TTL = 20
    KILLED = 30
    OOM_PREEMPTED = 40
    IDLE_CPU = 50
    CORE_DUMP = 60
    DISK_USAGE = 70
    MEMORY_USAGE = 80
    OOM_SYSTEM = 90  # killed by the kernel or the cgroup OOM killer
    SANDBOX_CREATE = 201
    INPUT_FILES = 202
    PACKAGES = 203
    JOBBROKER = 301

    @property
    def text(self) -> str:
        """ALICE's descriptive text of this reason (KILL_REASON_TEXTS)."""
        return KILL_REASON_TEXTS[self]

    def describe(self) -> str:
        """The reason as the trace and `gridpilot job` show it: 'SANDBOX_CREATE (201): <text>'."""
        return f"{self.name} ({int(self)}): {self.text}"


#: The one table of what each kill reason means, in JAliEn's words where its JobAgent or JobWrapper has them (the
#: TTL, KILLED, OOM_PREEMPTED, IDLE_CPU, DISK_USAGE, MEMORY_USAGE and OOM_SYSTEM lines, "Error. Workdir for job could
#: not be created", "Failed to get inputfiles", "Error getting jdl"), else written in their style. The trace, `gridpilot
#: job ID` and the job's JSON (`kill_reason_text`) all take them from here; docs/kill-reasons.md lists them with the
#: states they go with and what produces them.
KILL_REASON_TEXTS: Mapping[KillReason, str] = {
    KillReason.OK: "The job was not killed",
    KillReason.OOM: "The JobWrapper ran out of memory",
    KillReason.TTL: "Killing the job (it was running for longer than its TTL)",
    KillReason.KILLED: "Job was killed",
    KillReason.OOM_PREEMPTED: "Job was preempted due to memory overconsumption",
    KillReason.IDLE_CPU: "CPU time consumed by the payload has been near zero for the whole idle window. Aborting",
    KillReason.CORE_DUMP: "Core dump detected in the work directory. Aborting",
    KillReason.DISK_USAGE: "Killing the job (using more than its WorkDirectorySize of diskspace)",
    KillReason.MEMORY_USAGE: "Killing the job (using more than its MemorySize of memory, with a 20% margin)",
    KillReason.OOM_SYSTEM: "The system killed the job due to OOM (the kernel's OOM killer in the job's memory cgroup)",
    KillReason.SANDBOX_CREATE: "Error. The sandbox for the job could not be created (work directory, cgroups or "
                               "container)",
    KillReason.INPUT_FILES: "Failed to get inputfiles: an input file could not be staged in from any replica",
    KillReason.PACKAGES: "Cannot set up the packages environment",
    KillReason.JOBBROKER: "Error getting jdl: the JDL the JobBroker sent cannot be used by the pilot",
}


_FINAL: FrozenSet[JobStatus] = frozenset(
    {JobStatus.DONE, JobStatus.DONE_WARN, JobStatus.EXPIRED, JobStatus.KILLED, JobStatus.FAULTY,
     JobStatus.INCORRECT}
    | {s for s in JobStatus if s.name.startswith("ERROR_")}
)

#: Held by a pilot, so expected to send heartbeats: these can turn ZOMBIE, and a ZOMBIE returns to one of them.
HELD_STATES: FrozenSet[JobStatus] = frozenset(
    {JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.RUNNING, JobStatus.SAVING}
)

#: Queued or held by a pilot. Any of these can be KILLED.
ACTIVE_STATES: FrozenSet[JobStatus] = frozenset({JobStatus.WAITING}) | HELD_STATES

#: Ended states a user (or central, for a job that never reached RUNNING) may send back to WAITING.
#: INCORRECT is left out: its JDL was rejected and would be rejected again.
RESUBMITTABLE_STATES: FrozenSet[JobStatus] = frozenset(
    s for s in _FINAL if s not in (JobStatus.DONE, JobStatus.DONE_WARN, JobStatus.INCORRECT)
)


def _table() -> Dict[JobStatus, Set[JobStatus]]:
    allowed: Dict[JobStatus, Set[JobStatus]] = {s: set() for s in JobStatus}
    allowed[JobStatus.WAITING] |= {JobStatus.ASSIGNED}
    # A job that never reached RUNNING goes back to WAITING (DESIGN: at most 3 times; central counts).
    allowed[JobStatus.ASSIGNED] |= {JobStatus.STARTED, JobStatus.WAITING}
    # ERROR_E from STARTED: the JobWrapper died without a final state before the payload ran (issue 5).
    allowed[JobStatus.STARTED] |= {JobStatus.RUNNING, JobStatus.ERROR_IB, JobStatus.ERROR_A, JobStatus.ERROR_VN,
                                   JobStatus.ERROR_E, JobStatus.WAITING}
    allowed[JobStatus.RUNNING] |= {JobStatus.SAVING, JobStatus.ERROR_E, JobStatus.ERROR_V, JobStatus.ERROR_VT}
    allowed[JobStatus.SAVING] |= {JobStatus.DONE, JobStatus.DONE_WARN, JobStatus.ERROR_S, JobStatus.ERROR_SV}
    for s in ACTIVE_STATES:
        allowed[s].add(JobStatus.KILLED)
    # A WAITING job sends no heartbeats, so it cannot be found silent: only held states turn ZOMBIE.
    for s in HELD_STATES:
        allowed[s].add(JobStatus.ZOMBIE)
    # ZOMBIE -> EXPIRED when the heartbeats never come back, or back to the state it was in when one does;
    # which one of HELD_STATES that is, check_transition decides from `before_zombie`.
    allowed[JobStatus.ZOMBIE] |= {JobStatus.EXPIRED} | HELD_STATES
    for s in RESUBMITTABLE_STATES:
        allowed[s].add(JobStatus.WAITING)
    return allowed


#: The one transition table: old state -> states it may change to. For ZOMBIE, the return to a held state is
#: further limited to the state the job was in before it turned ZOMBIE (see check_transition).
TRANSITIONS: Mapping[JobStatus, FrozenSet[JobStatus]] = {k: frozenset(v) for k, v in _table().items()}

StatusLike = Union[JobStatus, int]


def _reason(old: JobStatus, new: JobStatus, before_zombie: Optional[JobStatus]) -> Optional[str]:
    """Why old -> new is illegal, or None when it is allowed."""
    if new not in TRANSITIONS[old]:
        return ""
    if old is JobStatus.ZOMBIE and new in HELD_STATES:
        if before_zombie is None:
            return "a ZOMBIE job returns only to the state it was in before, and that state was not given"
        if new is not before_zombie:
            return f"a ZOMBIE job returns only to the state it was in before ({before_zombie.name})"
    return None


def is_allowed(old: StatusLike, new: StatusLike, *, before_zombie: Optional[StatusLike] = None) -> bool:
    """Whether the table allows old -> new (for old = ZOMBIE, `before_zombie` is the state it came from)."""
    before = None if before_zombie is None else JobStatus(before_zombie)
    return _reason(JobStatus(old), JobStatus(new), before) is None


def check_transition(old: StatusLike, new: StatusLike, *, before_zombie: Optional[StatusLike] = None) -> None:
    """Raise IllegalTransition, naming both states, unless the table allows old -> new.

    A ZOMBIE job may go back to the state it was in when its heartbeats stopped; pass that state as
    `before_zombie` (central keeps it). Without it, ZOMBIE may only become EXPIRED. Codes may be given as ints.
    """
    o, n = JobStatus(old), JobStatus(new)
    reason = _reason(o, n, None if before_zombie is None else JobStatus(before_zombie))
    if reason is not None:
        raise IllegalTransition(o, n, reason)


def allowed_next(old: StatusLike, *, before_zombie: Optional[StatusLike] = None) -> FrozenSet[JobStatus]:
    """Every state old may change to (for ZOMBIE, the return target is limited by `before_zombie`)."""
    o = JobStatus(old)
    before = None if before_zombie is None else JobStatus(before_zombie)
    return frozenset(n for n in TRANSITIONS[o] if _reason(o, n, before) is None)


#: How a pilot's message starts when it gives a job back to the queue because no container works for it on its node
#: (the site requires one). Central keeps the message in the job's trace, and `gridpilot why` reads it back there:
#: the broker cannot see it coming (a slot does not say which images it can run), so the pilot's word is the answer.
CONTAINER_GIVE_BACK = "no container works here for this job"

"""How a job ends: the final state from what happened to it, the states central must be told, in order, to accept
it, and what is said of a JobWrapper that died without telling the final state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from gridpilot.pilot.rules import Breach
from gridpilot.states import JobStatus, KillReason, is_allowed

#: Where a job ends when its wrapper dies without telling the final state (issue 5). Where the shared transition
#: table (states.py) does not allow one of these from the job's state, final_path() picks the legal fallback.
LOST_WRAPPER = {
    JobStatus.STARTED: JobStatus.ERROR_E,
    JobStatus.RUNNING: JobStatus.ERROR_E,
    JobStatus.SAVING: JobStatus.ERROR_SV,
}


def outcome(current: Optional[JobStatus], *, gave_back: bool, breach: Optional[Breach], killed_by_central: bool,
            final: Optional[Dict[str, Any]], stop_requested: bool) -> Tuple[JobStatus, KillReason, Optional[int]]:
    """The job's final state, kill reason and exit code. `current`: its state as last reported; `gave_back`: it goes
    back to the queue (the slot ended before the payload ran); `breach`: the rule the payload broke; `final`: the
    wrapper's result message (None: it died without one)."""
    exit_code = None
    if gave_back:
        state, reason = JobStatus.WAITING, KillReason.OK
    elif breach is not None:
        state, reason = breach.state, breach.reason
    elif killed_by_central:
        state, reason = JobStatus.KILLED, KillReason.KILLED
    elif final is not None:
        state = JobStatus[final["state"]]
        reason = KillReason[final.get("kill_reason") or "OK"]
        exit_code = final.get("exit_code")
    else:
        state = LOST_WRAPPER.get(current, JobStatus.ERROR_A) if current else JobStatus.ERROR_A
        # Gone before it said STARTED, its first word: the wrapper never came up in its sandbox (the container
        # runtime failed to start it, the image cannot run it), which is the sandbox's failure, not the job's.
        reason = KillReason.SANDBOX_CREATE if current is None else KillReason.OK
    if final is not None and exit_code is None:
        exit_code = final.get("exit_code")
    if stop_requested and state is JobStatus.ERROR_E and reason is KillReason.OK:
        # The payload failed because the pilot stopped it (the slot ended), not on its own: say so.
        reason = KillReason.KILLED
    return state, reason, exit_code


def final_path(current: Optional[JobStatus], final: JobStatus) -> List[JobStatus]:
    """The states to report, in order, so that central accepts the job's end from `current` (None: ASSIGNED).

    Central refuses an illegal transition with 409, and a refused final state leaves the job held until the
    sweeper finds it silent, so the agent never sends one: a job that ends before the wrapper said STARTED is
    reported STARTED first; an end the table does not allow from where the job is (ERROR_E from STARTED, say)
    becomes ERROR_A, the state for "the pilot could not run it".
    """
    cur = current or JobStatus.ASSIGNED
    for target in (final, JobStatus.ERROR_A):
        if is_allowed(cur, target):
            return [target]
        if cur is JobStatus.ASSIGNED and is_allowed(JobStatus.STARTED, target):
            return [JobStatus.STARTED, target]
    return [final]  # nothing legal (SAVING -> ERROR_A, say): let central refuse it and say why


def log_tail(path: Path, lines: int = 5, max_bytes: int = 4096) -> str:
    """The last few non-empty lines of a log file, joined with ' | ' ('' when it is missing or empty)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-1000:]

"""A user's resubmission: `gridpilot resubmit ID`, POST /api/v1/jobs/{id}/resubmit (docs/central-api.md,
"Resubmission"). Central's own resubmission of a job that ended before RUNNING is jobs.resubmit_after_failure.

A new attempt of a job that ended without success: back to WAITING with the next resubmission counter, its trace
kept and added to, at most CentralSettings.max_user_resubmits times per job. As JAliEn's resubmit does, the files
the ended attempts registered leave the catalogue, so that the new attempt can register its own at the same LFNs
(a second log_archive.zip would otherwise be refused as a conflict). JAliEn also resubmits jobs still queued or
running (killing them) and DONE ones, without a limit; gridpilot refuses those (kill first), so that one job id
never has two attempts alive at once, and a job that succeeded keeps its outputs.
"""

from __future__ import annotations

from typing import Any, Dict

from sqlalchemy import update
from sqlalchemy.engine import Connection

from gridpilot.central import auth, catalogue, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.jobs import add_trace, locked_job, resubmit_values
from gridpilot.central.problems import conflict
from gridpilot.central.settings import DEFAULT_MAX_USER_RESUBMITS
from gridpilot.states import RESUBMITTABLE_STATES, JobStatus

JOBS = schema.jobs
MAX_TRACED_FILES = catalogue.MAX_TRACED_FILES


def user_resubmissions(row: Any) -> int:
    """How many times the job's owner or an admin sent it back to WAITING: its attempts beyond the first that
    central did not make itself (resubmit_after_failure counts those in auto_resubmits)."""
    return int(row.resubmission) - int(row.auto_resubmits)


def resubmit(db: Database, p: Principal, job_id: int, now: float,
             max_user: int = DEFAULT_MAX_USER_RESUBMITS) -> Dict[str, Any]:
    """Send an ended job back to WAITING (states.RESUBMITTABLE_STATES: every ERROR_*, EXPIRED, KILLED, FAULTY).
    A job still queued, held or ZOMBIE (its pilot may still run it), one that succeeded, and an INCORRECT one (its
    JDL would be refused again) get 409 not_resubmittable naming its state; one resubmitted `max_user` times
    already, 409 resubmit_limit. The owner or an admin only, another user's job answered as if absent."""
    auth.require_role(p, "user", "admin", action="resubmit jobs")
    with db.write() as conn:
        row = auth.found_or_absent(p, locked_job(conn, db, job_id), job_id)
        return resubmit_row(conn, p, row, now, max_user)


def resubmit_row(conn: Connection, p: Principal, row: Any, now: float, max_user: int) -> Dict[str, Any]:
    """resubmit() of a job row the caller read (locked) in its transaction `conn`: the checks come before any
    write, so a refusal (ApiError) leaves the transaction as it was, and a masterjob's resubmission
    (splitting.resubmit_master) goes on with its next subjob in the same transaction."""
    job_id = int(row.id)
    auth.check(auth.can_control(p, row), p, "resubmit", job_id)
    state = JobStatus(row.state)
    if state not in RESUBMITTABLE_STATES:
        raise conflict(f"job {job_id} is {state.name}: only a job that ended without success (ERROR_*, EXPIRED, "
                       "KILLED, FAULTY) can be resubmitted", "not_resubmittable", state=state.name)
    used = user_resubmissions(row)
    if used >= max_user:
        raise conflict(f"job {job_id} was already resubmitted {used} times, the most this central allows "
                       f"({max_user})", "resubmit_limit", state=state.name, resubmissions=used, limit=max_user)
    values = resubmit_values(row, now, False)
    conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values))
    by = p.subject if row.user == p.subject else f"{p.subject} for {row.user}"
    add_trace(conn, job_id, now, "state", f"WAITING: resubmitted by {by} from {state.name} "
                                       f"({used + 1} of {max_user}; attempt {values['resubmission'] + 1})")
    removed = catalogue.forget_job_files(conn, job_id)
    catalogue.trace_removed_files(conn, job_id, now, removed, "Resubmit")
    return {"id": job_id, "state": "WAITING", "previous_state": state.name,
            "resubmission": values["resubmission"], "user_resubmissions": used + 1, "limit": max_user,
            "removed_files": len(removed)}


__all__ = ["MAX_TRACED_FILES", "resubmit", "resubmit_row", "user_resubmissions"]

"""The running job's control poll: whether central wants it ended, asked every few seconds by its JobAgent
(kill_poll_interval) so that a user's kill takes effect within seconds, not at the next heartbeat (a minute).

The answer has the heartbeats' shape (reports.heartbeats: `commands` and `rejected`), so the agent reads both the
same way. It writes nothing and takes no lock. Besides a kill, its commands carry the job's open spy requests
(central/spy.py), which the agent answers at once: a second read in the same transaction, an index range on a
table of a few rows, measured at 0.015 ms of a median 0.8 ms poll on SQLite, 0.06 to 0.1 ms of 1.0 ms on PostgreSQL
(benches/bench_users.py, docs/central-api.md).

Cost, since every running job asks: one read of one row through the primary key (the columns the heartbeat checks,
no JDL, no resources), in a read transaction: no write lock on SQLite, no row lock on PostgreSQL, nothing for the
sweeper or the heartbeats to wait on. The HTTP request, not the query, is most of it: 0.7 ms from the client and
back on one connection (benches/bench_kill.py, SQLite, docs/benchmarks.md). At 100,000 running jobs and the
default 3 s that is ~33,000 polls a second, some 20 CPU-seconds a second of `central serve` at that price: several
serving processes (PostgreSQL). A central short of that raises kill_poll_interval (10 s: a third of it), or sets 0
(the kill is then learned at the next heartbeat, as before); one poll per node for all its jobs would divide it by
the jobs per node, and is not done yet.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping

from sqlalchemy import bindparam, select

from gridpilot.central import auth, bounds, schema, spy
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.jobs import query_int
from gridpilot.states import JobStatus

JOBS = schema.jobs

#: Built once: the same statement text for every poll, so SQLAlchemy's cache and the server's plan are reused.
_SELECT = select(JOBS.c.id, JOBS.c.user, JOBS.c.state, JOBS.c.resubmission, JOBS.c.agent, JOBS.c.site, JOBS.c.ce,
                 JOBS.c.kill_requested).where(JOBS.c.id == bindparam("job_id"))


def control(db: Database, p: Principal, job_id: int, query: Mapping[str, str]) -> Dict[str, Any]:
    """{"commands": [...], "rejected": [...]} for one run (`resubmission`) of one job, as a heartbeat answers."""
    auth.require_role(p, "agent", "tower", "ce", "admin", action="poll job controls")
    raw = query.get("resubmission")
    if raw is None or raw == "":
        raise bounds.bad_field("resubmission", "query parameter resubmission is required: the run of the job the "
                                               "poll is for")
    rs = query_int(query, "resubmission", 0, 0, bounds.MAX_INT4)
    with db.read() as conn:
        row = conn.execute(_SELECT, {"job_id": job_id}).first()
        # What the job's owner asked its pilot to show (spy.py): a second read, of an index range on a small table.
        spies = (spy.pending(conn, job_id, rs, time.time()) if row is not None and rs == row.resubmission
                 and JobStatus(row.state) in spy.SPY_STATES and not row.kill_requested else [])
    commands: List[Dict[str, Any]] = []
    rejected: List[Dict[str, Any]] = []
    if row is None or not auth.heartbeat_check(p)(row):
        # Answered like the heartbeat: a job the caller may not see is as absent (no 403 telling it exists).
        code = "job_not_found" if row is None or not auth.can_view(p, row) else "forbidden"
        rejected.append({"job_id": job_id, "code": code})
        return {"commands": commands, "rejected": rejected}
    state = JobStatus(row.state)
    if rs != row.resubmission:
        rejected.append({"job_id": job_id, "code": "stale_resubmission"})
        commands.append({"job_id": job_id, "command": "kill", "reason": "stale resubmission"})
    elif state.is_final or state is JobStatus.WAITING:
        commands.append({"job_id": job_id, "command": "kill", "reason": f"job is {state.name}"})
    elif row.kill_requested:
        commands.append({"job_id": job_id, "command": "kill", "reason": "kill requested"})
    else:
        commands.extend(spies)
    return {"commands": commands, "rejected": rejected}

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
serving processes (PostgreSQL). Central therefore paces the polls: app.py adds pacing.py's `poll_after` to every
answer, and the pilots poll no more often than it says (docs/scaling.md).

The bulk poll (`POST /api/v1/control`, control_many) asks the same for up to MAX_CONTROL runs at once: a JobRunner
polls for all of its jobs in one request, which divides the polls by the jobs per pilot (docs/scaling.md). Each run
is judged exactly as the per-job poll judges it (one read of the rows by primary key, one of their spy requests);
the per-job GET stays for pilots older than the bulk poll.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping

from sqlalchemy import bindparam, select

from gridpilot.central import auth, bounds, schema, spy
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.jobs import int_field, query_int
from gridpilot.states import JobStatus

JOBS = schema.jobs

#: Runs one bulk poll may ask about: a pilot's jobs are a few dozen at most; a tower's held jobs are polled in pages.
MAX_CONTROL = 1000

#: Built once: the same statement text for every poll, so SQLAlchemy's cache and the server's plan are reused.
_SELECT = select(JOBS.c.id, JOBS.c.user, JOBS.c.state, JOBS.c.resubmission, JOBS.c.agent, JOBS.c.site, JOBS.c.ce,
                 JOBS.c.kill_requested).where(JOBS.c.id == bindparam("job_id"))
_SELECT_MANY = select(JOBS.c.id, JOBS.c.user, JOBS.c.state, JOBS.c.resubmission, JOBS.c.agent, JOBS.c.site,
                      JOBS.c.ce, JOBS.c.kill_requested).where(JOBS.c.id.in_(bindparam("ids", expanding=True)))


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
        spies = spy.pending(conn, job_id, rs, time.time()) if _wants_spies(row, rs) else []
    commands: List[Dict[str, Any]] = []
    rejected: List[Dict[str, Any]] = []
    _judge(p, job_id, rs, row, spies, commands, rejected)
    return {"commands": commands, "rejected": rejected}


def _wants_spies(row: Any, rs: int) -> bool:
    """Whether this run's open spy requests go with the answer: it is the job's current run, still running."""
    return (row is not None and rs == row.resubmission and JobStatus(row.state) in spy.SPY_STATES
            and not row.kill_requested)


def _judge(p: Principal, job_id: int, rs: int, row: Any, spies: List[Dict[str, Any]],
           commands: List[Dict[str, Any]], rejected: List[Dict[str, Any]]) -> None:
    """What central answers for one run: appended to `commands` and `rejected`."""
    if row is None or not auth.heartbeat_check(p)(row):
        # Answered like the heartbeat: a job the caller may not see is as absent (no 403 telling it exists).
        code = "job_not_found" if row is None or not auth.can_view(p, row) else "forbidden"
        rejected.append({"job_id": job_id, "code": code})
        return
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


def control_many(db: Database, p: Principal, body: Mapping[str, Any], now: float) -> Dict[str, Any]:
    """POST /control: {"commands": [...], "rejected": [...]} for many runs ({"jobs": [{job_id, resubmission}]}),
    each answered as control() answers it, in job id order. A job named twice is answered once, for the run named
    last (as the heartbeats take a job's last item)."""
    auth.require_role(p, "agent", "tower", "ce", "admin", action="poll job controls")
    items = body.get("jobs")
    if not isinstance(items, list):
        raise bounds.bad_field("jobs", "field 'jobs' must be a list of {job_id, resubmission}")
    if len(items) > MAX_CONTROL:
        raise bounds.bad_field("jobs", f"jobs: at most {MAX_CONTROL} per control poll, got {len(items)}")
    runs: Dict[int, int] = {}
    for i, it in enumerate(items):
        at = f"jobs[{i}]"
        if not isinstance(it, dict):
            raise bounds.bad_field(at, f"{at} must be an object {{job_id, resubmission}}")
        jid = int_field(it.get("job_id"), f"{at}.job_id", lo=1, hi=bounds.MAX_ID)
        runs[jid] = int_field(it.get("resubmission"), f"{at}.resubmission", lo=0, hi=bounds.MAX_INT4)
    commands: List[Dict[str, Any]] = []
    rejected: List[Dict[str, Any]] = []
    if not runs:
        return {"commands": commands, "rejected": rejected}
    ids = sorted(runs)
    with db.read() as conn:
        rows = {r.id: r for r in conn.execute(_SELECT_MANY, {"ids": ids})}
        # One read of the spy requests of every run that gets them (spy.pending_for), as the heartbeats do.
        spying = {jid: runs[jid] for jid in ids if _wants_spies(rows.get(jid), runs[jid])}
        spies: Dict[int, List[Dict[str, Any]]] = {}
        for cmd in spy.pending_for(conn, spying, now):
            spies.setdefault(cmd["job_id"], []).append(cmd)
    for jid in ids:
        _judge(p, jid, runs[jid], rows.get(jid), spies.get(jid, []), commands, rejected)
    return {"commands": commands, "rejected": rejected}

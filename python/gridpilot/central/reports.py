"""The pilot's side of the queue: state reports (the transition table, resubmission) and bulk heartbeats.

A report of the state the job is already in is a no-op, so the pilot may repeat one it is unsure arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import orjson
from sqlalchemy import ARRAY, JSON, BigInteger, Text, bindparam, cast, column, func, literal_column, select, update
from sqlalchemy.engine import Connection

from gridpilot.central import auth, bounds, catalogue, nodes, schema, spy
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.jobs import (
    add_state_change,
    int_field,
    locked_job,
    parse_kill_reason,
    parse_state,
    resubmit_after_failure,
    revoke_job_token,
    to_json,
)
from gridpilot.central.problems import conflict
from gridpilot.central.settings import MAX_AUTO_RESUBMITS
from gridpilot.errors import IllegalTransition
from gridpilot.states import HELD_STATES, JobStatus, KillReason, check_transition

JOBS = schema.jobs

#: Ends that mean "the job could not start here": retried elsewhere when the job never reached RUNNING.
AUTO_RESUBMIT_STATES = frozenset({JobStatus.ERROR_A, JobStatus.ERROR_IB})
MAX_HEARTBEATS = 10_000
MAX_MESSAGE = 4096


def _state_detail(new: JobStatus, kill_reason: Optional[KillReason], exit_code: Optional[int],
                  message: Optional[str], by: str, always: bool = False) -> Optional[str]:
    """What a report says beyond ALICE's "Job state transition" sentence, for a line of its own; None when it says
    nothing more (a plain STARTED, RUNNING or SAVING from the job's own pilot)."""
    parts = [f"{new.name}: reported by {by}"]
    if kill_reason is not None and kill_reason is not KillReason.OK:
        parts.append(f"kill reason {kill_reason.name}")
    if exit_code is not None:
        parts.append(f"exit code {exit_code}")
    if message:
        parts.append(message)
    return ", ".join(parts) if len(parts) > 1 or always else None


@dataclass(frozen=True)
class StateReport:
    """A state report's fields, checked (parse_state_report): what POST /jobs/{id}/status takes, and each item of
    POST /reports that changes a state."""

    state: JobStatus
    kill_reason: Optional[KillReason] = None
    exit_code: Optional[int] = None
    resources: Optional[Dict[str, Any]] = None
    message: Optional[str] = None
    at: Optional[float] = None


def parse_state_report(body: Mapping[str, Any], prefix: str = "") -> StateReport:
    """The state report in `body`; a 400 naming the first bad field, `prefix` before its name (`reports[3].`)."""
    new = parse_state(body.get("state"), f"{prefix}state", f"{prefix}state")
    kill_reason = (None if body.get("kill_reason") is None
                   else parse_kill_reason(body["kill_reason"], field=f"{prefix}kill_reason"))
    exit_code = None if body.get("exit_code") is None else int_field(body["exit_code"], f"{prefix}exit_code",
                                                                  lo=-(1 << 31), hi=(1 << 31) - 1)
    resources = body.get("resources")
    if resources is not None:
        resources = bounds.sample_fields(bounds.json_object(resources, f"{prefix}resources"), f"{prefix}resources")
    message = body.get("message")
    if message is not None:
        # Longer is cut rather than refused: the report matters more than the end of its message.
        message = bounds.text(message[:MAX_MESSAGE] if isinstance(message, str) else message, f"{prefix}message",
                              MAX_MESSAGE, empty=True, what=f"field '{prefix}message'") or None
    at = body.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at)):
        raise bounds.bad_field(f"{prefix}at", f"field '{prefix}at' must be a number: the time of the state change, "
                                              "in seconds since the epoch")
    return StateReport(new, kill_reason, exit_code, resources, message, None if at is None else float(at))


def check_attempt(row: Any, job_id: int, resubmission: int) -> None:
    """409 stale_resubmission unless the report is for the job's current attempt."""
    if resubmission != row.resubmission:
        raise conflict(f"stale report: job {job_id} is at resubmission {row.resubmission}, the report is for "
                       f"{resubmission}", "stale_resubmission", resubmission=row.resubmission)


def set_status(
    db: Database, p: Principal, job_id: int, body: Mapping[str, Any], now: float, *,
    max_auto_resubmits: int = MAX_AUTO_RESUBMITS, node_policy: Optional[nodes.Policy] = None,
) -> Dict[str, Any]:
    """A reporter's state change (POST /jobs/{id}/status): apply_state_report in a transaction of its own."""
    auth.require_role(p, "agent", "tower", "job", "admin", action="report job states")
    # The state first, and whether the role may set it: a 403 before any other field is looked at.
    auth.check_settable(p, parse_state(body.get("state")))
    resub = int_field(body.get("resubmission"), "resubmission", lo=0, hi=bounds.MAX_INT4)
    report = parse_state_report(body)
    with db.write() as conn:
        row = auth.found_or_absent(p, locked_job(conn, db, job_id), job_id)
        auth.check(auth.can_report(p, row), p, "report the state of", job_id)
        check_attempt(row, job_id, resub)
        return apply_state_report(conn, db, p, row, report, now, max_auto_resubmits=max_auto_resubmits,
                                  node_policy=node_policy)


def apply_state_report(
    conn: Connection, db: Database, p: Principal, row: Any, report: StateReport, now: float, *,
    max_auto_resubmits: int = MAX_AUTO_RESUBMITS, node_policy: Optional[nodes.Policy] = None,
) -> Dict[str, Any]:
    """Apply a state report to the job `row` (locked in `conn`, the caller's transaction, and checked: the caller
    may report on it, in this attempt), within the transition table and the states its role may set
    (auth.SETTABLE_STATES, checked by the caller).

    Two rules the table alone does not make: an ended job stays ended (only central sends one back to WAITING,
    resubmit_after_failure), and a kill is final: a job whose kill was requested is never given back, it ends KILLED
    (or in the error state its pilot reported first), never DONE: a DONE reported after the kill request is taken
    as KILLED.
    """
    job_id = int(row.id)
    new, kill_reason, exit_code = report.state, report.kill_reason, report.exit_code
    resources, message, at = report.resources, report.message, report.at
    cur = JobStatus(row.state)
    if cur.is_final and new is not cur:
        # Whatever the table allows after an end (WAITING, for a resubmission) is central's to do, not a
        # reporter's: a pilot must not bring back a job that was killed, or that central has given up on.
        raise conflict(f"job {job_id} has ended ({cur.name}); a report cannot change that", "already_final",
                       state=cur.name)
    values: Dict[str, Any] = {"updated": now}
    if resources is not None:
        values["resources"] = to_json(resources)
    if exit_code is not None:
        values["exit_code"] = exit_code
    if kill_reason is not None:
        values["kill_reason"] = int(kill_reason)
    if message:
        values["message"] = message
    if cur is JobStatus.ZOMBIE and row.before_zombie is not None:
        # A report is a sign of life as good as a heartbeat: the job is back where it was.
        cur = JobStatus(row.before_zombie)
        values.update(state=int(cur), before_zombie=None, heartbeat=now, state_since=now)
        add_state_change(conn, job_id, now, JobStatus.ZOMBIE, cur,
                         f"{cur.name}: heard from again (a state report) after ZOMBIE")
    if new is cur:
        if cur in HELD_STATES:
            values["heartbeat"] = now
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values))
        return {"id": job_id, "state": cur.name, "state_code": int(cur), "resubmission": row.resubmission}
    try:
        check_transition(cur, new, before_zombie=row.before_zombie)
    except IllegalTransition as e:
        raise conflict(str(e), "illegal_transition", state=cur.name) from None

    by = p.describe()
    if new is JobStatus.WAITING and row.kill_requested:
        # The pilot gives back a job whose kill was requested: the job stops here, as the kill asked, and
        # does not go back to the queue to run again.
        new, kill_reason = JobStatus.KILLED, KillReason.KILLED
        why = f"given back by {by} in {cur.name}" + (f" ({message})" if message else "")
        message = f"its kill was requested; {why}"
        values.update(kill_reason=int(kill_reason), message=message)
    elif new in (JobStatus.DONE, JobStatus.DONE_WARN) and row.kill_requested:
        # The payload ended well just as the kill was requested, before its pilot learned of the kill: a kill,
        # once accepted (202), is what the user gets, so the job never ends DONE after it. (ALICE takes the
        # pilot's DONE; a user who killed a job then finds it DONE, its outputs registered.)
        message = f"its kill was requested; {by} reported {new.name} after it"
        new, kill_reason = JobStatus.KILLED, KillReason.KILLED
        values.update(kill_reason=int(kill_reason), message=message)
    elif new is JobStatus.WAITING:
        # The pilot gives the job back before running it (e.g. it could not set up the sandbox).
        if row.auto_resubmits >= max_auto_resubmits:
            raise conflict(f"job {job_id} already went back to WAITING {row.auto_resubmits} times (at most "
                           f"{max_auto_resubmits}); report an error state instead", "resubmit_limit")
        revoke_job_token(conn, row, "given back")
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values))
        why = f"{by} gave it back in {cur.name}" + (f": {message}" if message else "")
        resubmit_after_failure(conn, row, now, why, max_auto_resubmits)
        return {"id": job_id, "state": "WAITING", "state_code": int(JobStatus.WAITING),
                "resubmission": row.resubmission + 1}

    # The state changed when the reporter says it did (a report held back through an outage arrives late), but
    # never after now nor before the state it follows (so never before the job was assigned to this attempt):
    # a worker node's clock may be off, and a reporter must not rewrite the job's history.
    since = now if at is None else min(now, max(float(at), float(row.state_since or 0)))
    values.update(state=int(new), state_since=since)
    if new in HELD_STATES:
        values["heartbeat"] = now
    if new is JobStatus.RUNNING:
        values["reached_running"] = True
    if new is JobStatus.KILLED and kill_reason is None:
        values["kill_reason"] = int(KillReason.KILLED)
    conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(**values))
    # The line itself is dated now, like every line, so the trace has one clock and one order; the time the
    # change took place, as accepted above, goes beside it.
    detail = _state_detail(new, kill_reason, exit_code, message, by, always=p.role == "admin")
    add_state_change(conn, job_id, now, cur, new, detail, reported_ts=None if at is None else since)
    state: JobStatus = new
    resubmission = row.resubmission
    if new.is_final:
        revoke_job_token(conn, row, f"ended {new.name}")
        if row.kill_requested:
            # Nothing is uploaded after a kill: what slipped into the catalogue after the request (registered
            # before register_file refused it, or by a race) goes; what came before stays.
            catalogue.forget_files_after_kill(conn, job_id, now)
        # A sandbox that could not be made, a kernel OOM kill: counted against the node (nodeBad). Not for a
        # tower's job: the node its site map named (if any) is not where the job ran, which the ARC CE chose, and
        # a tower whose one "node" turned nodeBad would get no work for its whole site.
        if p.role != "tower":
            nodes.note_job_end(conn, db, row, kill_reason, by, now, node_policy or nodes.Policy())
        if new in AUTO_RESUBMIT_STATES and resubmit_after_failure(
            conn, row, now, f"it ended {new.name} before reaching RUNNING", max_auto_resubmits
        ):
            state, resubmission = JobStatus.WAITING, row.resubmission + 1
    return {"id": job_id, "state": state.name, "state_code": int(state), "resubmission": resubmission}


@dataclass
class HeartbeatResult:
    commands: List[Dict[str, Any]]
    rejected: List[Dict[str, Any]]
    updated: int


def heartbeats(db: Database, p: Principal, body: Mapping[str, Any], now: float) -> HeartbeatResult:
    """Record the latest sample of many jobs in one transaction; answer the commands the pilot must carry out.

    Items the caller may not report on, or for another attempt, are answered in `rejected` and change nothing.
    A job central already considers ended gets a kill command: nothing should still run for it.
    """
    auth.require_role(p, "agent", "tower", "ce", "admin", action="send heartbeats")
    items = body.get("heartbeats")
    if not isinstance(items, list):
        raise bounds.bad_field("heartbeats", "field 'heartbeats' must be a list of {job_id, resubmission, sample}")
    if len(items) > MAX_HEARTBEATS:
        raise bounds.bad_field("heartbeats", f"at most {MAX_HEARTBEATS} heartbeats per request, got {len(items)}")
    parsed: Dict[int, Tuple[int, Optional[Dict[str, Any]]]] = {}
    for i, it in enumerate(items):
        at = f"heartbeats[{i}]"
        if not isinstance(it, dict):
            raise bounds.bad_field(at, f"{at} must be an object")
        jid = int_field(it.get("job_id"), f"{at}.job_id", lo=1, hi=bounds.MAX_ID)
        rs = int_field(it.get("resubmission"), f"{at}.resubmission", lo=0, hi=bounds.MAX_INT4)
        sample = it.get("sample")
        if sample is not None:
            sample = bounds.sample_fields(bounds.json_object(sample, f"{at}.sample"), f"{at}.sample")
        parsed[jid] = (rs, sample)
    commands: List[Dict[str, Any]] = []
    rejected: List[Dict[str, Any]] = []
    if not parsed:
        return HeartbeatResult(commands, rejected, 0)

    ids = sorted(parsed)
    may_report = auth.heartbeat_check(p)
    bulk: List[Tuple[int, int, Optional[Dict[str, Any]]]] = []
    revived = 0
    # A heartbeat lost in a database crash is replaced by the next one a minute later: no need to wait for disk.
    with db.write(durable=False) as conn:
        # Locked (in id order, so two bulk requests over the same jobs cannot deadlock) until the update below: a
        # job cannot end between the check and the update. SQLite's write lock covers the whole database anyway.
        rows = {r.id: r for r in conn.execute(_HB_SELECT_PG if db.is_postgres else _HB_SELECT,
                                              {"ids": ids, "now": now})}
        for jid in ids:
            rs, sample = parsed[jid]
            row = rows.get(jid)
            if row is None:
                rejected.append({"job_id": jid, "code": "job_not_found"})
                continue
            if not may_report(row):
                # A job the caller may not even see is answered as if absent, like GET /jobs/{id}.
                rejected.append({"job_id": jid, "code": "forbidden" if auth.can_view(p, row) else "job_not_found"})
                continue
            state = JobStatus(row.state)
            if rs != row.resubmission:
                # The pilot runs an attempt central has given up on (the job was resubmitted): stop it.
                rejected.append({"job_id": jid, "code": "stale_resubmission"})
                commands.append({"job_id": jid, "command": "kill", "reason": "stale resubmission"})
                continue
            if state.is_final or state is JobStatus.WAITING:
                commands.append({"job_id": jid, "command": "kill", "reason": f"job is {state.name}"})
                continue
            if state is JobStatus.ZOMBIE:
                back = JobStatus(row.before_zombie) if row.before_zombie is not None else JobStatus.RUNNING
                values: Dict[str, Any] = {"state": int(back), "before_zombie": None, "heartbeat": now,
                                          "updated": now, "state_since": now}
                if sample is not None:
                    values["resources"] = to_json(sample)
                res = conn.execute(update(JOBS).where(JOBS.c.id == jid, JOBS.c.state == int(JobStatus.ZOMBIE))
                                   .values(**values))
                if res.rowcount:
                    add_state_change(conn, jid, now, JobStatus.ZOMBIE, back, f"{back.name}: heartbeat again after ZOMBIE")
                    revived += 1
            else:
                bulk.append((jid, rs, sample))
            if row.kill_requested:
                commands.append({"job_id": jid, "command": "kill", "reason": "kill requested"})
        updated = _record_heartbeats(conn, db, bulk, now) if bulk else 0
        # The jobs' open spy requests (spy.py), for an agent that polls no control endpoint.
        killed = {c["job_id"] for c in commands}
        commands.extend(spy.pending_for(conn, {jid: rs for jid, rs, _ in bulk
                                               if jid not in killed and rows[jid].spy_open}, now))
    return HeartbeatResult(commands, rejected, updated + revived)


_SPY = schema.spy_requests
# Whether the job has an open spy request, read with the row: the requests themselves (spy.pending_for) are then
# read only for the jobs that have one, instead of a statement per heartbeat request that finds none almost always
# (it was half of a one-job heartbeat's time in the database layer).
_HB_SPY_OPEN = (select(_SPY.c.id).where(_SPY.c.job_id == JOBS.c.id, _SPY.c.answered.is_(None),
                                        _SPY.c.expires >= bindparam("now"))
                .exists().label("spy_open"))
_HB_COLUMNS = (JOBS.c.id, JOBS.c.user, JOBS.c.state, JOBS.c.before_zombie, JOBS.c.resubmission, JOBS.c.agent,
               JOBS.c.site, JOBS.c.ce, JOBS.c.kill_requested, _HB_SPY_OPEN)
_HB_SELECT = select(*_HB_COLUMNS).where(JOBS.c.id.in_(bindparam("ids", expanding=True)))
# PostgreSQL: one array parameter instead of an IN list, so the text is the same for every batch size and the
# driver and server reuse one prepared statement.
_HB_SELECT_PG = (select(*_HB_COLUMNS).where(JOBS.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))))
                 .order_by(JOBS.c.id).with_for_update())
# Written into the SQL text rather than bound: an IN list of bound values cannot be used with executemany.
_IS_HELD = JOBS.c.state.in_([literal_column(str(int(s))) for s in sorted(HELD_STATES)])
_HB_SQLITE = update(JOBS).where(
    JOBS.c.id == bindparam("b_id"), JOBS.c.resubmission == bindparam("b_rs"), _IS_HELD
).values(heartbeat=bindparam("b_now"), updated=bindparam("b_now"),
         resources=func.coalesce(bindparam("b_res", type_=Text), JOBS.c.resources))


_HB_PG: List[Any] = []


def _hb_postgres() -> Any:
    """UPDATE jobs ... FROM json_to_recordset(:batch): the whole batch as one JSON parameter, so the statement text
    is the same for every batch (compiled and prepared once), costs one round trip, and the samples are encoded
    once by orjson instead of escaped one by one as array elements.

    It joins on the primary key only. The rows were locked and checked by the SELECT before it (heartbeats), so
    no state condition is needed here, and one would invite the planner to read every held job through the state
    index (a hash join over 20,000 rows instead of 100 key lookups, seen with statistics a little out of date).
    """
    if not _HB_PG:
        hb = func.json_to_recordset(cast(bindparam("hb_batch", type_=Text), JSON)).table_valued(
            column("id", BigInteger), column("res", JSON)
        ).render_derived(name="hb", with_types=True)
        _HB_PG.append(update(JOBS).where(JOBS.c.id == hb.c.id).values(
            heartbeat=bindparam("hb_now"), updated=bindparam("hb_now"),
            resources=func.coalesce(cast(hb.c.res, Text), JOBS.c.resources)))
    return _HB_PG[0]


def _record_heartbeats(
    conn: Connection, db: Database, bulk: List[Tuple[int, int, Optional[Dict[str, Any]]]], now: float
) -> int:
    """Set the heartbeat time (and the sample, when there is one) of held jobs, in one statement on PostgreSQL.

    PostgreSQL: one UPDATE for the whole batch (see _hb_postgres) instead of a statement per job. SQLite runs in
    this process, where executemany of one prepared statement is as cheap.
    """
    if db.is_postgres:
        batch = orjson.dumps([{"id": i, "res": res} if res is not None else {"id": i}
                              for i, _, res in bulk]).decode()
        return int(conn.execute(_hb_postgres(), {"hb_batch": batch, "hb_now": now}).rowcount)
    conn.execute(_HB_SQLITE, [{"b_id": i, "b_rs": rs, "b_res": None if res is None else to_json(res), "b_now": now}
                              for i, rs, res in bulk])
    return len(bulk)

"""Queue operations: submit, get, list, kill, match, status, heartbeats, traces, and resubmission.

Each operation is one database transaction and raises problems.ApiError for anything the caller did wrong, so
nothing is half done. Writers that read a job before changing it lock its row (`FOR UPDATE` on PostgreSQL; the
whole database is the lock on SQLite, see db.py). The job state machine is gridpilot.states; central adds two
rules of its own: a job that ends before reaching RUNNING goes back to WAITING (at most MAX_AUTO_RESUBMITS times,
the trace saying why), and a report of the state the job is already in is a no-op, so the pilot may retry it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import orjson
from sqlalchemy import (
    ARRAY, JSON, BigInteger, Integer, Text, bindparam, cast, column, func, literal_column, select, update,
)
from sqlalchemy.engine import Connection, Row

from gridpilot.central import auth, broker, schema, tokens
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.problems import ApiError, bad_request, conflict, forbidden, not_found
from gridpilot.central.settings import MAX_AUTO_RESUBMITS
from gridpilot.errors import IllegalTransition, JdlError
from gridpilot.jdl import parse_job
from gridpilot.states import HELD_STATES, JobStatus, KillReason, check_transition

J = schema.jobs
T = schema.traces
S = JobStatus

TRACE_CATEGORIES = ("state", "trace", "proc", "procfmt")
#: Ends that mean "the job could not start here": retried elsewhere when the job never reached RUNNING.
AUTO_RESUBMIT_STATES = frozenset({S.ERROR_A, S.ERROR_IB})
MAX_TRACE_TEXT = 64 << 10
MAX_TRACE_ENTRIES = 1000
MAX_HEARTBEATS = 10_000
MAX_MESSAGE = 4096
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
#: The broker reads WAITING jobs in rank order this many at a time, for at most MATCH_ROUNDS batches. Jobs whose
#: Requirements already failed on this site map are filtered out in SQL, so the rounds are spent on new texts.
MATCH_BATCH = 16
MATCH_ROUNDS = 8


# -- small helpers --


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _loads(text: Optional[str]) -> Any:
    return orjson.loads(text) if text else {}


def default_output_dir(user: str, job_id: int) -> str:
    """Where a job's outputs go in the catalogue when its JDL has no OutputDir."""
    return f"/gridpilot/user/{user}/job-{job_id}"


def output_dir_of(row: Any) -> str:
    return str(row.output_dir) if row.output_dir else default_output_dir(row.user, row.id)


def job_dict(row: Any) -> Dict[str, Any]:
    """A jobs row as the API shows it."""
    kr = row.kill_reason
    return {
        "id": row.id,
        "user": row.user,
        "name": row.name,
        "state": S(row.state).name,
        "state_code": row.state,
        "kill_reason": None if kr is None else _kill_reason_name(kr),
        "kill_requested": bool(row.kill_requested),
        "site": row.site,
        "ce": row.ce,
        "node": row.node,
        "resubmission": row.resubmission,
        "exit_code": row.exit_code,
        "message": row.message,
        "created": row.created,
        "updated": row.updated,
        "heartbeat": row.heartbeat,
        "priority": row.priority,
        "price": row.price,
        "cores": row.cores,
        "ttl": row.ttl,
        "output_dir": output_dir_of(row),
        "jdl": row.jdl,
        "resources": _loads(row.resources),
    }


def _kill_reason_name(code: int) -> str:
    try:
        return KillReason(code).name
    except ValueError:
        return str(code)


def _int(value: Any, what: str, *, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{what} must be a whole number, got {value!r}")
    if lo is not None and value < lo:
        raise bad_request(f"{what} must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise bad_request(f"{what} must be at most {hi}, got {value}")
    return value


def _query_int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise bad_request(f"query parameter {name} must be a whole number, got {raw!r}") from None
    if not lo <= v <= hi:
        raise bad_request(f"query parameter {name} must be between {lo} and {hi}, got {v}")
    return v


def parse_state(value: Any, what: str = "state") -> JobStatus:
    """A state by name ("RUNNING", any case) or ALICE code; 400 otherwise."""
    try:
        if isinstance(value, str):
            return JobStatus[value.strip().upper()]
        if isinstance(value, int) and not isinstance(value, bool):
            return S(value)
    except (KeyError, ValueError):
        pass
    raise bad_request(f"{what} must be a job state name such as RUNNING, got {value!r}")


def parse_kill_reason(value: Any) -> KillReason:
    try:
        if isinstance(value, str):
            return KillReason[value.strip().upper()]
        if isinstance(value, int) and not isinstance(value, bool):
            return KillReason(value)
    except (KeyError, ValueError):
        pass
    names = ", ".join(k.name for k in KillReason)
    raise bad_request(f"kill_reason must be one of {names}, got {value!r}")


def _locked(conn: Connection, db: Database, job_id: int) -> Row[Any]:
    q = select(J).where(J.c.id == job_id)
    if db.is_postgres:
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is None:
        raise not_found(f"no job {job_id}", "job_not_found")
    return row


_TRACE_INSERT = T.insert()


def add_trace(conn: Connection, job_id: int, ts: float, category: str, text: str) -> None:
    conn.execute(_TRACE_INSERT, {"job_id": job_id, "ts": ts, "category": category, "text": text})


def revoke_job_token(conn: Connection, row: Any, why: str) -> None:
    if row.token_jti:
        tokens.revoke(conn, row.token_jti, row.token_exp or 0.0, f"job {row.id} {why}")


def _resubmit_values(row: Any, now: float, auto: bool) -> Dict[str, Any]:
    """Back to WAITING for another attempt: a new resubmission counter, and nothing left of where it was held."""
    return {
        "state": int(S.WAITING), "state_since": now, "updated": now, "resubmission": row.resubmission + 1,
        "auto_resubmits": row.auto_resubmits + (1 if auto else 0), "before_zombie": None, "kill_requested": False,
        "site": None, "ce": None, "node": None, "agent": None, "token_jti": None, "token_exp": None,
        "heartbeat": None, "reached_running": False,
        # What the failed attempt reported belongs to its trace, not to the next attempt.
        "exit_code": None, "kill_reason": None, "resources": None, "message": None,
    }


def resubmit_after_failure(
    conn: Connection, row: Any, now: float, why: str, max_auto: int = MAX_AUTO_RESUBMITS
) -> bool:
    """Send a job that ended without reaching RUNNING back to WAITING, unless it has used up its retries.

    `row` is the job as it was before it ended. Returns whether it was resubmitted; the trace says why either way.
    """
    if row.reached_running:
        return False
    if row.auto_resubmits >= max_auto:
        add_trace(conn, row.id, now, "state", f"not resubmitted: {why}, and it already went back to WAITING "
                                           f"{row.auto_resubmits} times (at most {max_auto})")
        return False
    n = row.auto_resubmits + 1
    conn.execute(update(J).where(J.c.id == row.id).values(**_resubmit_values(row, now, True)))
    add_trace(conn, row.id, now, "state", f"WAITING: resubmitted ({n} of {max_auto}) because {why}")
    return True


# -- submit, read, list, kill --


def submit(db: Database, p: Principal, body: Mapping[str, Any], now: float) -> Dict[str, Any]:
    auth.require_role(p, "user", "admin", action="submit jobs")
    text = body.get("jdl")
    if not isinstance(text, str) or not text.strip():
        raise bad_request("field 'jdl' must hold the JDL text")
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 255):
        raise bad_request("field 'name' must be a string of at most 255 characters")
    priority = body.get("priority", 0)
    priority = _int(priority, "priority", lo=-1000, hi=1000)
    if priority and p.role != "admin":
        raise forbidden("only an admin may set a job's priority")
    try:
        job = parse_job(text, name)
    except JdlError as e:
        raise bad_request(e.message, "invalid_jdl", line=e.line, column=e.column, path=e.path) from None
    user = p.subject
    if job.user is not None and job.user != p.subject:
        if p.role != "admin":
            raise forbidden(f"the JDL says User = {job.user!r}, but the token is {p.subject!r}'s")
        user = job.user
    needs = broker.needs_of(job)
    with db.write() as conn:
        job_id = conn.execute(
            J.insert().values(
                user=user, name=name, state=int(S.WAITING), state_since=now, kill_requested=False, jdl=text,
                cores=needs.cores, memory_mb=needs.memory_mb, disk_mb=needs.disk_mb, ttl=needs.ttl, gpus=needs.gpus,
                gpu_name=needs.gpu_name, price=needs.price, priority=priority, requirements=needs.requirements,
                req_hash=needs.req_hash, output_dir=job.output_dir, resubmission=0, auto_resubmits=0,
                reached_running=False, created=now, updated=now,
            ).returning(J.c.id)
        ).scalar_one()
        by = p.subject if user == p.subject else f"{p.subject} for {user}"
        add_trace(conn, job_id, now, "state", f"WAITING: submitted by {by}" + (f" from {name}" if name else ""))
    return {"id": job_id, "state": "WAITING"}


def get_job(db: Database, p: Principal, job_id: int) -> Dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(select(J).where(J.c.id == job_id)).first()
    if row is None:
        raise not_found(f"no job {job_id}", "job_not_found")
    auth.check(auth.can_view(p, row), p, "see", job_id)
    return job_dict(row)


def list_jobs(db: Database, p: Principal, query: Mapping[str, str]) -> List[Dict[str, Any]]:
    limit = _query_int(query, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    offset = _query_int(query, "offset", 0, 0, 1 << 40)
    user, site = query.get("user") or None, query.get("site") or None
    states: List[int] = []
    for part in (query.get("state") or "").split(","):
        if part.strip():
            states.append(int(parse_state(int(part) if part.strip().lstrip("-").isdigit() else part, "state filter")))
    conds = []
    c = p.claims
    if p.role == "user":
        if user is not None and user != p.subject:
            raise forbidden(f"a user token lists only its own jobs, not {user!r}'s")
        user = p.subject
    elif p.role == "ce":
        if site is not None and site != c.site:
            raise forbidden(f"a ce token lists only the jobs at its site {c.site!r}")
        site = c.site
    elif p.role == "agent":
        conds += [J.c.agent == p.subject, J.c.site == c.site, J.c.ce == c.ce]
    elif p.role != "admin":
        raise forbidden(f"a {p.role} token may not list jobs")
    if user is not None:
        conds.append(J.c.user == user)
    if site is not None:
        conds.append(J.c.site == site)
    if states:
        conds.append(J.c.state.in_(states))
    q = select(J).where(*conds).order_by(J.c.id.desc()).limit(limit).offset(offset)
    with db.read() as conn:
        return [job_dict(r) for r in conn.execute(q)]


def kill(db: Database, p: Principal, job_id: int, now: float) -> Dict[str, Any]:
    """WAITING jobs end at once; held ones are flagged, and the agent learns it from its next heartbeat answer."""
    auth.require_role(p, "user", "admin", action="kill jobs")
    with db.write() as conn:
        row = _locked(conn, db, job_id)
        auth.check(auth.can_control(p, row), p, "kill", job_id)
        state = S(row.state)
        if state is S.WAITING:
            conn.execute(update(J).where(J.c.id == job_id).values(
                state=int(S.KILLED), state_since=now, updated=now, kill_reason=int(KillReason.KILLED)))
            add_trace(conn, job_id, now, "state", f"KILLED by {p.describe()} while WAITING")
            return {"id": job_id, "state": "KILLED", "kill_requested": False}
        if state.is_final:
            raise conflict(f"job {job_id} has already ended ({state.name})", "already_final", state=state.name)
        if not row.kill_requested:
            conn.execute(update(J).where(J.c.id == job_id).values(kill_requested=True, updated=now))
            add_trace(conn, job_id, now, "trace", f"kill requested by {p.describe()} while {state.name}; "
                                               "the pilot is told at its next heartbeat")
        return {"id": job_id, "state": state.name, "kill_requested": True}


# -- traces --


def read_trace(db: Database, p: Principal, job_id: int, since: Optional[float], limit: int) -> List[Dict[str, Any]]:
    with db.read() as conn:
        row = conn.execute(select(J).where(J.c.id == job_id)).first()
        if row is None:
            raise not_found(f"no job {job_id}", "job_not_found")
        auth.check(auth.can_view(p, row), p, "read the trace of", job_id)
        q = select(T.c.ts, T.c.category, T.c.text).where(T.c.job_id == job_id)
        if since is not None:
            q = q.where(T.c.ts > since)
        q = q.order_by(T.c.ts, T.c.id).limit(limit)
        return [{"ts": r.ts, "category": r.category, "text": r.text} for r in conn.execute(q)]


def _trace_entries(entries: Any, now: float) -> List[Tuple[float, str, str]]:
    if not isinstance(entries, list) or not entries:
        raise bad_request("field 'entries' must be a non-empty list of {ts?, category, text}")
    if len(entries) > MAX_TRACE_ENTRIES:
        raise bad_request(f"at most {MAX_TRACE_ENTRIES} trace entries per request, got {len(entries)}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise bad_request(f"trace entry {i} must be an object")
        cat, text, ts = e.get("category"), e.get("text"), e.get("ts", now)
        if cat not in TRACE_CATEGORIES:
            raise bad_request(f"trace entry {i}: category must be one of {', '.join(TRACE_CATEGORIES)}, got {cat!r}")
        if not isinstance(text, str) or len(text) > MAX_TRACE_TEXT:
            raise bad_request(f"trace entry {i}: text must be a string of at most {MAX_TRACE_TEXT} characters")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise bad_request(f"trace entry {i}: ts must be a unix time in seconds")
        out.append((float(ts), cat, text))
    return out


def append_trace(db: Database, p: Principal, job_id: int, body: Mapping[str, Any], now: float) -> int:
    auth.require_role(p, "job", "agent", "admin", action="append to traces")
    entries = _trace_entries(body.get("entries"), now)
    with db.write() as conn:
        row = conn.execute(select(J.c.id, J.c.user, J.c.agent, J.c.site, J.c.ce, J.c.resubmission, J.c.token_jti)
                           .where(J.c.id == job_id)).first()
        if row is None:
            raise not_found(f"no job {job_id}", "job_not_found")
        auth.check(auth.can_report(p, row), p, "append to the trace of", job_id)
        conn.execute(T.insert(), [{"job_id": job_id, "ts": ts, "category": c, "text": t} for ts, c, t in entries])
    return len(entries)


# -- the broker's side: match and probe --


# Only what the broker decides on: the JDL and the rest of the chosen job come back from the assigning UPDATE.
_CANDIDATE_COLUMNS = (
    J.c.id, J.c.user, J.c.cores, J.c.memory_mb, J.c.disk_mb, J.c.ttl, J.c.gpus, J.c.gpu_name, J.c.price,
    J.c.priority, J.c.requirements, J.c.req_hash, J.c.created, J.c.resubmission,
)


#: Stand for "no bound" in the prepared queries below: the largest values of the columns' types.
_NO_BOUND_INT = (1 << 31) - 1
_NO_BOUND_BIG = (1 << 62)
_QUERIES: Dict[Tuple[bool, bool, bool], Any] = {}


def _waiting_statement(users: bool, nousers: bool, lock: bool) -> Any:
    """The broker's scan as a statement built once per shape: building a SQLAlchemy select per request costs
    more CPU than running it. Bounds and lists are bound parameters (`expanding` for lists)."""
    key = (users, nousers, lock)
    q = _QUERIES.get(key)
    if q is None:
        q = select(*_CANDIDATE_COLUMNS).where(
            J.c.state == int(S.WAITING),
            J.c.cores <= bindparam("max_cores"),
            J.c.ttl <= bindparam("max_ttl"),
            J.c.memory_mb <= bindparam("max_memory_mb"),
            J.c.disk_mb <= bindparam("max_disk_mb"),
            J.c.gpus <= bindparam("max_gpus"),
            J.c.req_hash.notin_(bindparam("false_hashes", expanding=True)),
            J.c.id.notin_(bindparam("skip_ids", expanding=True)),
        )
        if users:
            q = q.where(J.c.user.in_(bindparam("users", expanding=True)))
        if nousers:
            q = q.where(J.c.user.notin_(bindparam("nousers", expanding=True)))
        q = q.order_by(J.c.priority.desc(), J.c.price.desc(), J.c.id).limit(bindparam("limit"))
        if lock:
            q = q.with_for_update(skip_locked=True, of=J)
        _QUERIES[key] = q
    return q


def _waiting_query(
    site: broker.Site, false_hashes: Sequence[str], skip_ids: Sequence[int], limit: int, *, lock: bool = False
) -> Tuple[Any, Dict[str, Any]]:
    """WAITING jobs that fit the site's resources (broker.sql_limits), in rank order: statement and parameters."""
    lim = broker.sql_limits(site)

    def bound(v: Optional[float], top: int) -> int:
        # The columns hold whole numbers, so "<= 7200.5" is "<= 7200"; and the parameter must fit the column type.
        return top if v is None else min(top, math.floor(v))

    params: Dict[str, Any] = {
        "max_cores": bound(lim.max_cores, _NO_BOUND_INT), "max_ttl": bound(lim.max_ttl, _NO_BOUND_INT),
        "max_memory_mb": bound(lim.max_memory_mb, _NO_BOUND_BIG), "max_disk_mb": bound(lim.max_disk_mb, _NO_BOUND_BIG),
        "max_gpus": lim.max_gpus, "false_hashes": list(false_hashes),
        "skip_ids": list(skip_ids), "limit": limit, "users": list(lim.users), "nousers": list(lim.nousers),
    }
    return _waiting_statement(bool(lim.users), bool(lim.nousers), lock), params


def _bound_site_map(p: Principal, body: Mapping[str, Any]) -> broker.Site:
    """The posted site map, checked against the agent's binding: its site and CE are the token's."""
    c = p.claims
    sm = dict(body)
    for field, bound in (("site", c.site), ("ce", c.ce)):
        given = sm.get(field)
        if given is not None and given != bound:
            raise forbidden(f"this agent token is bound to {field} {bound!r}, not {given!r}")
        sm[field] = bound
    try:
        return broker.parse_site_map(sm)
    except broker.SiteMapError as e:
        raise bad_request(str(e), "bad_site_map") from None


_ASSIGN = update(J).where(J.c.id == bindparam("b_id"), J.c.state == int(S.WAITING)).values(
    state=int(S.ASSIGNED), state_since=bindparam("b_now"), updated=bindparam("b_now"), heartbeat=bindparam("b_now"),
    site=bindparam("b_site"), ce=bindparam("b_ce"), node=bindparam("b_node"), agent=bindparam("b_agent"),
    token_jti=bindparam("b_jti"), token_exp=bindparam("b_exp"),
).returning(J.c.id, J.c.user, J.c.name, J.c.jdl, J.c.output_dir)


@dataclass
class MatchResult:
    job: Optional[Dict[str, Any]]
    scanned: int


def match(
    db: Database, p: Principal, body: Mapping[str, Any], now: float, *, key: str, cache: broker.RequirementCache,
    storage: Sequence[Mapping[str, Any]] = (),
) -> MatchResult:
    """Assign the best WAITING job that fits the posted site map to the calling agent, atomically.

    PostgreSQL: the candidate rows are read `FOR UPDATE SKIP LOCKED`, so concurrent matchers each see rows no
    other matcher holds and none blocks on another. SQLite: the transaction holds the database's write lock from
    its first statement (BEGIN IMMEDIATE), so matches run one after another. Either way a job is assigned once.
    """
    auth.require_role(p, "agent", action="match jobs")
    site = _bound_site_map(p, body)
    attrs = broker.site_attributes(site)
    verdicts: Dict[str, bool] = {}
    skip: List[int] = []
    scanned = 0
    # Not durable (db.write): if a database crash forgets this assignment, the job is WAITING again and is
    # matched anew with a new job token; the first pilot's token then no longer matches the job's (auth.holds_job)
    # and its first report is refused, so the job still runs once. That saves a disk flush per match.
    with db.write(durable=False) as conn:
        chosen = None
        for _ in range(MATCH_ROUNDS):
            q, params = _waiting_query(site, [h for h, ok in verdicts.items() if not ok], skip, MATCH_BATCH,
                                       lock=db.is_postgres)
            rows = conn.execute(q, params).all()
            scanned += len(rows)
            if not rows:
                break
            chosen = broker.choose(rows, site, attrs, cache, verdicts, misfits=skip)
            if chosen is not None:
                break
            # Rows that misfit (what SQL cannot filter, a GPU model say) are now in `skip`, left out next round.
        if chosen is None:
            return MatchResult(None, scanned)
        ttl = chosen.ttl + tokens.JOB_TOKEN_MARGIN_S
        token, claims = tokens.mint(key, "job", chosen.user, job_id=chosen.id, resubmission=chosen.resubmission,
                                    ttl_s=ttl, now=now)
        assigned = conn.execute(_ASSIGN, {
            "b_id": chosen.id, "b_now": now, "b_site": site.site, "b_ce": site.ce, "b_node": site.node,
            "b_agent": p.subject, "b_jti": claims.jti, "b_exp": claims.expires,
        }).first()
        if assigned is None:  # cannot happen while the row or database lock is held; never hand out a job twice
            raise RuntimeError(f"job {chosen.id} changed under the broker's lock")
        where = "/".join(x for x in (site.site, site.ce, site.node) if x)
        add_trace(conn, chosen.id, now, "state", f"ASSIGNED to agent {p.subject} at {where}")
    close = set(site.close_se)
    job = {
        "id": chosen.id,
        "jdl": assigned.jdl,
        "name": assigned.name,
        "resubmission": chosen.resubmission,
        "token": token,
        "user": chosen.user,
        "output_dir": output_dir_of(assigned),
        "storage": [dict(se, close=se["name"] in close) for se in storage],
    }
    return MatchResult(job, scanned)


PROBE_SCAN = 1000


def probe(db: Database, p: Principal, body: Mapping[str, Any], cache: broker.RequirementCache) -> Dict[str, Any]:
    """How many WAITING jobs could run on this site map (counting at most PROBE_SCAN), assigning none.

    For CEs deciding whether to submit pilots, and for agents deciding whether to start.
    """
    auth.require_role(p, "ce", "agent", "admin", action="probe the queue")
    if p.role == "admin":
        try:
            site = broker.parse_site_map(body)
        except broker.SiteMapError as e:
            raise bad_request(str(e), "bad_site_map") from None
    else:
        site = _bound_site_map(p, body)
    attrs = broker.site_attributes(site)
    verdicts: Dict[str, bool] = {}
    n = scanned = 0
    with db.read() as conn:
        q, params = _waiting_query(site, (), (), PROBE_SCAN)
        for r in conn.execute(q, params):
            scanned += 1
            if broker.choose([r], site, attrs, cache, verdicts) is not None:
                n += 1
    return {"waiting": n, "scanned": scanned, "capped": scanned >= PROBE_SCAN}


# -- the pilot's side: status and heartbeats --


def _state_text(new: JobStatus, kill_reason: Optional[KillReason], exit_code: Optional[int], message: Optional[str],
                by: str) -> str:
    parts = [f"{new.name}: reported by {by}"]
    if kill_reason is not None and kill_reason is not KillReason.OK:
        parts.append(f"kill reason {kill_reason.name}")
    if exit_code is not None:
        parts.append(f"exit code {exit_code}")
    if message:
        parts.append(message)
    return ", ".join(parts)


def set_status(
    db: Database, p: Principal, job_id: int, body: Mapping[str, Any], now: float, *,
    max_auto_resubmits: int = MAX_AUTO_RESUBMITS,
) -> Dict[str, Any]:
    auth.require_role(p, "agent", "job", "admin", action="report job states")
    new = parse_state(body.get("state"))
    resub = _int(body.get("resubmission"), "resubmission", lo=0)
    kill_reason = None if body.get("kill_reason") is None else parse_kill_reason(body["kill_reason"])
    exit_code = None if body.get("exit_code") is None else _int(body["exit_code"], "exit_code", lo=-(1 << 31),
                                                                  hi=(1 << 31) - 1)
    resources = body.get("resources")
    if resources is not None and not isinstance(resources, dict):
        raise bad_request("field 'resources' must be an object")
    message = body.get("message")
    if message is not None and not isinstance(message, str):
        raise bad_request("field 'message' must be a string")
    message = message[:MAX_MESSAGE] if message else None

    with db.write() as conn:
        row = _locked(conn, db, job_id)
        auth.check(auth.can_report(p, row), p, "report the state of", job_id)
        if resub != row.resubmission:
            raise conflict(f"stale report: job {job_id} is at resubmission {row.resubmission}, the report is for "
                           f"{resub}", "stale_resubmission", resubmission=row.resubmission)
        cur = S(row.state)
        values: Dict[str, Any] = {"updated": now}
        if resources is not None:
            values["resources"] = _dumps(resources)
        if exit_code is not None:
            values["exit_code"] = exit_code
        if kill_reason is not None:
            values["kill_reason"] = int(kill_reason)
        if message:
            values["message"] = message
        if cur is S.ZOMBIE and new is not S.EXPIRED and row.before_zombie is not None:
            # A report is a sign of life as good as a heartbeat: the job is back where it was.
            cur = S(row.before_zombie)
            values.update(state=int(cur), before_zombie=None, heartbeat=now, state_since=now)
            add_trace(conn, job_id, now, "state", f"{cur.name}: heard from again (a state report) after ZOMBIE")
        if new is cur:
            if cur in HELD_STATES:
                values["heartbeat"] = now
            conn.execute(update(J).where(J.c.id == job_id).values(**values))
            return {"id": job_id, "state": cur.name, "state_code": int(cur), "resubmission": row.resubmission}
        try:
            check_transition(cur, new, before_zombie=row.before_zombie)
        except IllegalTransition as e:
            raise conflict(str(e), "illegal_transition", state=cur.name) from None

        by = p.describe()
        if new is S.WAITING:
            # The pilot gives the job back before running it (e.g. it could not set up the sandbox).
            if row.auto_resubmits >= max_auto_resubmits:
                raise conflict(f"job {job_id} already went back to WAITING {row.auto_resubmits} times (at most "
                               f"{max_auto_resubmits}); report an error state instead", "resubmit_limit")
            revoke_job_token(conn, row, "given back")
            conn.execute(update(J).where(J.c.id == job_id).values(**values))
            why = f"{by} gave it back in {cur.name}" + (f": {message}" if message else "")
            resubmit_after_failure(conn, row, now, why, max_auto_resubmits)
            return {"id": job_id, "state": "WAITING", "state_code": int(S.WAITING),
                    "resubmission": row.resubmission + 1}

        values.update(state=int(new), state_since=now)
        if new in HELD_STATES:
            values["heartbeat"] = now
        if new is S.RUNNING:
            values["reached_running"] = True
        if new is S.KILLED and kill_reason is None:
            values["kill_reason"] = int(KillReason.KILLED)
        conn.execute(update(J).where(J.c.id == job_id).values(**values))
        add_trace(conn, job_id, now, "state", _state_text(new, kill_reason, exit_code, message, by))
        state: JobStatus = new
        resubmission = row.resubmission
        if new.is_final:
            revoke_job_token(conn, row, f"ended {new.name}")
            if new in AUTO_RESUBMIT_STATES and resubmit_after_failure(
                conn, row, now, f"it ended {new.name} before reaching RUNNING", max_auto_resubmits
            ):
                state, resubmission = S.WAITING, row.resubmission + 1
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
    auth.require_role(p, "agent", "ce", "admin", action="send heartbeats")
    items = body.get("heartbeats")
    if not isinstance(items, list):
        raise bad_request("field 'heartbeats' must be a list of {job_id, resubmission, sample}")
    if len(items) > MAX_HEARTBEATS:
        raise bad_request(f"at most {MAX_HEARTBEATS} heartbeats per request, got {len(items)}")
    parsed: Dict[int, Tuple[int, Optional[Dict[str, Any]]]] = {}
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise bad_request(f"heartbeat {i} must be an object")
        jid = _int(it.get("job_id"), f"heartbeat {i}: job_id", lo=1)
        rs = _int(it.get("resubmission"), f"heartbeat {i}: resubmission", lo=0)
        sample = it.get("sample")
        if sample is not None and not isinstance(sample, dict):
            raise bad_request(f"heartbeat {i}: sample must be an object")
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
        rows = {r.id: r for r in conn.execute(_HB_SELECT_PG if db.is_postgres else _HB_SELECT, {"ids": ids})}
        for jid in ids:
            rs, sample = parsed[jid]
            row = rows.get(jid)
            if row is None:
                rejected.append({"job_id": jid, "code": "job_not_found"})
                continue
            if not may_report(row):
                rejected.append({"job_id": jid, "code": "forbidden"})
                continue
            state = S(row.state)
            if rs != row.resubmission:
                # The pilot runs an attempt central has given up on (the job was resubmitted): stop it.
                rejected.append({"job_id": jid, "code": "stale_resubmission"})
                commands.append({"job_id": jid, "command": "kill", "reason": "stale resubmission"})
                continue
            if state.is_final or state is S.WAITING:
                commands.append({"job_id": jid, "command": "kill", "reason": f"job is {state.name}"})
                continue
            if state is S.ZOMBIE:
                back = S(row.before_zombie) if row.before_zombie is not None else S.RUNNING
                values: Dict[str, Any] = {"state": int(back), "before_zombie": None, "heartbeat": now,
                                          "updated": now, "state_since": now}
                if sample is not None:
                    values["resources"] = _dumps(sample)
                res = conn.execute(update(J).where(J.c.id == jid, J.c.state == int(S.ZOMBIE)).values(**values))
                if res.rowcount:
                    add_trace(conn, jid, now, "state", f"{back.name}: heartbeat again after ZOMBIE")
                    revived += 1
            else:
                bulk.append((jid, rs, sample))
            if row.kill_requested:
                commands.append({"job_id": jid, "command": "kill", "reason": "kill requested"})
        updated = _record_heartbeats(conn, db, bulk, now) if bulk else 0
    return HeartbeatResult(commands, rejected, updated + revived)


_HB_COLUMNS = (J.c.id, J.c.user, J.c.state, J.c.before_zombie, J.c.resubmission, J.c.agent, J.c.site, J.c.ce,
               J.c.kill_requested)
_HB_SELECT = select(*_HB_COLUMNS).where(J.c.id.in_(bindparam("ids", expanding=True)))
# PostgreSQL: one array parameter instead of an IN list, so the text is the same for every batch size and the
# driver and server reuse one prepared statement.
_HB_SELECT_PG = (select(*_HB_COLUMNS).where(J.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))))
                 .order_by(J.c.id).with_for_update())
# Written into the SQL text rather than bound: an IN list of bound values cannot be used with executemany.
_IS_HELD = J.c.state.in_([literal_column(str(int(s))) for s in sorted(HELD_STATES)])
_HB_SQLITE = update(J).where(
    J.c.id == bindparam("b_id"), J.c.resubmission == bindparam("b_rs"), _IS_HELD
).values(heartbeat=bindparam("b_now"), updated=bindparam("b_now"),
         resources=func.coalesce(bindparam("b_res", type_=Text), J.c.resources))


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
        _HB_PG.append(update(J).where(J.c.id == hb.c.id).values(
            heartbeat=bindparam("hb_now"), updated=bindparam("hb_now"),
            resources=func.coalesce(cast(hb.c.res, Text), J.c.resources)))
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
    conn.execute(_HB_SQLITE, [{"b_id": i, "b_rs": rs, "b_res": None if res is None else _dumps(res), "b_now": now}
                              for i, rs, res in bulk])
    return len(bulk)


def count_by_state(db: Database) -> Dict[str, int]:
    with db.read() as conn:
        rows = conn.execute(select(J.c.state, func.count()).group_by(J.c.state)).all()
    return {S(s).name: int(n) for s, n in rows}


__all__ = ["ApiError", "append_trace", "count_by_state", "get_job", "heartbeats", "job_dict", "kill", "list_jobs",
           "match", "probe", "read_trace", "resubmit_after_failure", "set_status", "submit"]

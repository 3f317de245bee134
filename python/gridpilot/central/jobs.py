"""The user's side of the queue: submit, get, list, kill, traces; and what every job operation shares (the job
as the API shows it, input checks, trace lines, token revocation, resubmission). matching.py is the broker's side,
reports.py the pilot's (state reports and heartbeats).

Each operation is one database transaction and raises problems.ApiError for anything the caller did wrong, so
nothing is half done. Writers that read a job before changing it lock its row (`FOR UPDATE` on PostgreSQL; the
whole database is the lock on SQLite, see db.py). A job that ends before reaching RUNNING goes back to WAITING
(at most MAX_AUTO_RESUBMITS times, the trace saying why): resubmit_after_failure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import orjson
from sqlalchemy import exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from gridpilot.central import areas, auth, bounds, broker, schema, tokens
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.problems import ApiError, bad_request, conflict, forbidden
from gridpilot.central.settings import DEFAULT_USER_AREA, MAX_AUTO_RESUBMITS
from gridpilot import tracefmt
from gridpilot.errors import JdlError
from gridpilot.jdl import parse_job
from gridpilot.states import JobStatus, KillReason

JOBS = schema.jobs
TRACES = schema.traces
SUBJOBS = schema.subjobs

TRACE_CATEGORIES = ("state", "trace", "proc", "procfmt", "usage")
#: What a token may append: `state` lines are central's own, written with each state change it records, so that a
#: job's state history cannot be forged.
WRITABLE_TRACE_CATEGORIES = ("trace", "proc", "procfmt", "usage")
MAX_TRACE_TEXT = 64 << 10
MAX_TRACE_ENTRIES = 1000
MAX_TRACE_KEY = schema.TRACE_KEY_LENGTH
_TRACE_KEY = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % MAX_TRACE_KEY)
#: The highest Price a JDL may give. Price ranks jobs of equal priority (broker.rank_key), and central charges no
#: quota for it, so without a bound any user could put its jobs ahead of everyone else's (Price = 1e308).
MAX_PRICE = 100.0
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


# -- small helpers --


def to_json(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _loads(text: Optional[str]) -> Any:
    return orjson.loads(text) if text else {}


def output_dir_of(row: Any) -> str:
    """The job's OutputDir in the catalogue. Submit stores one for every job (areas.default_output_dir when the JDL
    names none); a job queued before schema step 5 may have none, and keeps the default it had then."""
    return str(row.output_dir) if row.output_dir else f"/gridpilot/user/{row.user}/job-{row.id}"


def job_dict(row: Any) -> Dict[str, Any]:
    """A jobs row as the API shows it."""
    kr = row.kill_reason
    return {
        "id": row.id,
        "user": row.user,
        "name": row.name,
        "state": JobStatus(row.state).name,
        "state_code": row.state,
        "state_since": row.state_since,
        "kill_reason": None if kr is None else _kill_reason_name(kr),
        # The reason's ALICE code and descriptive text (states.KILL_REASON_TEXTS); None with no kill reason.
        "kill_reason_code": kr,
        "kill_reason_text": _kill_reason_text(kr),
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
        # Set by a tower's reports (bulkreports.py) for an attempt it ran through an ARC CE; null otherwise.
        "arc_job_id": row.arc_job_id,
        "pilot_log_url": row.pilot_log_url,
    }


def _kill_reason_name(code: int) -> str:
    try:
        return KillReason(code).name
    except ValueError:
        return str(code)


def _kill_reason_text(code: Optional[int]) -> Optional[str]:
    try:
        return None if code is None else KillReason(code).text
    except ValueError:
        return None


def int_field(value: Any, what: str, *, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] from a body; `what` is the field's name (bounds.py)."""
    return bounds.whole(value, what, lo, hi)


_QUERY_INT = re.compile(r"-?[0-9]{1,20}")


def query_int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not _QUERY_INT.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise bounds.bad_field(name, f"query parameter {name} must be a whole number from {lo} to {hi}, "
                                     f"got {raw[:40]!r}")
    return int(raw)


def parse_state(value: Any, what: str = "state", field: str = "state") -> JobStatus:
    """A state by name ("RUNNING", any case) or ALICE code; 400 naming `field` otherwise."""
    try:
        if isinstance(value, str):
            return JobStatus[value.strip().upper()]
        if isinstance(value, int) and not isinstance(value, bool):
            return JobStatus(value)
    except (KeyError, ValueError):
        pass
    raise bounds.bad_field(field, f"{what} must be a job state name such as RUNNING, got {value!r:.40}")


def parse_kill_reason(value: Any, field: str = "kill_reason") -> KillReason:
    try:
        if isinstance(value, str):
            return KillReason[value.strip().upper()]
        if isinstance(value, int) and not isinstance(value, bool):
            return KillReason(value)
    except (KeyError, ValueError):
        pass
    names = ", ".join(k.name for k in KillReason)
    raise bounds.bad_field(field, f"{field} must be one of {names}, got {value!r:.40}")


def locked_job(conn: Connection, db: Database, job_id: int) -> Row[Any]:
    q = select(JOBS).where(JOBS.c.id == job_id)
    if db.is_postgres:
        q = q.with_for_update()
    row = conn.execute(q).first()
    if row is None:
        raise auth.no_such_job(job_id)
    return row


_TRACE_INSERT = TRACES.insert()


def add_trace(conn: Connection, job_id: int, ts: float, category: str, text: str,
              reported_ts: Optional[float] = None) -> None:
    """One of central's own lines, dated `ts` (central's clock; `reported_ts`: the reporter's time of the event it
    records, when there is one)."""
    conn.execute(_TRACE_INSERT, {"job_id": job_id, "ts": ts, "category": category, "text": text,
                                 "reported_ts": reported_ts})


def add_state_change(conn: Connection, job_id: int, ts: float, old: JobStatus, new: JobStatus,
                     detail: Optional[str] = None, reported_ts: Optional[float] = None) -> None:
    """A state change in JAliEn's words ("Job state transition from X to Y", a `state` line); what gridpilot knows
    beyond ALICE's sentence (who reported it, kill reason, exit code, message) goes in a `trace` line right after it,
    so that the `state` lines stay one per change and read as ALICE's (docs/traces.md)."""
    add_trace(conn, job_id, ts, "state", tracefmt.transition(old.name, new.name), reported_ts=reported_ts)
    if detail:
        add_trace(conn, job_id, ts, "trace", detail)


def revoke_job_token(conn: Connection, row: Any, why: str) -> None:
    if row.token_jti:
        tokens.revoke(conn, row.token_jti, row.token_exp or 0.0, f"job {row.id} {why}")


def resubmit_values(row: Any, now: float, auto: bool) -> Dict[str, Any]:
    """Back to WAITING for another attempt: a new resubmission counter, and nothing left of where it was held."""
    return {
        "state": int(JobStatus.WAITING), "state_since": now, "updated": now, "resubmission": row.resubmission + 1,
        "auto_resubmits": row.auto_resubmits + (1 if auto else 0), "before_zombie": None, "kill_requested": False,
        "site": None, "ce": None, "node": None, "agent": None, "token_jti": None, "token_exp": None,
        "heartbeat": None, "reached_running": False,
        # What the failed attempt reported belongs to its trace, not to the next attempt.
        "exit_code": None, "kill_reason": None, "resources": None, "message": None,
        "arc_job_id": None, "pilot_log_url": None,
    }


def resubmit_after_failure(
    conn: Connection, row: Any, now: float, why: str, max_auto: int = MAX_AUTO_RESUBMITS
) -> bool:
    """Send a job that ended without reaching RUNNING back to WAITING, unless it has used up its retries.

    `row` is the job as it was before it ended. Returns whether it was resubmitted; the trace says why either way.
    """
    if row.reached_running:
        return False
    if row.kill_requested:
        # A kill is final: the job must not run again, whichever way its attempt ended.
        add_trace(conn, row.id, now, "state", f"not resubmitted: {why}, but its kill was requested")
        return False
    if row.auto_resubmits >= max_auto:
        add_trace(conn, row.id, now, "state", f"not resubmitted: {why}, and it already went back to WAITING "
                                           f"{row.auto_resubmits} times (at most {max_auto})")
        return False
    n = row.auto_resubmits + 1
    conn.execute(update(JOBS).where(JOBS.c.id == row.id).values(**resubmit_values(row, now, True)))
    add_trace(conn, row.id, now, "state", f"WAITING: resubmitted ({n} of {max_auto}) because {why}")
    return True


# -- submit, read, list, kill --


@dataclass(frozen=True)
class Submission:
    """A submission's checked fields: the JDL text and its job, what the broker filters on, and whose job it is."""

    text: str
    job: Any
    needs: broker.JobNeeds
    name: Optional[str]
    priority: int
    user: str


def check_submission(p: Principal, body: Mapping[str, Any]) -> Submission:
    """The body of POST /jobs checked (a 400 naming the first bad field, 403 for what the caller may not ask), with
    nothing written yet: submit, and splitting.submit for a JDL with Split, both start here."""
    auth.require_role(p, "user", "admin", action="submit jobs")
    text = body.get("jdl")
    if not isinstance(text, str) or not text.strip():
        raise bounds.bad_field("jdl", "field 'jdl' must hold the JDL text")
    bounds.text(text, "jdl", bounds.MAX_JDL, what="field 'jdl'")
    bounds.no_nul_in_jdl(text)
    name = bounds.optional_text(body.get("name"), "name", bounds.MAX_NAME, what="field 'name'")
    priority = body.get("priority", 0)
    priority = int_field(priority, "priority", lo=-1000, hi=1000)
    if priority and p.role != "admin":
        raise forbidden("only an admin may set a job's priority")
    try:
        job = parse_job(text, name)
        needs = broker.needs_of(job)
    except JdlError as e:
        raise bad_request(e.message, "invalid_jdl", field="jdl", line=e.line, column=e.column, path=e.path) from None
    _check_columns(job, needs)
    user = p.subject
    if job.user is not None and job.user != p.subject:
        if p.role != "admin":
            raise forbidden(f"the JDL says User = {job.user!r}, but the token is {p.subject!r}'s")
        user = job.user
    if job.price > MAX_PRICE:
        raise bad_request(f"Price must be at most {MAX_PRICE:g}, got {job.price:g}: it ranks jobs of equal priority, "
                          "and priority is an admin's to give", "price_too_high", field="Price")
    return Submission(text, job, needs, name, priority, user)


def job_values(s: Submission, now: float, *, text: str, output_dir: Optional[str],
               state: JobStatus = JobStatus.WAITING) -> Dict[str, Any]:
    """The columns of a new jobs row for submission `s` with JDL `text` (a subjob's differs from the submitted one)
    and OutputDir `output_dir` (checked by the caller)."""
    return dict(
        user=s.user, name=s.name, state=int(state), state_since=now, kill_requested=False, jdl=text,
        cores=s.needs.cores, memory_mb=s.needs.memory_mb, disk_mb=s.needs.disk_mb, ttl=s.needs.ttl,
        gpus=s.needs.gpus, gpu_name=s.needs.gpu_name, gpu_model=s.needs.gpu_model, gpu_vendor=s.needs.gpu_vendor,
        gpu_arch=s.needs.gpu_arch, price=s.needs.price, priority=s.priority,
        requirements=s.needs.requirements, req_hash=s.needs.req_hash, arch=s.needs.arch,
        cpu_level=s.needs.cpu_level, require_container=int(s.needs.require_container),
        min_pilot_version=s.needs.min_pilot_version, output_dir=output_dir, resubmission=0,
        auto_resubmits=0, reached_running=False, created=now, updated=now,
    )


def insert_job(conn: Connection, s: Submission, now: float, *, text: str, output_dir: Optional[str],
               user_area: str, state: JobStatus = JobStatus.WAITING) -> int:
    """One jobs row for submission `s` (job_values), its OutputDir None meaning the default under its user's area.
    The new job's id."""
    values = job_values(s, now, text=text, output_dir=output_dir, state=state)
    job_id = int(conn.execute(JOBS.insert().values(**values).returning(JOBS.c.id)).scalar_one())
    if output_dir is None:
        conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(
            output_dir=areas.default_output_dir(user_area, s.user, job_id)))
    return job_id


def submitted_by(p: Principal, s: Submission) -> str:
    """'alice', or 'root for alice' when an admin submits for a user (the trace's words)."""
    by = p.subject if s.user == p.subject else f"{p.subject} for {s.user}"
    return by + (f" from {s.name}" if s.name else "")


def submit(db: Database, p: Principal, body: Mapping[str, Any], now: float,
           requirements: Optional[broker.RequirementCache] = None, *,
           user_area: str = DEFAULT_USER_AREA) -> Dict[str, Any]:
    """Queue a job. Its OutputDir must lie in one of its user's catalogue areas (areas.py; an admin's submission
    may name any), and its Price is at most MAX_PRICE. Its Requirements are bounded (broker.needs_of) and compiled
    into `requirements`, the process's cache, while the tree is at hand: the broker then never parses it in this
    process."""
    s = check_submission(p, body)
    with db.write() as conn:
        output_dir = areas.output_dir_for(conn, user_area, p, s.user, s.job.output_dir)
        job_id = insert_job(conn, s, now, text=s.text, output_dir=output_dir, user_area=user_area)
        add_trace(conn, job_id, now, "state", f"WAITING: submitted by {submitted_by(p, s)}")
    learn_requirements(s, requirements)
    return {"id": job_id, "state": "WAITING"}


def learn_requirements(s: Submission, requirements: Optional[broker.RequirementCache]) -> None:
    if requirements is not None and s.job.requirements is not None:
        requirements.learn(s.needs.req_hash, s.job.requirements)


def _check_columns(job: Any, needs: broker.JobNeeds) -> None:
    """The JDL values that become columns of the jobs table, within those columns and within what a match can
    serve (bounds.py): the JDL parser takes any whole number, the database does not."""
    doc = job.document
    if needs.ttl > bounds.MAX_JOB_TTL_S:
        raise bounds.jdl_value(doc, "TTL", f"must be at most {bounds.MAX_JOB_TTL_S} seconds (a job token must outlive "
                                           f"the job by {int(tokens.JOB_TOKEN_MARGIN_S)} s and lives at most "
                                           f"{int(tokens.MAX_TTL_S)} s), got {needs.ttl}")
    if needs.gpus > bounds.MAX_GPUS:
        key = "GPUCount" if doc.get("GPUCount") is not None else "GPU"
        raise bounds.jdl_value(doc, key, f"asks {needs.gpus} GPUs; a site map lists at most {bounds.MAX_GPUS}")
    named = needs.gpu_name or needs.gpu_model
    if named is not None and len(named) > bounds.MAX_NAME:
        raise bounds.jdl_value(doc, "GPU", f"names a GPU of {len(named)} characters, at most {bounds.MAX_NAME}")
    for key, size in (("MemorySize", job.memory_size), ("WorkDirectorySize", job.work_directory_size)):
        if size > bounds.MAX_JOB_BYTES:
            raise bounds.jdl_value(doc, key, f"must be at most {bounds.MAX_JOB_BYTES >> 40} TB, got {size} bytes")
    if job.user is not None and len(job.user) > bounds.MAX_NAME:
        raise bounds.jdl_value(doc, "User", f"must be at most {bounds.MAX_NAME} characters, got {len(job.user)}")
    if job.output_dir is not None and len(job.output_dir) > bounds.MAX_LFN:
        raise bounds.jdl_value(doc, "OutputDir", f"must be at most {bounds.MAX_LFN} characters, got "
                                                 f"{len(job.output_dir)}")


def get_job(db: Database, p: Principal, job_id: int) -> Dict[str, Any]:
    with db.read() as conn:
        row = conn.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
    auth.found_or_absent(p, row, job_id)
    auth.check(auth.can_view(p, row), p, "see", job_id)
    return job_dict(row)


def list_jobs(db: Database, p: Principal, query: Mapping[str, str]) -> List[Dict[str, Any]]:
    limit = query_int(query, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    offset = query_int(query, "offset", 0, 0, 1 << 40)
    conds = list_conditions(p, query)
    q = select(JOBS).where(*conds).order_by(JOBS.c.id.desc()).limit(limit).offset(offset)
    with db.read() as conn:
        return [job_dict(r) for r in conn.execute(q)]


def list_conditions(p: Principal, query: Mapping[str, str], *, states: bool = True) -> List[Any]:
    """The WHERE of GET /jobs for this caller and these filters (user, site, name, state, master, subjobs): what
    list_jobs lists and count_by_state_for counts, so that both show the same jobs to the same caller.
    `states=False` leaves the state filter out (counts by state for the other filters)."""
    user, site = bounds.query_text(query, "user"), bounds.query_text(query, "site")
    name = bounds.query_text(query, "name")
    state_codes = state_filter(query.get("state") or "")
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
    elif p.role in auth.MATCHING_ROLES:
        conds += [JOBS.c.agent == p.subject, JOBS.c.site == c.site, JOBS.c.ce == c.ce]
    elif p.role != "admin":
        raise forbidden(f"a {p.role} token may not list jobs")
    if user is not None:
        conds.append(JOBS.c.user == user)
    if site is not None:
        conds.append(JOBS.c.site == site)
    if name is not None:
        # A case-sensitive prefix, compared the same way on SQLite and PostgreSQL: LIKE is case-insensitive on
        # SQLite and would need its wildcards escaped; substr counts characters on both. No index holds names, so
        # this filters the rows the other conditions reach (a user's through ix_jobs_user), newest first.
        conds.append(func.substr(JOBS.c.name, 1, len(name)) == name)
    if states and state_codes:
        conds.append(JOBS.c.state.in_(state_codes))
    conds += _subjob_filter(p, query)
    return conds


def count_by_state_for(db: Database, p: Principal, query: Mapping[str, str]) -> Dict[str, int]:
    """How many jobs GET /jobs would list with these filters, by state, the state filter left out: one GROUP BY
    over the same rows (a user's through ix_jobs_user). States are the stored ones (a masterjob counts as SPLIT)."""
    conds = list_conditions(p, query, states=False)
    with db.read() as conn:
        rows = conn.execute(select(JOBS.c.state, func.count()).where(*conds).group_by(JOBS.c.state)).all()
    return {JobStatus(s).name: int(n) for s, n in sorted(rows, key=lambda r: int(r[0]))}


def _subjob_filter(p: Principal, query: Mapping[str, str]) -> List[Any]:
    """`master=ID`: only that masterjob's subjobs. Otherwise a user's or an admin's list leaves subjobs out unless
    `subjobs=1` (a split of 10,000 files would bury everything else; the masterjob stands for them, with its counts:
    `gridpilot masterjob ID`). A CE's and an agent's lists are of the jobs they run, subjobs included."""
    master = query_int(query, "master", 0, 1, bounds.MAX_ID)
    if master:
        return [JOBS.c.id.in_(select(SUBJOBS.c.job_id).where(SUBJOBS.c.master_id == master))]
    flag = (query.get("subjobs") or "").lower()
    if flag not in ("", "0", "1", "true", "false"):
        raise bounds.bad_field("subjobs", f"query parameter subjobs must be 1 or 0, got {flag[:40]!r}")
    if p.role in ("user", "admin") and flag not in ("1", "true"):
        return [~exists().where(SUBJOBS.c.job_id == JOBS.c.id)]
    return []


_STATE_CODE = re.compile(r"-?[0-9]{1,3}")


def state_filter(raw: str) -> List[int]:
    """The `state` query parameter: names or codes joined by commas, each state at most once."""
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if len(parts) > len(JobStatus):
        raise bounds.bad_field("state", f"the state filter names {len(parts)} states; there are {len(JobStatus)}")
    return sorted({int(parse_state(int(part) if _STATE_CODE.fullmatch(part) else part, "state filter"))
                   for part in parts})


def kill(db: Database, p: Principal, job_id: int, now: float) -> Dict[str, Any]:
    """WAITING jobs end at once; held ones are flagged, and the agent learns it from its next control poll
    (central/control.py, every few seconds) or heartbeat answer."""
    auth.require_role(p, "user", "admin", action="kill jobs")
    with db.write() as conn:
        row = auth.found_or_absent(p, locked_job(conn, db, job_id), job_id)
        auth.check(auth.can_control(p, row), p, "kill", job_id)
        state = JobStatus(row.state)
        if state is JobStatus.WAITING:
            conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(
                state=int(JobStatus.KILLED), state_since=now, updated=now, kill_reason=int(KillReason.KILLED)))
            add_state_change(conn, job_id, now, state, JobStatus.KILLED, f"KILLED by {p.describe()} while WAITING")
            return {"id": job_id, "state": "KILLED", "kill_requested": False}
        if state.is_final:
            raise conflict(f"job {job_id} has already ended ({state.name})", "already_final", state=state.name)
        if not row.kill_requested:
            conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(kill_requested=True, updated=now))
            add_trace(conn, job_id, now, "trace", f"{KILL_REQUEST_LINE} {p.describe()} while {state.name}; "
                                               "the pilot is told at its next control poll")
        return {"id": job_id, "state": state.name, "kill_requested": True}


#: How the trace line of a kill request begins: its time is when the request was taken (kill_requested_at).
KILL_REQUEST_LINE = "kill requested by"


def kill_requested_at(conn: Connection, job_id: int) -> Optional[float]:
    """When (central's clock) the current attempt's kill was requested, None if it was not: the time of its last
    kill request line (one per attempt, as kill() writes it only while kill_requested is unset, which a
    resubmission clears). Read from the trace, so that no column is added for it. A holder of the job could append
    a keyless look-alike line later; it would only spare from removal what its own job registered after the real
    request, which register_file refuses anyway."""
    if not conn.execute(select(JOBS.c.kill_requested).where(JOBS.c.id == job_id)).scalar():
        return None
    ts = conn.execute(select(func.max(TRACES.c.ts)).where(
        TRACES.c.job_id == job_id, TRACES.c.category == "trace", TRACES.c.entry_key.is_(None),
        TRACES.c.text.like(KILL_REQUEST_LINE + " %"))).scalar()
    return None if ts is None else float(ts)


# -- traces --


def read_trace(db: Database, p: Principal, job_id: int, since: Optional[float], limit: int) -> List[Dict[str, Any]]:
    with db.read() as conn:
        row = auth.found_or_absent(p, conn.execute(select(JOBS).where(JOBS.c.id == job_id)).first(), job_id)
        auth.check(auth.can_view(p, row), p, "read the trace of", job_id)
        q = (select(TRACES.c.id, TRACES.c.ts, TRACES.c.category, TRACES.c.text, TRACES.c.entry_key,
                    TRACES.c.reported_ts).where(TRACES.c.job_id == job_id))
        if since is not None:
            q = q.where(TRACES.c.ts > since)
        q = q.order_by(TRACES.c.ts, TRACES.c.id).limit(limit)
        # key: the reporter's (None for central's own lines), so a reader can tell two alike lines apart.
        # reported_ts: when the reporter says the line was written (None for central's own lines).
        # id: the line's row, so a reader that reads a window twice (tracefollow.py) keeps each line once.
        return [{"id": r.id, "ts": r.ts, "category": r.category, "text": r.text, "key": r.entry_key, "reported_ts": r.reported_ts}
                for r in conn.execute(q)]


def _trace_row(r: Any) -> Dict[str, Any]:
    # By position (the order of _TRACE_COLUMNS): a page reads 10,000 of them.
    return {"id": r[0], "ts": r[1], "category": r[2], "text": r[3], "key": r[4], "reported_ts": r[5]}


_TRACE_COLUMNS = (TRACES.c.id, TRACES.c.ts, TRACES.c.category, TRACES.c.text, TRACES.c.entry_key,
                  TRACES.c.reported_ts)


def read_trace_window(db: Database, p: Principal, job_id: int, *, categories: Optional[List[str]] = None,
                      after: Optional[int] = None, head: int, tail: int) -> Dict[str, Any]:
    """A job's trace for a page: the lines of `categories` (all when None) in the trace's order (ts, id), at most
    `head` + `tail` of them: when there are more, the first `head` and the last `tail` (a person wants how the job
    began and how it is ending), `omitted` saying how many were left out between them. `after`: only the lines
    after that line id (a live view's next lines), the first head + tail of them. The checks are read_trace's.

    Answers {"lines", "total" (lines that match), "omitted", "last_id" (the highest id among the lines, else
    `after`)}. Lines are found through ix_traces_job (job_id, ts, id); `after` is turned into its line's ts so that
    the index bounds the scan."""
    with db.read() as conn:
        row = auth.found_or_absent(p, conn.execute(select(JOBS).where(JOBS.c.id == job_id)).first(), job_id)
        auth.check(auth.can_view(p, row), p, "read the trace of", job_id)
        conds: List[Any] = [TRACES.c.job_id == job_id]
        if categories is not None:
            conds.append(TRACES.c.category.in_(categories))
        if after is not None:
            since = conn.execute(select(TRACES.c.ts).where(TRACES.c.id == after, TRACES.c.job_id == job_id)).scalar()
            if since is not None:
                conds.append(TRACES.c.ts >= since)
            conds.append(TRACES.c.id > after)
        q = select(*_TRACE_COLUMNS).where(*conds)
        cap = head + tail
        # Counted first (from the index), so that no more than the lines shown are read.
        total = int(conn.execute(select(func.count()).select_from(TRACES).where(*conds)).scalar_one())
        omitted = max(0, total - cap)
        if not omitted:
            rows = conn.execute(q.order_by(TRACES.c.ts, TRACES.c.id).limit(cap)).all()
        elif after is not None:
            rows = conn.execute(q.order_by(TRACES.c.ts, TRACES.c.id).limit(cap)).all()
        else:
            first = conn.execute(q.order_by(TRACES.c.ts, TRACES.c.id).limit(head)).all()
            last = conn.execute(q.order_by(TRACES.c.ts.desc(), TRACES.c.id.desc()).limit(tail)).all()
            rows = [*first, *last[::-1]]
    lines = [_trace_row(r) for r in rows]
    last_id = max((r["id"] for r in lines), default=after)
    return {"lines": lines, "total": total, "omitted": omitted, "last_id": last_id}


def state_history(db: Database, p: Principal, job_id: int, limit: int) -> List[Dict[str, Any]]:
    """A job's `state` lines, oldest first (at most `limit`), each with the `trace` line central wrote with it
    (add_state_change: same ts, right after it), which says who reported it and why: {"ts", "text", "state",
    "detail"}. The checks are read_trace's."""
    with db.read() as conn:
        row = auth.found_or_absent(p, conn.execute(select(JOBS).where(JOBS.c.id == job_id)).first(), job_id)
        auth.check(auth.can_view(p, row), p, "read the trace of", job_id)
        rows = conn.execute(select(TRACES.c.id, TRACES.c.ts, TRACES.c.category, TRACES.c.text).where(
            TRACES.c.job_id == job_id, TRACES.c.category.in_(("state", "trace")),
            TRACES.c.ts.in_(select(TRACES.c.ts).where(TRACES.c.job_id == job_id, TRACES.c.category == "state")
                            .order_by(TRACES.c.ts, TRACES.c.id).limit(limit)),
            TRACES.c.entry_key.is_(None)).order_by(TRACES.c.ts, TRACES.c.id)).all()
    out: List[Dict[str, Any]] = []
    for r in rows:
        if r.category == "state":
            if len(out) < limit:
                out.append({"ts": r.ts, "text": r.text, "state": tracefmt.state_of(r.text), "detail": None})
            continue
        # central's detail line follows its state line in the same transaction: same ts, next id.
        if out and out[-1]["ts"] == r.ts and out[-1]["detail"] is None:
            out[-1]["detail"] = r.text
    return out


def trace_entries(job_id: int, entries: Any, now: float, field: str = "entries") -> List[Dict[str, Any]]:
    """The rows to insert for an append's entries; a 400 naming the first bad field.

    Each line is dated `now`, when central took it: the reporter's own time (`ts`, when the line was written on the
    node, perhaps before an outage) is kept beside it as `reported_ts`, for people to read, but it never orders a
    job's trace nor places a line among central's state lines. A reader that asks for the lines `since` the last
    one it saw so also gets those delivered late. `field` names the list in errors (`reports[3].trace` in a bulk
    report)."""
    if not isinstance(entries, list) or not entries:
        raise bounds.bad_field(field, f"field '{field}' must be a non-empty list of {{ts?, category, text, key?}}")
    if len(entries) > MAX_TRACE_ENTRIES:
        where = "per request" if field == "entries" else f"in {field}"
        raise bounds.bad_field(field, f"at most {MAX_TRACE_ENTRIES} trace entries {where}, got {len(entries)}")
    out = []
    seen: Dict[str, int] = {}
    for i, e in enumerate(entries):
        at = f"{field}[{i}]"
        # "trace entry 1: key ..." for an append (its one list); the whole path where the list is in a bulk report.
        said = f"trace entry {i}: " if field == "entries" else f"{at}."
        if not isinstance(e, dict):
            raise bounds.bad_field(at, f"trace entry {i} ({at}) must be an object")
        cat, text, ts, key = e.get("category"), e.get("text"), e.get("ts"), e.get("key")
        if cat not in WRITABLE_TRACE_CATEGORIES:
            raise bounds.bad_field(f"{at}.category", f"{said}category must be one of "
                                                     f"{', '.join(WRITABLE_TRACE_CATEGORIES)} (state lines are "
                                                     f"central's own), got {cat!r:.40}")
        bounds.text(text, f"{at}.text", MAX_TRACE_TEXT, empty=True, what=f"{said}text")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts)):
            raise bounds.bad_field(f"{at}.ts", f"{said}ts must be a unix time in seconds")
        if key is not None:
            if not isinstance(key, str) or not _TRACE_KEY.fullmatch(key):
                raise bounds.bad_field(f"{at}.key", f"{said}key must be 1 to {MAX_TRACE_KEY} letters, "
                                                    f"digits or '.', '_', ':', '-', got {key!r:.80}")
            if key in seen:
                raise bounds.bad_field(f"{at}.key", f"{said}key {key!r} repeats entry {seen[key]}'s")
            seen[key] = i
        out.append({"job_id": job_id, "ts": now, "category": cat, "text": text, "entry_key": key,
                    "reported_ts": None if ts is None else float(ts)})
    return out


def insert_ignoring_repeats(db: Database) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: an entry whose (job, key) is stored already is skipped, not an error."""
    insert = postgresql.insert if db.is_postgres else sqlite.insert
    return insert(TRACES).on_conflict_do_nothing(index_elements=[TRACES.c.job_id, TRACES.c.entry_key])


def append_trace(db: Database, p: Principal, job_id: int, body: Mapping[str, Any], now: float) -> int:
    """Append entries to a job's trace; the number taken. An entry with a key already stored for this job is not
    stored again but counted as taken: the reporter repeats an append whose answer it lost, and that is a success."""
    auth.require_role(p, "job", "agent", "tower", "admin", action="append to traces")
    entries = trace_entries(job_id, body.get("entries"), now)
    with db.write() as conn:
        row = conn.execute(select(JOBS.c.id, JOBS.c.user, JOBS.c.agent, JOBS.c.site, JOBS.c.ce, JOBS.c.resubmission,
                                  JOBS.c.token_jti).where(JOBS.c.id == job_id)).first()
        auth.found_or_absent(p, row, job_id)
        auth.check(auth.can_report(p, row), p, "append to the trace of", job_id)
        conn.execute(insert_ignoring_repeats(db), entries)
    return len(entries)


def count_by_state(db: Database) -> Dict[str, int]:
    with db.read() as conn:
        rows = conn.execute(select(JOBS.c.state, func.count()).group_by(JOBS.c.state)).all()
    return {JobStatus(s).name: int(n) for s, n in rows}


__all__ = ["ApiError", "add_state_change", "add_trace", "append_trace", "count_by_state", "count_by_state_for",
           "get_job", "job_dict", "kill", "list_conditions", "list_jobs", "read_trace_window", "state_history",
           "read_trace", "resubmit_after_failure", "resubmit_values", "revoke_job_token", "submit"]

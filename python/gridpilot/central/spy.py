"""`gridpilot spy`: the end of a running job's stdout or stderr, or its work directory's listing, fetched through
its pilot (docs/central-api.md, "Spy").

Central never sees the files: it stores a request (POST /jobs/{id}/spy, the job's owner or an admin), hands it to
the job's JobAgent with the answer to its next control poll or heartbeat (the `spy` command, `pending` below), takes
the agent's answer (POST /jobs/{id}/spy/{request}/answer, the token that runs the job, for this run of it) and gives
it to whoever asked (GET /jobs/{id}/spy/{request}). DIRAC's dirac-wms-job-peek and HTCondor's condor_tail do the
same through their own pilots.

Bounded, since a user may ask as often as it likes: a request lives EXPIRES_S; at most MAX_PENDING_PER_JOB of them
per job and MAX_PENDING_PER_USER per user wait for an answer at once (429 spy_limit beyond); every request first
deletes the expired ones and the answered ones beyond KEEP_ANSWERED_PER_JOB / _PER_USER, so the table holds a few
rows per user who spied in the last minute. An answer carries at most MAX_BYTES of a file's
end (MAX_LINES lines) or MAX_ENTRIES directory entries; anything over is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import orjson
from sqlalchemy import ARRAY, BigInteger, and_, bindparam, delete, func, select, update
from sqlalchemy.engine import Connection

from gridpilot.central import auth, bounds, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.problems import ApiError, conflict, not_found
from gridpilot.states import JobStatus

JOBS = schema.jobs
SPY = schema.spy_requests

#: What a request may ask for: the payload's stdout or stderr file, or the work directory's listing.
WHATS = ("stdout", "stderr", "workdir")
#: Lines of a file's end shown when the request does not say.
DEFAULT_LINES = 50
#: The most lines a request may ask for.
MAX_LINES = 10_000
#: The most of a file's end an answer carries, in bytes read (and so in characters of its text).
MAX_BYTES = 64 << 10
#: The most work directory entries an answer lists (the top level only); `more` says there were others.
MAX_ENTRIES = 1000
#: A file name in a listing, in characters (Linux names are at most 255 bytes).
MAX_ENTRY_NAME = 255
#: Why the pilot did not show what was asked (a symbolic link, a FIFO, no such file yet...).
MAX_REASON = 1024
#: How long a request waits for its answer, and how long the answer is kept for the asker, in seconds.
EXPIRES_S = 60.0
#: Requests waiting for their pilot's answer, per job and per user (429 spy_limit beyond): a pilot answers within a
#: control poll, so only a pilot that does not answer, or a user asking faster than that, meets them.
MAX_PENDING_PER_JOB = 4
MAX_PENDING_PER_USER = 16
#: Answered requests kept (until they expire) per job and per user: a new request deletes the oldest beyond these,
#: which their asker has read by then (`spy --follow` reads each answer before it asks again). With the pending
#: ones, a user holds at most (16 + 32) x 64 KiB of answers in the table, however often and on however many jobs.
KEEP_ANSWERED_PER_JOB = 4
KEEP_ANSWERED_PER_USER = 32
#: The states in which a job has a payload's output to show. STARTED has no payload yet; ZOMBIE's pilot is silent.
SPY_STATES = frozenset({JobStatus.RUNNING, JobStatus.SAVING})
#: The kinds of entry a listing names.
ENTRY_TYPES = ("file", "dir", "link", "other")

_SELECT_JOB = select(JOBS.c.id, JOBS.c.user, JOBS.c.state, JOBS.c.resubmission, JOBS.c.agent, JOBS.c.site,
                     JOBS.c.ce, JOBS.c.token_jti).where(JOBS.c.id == bindparam("job_id"))
#: The control poll's question, for every running job every few seconds: built once (the same statement text for the
#: caches), one index range (ix_spy_requests_job) on a table of a few rows.
_SELECT_PENDING = (select(SPY.c.id, SPY.c.what, SPY.c.lines, SPY.c.byte_offset)
                   .where(SPY.c.job_id == bindparam("job_id"), SPY.c.expires >= bindparam("now"),
                          SPY.c.resubmission == bindparam("resubmission"), SPY.c.answered.is_(None))
                   .order_by(SPY.c.id))


def _job(conn: Connection, job_id: int) -> Any:
    return conn.execute(_SELECT_JOB, {"job_id": job_id}).first()


def _owned(conn: Connection, p: Principal, job_id: int, action: str) -> Any:
    row = auth.found_or_absent(p, _job(conn, job_id), job_id)
    auth.check(auth.can_control(p, row), p, action, job_id)
    return row


def request(db: Database, p: Principal, job_id: int, body: Mapping[str, Any], now: float) -> Dict[str, Any]:
    """Store a spy request for a RUNNING or SAVING job of the caller's (or any, for an admin): 409 not_running for
    a job in another state, 429 spy_limit when too many are open."""
    auth.require_role(p, "user", "admin", action="spy on jobs")
    what = body.get("what", "stdout")
    if what not in WHATS:
        raise bounds.bad_field("what", f"what must be one of {', '.join(WHATS)}, got {what!r:.40}")
    lines = bounds.whole(body.get("lines", DEFAULT_LINES), "lines", 1, MAX_LINES)
    offset = body.get("offset")
    if offset is not None:
        offset = bounds.whole(offset, "offset", 0, bounds.MAX_ID, what="offset (bytes into the file)")
        if what == "workdir":
            raise bounds.bad_field("offset", "offset is for stdout and stderr, not for the workdir listing")
    with db.write() as conn:
        row = _owned(conn, p, job_id, "spy on")
        state = JobStatus(row.state)
        if state not in SPY_STATES:
            when = "has ended" if state.is_final else "is not running yet"
            raise conflict(f"job {job_id} is {state.name}: it {when}, and spy shows a running job's output",
                           "not_running", state=state.name)
        _make_room(conn, job_id, p.subject, now)
        key = conn.execute(SPY.insert().values(
            job_id=job_id, resubmission=row.resubmission, requested_by=p.subject, what=what, lines=lines,
            byte_offset=offset, created=now, expires=now + EXPIRES_S)).inserted_primary_key
        assert key is not None
        rid = key[0]
    return {"id": int(rid), "job_id": job_id, "what": what, "lines": lines, "offset": offset,
            "expires": now + EXPIRES_S, "job_state": state.name}


def _make_room(conn: Connection, job_id: int, user: str, now: float) -> None:
    """Before a new request: the expired requests go (anyone's), 429 when too many wait for an answer, and the
    oldest answered ones of the job and the user beyond what is kept go."""
    conn.execute(delete(SPY).where(SPY.c.expires < now))
    for column, value, most, whose in ((SPY.c.job_id, job_id, MAX_PENDING_PER_JOB, f"job {job_id}"),
                                       (SPY.c.requested_by, user, MAX_PENDING_PER_USER, f"user {user}")):
        n = conn.execute(select(func.count()).select_from(SPY)
                         .where(column == value, SPY.c.answered.is_(None))).scalar() or 0
        if n >= most:
            raise ApiError(429, "spy_limit", f"{whose} has {n} spy requests waiting for the pilot's answer, at most "
                                             f"{most}; each expires {EXPIRES_S:.0f} s after it was made", limit=most)
    for column, value, keep in ((SPY.c.job_id, job_id, KEEP_ANSWERED_PER_JOB),
                                (SPY.c.requested_by, user, KEEP_ANSWERED_PER_USER)):
        old = [r.id for r in conn.execute(select(SPY.c.id).where(column == value, SPY.c.answered.is_not(None))
                                          .order_by(SPY.c.id.desc()).offset(keep - 1))]
        if old:
            conn.execute(delete(SPY).where(SPY.c.id.in_(old)))


def pending(conn: Connection, job_id: int, resubmission: int, now: float) -> List[Dict[str, Any]]:
    """The `spy` commands for a run of a job: its requests not yet answered nor expired, oldest first."""
    return [{"job_id": job_id, "command": "spy", "request": int(r.id), "what": r.what, "lines": int(r.lines),
             "offset": r.byte_offset, "max_bytes": MAX_BYTES, "max_entries": MAX_ENTRIES}
            for r in conn.execute(_SELECT_PENDING, {"job_id": job_id, "now": now, "resubmission": resubmission})]


_PENDING_COLUMNS = (SPY.c.id, SPY.c.job_id, SPY.c.resubmission, SPY.c.what, SPY.c.lines, SPY.c.byte_offset)
_PENDING_OPEN = (SPY.c.expires >= bindparam("now"), SPY.c.answered.is_(None))
# Built once: every heartbeat request runs it (a select built and compiled per request, with its IN list rendered
# value by value, cost a third of the request's CPU at 100 jobs). PostgreSQL takes the ids as one array parameter,
# so the text is the same for any number of jobs and stays prepared.
_PENDING = (select(*_PENDING_COLUMNS).where(SPY.c.job_id.in_(bindparam("ids", expanding=True)), *_PENDING_OPEN)
            .order_by(SPY.c.id))
_PENDING_PG = (select(*_PENDING_COLUMNS)
               .where(SPY.c.job_id == func.any(bindparam("ids", type_=ARRAY(BigInteger))), *_PENDING_OPEN)
               .order_by(SPY.c.id))


def pending_for(conn: Connection, jobs: Mapping[int, int], now: float) -> List[Dict[str, Any]]:
    """`pending` for many runs at once ({job_id: resubmission}), for a heartbeat request: one query."""
    if not jobs:
        return []
    q = _PENDING_PG if conn.dialect.name == "postgresql" else _PENDING
    rows = conn.execute(q, {"ids": sorted(jobs), "now": now})
    return [{"job_id": int(r.job_id), "command": "spy", "request": int(r.id), "what": r.what, "lines": int(r.lines),
             "offset": r.byte_offset, "max_bytes": MAX_BYTES, "max_entries": MAX_ENTRIES}
            for r in rows if jobs.get(int(r.job_id)) == r.resubmission]


def _check_answer(what: str, body: Mapping[str, Any]) -> Dict[str, Any]:
    """The answer's fields, bounded (400 naming the first that is not), as they are stored."""
    if body.get("refused") is not None:
        return {"refused": bounds.text(body["refused"], "refused", MAX_REASON, what="refused (the reason)")}
    if what == "workdir":
        entries = body.get("entries")
        if not isinstance(entries, list):
            raise bounds.bad_field("entries", "entries must be a list of {name, type, size, mtime}")
        if len(entries) > MAX_ENTRIES:
            raise bounds.bad_field("entries", f"entries has {len(entries)} items, at most {MAX_ENTRIES}")
        out = []
        for i, e in enumerate(entries):
            at = f"entries[{i}]"
            if not isinstance(e, dict):
                raise bounds.bad_field(at, f"{at} must be an object")
            kind = e.get("type")
            if kind not in ENTRY_TYPES:
                raise bounds.bad_field(f"{at}.type", f"{at}.type must be one of {', '.join(ENTRY_TYPES)}")
            out.append({"name": bounds.text(e.get("name"), f"{at}.name", MAX_ENTRY_NAME), "type": kind,
                        "size": bounds.whole(e.get("size"), f"{at}.size", 0, bounds.MAX_FILE_SIZE),
                        "mtime": bounds.number(e.get("mtime"), f"{at}.mtime")})
        more = body.get("more", False)
        if not isinstance(more, bool):
            raise bounds.bad_field("more", "more must be true or false")
        return {"entries": out, "more": more}
    text = bounds.text(body.get("text"), "text", MAX_BYTES, empty=True)
    pos = {k: bounds.whole(body.get(k), k, 0, bounds.MAX_FILE_SIZE) for k in ("start", "end", "size")}
    if not pos["start"] <= pos["end"] <= pos["size"] or pos["end"] - pos["start"] > MAX_BYTES:
        raise bounds.bad_field("end", f"start <= end <= size and end - start <= {MAX_BYTES} must hold, got "
                                      f"{pos['start']}, {pos['end']}, {pos['size']}")
    return {"text": text, **pos}


def answer(db: Database, p: Principal, job_id: int, request_id: int, body: Mapping[str, Any],
           now: float) -> Dict[str, Any]:
    """Store the pilot's answer to a request: only from the token that runs this run of the job (its job token or
    its agent's). A repeated answer (its reply lost) is taken as done; one for an expired request is 409."""
    auth.require_role(p, "job", "agent", "admin", action="answer spy requests")
    rs = bounds.whole(body.get("resubmission"), "resubmission", 0, bounds.MAX_INT4)
    with db.write() as conn:
        row = auth.found_or_absent(p, _job(conn, job_id), job_id)
        auth.check(auth.can_report(p, row), p, "answer spy requests for", job_id)
        req = conn.execute(select(SPY).where(SPY.c.id == request_id, SPY.c.job_id == job_id)).first()
        if req is None:
            raise not_found(f"job {job_id} has no spy request {request_id}", "spy_request_not_found")
        if rs != row.resubmission or rs != req.resubmission:
            raise conflict(f"spy request {request_id} is for run {req.resubmission} of job {job_id}, which is at "
                           f"run {row.resubmission}; the answer is for run {rs}", "stale_resubmission")
        if req.answered is not None:
            return {"id": request_id, "stored": False, "already": True}
        if req.expires < now:
            raise conflict(f"spy request {request_id} expired {now - req.expires:.0f} s ago", "spy_expired")
        stored = _check_answer(req.what, body)
        conn.execute(update(SPY).where(and_(SPY.c.id == request_id, SPY.c.answered.is_(None)))
                     .values(answered=now, answer=orjson.dumps(stored).decode()))
    return {"id": request_id, "stored": True, "already": False}


def read(db: Database, p: Principal, job_id: int, request_id: int, now: float) -> Dict[str, Any]:
    """A request and, once its pilot answered, the answer: `status` pending, answered or expired; `job_state` so
    that the asker stops waiting for a job that ended meanwhile."""
    auth.require_role(p, "user", "admin", action="read spy answers")
    with db.read() as conn:
        row = _owned(conn, p, job_id, "read spy answers of")
        req = conn.execute(select(SPY).where(SPY.c.id == request_id, SPY.c.job_id == job_id)).first()
    if req is None:
        raise not_found(f"job {job_id} has no spy request {request_id} (an answered one is kept "
                        f"{EXPIRES_S:.0f} s after it was asked)", "spy_request_not_found")
    status = "answered" if req.answered is not None else ("expired" if req.expires < now else "pending")
    got: Optional[Dict[str, Any]] = orjson.loads(req.answer) if req.answer else None
    return {"id": request_id, "job_id": job_id, "what": req.what, "lines": req.lines, "offset": req.byte_offset,
            "created": req.created, "expires": req.expires, "answered": req.answered, "status": status,
            "answer": got, "job_state": JobStatus(row.state).name}


__all__ = ["DEFAULT_LINES", "ENTRY_TYPES", "EXPIRES_S", "MAX_BYTES", "MAX_ENTRIES", "MAX_ENTRY_NAME", "MAX_LINES",
           "KEEP_ANSWERED_PER_JOB", "KEEP_ANSWERED_PER_USER", "MAX_PENDING_PER_JOB",
           "MAX_PENDING_PER_USER", "MAX_REASON", "SPY_STATES", "WHATS", "answer", "pending",
           "pending_for", "read", "request"]

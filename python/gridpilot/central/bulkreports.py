"""POST /reports: many jobs' state changes and trace lines in one request, each applied on its own.

A tower (`gridpilot tower`, which runs jobs on nodes without network through an ARC CE) learns what happened to
hundreds of jobs at once, when it downloads their results; aCT reported such a batch with bulk updates. Each report
is about one attempt of one job and may carry trace lines, a state change (with what POST /jobs/{id}/status
takes), the ARC job id and the URL of the published pilot log.

Every report is checked and applied as it would be alone (reports.apply_state_report: the transition table, the
states the role may set, a kill is final, an ended job stays ended), atomically: its trace lines, ids and state
change all, or nothing of it. One report's refusal (409 illegal_transition, 404 for a job the caller does not
hold) is its answer in `results` and leaves the others alone. A body that is not what this takes is one 400 naming
the field (`reports[3].state`), before anything is written.

Reports are applied in the order sent, so several reports of one job in one request follow each other (RUNNING,
then SAVING, then DONE). Within one report the trace lines come first, then the ids, then the state change: the
lines are what led up to it, as a pilot writes them before it reports its end.

Up to REPORTS_PER_TRANSACTION reports share one database transaction, each in a savepoint of its own: a commit (a
disk flush) per batch instead of per report, and the write lock held for a bounded time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence
from urllib.parse import urlsplit

from sqlalchemy import ARRAY, BigInteger, bindparam, func, select, update
from sqlalchemy.engine import Connection

from gridpilot.central import auth, bounds, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.jobs import add_trace, insert_ignoring_repeats, int_field, locked_job, trace_entries
from gridpilot.central.nodes import Policy
from gridpilot.central.problems import ApiError
from gridpilot.central.reports import StateReport, apply_state_report, check_attempt, parse_state_report
from gridpilot.central.settings import MAX_AUTO_RESUBMITS
from gridpilot.states import JobStatus

JOBS = schema.jobs

MAX_REPORTS = bounds.MAX_REPORTS
MAX_ARC_JOB_ID = bounds.MAX_ARC_JOB_ID
MAX_PILOT_LOG_URL = bounds.MAX_PILOT_LOG_URL
#: Reports that share a transaction (each in a savepoint).
REPORTS_PER_TRANSACTION = 100
#: Where a tower may publish a pilot log: a web server, a storage element by XRootD, a shared file system.
PILOT_LOG_SCHEMES = ("https", "http", "root", "file")
#: The roles that may send bulk reports: the tower, and an agent (for the jobs it holds) or an admin.
REPORTERS = ("tower", "agent", "admin")
#: An ARC job id: A-REX's are 50-odd letters and digits; older interfaces gave a URL ending in one. No space or
#: control character: it is printed in traces and passed to `arcstat` and the like.
_ARC_ID = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_ARC_JOB_ID)
#: Fields a report takes only with a state: they describe its state change.
_WITH_STATE = ("kill_reason", "exit_code", "resources", "message", "at")
_KNOWN = frozenset(("job_id", "resubmission", "state", "trace", "arc_job_id", "pilot_log_url", *_WITH_STATE))


@dataclass(frozen=True)
class Report:
    """One item of POST /reports, checked."""

    job_id: int
    resubmission: int
    state: Optional[StateReport]
    trace: Sequence[Dict[str, Any]]
    arc_job_id: Optional[str]
    pilot_log_url: Optional[str]


def _pilot_log_url(value: Any, field: str) -> str:
    url = bounds.text(value, field, MAX_PILOT_LOG_URL, what=f"field '{field}'")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7f for c in url):
        raise bounds.bad_field(field, f"field '{field}' must be a URL without spaces or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # read for its check: a port that is not a number from 0 to 65535 raises ValueError
    except ValueError as e:
        raise bounds.bad_field(field, f"field '{field}' is not a URL: {e}") from None
    if parts.scheme not in PILOT_LOG_SCHEMES:
        raise bounds.bad_field(field, f"field '{field}' must be a {', '.join(PILOT_LOG_SCHEMES)} URL, got scheme "
                                      f"{parts.scheme!r:.40}")
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise bounds.bad_field(field, f"field '{field}': a file URL needs an absolute path (file:///...)")
    if parts.scheme != "file" and not parts.hostname:
        raise bounds.bad_field(field, f"field '{field}': a {parts.scheme} URL needs a host")
    if parts.password is not None:
        # The URL is shown to the job's owner (gridpilot trace): a password in it would be handed to every user. A
        # user name alone is no secret (root://alice@eos.example.org//... names an XRootD login).
        raise bounds.bad_field(field, f"field '{field}' must not carry a password")
    return url


def parse_report(item: Any, i: int, now: float) -> Report:
    """reports[i], checked: a 400 naming the first bad field. Its trace lines are dated `now`, when central took
    them (jobs.trace_entries)."""
    at = f"reports[{i}]"
    if not isinstance(item, dict):
        raise bounds.bad_field(at, f"{at} must be an object {{job_id, resubmission, state?, trace?, ...}}")
    unknown = sorted(k for k in item if k not in _KNOWN)
    if unknown:
        # A field central does not know is most likely a misspelt one, whose report would otherwise be taken
        # without it (a kill reason lost, say).
        raise bounds.bad_field(f"{at}.{unknown[0]}", f"{at}.{unknown[0]:.40} is not a field of a report; the fields "
                                                     f"are {', '.join(sorted(_KNOWN))}")
    job_id = int_field(item.get("job_id"), f"{at}.job_id", lo=1, hi=bounds.MAX_ID)
    resubmission = int_field(item.get("resubmission"), f"{at}.resubmission", lo=0, hi=bounds.MAX_INT4)
    state = None
    if item.get("state") is not None:
        state = parse_state_report(item, f"{at}.")
    else:
        for k in _WITH_STATE:
            if item.get(k) is not None:
                raise bounds.bad_field(f"{at}.{k}", f"{at}.{k} describes a state change: give it with a state")
    raw_trace = item.get("trace")
    trace = [] if raw_trace is None or raw_trace == [] else trace_entries(job_id, raw_trace, now, f"{at}.trace")
    arc_id = item.get("arc_job_id")
    if arc_id is not None and (not isinstance(arc_id, str) or not _ARC_ID.fullmatch(arc_id)):
        raise bounds.bad_field(f"{at}.arc_job_id", f"{at}.arc_job_id must be 1 to {MAX_ARC_JOB_ID} printable ASCII "
                                                   f"characters without spaces, got {arc_id!r:.80}")
    url = item.get("pilot_log_url")
    if url is not None:
        url = _pilot_log_url(url, f"{at}.pilot_log_url")
    return Report(job_id, resubmission, state, trace, arc_id, url)


def parse_reports(body: Mapping[str, Any], now: float) -> List[Report]:
    items = body.get("reports")
    if not isinstance(items, list):
        raise bounds.bad_field("reports", "field 'reports' must be a list of {job_id, resubmission, state?, trace?, "
                                          "arc_job_id?, pilot_log_url?, ...}")
    if len(items) > MAX_REPORTS:
        raise bounds.bad_field("reports", f"at most {MAX_REPORTS} reports per request, got {len(items)}")
    return [parse_report(item, i, now) for i, item in enumerate(items)]


def _lock_in_id_order(conn: Connection, db: Database, ids: Sequence[int]) -> None:
    """PostgreSQL: lock the batch's jobs in id order before any is changed, so two requests over the same jobs (a
    bulk report and a bulk heartbeat) cannot deadlock; SQLite's write lock covers the whole database anyway."""
    if db.is_postgres and ids:
        conn.execute(select(JOBS.c.id).where(JOBS.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))))
                     .order_by(JOBS.c.id).with_for_update(), {"ids": sorted(set(ids))})


def _record_ids(conn: Connection, p: Principal, row: Any, r: Report, now: float) -> None:
    """The ARC job id and pilot log URL, each with a trace line when it is new or changes (a tower that resubmits
    a job the ARC CE lost gets a new ARC id in the same attempt: the trace keeps both)."""
    values: Dict[str, Any] = {}
    by = p.describe()
    if r.arc_job_id is not None and r.arc_job_id != row.arc_job_id:
        values["arc_job_id"] = r.arc_job_id
        add_trace(conn, row.id, now, "trace", f"ARC job {r.arc_job_id} (reported by {by})")
    if r.pilot_log_url is not None and r.pilot_log_url != row.pilot_log_url:
        values["pilot_log_url"] = r.pilot_log_url
        add_trace(conn, row.id, now, "trace", f"pilot log at {r.pilot_log_url} (reported by {by})")
    if values:
        conn.execute(update(JOBS).where(JOBS.c.id == row.id).values(updated=now, **values))


def _apply(conn: Connection, db: Database, p: Principal, r: Report, now: float, max_auto_resubmits: int,
           node_policy: Optional[Policy]) -> Dict[str, Any]:
    if r.state is not None:
        # Before the job is looked up, as POST /jobs/{id}/status does: the refusal says nothing of which jobs exist.
        auth.check_settable(p, r.state.state)
    row = auth.found_or_absent(p, locked_job(conn, db, r.job_id), r.job_id)
    auth.check(auth.can_report(p, row), p, "report on", r.job_id)
    check_attempt(row, r.job_id, r.resubmission)
    if r.trace:
        conn.execute(insert_ignoring_repeats(db), list(r.trace))
    _record_ids(conn, p, row, r, now)
    if r.state is None:
        return {"job_id": r.job_id, "ok": True, "state": JobStatus(row.state).name, "resubmission": row.resubmission}
    out = apply_state_report(conn, db, p, row, r.state, now, max_auto_resubmits=max_auto_resubmits,
                             node_policy=node_policy)
    return {"job_id": r.job_id, "ok": True, "state": out["state"], "resubmission": out["resubmission"]}


def _refused(job_id: int, e: ApiError) -> Dict[str, Any]:
    return {"job_id": job_id, "ok": False, "status": e.status, "error": e.body()["error"]}


def apply_reports(db: Database, p: Principal, body: Mapping[str, Any], now: float, *,
                  max_auto_resubmits: int = MAX_AUTO_RESUBMITS,
                  node_policy: Optional[Policy] = None) -> Dict[str, Any]:
    """{"results": [...]}, one per report in the order sent: {"job_id", "ok": true, "state", "resubmission"} (the
    job's state and attempt after it), or {"job_id", "ok": false, "status", "error": {"code", "message", ...}}."""
    auth.require_role(p, *REPORTERS, action="send bulk reports")
    reports = parse_reports(body, now)
    results: List[Dict[str, Any]] = []
    for start in range(0, len(reports), REPORTS_PER_TRANSACTION):
        batch = reports[start:start + REPORTS_PER_TRANSACTION]
        with db.write() as conn:
            _lock_in_id_order(conn, db, [r.job_id for r in batch])
            for r in batch:
                try:
                    with conn.begin_nested():
                        results.append(_apply(conn, db, p, r, now, max_auto_resubmits, node_policy))
                except ApiError as e:
                    results.append(_refused(r.job_id, e))
    return {"results": results}


__all__ = ["MAX_REPORTS", "PILOT_LOG_SCHEMES", "REPORTERS", "Report", "apply_reports", "parse_report",
           "parse_reports"]

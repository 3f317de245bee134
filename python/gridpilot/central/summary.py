"""A user's jobs at a glance, for `gridpilot top`: GET /api/v1/jobs/summary (docs/central-api.md, "Job summary").

One request answers a whole refresh of the view, whatever the number of jobs: the count of jobs per state, per
site and state, and, for at most `running` of the jobs a pilot holds (ASSIGNED, STARTED, RUNNING, SAVING; the most
recently changed first), the newest human line of each one's trace. The cost on the database is two queries: one
GROUP BY over the jobs the caller may see (through ix_jobs_user for a user), and one over the shown jobs that
reads each one's newest line through ix_traces_job (a correlated subquery, LIMIT 1 per job), never a whole trace.

A user sees only its own jobs (`user` may name only itself); an admin every job, or one user's with `user`. Other
roles are refused: their own listings (GET /jobs) already serve them.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from sqlalchemy import func, select

from gridpilot.central import auth, bounds, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.jobs import query_int
from gridpilot.central.problems import forbidden
from gridpilot.states import JobStatus

JOBS = schema.jobs
TRACES = schema.traces

#: The query parameters taken; any other is refused, naming it (a misspelt filter would otherwise widen the answer).
PARAMETERS = ("user", "site", "running")
#: Running jobs shown with their newest line by default, and at most.
DEFAULT_RUNNING = 20
MAX_RUNNING = 100
#: Sites listed at most (those with the most jobs a pilot holds first); `sites_total` says how many there were.
MAX_SITES = 100
#: The newest line's text is cut to this many characters (a trace line may hold 64 kB): `truncated` says so.
MAX_LINE_TEXT = 500
#: The trace categories the newest line is taken from: people's sentences. `proc`/`procfmt`/`usage` lines are
#: resource numbers the pilot writes every few minutes, which would hide what the job last did.
LINE_CATEGORIES = ("state", "trace")
#: The states a pilot holds a job in: the jobs shown with their newest line, and the `running` count of a site.
HELD_STATES = (JobStatus.ASSIGNED, JobStatus.STARTED, JobStatus.RUNNING, JobStatus.SAVING)


def kind_of(state: JobStatus) -> str:
    """The column a state counts in for a site: waiting, running (held by a pilot), done, or error (every other
    end, and ZOMBIE: a job whose pilot went silent is a problem to look at)."""
    if state is JobStatus.WAITING:
        return "waiting"
    if state in HELD_STATES:
        return "running"
    if state in (JobStatus.DONE, JobStatus.DONE_WARN):
        return "done"
    return "error"


KINDS = ("running", "waiting", "done", "error")


def _check_query(query: Mapping[str, str]) -> None:
    for name in query.keys():
        if name not in PARAMETERS:
            raise bounds.bad_field(str(name)[:64], f"unknown query parameter {str(name)[:64]!r}; this route takes "
                                                   f"{', '.join(PARAMETERS)}")


def summary(db: Database, p: Principal, query: Mapping[str, str], now: float) -> Dict[str, Any]:
    auth.require_role(p, "user", "admin", action="read a job summary")
    _check_query(query)
    user, site = bounds.query_text(query, "user"), bounds.query_text(query, "site")
    running = query_int(query, "running", DEFAULT_RUNNING, 0, MAX_RUNNING)
    if p.role == "user":
        if user is not None and user != p.subject:
            raise forbidden(f"a user token sees only its own jobs, not {user!r}'s")
        user = p.subject
    conds = []
    if user is not None:
        conds.append(JOBS.c.user == user)
    if site is not None:
        conds.append(JOBS.c.site == site)
    held = [int(s) for s in HELD_STATES]
    newest = (select(TRACES.c.id).where(TRACES.c.job_id == JOBS.c.id, TRACES.c.category.in_(LINE_CATEGORIES))
              .order_by(TRACES.c.ts.desc(), TRACES.c.id.desc()).limit(1).correlate(JOBS).scalar_subquery())
    shown_q = (select(JOBS.c.id, JOBS.c.name, JOBS.c.user, JOBS.c.state, JOBS.c.state_since, JOBS.c.site,
                      JOBS.c.node, newest.label("line_id"))
               .where(*conds, JOBS.c.state.in_(held))
               .order_by(JOBS.c.state_since.desc(), JOBS.c.id.desc()).limit(running))
    with db.read() as conn:
        counts = conn.execute(select(JOBS.c.site, JOBS.c.state, func.count()).where(*conds)
                              .group_by(JOBS.c.site, JOBS.c.state)).all()
        rows = conn.execute(shown_q).all() if running else []
        line_ids = [r.line_id for r in rows if r.line_id is not None]
        lines = {r.id: r for r in conn.execute(
            # One character past the cut, so that `truncated` can tell a line cut from one of exactly that length.
            select(TRACES.c.id, TRACES.c.ts, TRACES.c.category, func.substr(TRACES.c.text, 1, MAX_LINE_TEXT + 1)
                   .label("text")).where(TRACES.c.id.in_(line_ids))
        )} if line_ids else {}
    states: Dict[str, int] = {}
    sites: Dict[Optional[str], Dict[str, Any]] = {}
    for s, code, n in counts:
        state = JobStatus(code)
        states[state.name] = states.get(state.name, 0) + int(n)
        entry = sites.setdefault(s, {"site": s, **{k: 0 for k in KINDS}, "states": {}})
        entry[kind_of(state)] += int(n)
        entry["states"][state.name] = int(n)
    held_total = sum(states.get(s.name, 0) for s in HELD_STATES)
    # Held jobs first, then the most jobs; the jobs no pilot took yet (no site) last.
    ordered = sorted(sites.values(), key=lambda e: (e["site"] is None, -e["running"], -sum(e["states"].values()),
                                                    e["site"] or ""))
    return {
        "user": user,
        "site": site,
        "now": now,
        "total": sum(states.values()),
        "states": {s.name: states[s.name] for s in JobStatus if s.name in states},
        "sites": ordered[:MAX_SITES],
        "sites_total": len(ordered),
        "running": [_shown(r, lines.get(r.line_id)) for r in rows],
        "running_total": held_total,
        "running_limit": running,
    }


def _shown(r: Any, line: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"id": r.id, "name": r.name, "user": r.user, "state": JobStatus(r.state).name,
                           "state_since": r.state_since, "site": r.site, "node": r.node, "line": None}
    if line is not None:
        text = str(line.text)
        out["line"] = {"ts": line.ts, "category": line.category, "text": text[:MAX_LINE_TEXT],
                       "truncated": len(text) > MAX_LINE_TEXT}
    return out


__all__ = ["DEFAULT_RUNNING", "HELD_STATES", "KINDS", "LINE_CATEGORIES", "MAX_LINE_TEXT", "MAX_RUNNING", "MAX_SITES",
           "PARAMETERS", "kind_of", "summary"]

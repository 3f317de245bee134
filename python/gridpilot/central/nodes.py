"""Worker nodes at central: their failures, counted per host within a window, and nodeBad.

A node (keyed by its host name, the site map's `node`) fails in four ways that say more about the node than about
the job (docs/central.md, "Nodes and nodeBad"):

- error_connecting: a pilot on it could not reach central for a while (reported once it can again);
- stall: a JobAgent's monitoring loop stopped turning (its runner's watchdog reports it, pilot/watchdog.py);
- sandbox_create: a job ended with kill reason SANDBOX_CREATE (its work directory or sandbox could not be made);
- oom_system: a job ended with kill reason OOM_SYSTEM (killed by the kernel or the cgroup OOM killer).

The first two come through POST /nodes/events; the last two from the job's final state report, which central reads
itself (`note_job_end`), so nothing is reported twice. When a host has `Policy.bad_after` counted failures within
`Policy.window_s` (since it was last cleared), it is nodeBad: the broker refuses it work (`check_match`) until an
admin clears it (`clear`, `gridpilot central nodes --clear HOST`).

What is not counted: a report overlapping (in time) one of the same kind already counted for the same host (each
job on a node sees the same outage), and an outage (or a stall) of a host overlapping those of SHARED_OUTAGE_HOSTS
other hosts or more, which is central's or the network's, not the node's (a central restart must not make every
node bad; nor a central that hangs, blocking every agent's loop in its calls). Both are kept, with `counted` false,
for the operator to read.

Authorization: an agent token reports only for a job it holds, and the host is that job's node (set at the match,
from the agent's own site map), never a value of the report; a ce token for hosts of its own site; an admin for any.
Only an admin clears. The decisions are pure functions (`is_repeat`, `is_shared_outage`, `verdict`), tested without
a database; the rest reads and writes the `nodes` and `node_events` tables the same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from gridpilot.central import auth, bounds, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.problems import ApiError, forbidden, not_found
from gridpilot.states import KillReason

NODES = schema.nodes
EVENTS = schema.node_events
PROBES = schema.node_probes

ERROR_CONNECTING = "error_connecting"
STALL = "stall"
SANDBOX_CREATE = "sandbox_create"
OOM_SYSTEM = "oom_system"
#: Every kind, in the order listings show them.
KINDS: Tuple[str, ...] = (ERROR_CONNECTING, STALL, SANDBOX_CREATE, OOM_SYSTEM)
#: The kinds a pilot (or a CE, an admin) reports through POST /nodes/events; the others central reads from the
#: job's final state report.
REPORTED_KINDS: Tuple[str, ...] = (ERROR_CONNECTING, STALL)
#: The kill reasons that count against the node the job ran on.
JOB_END_KINDS: Mapping[KillReason, str] = {KillReason.SANDBOX_CREATE: SANDBOX_CREATE,
                                           KillReason.OOM_SYSTEM: OOM_SYSTEM}
#: Kinds that last a while: a report of one overlapping a counted one of the same host is the same failure.
LASTING_KINDS = frozenset({ERROR_CONNECTING, STALL})
#: An outage that this many other hosts saw too (overlapping in time) is central's or the network's.
SHARED_OUTAGE_HOSTS = 2
#: A host asking for work refreshes its last_seen at most this often (a write), so matching stays a read.
SEEN_EVERY_S = 60.0
#: The longest stall or outage a report may give: 30 days, longer than any slot.
MAX_EVENT_SECONDS = 30 * 86400.0
#: A report's free text (what the pilot saw), cut rather than refused beyond this.
MAX_DETAIL = 1024
#: The listing's longest page.
MAX_LIST = 10_000

#: Defaults and bounds of the central settings (settings.py, `central serve --node-bad-after/--node-bad-window`).
DEFAULT_BAD_AFTER = 5
MAX_BAD_AFTER = 1000
DEFAULT_WINDOW_S = 3600.0
MIN_WINDOW_S = 60.0
MAX_WINDOW_S = 7 * 86400.0


@dataclass(frozen=True)
class Policy:
    """When a host is nodeBad: `bad_after` counted failures within `window_s` seconds (0: never)."""

    bad_after: int = DEFAULT_BAD_AFTER
    window_s: float = DEFAULT_WINDOW_S


# -- the decisions: pure functions --

Span = Tuple[float, float]


def overlaps(a: Span, b: Span) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def span_of(ts: float, seconds: float) -> Span:
    """When a failure lasted: it ended when central learned of it, `seconds` before that it began."""
    return (ts - seconds, ts)


def is_repeat(kind: str, span: Span, counted_same_host: Iterable[Tuple[str, Span]]) -> bool:
    """A lasting failure (an outage, a stall) that overlaps one of the same kind already counted for the host: the
    same failure seen by another job (or reported again). Job ends are each their own."""
    if kind not in LASTING_KINDS:
        return False
    return any(k == kind and overlaps(span, s) for k, s in counted_same_host)


def is_shared_outage(kind: str, span: Span, other_hosts: Iterable[Tuple[str, Span]]) -> bool:
    """An outage (or a stall: a loop blocked on a central that does not answer) that at least SHARED_OUTAGE_HOSTS
    other hosts saw at the same time: not this node's fault. `other_hosts`: their failures of the same kind."""
    if kind not in LASTING_KINDS:
        return False
    return len({h for h, s in other_hosts if overlaps(span, s)}) >= SHARED_OUTAGE_HOSTS


def in_window(ts: float, now: float, cleared_at: Optional[float], policy: Policy) -> bool:
    return ts > now - policy.window_s and (cleared_at is None or ts > cleared_at)


def verdict(counted: Sequence[Tuple[str, float]], now: float, cleared_at: Optional[float],
            policy: Policy) -> Optional[str]:
    """Why the host is nodeBad, or None: `counted` are its counted failures (kind, time)."""
    if policy.bad_after <= 0:
        return None
    kinds = Counter(k for k, ts in counted if in_window(ts, now, cleared_at, policy))
    total = sum(kinds.values())
    if total < policy.bad_after:
        return None
    parts = ", ".join(f"{kinds[k]} {k}" for k in KINDS if kinds[k])
    return f"{total} failures within {policy.window_s:.0f} s ({parts}), at least {policy.bad_after} make a node bad"


# -- the database --


def _insert(db: Database) -> Any:
    return (pg_insert if db.is_postgres else sqlite_insert)(NODES)


def _node_row(conn: Connection, db: Database, host: str, site: Optional[str], ce: Optional[str], now: float) -> Any:
    """The host's row, made when central had not heard of it, locked (PostgreSQL) until the transaction ends, so
    two reports for one host are counted one after the other."""
    conn.execute(_insert(db).values(host=host, site=site, ce=ce, first_seen=now, last_seen=now, bad=False)
                 .on_conflict_do_nothing(index_elements=["host"]))
    q = select(NODES).where(NODES.c.host == host)
    if db.is_postgres:
        q = q.with_for_update()
    return conn.execute(q).one()


def ensure(conn: Connection, db: Database, host: str, site: Optional[str], ce: Optional[str], now: float) -> Any:
    """The host's row, made when central had not heard of it (a node probe, nodeprobes.py, may come first), locked
    on PostgreSQL until the transaction ends."""
    return _node_row(conn, db, host, site, ce, now)


def record(conn: Connection, db: Database, *, host: str, site: Optional[str], ce: Optional[str], kind: str,
           seconds: float, job_id: Optional[int], by: str, detail: Optional[str], now: float,
           policy: Policy) -> Dict[str, Any]:
    """Store one failure of `host` and mark the host nodeBad when it reaches the policy's count. Within the caller's
    write transaction. Returns {"counted", "bad", "reason"}."""
    row = _node_row(conn, db, host, site, ce, now)
    span = span_of(now, seconds)
    oldest = now - policy.window_s - MAX_EVENT_SECONDS
    # Events that ended before the window began and lasted less than the longest report cannot overlap this one.
    conn.execute(delete(EVENTS).where(EVENTS.c.host == host, EVENTS.c.ts < oldest))
    counted = True
    if kind in LASTING_KINDS:
        mine = conn.execute(select(EVENTS.c.kind, EVENTS.c.ts, EVENTS.c.seconds).where(
            EVENTS.c.host == host, EVENTS.c.kind == kind, EVENTS.c.counted.is_(True),
            EVENTS.c.ts >= span[0])).all()
        if is_repeat(kind, span, [(k, span_of(ts, s)) for k, ts, s in mine]):
            counted = False
    if counted and kind in LASTING_KINDS:
        others = conn.execute(select(EVENTS.c.host, EVENTS.c.ts, EVENTS.c.seconds).where(
            EVENTS.c.kind == kind, EVENTS.c.host != host, EVENTS.c.ts >= span[0])).all()
        overlapping = [(h, span_of(ts, s)) for h, ts, s in others]
        if is_shared_outage(kind, span, overlapping):
            counted = False
            # The hosts that saw it before this report did not know it was shared: theirs stop counting too.
            for h in {h for h, s in overlapping if overlaps(span, s)}:
                conn.execute(update(EVENTS).where(EVENTS.c.host == h, EVENTS.c.kind == kind,
                                                  EVENTS.c.ts >= span[0]).values(counted=False))
    conn.execute(EVENTS.insert().values(host=host, kind=kind, ts=now, seconds=seconds, job_id=job_id,
                                        counted=counted, reported_by=by[:bounds.MAX_NAME], detail=detail))
    values: Dict[str, Any] = {"last_seen": max(now, row.last_seen)}
    if site and row.site != site:
        values.update(site=site, ce=ce)
    reason = None
    if counted and not row.bad:
        history = conn.execute(select(EVENTS.c.kind, EVENTS.c.ts).where(
            EVENTS.c.host == host, EVENTS.c.counted.is_(True), EVENTS.c.ts > now - policy.window_s)).all()
        reason = verdict([(k, ts) for k, ts in history], now, row.cleared_at, policy)
        if reason is not None:
            values.update(bad=True, bad_since=now, bad_reason=reason, bad_source="failures")
    conn.execute(update(NODES).where(NODES.c.host == host).values(**values))
    return {"host": host, "kind": kind, "counted": counted, "bad": bool(row.bad) or reason is not None,
            "reason": reason if reason is not None else row.bad_reason}


def note_job_end(conn: Connection, db: Database, job: Any, kill_reason: Optional[KillReason], by: str, now: float,
                 policy: Policy) -> Optional[Dict[str, Any]]:
    """A job ended: when its kill reason says the node failed it (JOB_END_KINDS), count that against its node.
    Within the state report's transaction."""
    kind = JOB_END_KINDS.get(kill_reason) if kill_reason is not None else None
    if kind is None or kill_reason is None or not job.node:
        return None
    return record(conn, db, host=job.node, site=job.site, ce=job.ce, kind=kind, seconds=0.0, job_id=job.id,
                  by=by, detail=f"job {job.id} ended with kill reason {kill_reason.name}", now=now, policy=policy)


def report(db: Database, p: Principal, body: Mapping[str, Any], now: float, policy: Policy) -> Dict[str, Any]:
    """POST /nodes/events: {"kind", "seconds", "job_id"?, "host"?, "detail"?}. An agent names a job it holds (the
    host is that job's node); a ce token names a host of its site (and may name a job there); an admin any host."""
    auth.require_role(p, "agent", "ce", "admin", action="report node failures")
    kind = body.get("kind")
    if kind not in REPORTED_KINDS:
        raise bounds.bad_field("kind", f"field 'kind' must be one of {', '.join(REPORTED_KINDS)} (job ends count "
                                       f"from their state report), got {kind!r:.40}")
    seconds = bounds.number(body.get("seconds"), "seconds", 0, MAX_EVENT_SECONDS,
                            what="field 'seconds' (how long the stall or outage lasted)")
    job_id = body.get("job_id")
    if job_id is not None:
        job_id = bounds.whole(job_id, "job_id", 1, bounds.MAX_ID, what="field 'job_id'")
    host = bounds.optional_text(body.get("host"), "host", bounds.MAX_NAME, what="field 'host'")
    detail = body.get("detail")
    if detail is not None:
        detail = bounds.text(detail[:MAX_DETAIL] if isinstance(detail, str) else detail, "detail", MAX_DETAIL,
                             empty=True, what="field 'detail'") or None
    with db.write() as conn:
        site, ce = None, None
        if job_id is not None:
            job = conn.execute(select(schema.jobs.c.id, schema.jobs.c.user, schema.jobs.c.node, schema.jobs.c.site,
                                      schema.jobs.c.ce, schema.jobs.c.agent, schema.jobs.c.resubmission,
                                      schema.jobs.c.token_jti).where(schema.jobs.c.id == job_id)).first()
            # An agent sees only the jobs it holds: another's is answered as if absent, like GET /jobs/{id}.
            job = auth.found_or_absent(p, job, job_id)
            if not job.node:
                raise ApiError(409, "no_node", f"job {job_id} is not on a node (it is not matched): nothing to count")
            if host is not None and host != job.node:
                raise forbidden(f"job {job_id} runs on {job.node!r}, not {host!r}: a report is for the job's own "
                                f"node")
            host, site, ce = job.node, job.site, job.ce
        elif p.role == "agent":
            raise bounds.bad_field("job_id", "an agent reports for a job it runs: field 'job_id' is required (the "
                                             "node is the job's)")
        if host is None:
            raise bounds.bad_field("host", "field 'host' (or 'job_id') is required")
        if p.role == "ce":
            known = conn.execute(select(NODES.c.site).where(NODES.c.host == host)).scalar()
            if (site is not None and site != p.claims.site) or (known is not None and known != p.claims.site):
                raise forbidden(f"{p.describe()} is bound to site {p.claims.site!r}; host {host!r} is not there")
            site, ce = p.claims.site, ce or p.claims.ce
        return record(conn, db, host=host, site=site, ce=ce, kind=kind, seconds=seconds, job_id=job_id,
                      by=p.describe(), detail=detail, now=now, policy=policy)


def refusal(host: str, row: Any) -> Optional[ApiError]:
    """The broker's answer to a host whose row (bad, bad_since, bad_reason) says it is nodeBad, or None."""
    if row is None or not row.bad:
        return None
    return ApiError(409, "node_bad", f"node {host} is nodeBad at central: {row.bad_reason}; no job is matched to it "
                                     f"until an operator clears it (`gridpilot central nodes --clear {host}`)",
                    host=host, bad_since=row.bad_since)


def check_match(db: Database, host: Optional[str], site: Optional[str], ce: Optional[str], now: float) -> None:
    """Before a match: 409 node_bad for a nodeBad host; the host's last_seen refreshed (at most every
    SEEN_EVERY_S, so a match stays a read) and the host made known."""
    if not host:
        return
    with db.lookup() as conn:
        row = conn.execute(select(NODES.c.bad, NODES.c.bad_reason, NODES.c.bad_since, NODES.c.last_seen,
                                  NODES.c.site).where(NODES.c.host == host)).first()
    if row is None or now - row.last_seen >= SEEN_EVERY_S or row.site != site:
        with db.write(durable=False) as conn:  # a lost last_seen is written again at the next match
            _node_row(conn, db, host, site, ce, now)
            conn.execute(update(NODES).where(NODES.c.host == host).values(last_seen=now, site=site, ce=ce))
    refused = refusal(host, row)
    if refused is not None:
        raise refused


def list_nodes(db: Database, p: Principal, query: Mapping[str, str], now: float, policy: Policy) -> Dict[str, Any]:
    """GET /nodes[?site=S&arch=A&gpu=MODEL&bad=true&limit=N]: admin, any site; a ce token, its own site. Each node
    with what its latest probe says (nodeprobes.py; null where it posted none): arch, x86-64 level, the runtimes that
    start a container, its GPU models. `arch` is exact; `gpu` a case-insensitive substring of a GPU model, as the
    JDL's GPU = "MI50" is (docs/node-check.md)."""
    auth.require_role(p, "admin", "ce", action="list nodes")
    site = bounds.query_text(query, "site")
    if p.role == "ce":
        if site is not None and site != p.claims.site:
            raise forbidden(f"{p.describe()} is bound to site {p.claims.site!r}; it may not list site {site!r}")
        site = p.claims.site
    bad_raw = query.get("bad", "")
    if bad_raw not in ("", "true", "false", "1", "0"):
        raise bounds.bad_field("bad", f"query parameter bad must be true or false, got {bad_raw[:40]!r}")
    arch = bounds.query_text(query, "arch", 32)
    gpu = bounds.query_text(query, "gpu")
    raw_limit = query.get("limit", "")
    limit = MAX_LIST
    if raw_limit:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit[:8]) <= MAX_LIST or len(raw_limit) > 8:
            raise bounds.bad_field("limit", f"query parameter limit must be a whole number from 1 to {MAX_LIST}")
        limit = int(raw_limit)
    q = select(NODES, *_PROBE_COLUMNS).select_from(NODES.outerjoin(PROBES, PROBES.c.host == NODES.c.host))
    if site is not None:
        q = q.where(NODES.c.site == site)
    if arch is not None:
        q = q.where(PROBES.c.arch == arch)
    if gpu is not None:
        q = q.where(func.lower(PROBES.c.gpus).contains(gpu.lower(), autoescape=True))
    if bad_raw in ("true", "1"):
        q = q.where(NODES.c.bad.is_(True))
    elif bad_raw in ("false", "0"):
        q = q.where(NODES.c.bad.is_(False))
    q = q.order_by(NODES.c.site, NODES.c.host).limit(limit)
    with db.read() as conn:
        rows = conn.execute(q).all()
        events = conn.execute(select(EVENTS.c.host, EVENTS.c.kind, EVENTS.c.ts).where(
            EVENTS.c.host.in_([r.host for r in rows]), EVENTS.c.counted.is_(True),
            EVENTS.c.ts > now - policy.window_s)).all() if rows else []
    by_host: Dict[str, Counter] = {}
    cleared = {r.host: r.cleared_at for r in rows}
    for h, k, ts in events:
        if in_window(ts, now, cleared[h], policy):
            by_host.setdefault(h, Counter())[k] += 1
    out = []
    for r in rows:
        counts = by_host.get(r.host, Counter())
        out.append({
            "host": r.host, "site": r.site, "ce": r.ce, "first_seen": r.first_seen, "last_seen": r.last_seen,
            "bad": bool(r.bad), "bad_since": r.bad_since, "bad_reason": r.bad_reason, "bad_source": r.bad_source,
            "cleared_by": r.cleared_by, "cleared_at": r.cleared_at,
            "failures": sum(counts.values()), "failures_by_kind": {k: counts[k] for k in KINDS if counts[k]},
            **_probe_fields(r),
        })
    return {"nodes": out, "window_s": policy.window_s, "bad_after": policy.bad_after}


#: What GET /nodes shows of a node's latest probe (schema.node_probes, written by nodeprobes.py).
_PROBE_COLUMNS = (PROBES.c.arch, PROBES.c.x86_64_level, PROBES.c.runtimes, PROBES.c.gpus,
                  PROBES.c.pilot_version, PROBES.c.ok.label("probe_ok"), PROBES.c.posted.label("probed"),
                  PROBES.c.changed.label("probe_changed"))


def _probe_fields(r: Any) -> Dict[str, Any]:
    probed = r.probed is not None
    return {"arch": r.arch, "x86_64_level": r.x86_64_level,
            "runtimes": r.runtimes.split() if probed else None,
            "gpus": r.gpus.split("\n") if probed and r.gpus else ([] if probed else None),
            "pilot_version": r.pilot_version, "probe_ok": None if r.probe_ok is None else bool(r.probe_ok),
            "probed": r.probed, "probe_changed": r.probe_changed}


def clear(db: Database, p: Principal, body: Mapping[str, Any], now: float) -> Dict[str, Any]:
    """POST /nodes/clear {"host"}: admin only. The host is matched again; its failures so far no longer count."""
    auth.require_role(p, "admin", action="clear nodes")
    host = bounds.text(body.get("host"), "host", bounds.MAX_NAME, what="field 'host'")
    with db.write() as conn:
        q = select(NODES.c.bad, NODES.c.bad_reason).where(NODES.c.host == host)
        if db.is_postgres:
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise not_found(f"central has not heard of node {host!r}", "node_not_found")
        conn.execute(update(NODES).where(NODES.c.host == host).values(
            bad=False, bad_since=None, bad_reason=None, bad_source=None, cleared_by=p.subject[:bounds.MAX_NAME],
            cleared_at=now))
    return {"host": host, "bad": False, "was_bad": bool(row.bad), "was_reason": row.bad_reason,
            "cleared_by": p.subject, "cleared_at": now}


def bad_by_site(db: Database) -> Dict[str, int]:
    """nodeBad hosts per site, 0 for a site whose known nodes are all good, for /metrics ("" for a host whose site
    is unknown)."""
    with db.read() as conn:
        rows = conn.execute(select(NODES.c.site, func.sum(case((NODES.c.bad.is_(True), 1), else_=0)))
                            .group_by(NODES.c.site)).all()
    return {str(s or ""): int(n) for s, n in rows}


__all__ = ["ERROR_CONNECTING", "JOB_END_KINDS", "KINDS", "OOM_SYSTEM", "Policy", "REPORTED_KINDS", "SANDBOX_CREATE",
           "STALL", "bad_by_site", "check_match", "clear", "ensure", "is_repeat", "is_shared_outage", "list_nodes",
           "note_job_end", "record", "refusal", "report", "verdict"]


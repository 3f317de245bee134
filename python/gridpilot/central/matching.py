"""The broker's side of the queue: match (assign the best WAITING job that fits a site map) and probe (count them).

The decisions are broker.py's pure functions; this file reads the queue in rank order and assigns atomically.

A match reads candidates and judges them (Requirements included) outside any write transaction, then assigns the
chosen one in a short write transaction that re-checks only that row: still WAITING, same resubmission. So the
broker's CPU never holds SQLite's single write lock (every writer, heartbeats included, would wait behind it) nor a
PostgreSQL row lock. What each user's candidates may cost one match is bounded by broker.Share; docs/broker.md.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from sqlalchemy import bindparam, or_, select, update

from gridpilot import tracefmt
from gridpilot.central import auth, broker, nodes, offers as offers_mod, schema, tokens
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.jobs import add_trace, output_dir_of
from gridpilot.central.problems import bad_request, forbidden
from gridpilot.jdl.requirements import SiteView
from gridpilot.states import JobStatus

JOBS = schema.jobs
log = logging.getLogger("gridpilot.central")

#: The broker reads WAITING jobs in rank order this many at a time, for at most MATCH_ROUNDS batches. Jobs whose
#: Requirements already failed on this site map, rows already read, and users who have had their share of this
#: match are filtered out in SQL, so each round reads new rows.
MATCH_BATCH = 16
MATCH_ROUNDS = 8
#: Texts of Requirements not compiled in this process, read per batch (more than a match may compile anyway).
TEXTS_PER_READ = 16


# Only what the broker decides on: the JDL and the rest of the chosen job come back from the assigning UPDATE, and a
# Requirements text only when this process has not compiled it yet (`_texts`): up to 16 KB each, read once.
_CANDIDATE_COLUMNS = (
    JOBS.c.id, JOBS.c.user, JOBS.c.cores, JOBS.c.memory_mb, JOBS.c.disk_mb, JOBS.c.ttl, JOBS.c.gpus, JOBS.c.gpu_name,
    JOBS.c.price, JOBS.c.priority, JOBS.c.req_hash, JOBS.c.created, JOBS.c.resubmission,
    JOBS.c.gpu_model, JOBS.c.gpu_vendor, JOBS.c.gpu_arch, JOBS.c.arch,
    JOBS.c.cpu_level, JOBS.c.require_container, JOBS.c.min_pilot_version,
)


#: Stand for "no bound" in the prepared queries below: the largest values of the columns' types.
_NO_BOUND_INT = (1 << 31) - 1
_NO_BOUND_BIG = (1 << 62)
_QUERIES: Dict[Tuple[bool, bool, bool, bool], Any] = {}


def _waiting_statement(users: bool, nousers: bool, arch: bool = False, no_container: bool = False) -> Any:
    """The broker's scan as a statement built once per shape: building a SQLAlchemy select per request costs
    more CPU than running it. Bounds and lists are bound parameters (`expanding` for lists)."""
    key = (users, nousers, arch, no_container)
    q = _QUERIES.get(key)
    if q is None:
        q = select(*_CANDIDATE_COLUMNS).where(
            JOBS.c.state == int(JobStatus.WAITING),
            JOBS.c.cores <= bindparam("max_cores"),
            JOBS.c.ttl <= bindparam("max_ttl"),
            JOBS.c.memory_mb <= bindparam("max_memory_mb"),
            JOBS.c.disk_mb <= bindparam("max_disk_mb"),
            JOBS.c.gpus <= bindparam("max_gpus"),
            JOBS.c.req_hash.notin_(bindparam("false_hashes", expanding=True)),
            JOBS.c.id.notin_(bindparam("skip_ids", expanding=True)),
            JOBS.c.user.notin_(bindparam("skip_users", expanding=True)),
        )
        if users:
            q = q.where(JOBS.c.user.in_(bindparam("users", expanding=True)))
        if nousers:
            q = q.where(JOBS.c.user.notin_(bindparam("nousers", expanding=True)))
        if arch:
            # A row from before schema step 14 said no arch: any node may take it, as then.
            q = q.where(or_(JOBS.c.arch.is_(None), JOBS.c.arch == bindparam("arch")))
        if no_container:
            q = q.where(JOBS.c.require_container == 0)
        q = q.where(JOBS.c.cpu_level <= bindparam("max_cpu_level"))
        q = q.order_by(JOBS.c.priority.desc(), JOBS.c.price.desc(), JOBS.c.id).limit(bindparam("limit"))
        _QUERIES[key] = q
    return q


def _waiting_query(
    site: broker.Site, false_hashes: Sequence[str], skip_ids: Sequence[int], skip_users: Sequence[str], limit: int
) -> Tuple[Any, Dict[str, Any]]:
    """WAITING jobs that fit the site's resources (broker.sql_limits), in rank order: statement and parameters."""
    lim = broker.sql_limits(site)

    def bound(v: Optional[float], top: int) -> int:
        # The columns hold whole numbers, so "<= 7200.5" is "<= 7200"; and the parameter must fit the column type.
        return top if v is None else min(top, math.floor(v))

    params: Dict[str, Any] = {
        "max_cores": bound(lim.max_cores, _NO_BOUND_INT), "max_ttl": bound(lim.max_ttl, _NO_BOUND_INT),
        "max_memory_mb": bound(lim.max_memory_mb, _NO_BOUND_BIG), "max_disk_mb": bound(lim.max_disk_mb, _NO_BOUND_BIG),
        "max_gpus": lim.max_gpus, "false_hashes": list(false_hashes), "skip_ids": list(skip_ids),
        "skip_users": list(skip_users), "limit": limit, "users": list(lim.users), "nousers": list(lim.nousers),
        "arch": lim.arch, "max_cpu_level": lim.max_cpu_level,
    }
    return _waiting_statement(bool(lim.users), bool(lim.nousers), lim.arch is not None, not lim.container_ok), params


_TEXTS = select(JOBS.c.req_hash, JOBS.c.requirements).where(JOBS.c.id.in_(bindparam("ids", expanding=True)))


def _texts(conn: Any, rows: Sequence[Any], cache: broker.RequirementCache, limit: int) -> Dict[str, str]:
    """The Requirements texts (by hash) of the rows' that this process has not compiled, the first `limit` of them
    in rank order: a row whose text is not read this time is passed over, not turned down."""
    wanted: Dict[str, int] = {}
    for r in rows:
        if len(wanted) >= limit:
            break
        if r.req_hash and r.req_hash not in wanted and not cache.knows(r.req_hash):
            wanted[r.req_hash] = r.id
    if not wanted:
        return {}
    return {h: t for h, t in conn.execute(_TEXTS, {"ids": list(wanted.values())}) if t}


def _bound_site_map(p: Principal, body: Mapping[str, Any]) -> broker.Site:
    """The posted site map, checked against the agent's binding: its site and CE are the token's. An agent that does
    not say its pilot's version is older than any minimum (broker.UNSAID_VERSION): it is from before versions were
    sent."""
    c = p.claims
    sm = dict(body)
    if p.role in auth.MATCHING_ROLES and sm.get("pilot_version") is None:
        sm["pilot_version"] = broker.UNSAID_VERSION
    for field, bound in (("site", c.site), ("ce", c.ce)):
        given = sm.get(field)
        if given is not None and given != bound:
            raise forbidden(f"this {p.role} token is bound to {field} {bound!r}, not {given!r}")
        sm[field] = bound
    try:
        return broker.parse_site_map(sm)
    except broker.SiteMapError as e:
        raise bad_request(str(e), "bad_site_map", field=e.field) from None


_ASSIGN = update(JOBS).where(
    JOBS.c.id == bindparam("b_id"), JOBS.c.state == int(JobStatus.WAITING),
    JOBS.c.resubmission == bindparam("b_resubmission"),
).values(
    state=int(JobStatus.ASSIGNED), state_since=bindparam("b_now"), updated=bindparam("b_now"),
    heartbeat=bindparam("b_now"),
    site=bindparam("b_site"), ce=bindparam("b_ce"), node=bindparam("b_node"), agent=bindparam("b_agent"),
    token_jti=bindparam("b_jti"), token_exp=bindparam("b_exp"),
).returning(JOBS.c.id, JOBS.c.user, JOBS.c.name, JOBS.c.jdl, JOBS.c.output_dir)


class _InFlight:
    """The jobs this process's threads are assigning now, or assigned after a given batch was read: its other
    matches pass them over without asking the database.

    Matches run in threads of the serving process; agents matching at once read the same batch and choose the same
    best job, and without this all but one of them lost it in the database one after another (a locking SELECT and
    a transaction each), so a match's CPU grew with the agents matching beside it. A job an assignment here did not
    get is released at once. One it got is passed over only by batches read before that assignment committed: a
    batch read later does not hold it unless it is WAITING again (an assignment lost with a database crash), and
    then it is matched at once. Assignments are remembered RECENT_S, longer than a batch is judged."""

    RECENT_S = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: Set[int] = set()
        #: job id -> when (time.monotonic) its assignment here committed, oldest first.
        self._recent: "OrderedDict[int, float]" = OrderedDict()

    def take(self, job_id: int, read_at: float) -> bool:
        """True when no other match of this process holds the job, nor got it after `read_at` (when the batch
        holding it was read); it is then held until `release`."""
        with self._lock:
            while self._recent and next(iter(self._recent.values())) < read_at - self.RECENT_S:
                self._recent.popitem(last=False)
            if job_id in self._busy or self._recent.get(job_id, -math.inf) >= read_at:
                return False
            self._busy.add(job_id)
            return True

    def release(self, job_id: int, assigned: bool) -> None:
        with self._lock:
            self._busy.discard(job_id)
            if assigned:
                self._recent.pop(job_id, None)
                self._recent[job_id] = time.monotonic()


#: One per database a process serves (tests open many in one process, with the same ids in each).
_IN_FLIGHT: "weakref.WeakKeyDictionary[Database, _InFlight]" = weakref.WeakKeyDictionary()
_IN_FLIGHT_LOCK = threading.Lock()


def _in_flight(db: Database) -> _InFlight:
    with _IN_FLIGHT_LOCK:
        got = _IN_FLIGHT.get(db)
        if got is None:
            got = _IN_FLIGHT[db] = _InFlight()
        return got


@dataclass
class MatchResult:
    job: Optional[Dict[str, Any]]
    scanned: int


_LOCK_WAITING = (select(JOBS.c.id).where(JOBS.c.id == bindparam("id"), JOBS.c.state == int(JobStatus.WAITING))
                 .with_for_update(skip_locked=True))


def _lock_waiting(conn: Any, job_id: int) -> bool:
    """PostgreSQL: lock the chosen row if it is still WAITING and no other matcher holds it; False otherwise.

    Only the chosen row is locked, not the batch read to choose it. Locking the whole batch (`FOR UPDATE SKIP
    LOCKED` on the scan) made concurrent matchers hide the queue from each other: 16 agents each holding 16 rows
    while they picked one left the others an empty scan, so agents were told "no job" while 48 of 160 waited
    (tests/test_central_concurrency.py)."""
    return conn.execute(_LOCK_WAITING, {"id": job_id}).first() is not None


def _assign(
    db: Database, p: Principal, site: broker.Site, chosen: Any, now: float, key: tokens.Keys
) -> Optional[Tuple[str, Any]]:
    """Assign the chosen job to the agent if it is still WAITING at the resubmission it was read at: (job token,
    the assigned row), or None when another matcher got it first (or it was killed meanwhile)."""
    # Submit bounds TTL so that this fits a token (bounds.MAX_JOB_TTL_S); the cap keeps a row written before that
    # bound from failing every match that offers its TTL.
    ttl = min(chosen.ttl + tokens.JOB_TOKEN_MARGIN_S, tokens.MAX_TTL_S)
    # Minted before the transaction, to keep it short; a token for an assignment that does not happen is never
    # stored as any job's, so it is worth nothing (auth.holds_job).
    token, claims = tokens.mint(key, "job", chosen.user, job_id=chosen.id, resubmission=chosen.resubmission,
                                ttl_s=ttl, now=now)
    # Not durable (db.write): if a database crash forgets this assignment, the job is WAITING again and is
    # matched anew with a new job token; the first pilot's token then no longer matches the job's (auth.holds_job)
    # and its first report is refused, so the job still runs once. That saves a disk flush per match.
    with db.write(durable=False) as conn:
        if db.is_postgres and not _lock_waiting(conn, chosen.id):
            return None
        assigned = conn.execute(_ASSIGN, {
            "b_id": chosen.id, "b_resubmission": chosen.resubmission, "b_now": now, "b_site": site.site,
            "b_ce": site.ce, "b_node": site.node, "b_agent": p.subject, "b_jti": claims.jti,
            "b_exp": claims.expires,
        }).first()
        if assigned is None:
            return None
        where = "/".join(x for x in (site.site, site.ce, site.node) if x)
        # JAliEn's sentence names the site; who took it, and where exactly, follows as gridpilot's own line.
        add_trace(conn, chosen.id, now, "state", tracefmt.assigned(site.site or "unknown"))
        add_trace(conn, chosen.id, now, "trace", offers_mod.assigned_line(p.subject, where))
    return token, assigned


def match(
    db: Database, p: Principal, body: Mapping[str, Any], now: float, *, key: tokens.Keys,
    cache: broker.RequirementCache, storage: Sequence[Mapping[str, Any]] = (),
    offers: Optional[offers_mod.Recorder] = None, policy: broker.Policy = broker.DEFAULT_POLICY,
) -> MatchResult:
    """Assign the best WAITING job that fits the posted site map to the calling agent, atomically.

    Each round reads a batch of candidates (no lock: a read transaction, or autocommit on PostgreSQL), judges them
    with broker.choose, and assigns the best in its own short write transaction; if another matcher assigned it
    meanwhile, the next best of the batch is tried, then a new batch. None blocks on another's judging, none is
    told "no job" while unheld jobs that fit wait within the rounds, and a job is assigned once (the UPDATE's
    WHERE re-checks it; on PostgreSQL the row is first locked SKIP LOCKED, so no matcher waits on another's row).
    """
    auth.require_role(p, *sorted(auth.MATCHING_ROLES), action="match jobs")
    site = _bound_site_map(p, body)
    # A nodeBad host gets no work until an operator clears it: refused, saying why (409 node_bad).
    nodes.check_match(db, site.node, site.site, site.ce, now)
    if offers is not None:
        # Kept for `gridpilot why` (offers.py): at most one small write per shape every few seconds. With the
        # version the pilot is taken for when it said none, so `why` judges the offer as the match did.
        said = body if body.get("pilot_version") is not None else {**body, "pilot_version": site.pilot_version}
        offers.record(db, site, said, now)
    refused = broker.site_refusal(site, policy)
    if refused is not None:
        # Central's policy turns this node down for every job (a pilot too old, a CPU below the level): no scan.
        # `gridpilot why` says it per job from the offer just kept.
        log.info("no job for %s: %s", "/".join(x for x in (site.site, site.ce, site.node) if x), refused[1])
        return MatchResult(None, 0)
    view = SiteView(broker.site_attributes(site))
    # Texts this process already knows to be false on such a site map are left out of the first scan.
    verdicts: Dict[str, bool] = dict.fromkeys(cache.known_false(view), False)
    share = broker.Share()
    skip: List[int] = []
    scanned = 0
    won: Optional[Tuple[str, Any]] = None
    chosen = None
    rounds = 0
    in_flight = _in_flight(db)
    while rounds < MATCH_ROUNDS:
        q, params = _waiting_query(site, [h for h, ok in verdicts.items() if not ok], skip,
                                   share.passed_over(), MATCH_BATCH)
        read_at = time.monotonic()
        with db.lookup() as conn:
            rows = conn.execute(q, params).all()
            texts = _texts(conn, rows, cache, TEXTS_PER_READ)
        if not rows:
            if share.new_turn():
                continue  # the other users' candidates ran out: those who had their turn get another
            break
        scanned += len(rows)
        rounds += 1
        while rows:
            chosen = broker.choose(rows, site, view, cache, verdicts, share=share, texts=texts, policy=policy)
            if chosen is None:
                break
            if in_flight.take(chosen.id, read_at):
                try:
                    won = _assign(db, p, site, chosen, now, key)
                finally:
                    in_flight.release(chosen.id, won is not None)
                if won is not None:
                    break
            # Another matcher got it (or it was killed) since it was read, or another thread of this process is
            # assigning it or just did: the next best of this batch.
            skip.append(chosen.id)
            rows = [r for r in rows if r.id != chosen.id]
        if won is not None:
            break
        # Rows not left out by their hash (false here) or their user (passed over; a resting user's rows are read
        # again at their next turn) are left out by id: resources that do not fit, no budget left to judge them.
        passed = share.exhausted | share.resting
        skip.extend(r.id for r in rows if verdicts.get(r.req_hash) is not False and r.user not in passed)
    if won is None or chosen is None:
        return MatchResult(None, scanned)
    token, assigned = won
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
#: Texts of Requirements not compiled in this process that one probe reads.
PROBE_TEXTS = 64


def probe(db: Database, p: Principal, body: Mapping[str, Any], cache: broker.RequirementCache,
          policy: broker.Policy = broker.DEFAULT_POLICY) -> Dict[str, Any]:
    """How many WAITING jobs could run on this site map (counting at most PROBE_SCAN), assigning none.

    For CEs deciding whether to submit pilots, and for agents deciding whether to start. Requirements are judged
    within one match's budget (broker.Share, without the limit on turn-downs: the probe reads all its rows in one
    query), so the count is a lower bound when the queue holds many costly texts.
    """
    auth.require_role(p, "ce", "agent", "tower", "admin", action="probe the queue")
    if p.role == "admin":
        try:
            site = broker.parse_site_map(body)
        except broker.SiteMapError as e:
            raise bad_request(str(e), "bad_site_map", field=e.field) from None
    else:
        site = _bound_site_map(p, body)
    if broker.site_refusal(site, policy) is not None:
        return {"waiting": 0, "scanned": 0, "capped": False}
    view = SiteView(broker.site_attributes(site))
    verdicts: Dict[str, bool] = {}
    share = broker.Share(rejections=None)
    with db.lookup() as conn:
        q, params = _waiting_query(site, (), (), (), PROBE_SCAN)
        rows = conn.execute(q, params).all()
        texts = _texts(conn, rows, cache, PROBE_TEXTS)
    n = sum(1 for r in rows
            if broker.choose([r], site, view, cache, verdicts, share=share, texts=texts, policy=policy) is not None)
    return {"waiting": n, "scanned": len(rows), "capped": len(rows) >= PROBE_SCAN}

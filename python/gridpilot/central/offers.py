"""The offers agents made when they asked for work, kept so that `gridpilot why ID` can say, for a WAITING job, what
each kind of slot seen lately lacks (GET /jobs/{id}/why).

Stored in a table (schema.match_offers), not in each process's memory: several `central serve` processes on one
PostgreSQL must all give the same answer, whichever took the agents' matches. One row per site, CE and shape (what a
slot of that kind offers whatever its time left: cores, memory, disk, arch, platform, AVX, GPUs, partitions), the
newest site map of that shape in it; at most MAX_SHAPES rows per site and CE, none older than KEEP_S.

A match stays cheap: `Recorder` writes a shape's row at most every WRITE_EVERY_S per process (it remembers when it
last did, for at most REMEMBERED keys), so a site whose pilots ask many times a second costs one small write per
shape every few seconds. The TTL answered for a shape is therefore that of a slot seen at most WRITE_EVERY_S
before the `seen` time given back.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Tuple

import orjson
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import OperationalError

from gridpilot.central import auth, broker, explain, schema
from gridpilot.central.auth import Principal
from gridpilot.central.db import Database
from gridpilot.central.problems import conflict
from gridpilot.states import CONTAINER_GIVE_BACK, JobStatus

log = logging.getLogger("gridpilot.central")

OFFERS = schema.match_offers
JOBS = schema.jobs
TRACES = schema.traces

#: A shape's row is rewritten at most this often by one process.
WRITE_EVERY_S = 5.0
#: Shapes kept per site and CE (the newest): more kinds of slot than a CE has.
MAX_SHAPES = 16
#: Offers older than this are dropped (when their site and CE write again) and never shown.
KEEP_S = 3600.0
#: Keys remembered by one process's Recorder (site, CE, shape): the oldest are forgotten first.
REMEMBERED = 4096
#: Longest stored site map (JSON): past it only the keys the broker reads itself are kept (extra keys, read only
#: by Requirements, go).
MAX_OFFER_CHARS = 16 << 10
#: Offers one answer lists at most (newest first).
MAX_LISTED = MAX_SHAPES * 8

#: A job's newest trace lines read for the pilots that gave it back for its container (its state lines and
#: central's own: the payload's proc and usage lines are not read).
MAX_TRACE_LINES = 2000
#: gridpilot's line beside JAliEn's "Job ASSIGNED to: SITE": where exactly (site/CE/node) and to which agent.
_ASSIGNED = "ASSIGNED to agent "

#: The site map keys broker.parse_site_map reads itself.
_BROKER_KEYS = ("ttl", "cores", "memory_mb", "disk_mb", "platform", "arch", "avx", "gpus", "ce", "site", "partition",
                "users", "nousers", "close_se", "cvmfs_revision", "node", "x86_64_level", "cpu_features",
                "pilot_version", "containers")


def shape_of(site: broker.Site) -> str:
    """What makes one kind of slot differ from another at a site and CE, hashed: not the time left, nor the node."""
    key = [site.cores, site.memory_mb, site.disk_mb, site.platform, site.arch, site.avx,
           # described(): two slots whose GPUs differ only by architecture are two kinds; label() when none is said.
           sorted(g.described() for g in site.gpus), list(site.partitions)]
    if site.x86_64_level is not None or site.pilot_version is not None or site.containers is not None:
        # Added only when said, so the shapes of site maps from before keep their hashes.
        key += [site.x86_64_level, site.pilot_version, None if site.containers is None else sorted(site.containers)]
    return hashlib.sha1(orjson.dumps(key)).hexdigest()


def _offer_text(body: Mapping[str, Any], site: broker.Site) -> str:
    offer = dict(body)
    offer["site"], offer["ce"] = site.site, site.ce
    text = orjson.dumps(offer).decode()
    if len(text) > MAX_OFFER_CHARS:
        text = orjson.dumps({k: offer[k] for k in _BROKER_KEYS if k in offer}).decode()
    return text


def _insert(db: Database) -> Any:
    return (pg_insert if db.is_postgres else sqlite_insert)(OFFERS)


class Recorder:
    """One process's writer of offers (matching.match calls `record` for each match request)."""

    def __init__(self, every_s: float = WRITE_EVERY_S, remembered: int = REMEMBERED) -> None:
        self.every_s = every_s
        self.remembered = remembered
        self._lock = threading.Lock()
        self._written: OrderedDict[Tuple[str, str, str], float] = OrderedDict()

    def _due(self, key: Tuple[str, str, str], now: float) -> bool:
        with self._lock:
            last = self._written.get(key)
            if last is not None and 0 <= now - last < self.every_s:
                return False
            self._written[key] = now
            self._written.move_to_end(key)
            while len(self._written) > self.remembered:
                self._written.popitem(last=False)
            return True

    def record(self, db: Database, site: broker.Site, body: Mapping[str, Any], now: float) -> bool:
        """Keep the offer (the checked site map `site`, posted as `body`); False when this shape was written less
        than every_s ago by this process, and nothing is written."""
        where, ce, shape = site.site or "", site.ce or "", shape_of(site)
        if not self._due((where, ce, shape), now):
            return False
        text = _offer_text(body, site)
        ins = _insert(db).values(site=where, ce=ce, shape=shape, seen=now, node=site.node, offer=text)
        upsert = ins.on_conflict_do_update(index_elements=["site", "ce", "shape"],
                                           set_={"seen": ins.excluded.seen, "node": ins.excluded.node,
                                                 "offer": ins.excluded.offer})
        newest = (select(OFFERS.c.shape).where(OFFERS.c.site == where, OFFERS.c.ce == ce)
                  .order_by(OFFERS.c.seen.desc()).limit(MAX_SHAPES))
        prune = delete(OFFERS).where(OFFERS.c.site == where, OFFERS.c.ce == ce).where(
            (OFFERS.c.seen < now - KEEP_S) | OFFERS.c.shape.notin_(newest.scalar_subquery()))
        try:
            # Not durable: an offer lost in a database crash is written again at the shape's next match. Two
            # transactions, each one statement: two processes pruning each other's fresh rows inside one could
            # deadlock on PostgreSQL.
            with db.write(durable=False) as conn:
                conn.execute(upsert)
            with db.write(durable=False) as conn:
                conn.execute(prune)
        except OperationalError as e:
            # A busy SQLite, a PostgreSQL deadlock or serialization failure: the match this serves must not fail
            # for its offer, which the shape's next match writes (its time is forgotten here).
            with self._lock:
                self._written.pop((where, ce, shape), None)
            log.warning("the offer of %s/%s was not kept: %s", where, ce, str(e).splitlines()[0][:200])
            return False
        return True


def purge_stale(conn: Any, now: float) -> int:
    """Drop the offers older than KEEP_S of every site and CE (the sweeper's turn: a CE that no longer asks for
    work never prunes its own rows); the number dropped."""
    return int(conn.execute(delete(OFFERS).where(OFFERS.c.seen < now - KEEP_S)).rowcount or 0)


def assigned_line(agent: str, where: str) -> str:
    """The trace line of a match: which agent took the job, and where (site/CE/node)."""
    return f"{_ASSIGNED}{agent} at {where}"


def container_give_backs(conn: Any, job_id: int, since: float) -> List[Tuple[str, str]]:
    """(site/CE/node, the pilot's message) for each time since `since` a pilot gave the job back because no container
    works for it on its node, oldest first: its state line names why, the match line before it where."""
    rows = conn.execute(select(TRACES.c.category, TRACES.c.text)
                        .where(TRACES.c.job_id == job_id, TRACES.c.ts >= since,
                               TRACES.c.category.in_(("state", "trace")))
                        .order_by(TRACES.c.ts.desc(), TRACES.c.id.desc()).limit(MAX_TRACE_LINES)).all()
    out: List[Tuple[str, str]] = []
    where = None
    for category, text in reversed(rows):
        if category == "trace" and text.startswith(_ASSIGNED):
            where = text.rpartition(" at ")[2]
        elif category == "state" and CONTAINER_GIVE_BACK in text and where is not None:
            out.append((where, text[text.index(CONTAINER_GIVE_BACK):]))
    return out


def _summary(site: broker.Site) -> Dict[str, Any]:
    return {"cores": site.cores, "memory_mb": site.memory_mb, "disk_mb": site.disk_mb, "ttl": site.ttl,
            "arch": site.arch, "platform": site.platform, "gpus": [g.label() for g in site.gpus],
            "x86_64_level": None if site.x86_64_level is None else f"x86-64-v{site.x86_64_level}", "avx": site.avx,
            "pilot_version": site.pilot_version,
            "containers": None if site.containers is None else list(site.containers)}


def why(db: Database, p: Principal, job_id: int, now: float,
        policy: broker.Policy = broker.DEFAULT_POLICY) -> Dict[str, Any]:
    """GET /jobs/{id}/why: for the caller's WAITING job, each offer kept (newest first) and the first clause that
    fails there. The job's owner or an admin; another user's job is a 404 as for every job read; a job that is not
    WAITING a 409 job_not_waiting (it matched, or ended: its trace says what happened)."""
    auth.require_role(p, "user", "admin", action="ask why a job waits")
    with db.lookup() as conn:
        row = conn.execute(select(JOBS).where(JOBS.c.id == job_id)).first()
    row = auth.found_or_absent(p, row, job_id)
    auth.check(auth.can_control(p, row), p, "analyse", job_id)
    state = JobStatus(row.state)
    if state is not JobStatus.WAITING:
        raise conflict(f"job {job_id} is {state.name}, not WAITING: `why` explains only a waiting job "
                       f"(`gridpilot trace {job_id}` says what happened)", "job_not_waiting", state=state.name)
    with db.lookup() as conn:
        rows = conn.execute(select(OFFERS).where(OFFERS.c.seen >= now - KEEP_S)
                            .order_by(OFFERS.c.seen.desc(), OFFERS.c.site, OFFERS.c.ce).limit(MAX_LISTED)).all()
        given_back = container_give_backs(conn, job_id, now - KEEP_S)
    out: List[Dict[str, Any]] = []
    for r in rows:
        entry: Dict[str, Any] = {"site": r.site, "ce": r.ce, "node": r.node, "seen": r.seen}
        try:
            site = broker.parse_site_map(orjson.loads(r.offer))
        except (orjson.JSONDecodeError, broker.SiteMapError) as e:
            # Written by an older version with other bounds: said, not a 500.
            entry.update(clause="unreadable", reason=f"the stored offer cannot be read: {e}", offer={})
        else:
            entry.update(explain.explain(row, site, given_back, policy), offer=_summary(site))
        out.append(entry)
    return {"id": job_id, "state": state.name, "window_s": KEEP_S, "offers": out}


__all__ = ["KEEP_S", "MAX_SHAPES", "Recorder", "WRITE_EVERY_S", "assigned_line", "container_give_backs", "purge_stale",
           "shape_of", "why"]

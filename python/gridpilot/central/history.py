"""Central's own history (schema.central_history, step 17): what the web view's overview draws over the last hours.

Every central host takes a snapshot from its sweeper's loop (sweeper.py; with `serve --workers N` the one worker
that sweeps, central/workers.py) at most every `history_interval_s`: the jobs per state (grid-wide, one GROUP BY, as
/metrics counts them) and the match requests, jobs assigned and heartbeat job-updates this host served since its
processes started (Metrics.served: the workers' sum). Rows are keyed by host, so with several hosts behind a proxy
each writes its own; rows older than `history_keep_s` are deleted in batches, one batch per snapshot.

Rates come from the differences between a host's consecutive snapshots, summed over hosts. A counter that went down
is a restart (a new process counts from 0): the difference is then the new count, so no rate is ever negative. The
state counts are the newest snapshot of any host (every host counts the same database).

A failed snapshot is logged and the sweeper goes on: the history is a view, never a reason to stop sweeping.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from sqlalchemy import delete, select

from gridpilot.central import schema
from gridpilot.central.db import Database
from gridpilot.central.jobs import count_by_state
from gridpilot.states import JobStatus

log = logging.getLogger("gridpilot.central.history")

HISTORY = schema.central_history
#: The counters a snapshot keeps (Metrics.served's keys; columns of central_history).
COUNTERS = ("matches", "assigned", "heartbeats")
#: Rows deleted per snapshot at most: a long backlog (history_keep_s shortened) goes over the next snapshots.
PRUNE_BATCH = 5000
#: The current rates are taken over the snapshots of this last stretch of time.
RATE_WINDOW_S = 600.0
#: Points per drawn series at most: snapshots are grouped into this many time buckets.
MAX_POINTS = 240

Served = Callable[[], Mapping[str, float]]


def host_name() -> str:
    """This host's key in the history."""
    return socket.gethostname()[:255] or "central"


def snapshot(db: Database, host: str, served: Mapping[str, float], now: float) -> None:
    """Write one snapshot: the jobs per state now and this host's cumulative counters."""
    states = count_by_state(db)
    with db.write(durable=False) as conn:  # a lost snapshot is a gap in a chart
        conn.execute(HISTORY.insert().values(host=host[:255], ts=now, states=json.dumps(states, sort_keys=True),
                                             **{k: int(served.get(k, 0)) for k in COUNTERS}))


def prune(db: Database, now: float, keep_s: float, batch: int = PRUNE_BATCH) -> int:
    """Delete up to `batch` of the snapshots older than `keep_s`, oldest first; returns how many."""
    with db.write(durable=False) as conn:
        ids = select(HISTORY.c.id).where(HISTORY.c.ts < now - keep_s).order_by(HISTORY.c.ts).limit(batch)
        # Neither SQLite (as built by default) nor PostgreSQL takes DELETE ... LIMIT: the batch's ids instead.
        res = conn.execute(delete(HISTORY).where(HISTORY.c.id.in_(ids.scalar_subquery())))
    return int(res.rowcount or 0)


@dataclass
class Recorder:
    """The sweeper's hook (Sweeper(after=...)): a snapshot and a pruning batch when `interval_s` has passed since
    the last one. Never raises."""

    db: Database
    served: Served
    interval_s: float
    keep_s: float
    host: str = field(default_factory=host_name)
    clock: Callable[[], float] = time.time
    last: float = -math.inf

    def __call__(self) -> None:
        if self.interval_s <= 0:
            return
        t = self.clock()
        # 5 % of slack: the sweeper's passes come at its own interval, a little late each, and a snapshot due at
        # 60 s should not wait for the pass after when the pass comes at 59.9 s.
        if t - self.last < self.interval_s * 0.95:
            return
        self.last = t
        try:
            snapshot(self.db, self.host, self.served(), t)
            prune(self.db, t, self.keep_s)
        except Exception:
            log.exception("central history: snapshot failed; the next in %.0f s", self.interval_s)


# -- reading --

@dataclass
class Row:
    host: str
    ts: float
    states: Dict[str, int]
    counters: Dict[str, int]


def read(db: Database, since: float, until: float) -> List[Row]:
    with db.read() as conn:
        rows = conn.execute(select(HISTORY).where(HISTORY.c.ts >= since, HISTORY.c.ts <= until)
                            .order_by(HISTORY.c.ts, HISTORY.c.id)).all()
    return [Row(r.host, float(r.ts), _states(r.states), {k: int(getattr(r, k)) for k in COUNTERS}) for r in rows]


def _states(text: str) -> Dict[str, int]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def increase(before: int, after: int) -> int:
    """What a cumulative counter counted between two snapshots; after a restart (it went down) what the new process
    counted since it started."""
    return after - before if after >= before else after


def rates(rows: Sequence[Row], since: float) -> Dict[str, Optional[float]]:
    """Per second over the snapshots from `since` on, summed over hosts (each host's counted over the time its own
    snapshots cover); None when no host has two snapshots there."""
    by_host = _by_host([r for r in rows if r.ts >= since])
    out: Dict[str, Optional[float]] = {k: None for k in COUNTERS}
    for host_rows in by_host.values():
        if len(host_rows) < 2 or host_rows[-1].ts <= host_rows[0].ts:
            continue
        span = host_rows[-1].ts - host_rows[0].ts
        for k in COUNTERS:
            counted = sum(increase(a.counters[k], b.counters[k]) for a, b in zip(host_rows, host_rows[1:]))
            out[k] = (out[k] or 0.0) + counted / span
    return out


def _by_host(rows: Sequence[Row]) -> Dict[str, List[Row]]:
    out: Dict[str, List[Row]] = {}
    for r in rows:
        out.setdefault(r.host, []).append(r)
    return out


@dataclass
class Overview:
    """What the overview draws: jobs per state over time, rates over time, the current rates, and how many hosts
    wrote in the window."""

    since: float
    until: float
    states: Dict[str, List[Tuple[float, float]]]
    rates: Dict[str, List[Tuple[float, float]]]
    current: Dict[str, Optional[float]]
    hosts: List[str]
    snapshots: int


def overview(db: Database, now: float, seconds: float) -> Overview:
    """The last `seconds` before `now`, at most MAX_POINTS points per series. 7 days of two hosts at 60 s are 20,160
    snapshots: their counters are read as plain tuples in host order and walked once (a restart inside a bucket must
    be seen; SQLite's window functions took 2-3 times as long here), and the states (JSON) are read only of the
    snapshot drawn for each bucket."""
    since = now - seconds
    width = max(seconds / MAX_POINTS, 1.0)
    h = HISTORY.c
    with db.read() as conn:
        rows = conn.execute(select(h.host, h.ts, h.id, *[h[k] for k in COUNTERS])
                            .where(h.ts >= since, h.ts <= now).order_by(h.host, h.ts, h.id)).all()
        # Per bucket and host: the time the snapshot pairs ending there cover and what each counter counted then;
        # per bucket: its newest snapshot, any host's (by time, then by id).
        per: Dict[Tuple[int, str], List[float]] = {}
        newest: Dict[int, Tuple[float, int]] = {}
        prev = None
        for row in rows:
            host, ts, ident = row[0], float(row[1]), int(row[2])
            i = min(int((ts - since) / width), MAX_POINTS - 1)
            if newest.get(i, (-math.inf, 0)) < (ts, ident):
                newest[i] = (ts, ident)
            if prev is not None and prev[0] == host and ts > float(prev[1]):
                acc = per.get((i, host))
                if acc is None:
                    acc = per[(i, host)] = [0.0] * (1 + len(COUNTERS))
                acc[0] += ts - float(prev[1])
                for j in range(len(COUNTERS)):
                    acc[j + 1] += increase(int(prev[3 + j]), int(row[3 + j]))
            prev = row
        ids = [ident for _, ident in newest.values()]
        shown = conn.execute(select(h.ts, h.states).where(h.id.in_(ids)).order_by(h.ts, h.id)).all() if ids else []

    snaps = [(float(ts), _states(text)) for ts, text in shown]
    names = {s for _, st in snaps for s in st}
    states = {s.name: [(ts, float(st.get(s.name, 0))) for ts, st in snaps] for s in JobStatus if s.name in names}
    sums: Dict[int, List[float]] = {}
    for (i, _), acc in per.items():
        into = sums.setdefault(i, [0.0] * len(COUNTERS))
        for j in range(len(COUNTERS)):
            into[j] += acc[j + 1] / acc[0]
    rate_series = {k: [(since + (i + 1) * width, sums[i][j]) for i in sorted(sums)] for j, k in enumerate(COUNTERS)}
    recent = [Row(r[0], float(r[1]), {}, {k: int(r[3 + j]) for j, k in enumerate(COUNTERS)})
              for r in rows if r[1] >= now - RATE_WINDOW_S]
    return Overview(since=since, until=now, states=states, rates=rate_series,
                    current=rates(recent, now - RATE_WINDOW_S), hosts=sorted({r[0] for r in rows}),
                    snapshots=len(rows))


def latest(db: Database) -> Optional[Row]:
    """The newest snapshot of any host."""
    with db.read() as conn:
        r = conn.execute(select(HISTORY).order_by(HISTORY.c.ts.desc(), HISTORY.c.id.desc()).limit(1)).first()
    if r is None:
        return None
    return Row(r.host, float(r.ts), _states(r.states), {k: int(getattr(r, k)) for k in COUNTERS})


__all__ = ["COUNTERS", "MAX_POINTS", "Overview", "PRUNE_BATCH", "RATE_WINDOW_S", "Recorder", "Row", "host_name",
           "increase", "latest", "overview", "prune", "rates", "read", "snapshot"]

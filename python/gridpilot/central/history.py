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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

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
    since = now - seconds
    rows = read(db, since, now)
    width = max(seconds / MAX_POINTS, 1.0)

    def bucket(ts: float) -> int:
        return min(int((ts - since) / width), MAX_POINTS - 1)

    # Jobs per state: the newest snapshot of each bucket, any host's.
    newest: Dict[int, Row] = {}
    for r in rows:
        newest[bucket(r.ts)] = r
    shown = [newest[b] for b in sorted(newest)]
    names = {s for r in shown for s in r.states}
    states = {s.name: [(r.ts, float(r.states.get(s.name, 0))) for r in shown] for s in JobStatus if s.name in names}

    # Rates: per bucket, each host's count over the time its snapshot pairs ending there cover, summed over hosts.
    counted: Dict[int, Dict[str, float]] = {}
    for host_rows in _by_host(rows).values():
        per: Dict[int, Tuple[float, Dict[str, int]]] = {}
        for a, b in zip(host_rows, host_rows[1:]):
            if b.ts <= a.ts:
                continue
            span, n = per.get(bucket(b.ts), (0.0, {k: 0 for k in COUNTERS}))
            per[bucket(b.ts)] = (span + b.ts - a.ts,
                                 {k: n[k] + increase(a.counters[k], b.counters[k]) for k in COUNTERS})
        for i, (span, n) in per.items():
            into = counted.setdefault(i, {k: 0.0 for k in COUNTERS})
            for k in COUNTERS:
                into[k] += n[k] / span
    rate_series = {k: [(since + (i + 1) * width, counted[i][k]) for i in sorted(counted)] for k in COUNTERS}
    return Overview(since=since, until=now, states=states, rates=rate_series,
                    current=rates(rows, now - RATE_WINDOW_S), hosts=sorted({r.host for r in rows}),
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

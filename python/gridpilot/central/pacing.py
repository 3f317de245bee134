"""Central paces the pilots' kill polls: each control answer (GET /jobs/{id}/control, POST /control) says
`poll_after`, the fewest seconds the pilot should wait before its next poll, so that all the pilots together poll
about `control_poll_rate` times a second, whatever the grid's size.

Why: the control poll is what makes a kill take effect in seconds, and it, not the heartbeat, sizes central at grid
scale. A pilot polls for all of its jobs in one request every kill_poll_interval (3 s by default): 100,000 running
jobs at 8 a pilot are 4,200 polls a second, 8.9 cores of `central serve` and PostgreSQL at the measured 2.02 ms a
bulk poll (docs/scaling.md). With the pace, central's cost of the polls is about control_poll_rate x 2 ms of CPU a
second at any size, and the kill latency grows with the grid instead: pilots / rate seconds between polls.

The pollers are counted as the distinct agents holding jobs (ASSIGNED to SAVING): one bulk poll each. An agent under
an old runner polls per job, so there may be more polls than counted; the pilots' own kill_poll_interval stays the
floor, and the heartbeat interval the ceiling (a heartbeat's answer carries kills anyway). The count is one index
scan of the held jobs, taken at most every REFRESH_S per process by the request that finds it stale (others answer
with the last count meanwhile): ~0.3 ms per 1,000 held jobs on PostgreSQL. Every process and host computes the same
pace from the same database, so the rate is the whole deployment's: give every process the same setting."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from sqlalchemy import distinct, func, select

from gridpilot.central import schema
from gridpilot.central.db import Database
from gridpilot.central.summary import HELD_STATES

JOBS = schema.jobs
#: The answer field.
FIELD = "poll_after"
#: How long a process keeps its count of the pollers.
REFRESH_S = 30.0
#: The longest pace central asks: a pilot caps it at its heartbeat interval anyway.
MAX_PACE_S = 3600.0

_COUNT = select(func.count(distinct(JOBS.c.agent))).where(JOBS.c.state.in_([int(s) for s in HELD_STATES]))


class Pacer:
    """One process's pace: poll_after() for each control answer."""

    def __init__(self, db: Database, rate: float, *, refresh_s: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        #: Control polls a second the deployment is to get from all the pilots together; 0: no pace.
        self.rate = rate
        self.refresh_s = refresh_s
        self.clock = clock
        self.pollers = 0
        self._counted: Optional[float] = None
        self._lock = threading.Lock()

    def poll_after(self) -> float:
        """Seconds a pilot should leave before its next control poll (0: its own interval)."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        if (self._counted is None or now - self._counted >= self.refresh_s) and self._lock.acquire(blocking=False):
            try:
                with self.db.read() as conn:
                    self.pollers = int(conn.execute(_COUNT).scalar() or 0)
                self._counted = now
            finally:
                self._lock.release()
        return min(MAX_PACE_S, round(self.pollers / self.rate, 1))


__all__ = ["FIELD", "MAX_PACE_S", "Pacer", "REFRESH_S"]

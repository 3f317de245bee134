"""Lost jobs: held jobs silent too long turn ZOMBIE; ZOMBIE jobs silent much longer turn EXPIRED.

A held job (ASSIGNED, STARTED, RUNNING, SAVING) with no heartbeat for `zombie_after_s` (default 1 h) becomes
ZOMBIE, remembering the state it was in; a heartbeat or a state report brings it back there (reports.py). A ZOMBIE
job still silent `expire_after_s` later (default another hour) becomes EXPIRED, and if it was lost before it ever
reached RUNNING (ASSIGNED or STARTED) it goes back to WAITING, within the resubmission limit.

`sweep` is one pass, a function of the database and `now`, so tests drive it with a made-up clock. `Sweeper`
runs it in a thread of each central host (`serve --workers N` runs it in one worker of the host: central/workers.py);
with several hosts on one PostgreSQL the passes skip each other's locked rows and every change is conditional on the
state read, so running them side by side is harmless (tests/integration/test_central_proxy.py). A pass
also forgets revocations of tokens expired anyway and signing keys past their retirement (keys.purge_retired).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from sqlalchemy import func, select, update

from gridpilot.central import keys, offers, schema, tokens
from gridpilot.central.db import Database
from gridpilot.central.jobs import add_state_change, resubmit_after_failure, revoke_job_token
from gridpilot.central.settings import (
    DEFAULT_EXPIRE_AFTER_S,
    DEFAULT_SWEEP_INTERVAL_S,
    DEFAULT_ZOMBIE_AFTER_S,
    MAX_AUTO_RESUBMITS,
)
from gridpilot.states import HELD_STATES, JobStatus, check_transition

log = logging.getLogger("gridpilot.central.sweeper")

JOBS = schema.jobs
#: Rows changed per pass and kind; a backlog is worked off over the next passes instead of in one huge transaction.
BATCH = 1000


@dataclass
class SweepReport:
    zombies: List[int] = field(default_factory=list)
    expired: List[int] = field(default_factory=list)
    resubmitted: List[int] = field(default_factory=list)
    purged_tokens: int = 0
    purged_keys: int = 0
    purged_offers: int = 0


def sweep(
    db: Database,
    *,
    now: Optional[float] = None,
    zombie_after_s: float = DEFAULT_ZOMBIE_AFTER_S,
    expire_after_s: float = DEFAULT_EXPIRE_AFTER_S,
    max_auto_resubmits: int = MAX_AUTO_RESUBMITS,
) -> SweepReport:
    t = time.time() if now is None else now
    report = SweepReport()
    last_sign = func.coalesce(JOBS.c.heartbeat, JOBS.c.state_since)
    with db.write() as conn:
        q = (select(JOBS).where(JOBS.c.state.in_([int(s) for s in HELD_STATES]), last_sign < t - zombie_after_s)
             .order_by(JOBS.c.id).limit(BATCH))
        if db.is_postgres:
            q = q.with_for_update(skip_locked=True)
        for row in conn.execute(q).all():
            was = JobStatus(row.state)
            check_transition(was, JobStatus.ZOMBIE)
            res = conn.execute(update(JOBS).where(JOBS.c.id == row.id, JOBS.c.state == row.state).values(
                state=int(JobStatus.ZOMBIE), before_zombie=row.state, state_since=t, updated=t))
            if res.rowcount:
                silent = t - (row.heartbeat if row.heartbeat is not None else row.state_since)
                add_state_change(conn, row.id, t, was, JobStatus.ZOMBIE,
                                 f"ZOMBIE: no heartbeat for {silent:.0f} s while {was.name}")
                report.zombies.append(row.id)

        q = (select(JOBS).where(JOBS.c.state == int(JobStatus.ZOMBIE), JOBS.c.state_since < t - expire_after_s)
             .order_by(JOBS.c.id).limit(BATCH))
        if db.is_postgres:
            q = q.with_for_update(skip_locked=True)
        for row in conn.execute(q).all():
            check_transition(JobStatus.ZOMBIE, JobStatus.EXPIRED)
            res = conn.execute(update(JOBS).where(JOBS.c.id == row.id, JOBS.c.state == int(JobStatus.ZOMBIE)).values(
                state=int(JobStatus.EXPIRED), state_since=t, updated=t))
            if not res.rowcount:
                continue
            was = JobStatus(row.before_zombie) if row.before_zombie is not None else JobStatus.ZOMBIE
            add_state_change(conn, row.id, t, JobStatus.ZOMBIE, JobStatus.EXPIRED,
                             f"EXPIRED: still no heartbeat {t - row.state_since:.0f} s after turning ZOMBIE "
                             f"(was {was.name})")
            revoke_job_token(conn, row, "expired")
            report.expired.append(row.id)
            if was in (JobStatus.ASSIGNED, JobStatus.STARTED) and resubmit_after_failure(
                conn, row, t, f"it was lost while {was.name}", max_auto_resubmits
            ):
                report.resubmitted.append(row.id)
        report.purged_tokens = tokens.purge_revoked(conn, t)
        report.purged_keys = keys.purge_retired(conn, t)
        report.purged_offers = offers.purge_stale(conn, t)
    return report


class Sweeper:
    """Runs `sweep` every `interval_s` in a daemon thread until stopped."""

    def __init__(
        self,
        db: Database,
        *,
        interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
        zombie_after_s: float = DEFAULT_ZOMBIE_AFTER_S,
        expire_after_s: float = DEFAULT_EXPIRE_AFTER_S,
        max_auto_resubmits: int = MAX_AUTO_RESUBMITS,
        on_report: Optional[Callable[[SweepReport], None]] = None,
        after: Optional[Callable[[], None]] = None,
    ) -> None:
        self.db = db
        self.interval_s = interval_s
        self.kwargs = dict(zombie_after_s=zombie_after_s, expire_after_s=expire_after_s,
                           max_auto_resubmits=max_auto_resubmits)
        self.on_report = on_report
        #: Run after every pass, whatever it found (central's history snapshot: history.Recorder, which logs its own
        #: failures); an exception from it is logged and the sweeping goes on.
        self.after = after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gridpilot-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._pass()
            if self.after is not None:
                try:
                    self.after()
                except Exception:
                    log.exception("after the sweep")

    def _pass(self) -> None:
        try:
            report = sweep(self.db, **self.kwargs)  # type: ignore[arg-type]
        except Exception:  # a database hiccup must not end the sweeping for good
            log.exception("sweep failed; retrying in %.0f s", self.interval_s)
            return
        if report.zombies or report.expired:
            log.info("sweep: %d ZOMBIE, %d EXPIRED, %d resubmitted", len(report.zombies),
                     len(report.expired), len(report.resubmitted))
        if self.on_report is not None:
            self.on_report(report)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

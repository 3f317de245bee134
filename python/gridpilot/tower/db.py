"""The tower's own state: an SQLite file (WAL) in its state directory, never central's database.

`jobs`: one row per job the tower holds, written in the same step as central's match answer is read, before
anything else is done with the job, so a tower that stops at any point takes every job back from here at its next
start (service.py resumes each from its phase). The row holds the job's token (the file is the tower user's only,
mode 0600): outputs are registered with it.

`reports`: the outbox of reports to central (POST /api/v1/reports items), written in the same transaction as the
phase they follow from; a report leaves it only once central answered for it. Each report's trace entries carry
keys, so sending one again after a lost answer stores nothing twice, and a repeated state is a no-op at central.

Phases, in order: MATCHED (held, nothing done), STAGED (job.json and inputs ready in the job's directory),
SUBMITTING (the ARC submission request may be on its way: a restart here cannot know whether the ARC CE made the
job, so it is submitted again and the first one, if it exists, is left to the ARC CE's own lifetime limits),
SUBMITTED (ARC job id known, session files not all uploaded), QUEUED (in the ARC CE, followed), DOWNLOADED (result,
outputs and log on the tower's disk), PUBLISHED (outputs verified and registered, the log published, the reports
queued), then the row goes once the ARC job is cleaned. GIVEN_BACK: the job was handed back to central (WAITING);
the row goes once that report is sent.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import orjson

from gridpilot.errors import ConfigError

MATCHED = "MATCHED"
STAGED = "STAGED"
SUBMITTING = "SUBMITTING"
SUBMITTED = "SUBMITTED"
QUEUED = "QUEUED"
DOWNLOADED = "DOWNLOADED"
PUBLISHED = "PUBLISHED"
GIVEN_BACK = "GIVEN_BACK"
PHASES = (MATCHED, STAGED, SUBMITTING, SUBMITTED, QUEUED, DOWNLOADED, PUBLISHED, GIVEN_BACK)

#: The version of the tables below; a file of another version is refused, not guessed at (an older one that
#: _UPGRADES knows is brought up to date).
SCHEMA_VERSION = 2
#: What brings a file of version N (the key) to N + 1.
_UPGRADES = {
    # Central's kill carried out by the node (service.py _kill): when it was taken, why, when the request reached
    # the ARC session.
    1: ("ALTER TABLE jobs ADD COLUMN kill_at REAL", "ALTER TABLE jobs ADD COLUMN kill_why TEXT",
        "ALTER TABLE jobs ADD COLUMN kill_put REAL"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER NOT NULL,
    resubmission INTEGER NOT NULL,
    site TEXT NOT NULL,
    token TEXT NOT NULL,
    user TEXT NOT NULL DEFAULT '',
    jdl TEXT NOT NULL,
    output_dir TEXT,
    phase TEXT NOT NULL,
    matched_at REAL NOT NULL,
    updated REAL NOT NULL,
    arc_url TEXT,
    arc_id TEXT,
    arc_state TEXT,
    lost INTEGER NOT NULL DEFAULT 0,
    next_poll REAL NOT NULL DEFAULT 0,
    heartbeat REAL NOT NULL DEFAULT 0,
    diagnosed REAL NOT NULL DEFAULT 0,
    final_state TEXT,
    pilot_log_url TEXT,
    message TEXT,
    kill_at REAL,
    kill_why TEXT,
    kill_put REAL,
    PRIMARY KEY (job_id, resubmission)
);
CREATE INDEX IF NOT EXISTS jobs_phase ON jobs (phase, site);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    resubmission INTEGER NOT NULL,
    site TEXT NOT NULL,
    body TEXT NOT NULL,
    created REAL NOT NULL
);
"""

_COLUMNS = ("job_id", "resubmission", "site", "token", "user", "jdl", "output_dir", "phase", "matched_at", "updated",
            "arc_url", "arc_id", "arc_state", "lost", "next_poll", "heartbeat", "diagnosed", "final_state", "pilot_log_url",
            "message", "kill_at", "kill_why", "kill_put")


@dataclass
class HeldJob:
    """One row of `jobs`."""

    job_id: int
    resubmission: int
    site: str
    token: str
    user: str
    jdl: str
    output_dir: Optional[str]
    phase: str
    matched_at: float
    updated: float
    arc_url: Optional[str] = None
    arc_id: Optional[str] = None
    arc_state: Optional[str] = None
    lost: int = 0
    next_poll: float = 0.0
    heartbeat: float = 0.0
    #: When the ARC job's live state was last asked (diagnose/status).
    diagnosed: float = 0.0
    final_state: Optional[str] = None
    pilot_log_url: Optional[str] = None
    message: Optional[str] = None
    #: When the tower took central's kill of the job (None: no kill), and central's reason.
    kill_at: Optional[float] = None
    kill_why: Optional[str] = None
    #: When the kill request reached the ARC job's session (None: not yet).
    kill_put: Optional[float] = None

    @property
    def key(self) -> Tuple[int, int]:
        return (self.job_id, self.resubmission)

    @property
    def dirname(self) -> str:
        """The job's directory name under the state directory's jobs/."""
        return f"{self.job_id}.{self.resubmission}"


@dataclass(frozen=True)
class QueuedReport:
    id: int
    job_id: int
    resubmission: int
    site: str
    body: Dict[str, Any]


class TowerDB:
    """The tower's SQLite state. One connection, used from one thread at a time (the cycle's); a lock guards it
    for the CLI's reads from another."""

    def __init__(self, path: Path, *, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists()
        if fresh:
            # Created private: it holds job tokens.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        elif os.stat(self.path).st_mode & 0o077:
            os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(_SCHEMA)
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self.conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        else:
            self._upgrade(int(row[0]))

    def _upgrade(self, version: int) -> None:
        if version > SCHEMA_VERSION or any(v not in _UPGRADES for v in range(version, SCHEMA_VERSION)):
            raise ConfigError(f"{self.path}: tower database of schema {version}, this tower reads {SCHEMA_VERSION}")
        for v in range(version, SCHEMA_VERSION):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _UPGRADES[v]:
                    self.conn.execute(statement)
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(v + 1),))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- jobs --

    def hold(self, site: str, job: Dict[str, Any]) -> HeldJob:
        """Keep a job central just matched (its answer: id, resubmission, token, jdl, user, output_dir)."""
        now = self.clock()
        held = HeldJob(job_id=int(job["id"]), resubmission=int(job.get("resubmission", 0)), site=site,
                       token=str(job["token"]), user=str(job.get("user") or ""), jdl=str(job["jdl"]),
                       output_dir=job.get("output_dir"), phase=MATCHED, matched_at=now, updated=now, heartbeat=now)
        with self._lock:
            self.conn.execute(f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES "
                              f"({', '.join('?' for _ in _COLUMNS)})", tuple(getattr(held, c) for c in _COLUMNS))
        return held

    def jobs(self, *, phases: Iterable[str] = (), site: Optional[str] = None) -> List[HeldJob]:
        where, args = [], []  # type: Tuple[List[str], List[Any]]
        phases = list(phases)
        if phases:
            where.append(f"phase IN ({', '.join('?' for _ in phases)})")
            args.extend(phases)
        if site is not None:
            where.append("site = ?")
            args.append(site)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY matched_at, job_id"
        with self._lock:
            rows = self.conn.execute(sql, args).fetchall()
        return [HeldJob(*row) for row in rows]

    def get(self, job_id: int, resubmission: int) -> Optional[HeldJob]:
        with self._lock:
            row = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id = ? AND resubmission = ?",
                                    (job_id, resubmission)).fetchone()
        return HeldJob(*row) if row else None

    def count(self, site: str) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM jobs WHERE site = ?", (site,)).fetchone()[0])

    def update(self, job: HeldJob, *, reports: Sequence[Dict[str, Any]] = (), **changes: Any) -> None:
        """Change a job's columns (and `job` itself) and queue `reports` for it, in one transaction."""
        unknown = set(changes) - set(_COLUMNS[7:])
        if unknown:
            raise ValueError(f"not a changeable column: {sorted(unknown)}")
        changes["updated"] = self.clock()
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in changes)} "
                                  "WHERE job_id = ? AND resubmission = ?", (*changes.values(), *job.key))
                self._queue(job, reports)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        for k, v in changes.items():
            setattr(job, k, v)

    def forget(self, job: HeldJob) -> None:
        with self._lock:
            self.conn.execute("DELETE FROM jobs WHERE job_id = ? AND resubmission = ?", job.key)

    # -- the outbox --

    def _queue(self, job: HeldJob, reports: Sequence[Dict[str, Any]]) -> None:
        now = self.clock()
        self.conn.executemany("INSERT INTO reports (job_id, resubmission, site, body, created) VALUES (?, ?, ?, ?, ?)",
                              [(job.job_id, job.resubmission, job.site, orjson.dumps(r).decode(), now)
                               for r in reports])

    def queue_reports(self, job: HeldJob, reports: Sequence[Dict[str, Any]]) -> None:
        with self._lock:
            self._queue(job, reports)

    def reports_total(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0])

    def pending_reports(self, limit: int) -> List[QueuedReport]:
        with self._lock:
            rows = self.conn.execute("SELECT id, job_id, resubmission, site, body FROM reports ORDER BY id LIMIT ?",
                                     (limit,)).fetchall()
        return [QueuedReport(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

    def reports_left(self, job: HeldJob) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM reports WHERE job_id = ? AND resubmission = ?",
                                         job.key).fetchone()[0])

    def sent(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            with self._lock:
                self.conn.executemany("DELETE FROM reports WHERE id = ?", [(i,) for i in ids])


__all__ = ["DOWNLOADED", "GIVEN_BACK", "HeldJob", "MATCHED", "PHASES", "PUBLISHED", "QUEUED", "QueuedReport",
           "STAGED", "SUBMITTED", "SUBMITTING", "SCHEMA_VERSION", "TowerDB"]

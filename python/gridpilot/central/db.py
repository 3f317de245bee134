"""Engines and transactions: SQLite (the embedded default) and PostgreSQL through psycopg 3.

SQLite: WAL mode, so readers never wait for the writer; a busy timeout, so a second writer waits instead of
failing; and `BEGIN IMMEDIATE` for every writing transaction, so a transaction takes the write lock before its
first read. Without it, two matchers could both read the same WAITING job under a shared lock and one would fail
on upgrade ("database is locked") after the busy handler gave up, or worse be given a stale read.
PostgreSQL: READ COMMITTED, with row locks taken explicitly (`FOR UPDATE`, `SKIP LOCKED` in the broker).

The SQLite file holds every user's jobs, the revoked tokens and, for a while after schema step 6, the old HS256
secret: it is made 0600 before SQLite first opens it, and SQLite gives its -wal, -shm and -journal files the
database file's mode, so none of them is ever readable by another user.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from gridpilot.private_files import ensure_private_file, keep_private, make_private_dir

#: How long a SQLite writer waits for the lock before "database is locked" (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000

_WRITE = "gridpilot_write"
#: PostgreSQL: the longest wait for a pooled connection (s), and for a new connection to be made (s, whole).
POOL_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 here (SQLAlchemy's default driver would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def backend_of(url: str) -> str:
    """"sqlite" or "postgresql"; ValueError for any other URL (or none at all)."""
    try:
        backend = make_url(normalize_url(url)).get_backend_name()
    except ArgumentError:
        backend = ""
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {redact(url)!r}: use sqlite:///PATH or postgresql://...")
    return backend


def redact(url: str) -> str:
    """The URL with any password hidden, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


#: The files SQLite keeps next to a database: they hold its pages too.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def _private_sqlite_file(database: str) -> None:
    """The database file and its companions readable by their owner only; a missing directory for it made 0700."""
    path = Path(database)  # as SQLite will open it
    if not path.parent.exists():
        make_private_dir(path.parent)
    ensure_private_file(path)
    for suffix in SQLITE_COMPANIONS:
        try:
            keep_private(path.with_name(path.name + suffix))
        except FileNotFoundError:  # none, or SQLite removed it as the last connection closed
            pass


#: SQLITE_PROTOCOL's message. In WAL mode a connection starting a transaction retries on its own (not through the
#: busy handler) while another holds a WAL lock it needs: after ~100 tries, about 10 s of sleeps, it gives up with
#: this, however long the busy timeout is. Several processes opening one database at once under load hit it: a
#: writer holding the WAL write lock while the wal-index header reads as torn (it was descheduled or stalled in a
#: page fault between the header's two copies), or a recovery of a new WAL, makes every newcomer retry. It is "try
#: again", as SQLite's documentation says, so it is waited out within the busy timeout like "database is locked".
SQLITE_PROTOCOL_MESSAGE = "locking protocol"


def _retry_sqlite(run: Callable[[], Any], *, also_locked: bool) -> Any:
    """`run()`, again after a short sleep while it fails with SQLITE_PROTOCOL (and, when `also_locked`, "database is
    locked"), until the busy timeout has passed; then its error."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            return run()
        except (sqlite3.OperationalError, OperationalError) as e:
            message = str(e)
            transient = SQLITE_PROTOCOL_MESSAGE in message or (also_locked and "locked" in message)
            if not transient or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(0.2, delay * 2)


def _enter_wal(cur: Any) -> None:
    """Put the database in WAL mode (a no-op when it is). On a new database several processes' first connections
    race to switch it, and SQLite answers the losers "database is locked" at once, without its busy handler; wait
    for the winner instead, within the busy timeout. This is also each connection's first read, so it may meet
    SQLITE_PROTOCOL (above): waited out the same way."""
    _retry_sqlite(lambda: cur.execute("PRAGMA journal_mode=WAL"), also_locked=True)


def _sqlite_engine(url: str, background_checkpoints: bool) -> Engine:
    u = make_url(url)
    if u.database and u.database != ":memory:" and not u.query.get("uri"):
        _private_sqlite_file(u.database)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=8,
        max_overflow=24,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below: pysqlite would otherwise issue its own
        # deferred BEGIN lazily before the first write, too late to prevent the lock upgrade race.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        _enter_wal(cur)
        # NORMAL is durable against crashes of the process in WAL mode; only a power cut may lose the last commits.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        if background_checkpoints:
            # The Checkpointer thread copies the WAL back into the database file instead of whichever request
            # happens to push it past 1000 pages: that copy and its fsync took seconds on a busy disk.
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # BEGIN IMMEDIATE starts the read and the write transaction at once: the statement SQLITE_PROTOCOL comes
        # from (a deferred BEGIN does nothing until the first read). "database is locked" here already waited the
        # whole busy timeout: not retried.
        begin = "BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN"
        _retry_sqlite(lambda: conn.exec_driver_sql(begin), also_locked=False)

    return engine


def _postgres_engine(url: str) -> Engine:
    # Several central processes share one server: keep each one's pool modest. No pre-ping: it would cost a round
    # trip on every checkout (two per request). After a server restart the first request on a dead connection
    # fails, SQLAlchemy sees the disconnect and drops the whole pool, and the client retries (idempotent calls).
    # Sessions start with synchronous_commit off, and durable transactions (the default, see Database.write) turn
    # it on for themselves: that puts the extra statement on the rarer durable writes, not on every match and
    # heartbeat.
    # A slow or hung server must give a request a clean 503 (central/admission.py), never a wait without end: a
    # connection is waited for at most POOL_TIMEOUT_S when the pool is empty, a new one at most CONNECT_TIMEOUT_S.
    return create_engine(url, pool_size=10, max_overflow=30, pool_recycle=1800, pool_timeout=POOL_TIMEOUT_S,
                         connect_args={"options": "-c synchronous_commit=off", "connect_timeout": CONNECT_TIMEOUT_S})


class Database:
    """One engine and the two kinds of transaction the service uses: `write()` and `read()`."""

    def __init__(self, url: str, *, background_checkpoints: bool = False) -> None:
        self.url = normalize_url(url)
        backend = backend_of(url)
        self._checkpointer: Optional[Checkpointer] = None
        if backend == "sqlite":
            self.engine = _sqlite_engine(self.url, background_checkpoints)
            if background_checkpoints:
                self._checkpointer = Checkpointer(self.engine)
        else:
            self.engine = _postgres_engine(self.url)
        self.backend = backend
        # SQLite has one writer at a time. Threads of this process queue on this lock instead of on SQLite's busy
        # handler, which polls with sleeps of up to 100 ms and so turns a few concurrent writers into long tails.
        # Other processes on the same file still wait in the busy handler.
        self._write_lock: Optional[threading.Lock] = threading.Lock() if backend == "sqlite" else None

    def limit_statements(self, seconds: float) -> None:
        """PostgreSQL: cancel any statement of this engine's connections that runs longer than `seconds` (0: no
        limit), so a request on an overloaded or stuck database ends in an error (a 503) rather than holding its
        worker thread for ever. Set on the connections made from now on (the pool is emptied): a serving process
        calls it after its schema upgrade, whose steps may take longer. SQLite has no such limit (its lock wait is
        SQLITE_BUSY_TIMEOUT_MS)."""
        if not self.is_postgres or seconds <= 0:
            return
        ms = max(1, int(seconds * 1000))

        @event.listens_for(self.engine, "do_connect")
        def _limit(_dialect: Any, _record: Any, _cargs: Any, cparams: Any) -> None:
            cparams["options"] = f"{cparams.get('options', '')} -c statement_timeout={ms}".strip()

        self.engine.dispose()

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgresql"

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A transaction that may write: committed on success, rolled back on any exception.

        On SQLite it holds the database's single write lock from its first statement (BEGIN IMMEDIATE).
        `durable=False` is for changes whose loss in a database crash is harmless or repaired (heartbeats,
        assignments, see matching.match): on PostgreSQL the commit then does not wait for its WAL record to reach the
        disk (synchronous_commit off, the session default here; durable ones turn it on for themselves), which
        saves a disk flush (~3 ms on the build machines) per call.
        Such a transaction is still atomic and never seen half done; it is only the last ~0.6 s of them that a
        server crash may forget. SQLite runs with synchronous=NORMAL, which is this trade-off already.
        """
        lock = self._write_lock if self._write_lock is not None else contextlib.nullcontext()
        with lock:
            with self.engine.connect() as conn:
                conn.execution_options(**{_WRITE: True})
                with conn.begin():
                    if durable and self.is_postgres:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
                    yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a consistent snapshot on SQLite WAL; READ COMMITTED on PostgreSQL)."""
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def lookup(self) -> Iterator[Connection]:
        """For one read statement: on PostgreSQL in autocommit mode (no BEGIN and COMMIT round trips)."""
        if not self.is_postgres:
            with self.read() as conn:
                yield conn
            return
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.engine.dispose()


class Checkpointer:
    """Copies SQLite's WAL back into the database file from a thread of its own, every `interval_s`.

    PASSIVE checkpoints never block readers or writers; the sqlite3 module releases the GIL while one runs.
    """

    def __init__(self, engine: Engine, interval_s: float = 1.0) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gridpilot-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                raw = self.engine.raw_connection()
                try:
                    raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
                finally:
                    raw.close()
            except Exception:  # e.g. the file went away under a test; the next round tries again
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def now() -> float:
    return time.time()

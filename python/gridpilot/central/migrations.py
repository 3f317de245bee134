"""Schema versions and the upgrade path.

`schema_version` holds one row per applied step. `upgrade(db)` applies the missing steps in order, each in its own
transaction together with its row, so a crash leaves the database at a whole version. Several central processes
may start at once against one PostgreSQL: an advisory lock makes them take turns, and the later ones find nothing
left to do. A database newer than this code is refused rather than written to.

Steps create tables from schema.py as it stands. When a later step changes a table that an earlier step created,
the earlier step must keep the old definition (freeze a copy of the Table here), so that upgrading an old
database and creating a new one end at the same schema; test_central_db checks that they do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from sqlalchemy import (BigInteger, Column, Float, ForeignKey, Index, MetaData, String, Table, Text,
                        func, inspect, select, text)
from sqlalchemy.engine import Connection

from gridpilot.central import schema
from gridpilot.central.db import Database
from gridpilot.central.keys import LEGACY_ALGORITHM, LEGACY_GRACE_S, LEGACY_KID, LEGACY_SECRET_SETTING

#: Any constant shared by every central process; only its sameness matters.
_PG_UPGRADE_LOCK = 0x67726964  # "grid"


class SchemaError(RuntimeError):
    """The database's schema cannot be used by this code (too new, or not upgraded when upgrading is off)."""


@dataclass(frozen=True)
class Step:
    version: int
    description: str
    apply: Callable[[Connection], None]


# -- tables as earlier steps made them (frozen: schema.py holds only the newest) --

_FROZEN = MetaData()
#: jobs as step 1 made it: step 7 widens its queue index; steps 14 to 16 add columns (schema.COLUMNS_BY_VERSION).
_LATER_JOBS_COLUMNS = {c.name for cols in schema.COLUMNS_BY_VERSION.values() for c in cols if c.table is schema.jobs}
_JOBS_V1 = Table("jobs", _FROZEN, *[c._copy() for c in schema.jobs.columns if c.name not in _LATER_JOBS_COLUMNS],
                 **schema.jobs.kwargs)
Index("ix_jobs_queue", _JOBS_V1.c.state, _JOBS_V1.c.priority.desc(), _JOBS_V1.c.price.desc(), _JOBS_V1.c.id)
Index("ix_jobs_user", _JOBS_V1.c.user, _JOBS_V1.c.id)
Index("ix_jobs_site", _JOBS_V1.c.site, _JOBS_V1.c.id)
#: traces as step 1 made it; step 4 adds entry_key and its unique index, step 5 reported_ts.
_TRACES_V1 = Table(
    "traces",
    _FROZEN,
    Column("id", schema.Id, primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("ts", Float, nullable=False),
    Column("category", String(16), nullable=False),
    Column("text", Text, nullable=False),
)
Index("ix_traces_job", _TRACES_V1.c.job_id, _TRACES_V1.c.ts, _TRACES_V1.c.id)
#: files as step 2 made it: step 12 adds ix_files_job.
_FILES_V2 = schema.files.to_metadata(_FROZEN)
for _ix in [i for i in _FILES_V2.indexes if i.name == schema.ix_files_job.name]:
    _FILES_V2.indexes.discard(_ix)
#: ce_pilots as step 3 made it: step 17 adds `ended`.
_LATER_PILOT_COLUMNS = {c.name for cols in schema.COLUMNS_BY_VERSION.values() for c in cols
                        if c.table is schema.ce_pilots}
_CE_PILOTS_V3 = Table("ce_pilots", _FROZEN,
                      *[c._copy() for c in schema.ce_pilots.columns if c.name not in _LATER_PILOT_COLUMNS])
_AS_MADE_BY = {schema.traces: _TRACES_V1, schema.jobs: _JOBS_V1, schema.files: _FILES_V2,
               schema.ce_pilots: _CE_PILOTS_V3}


def _create_tables(version: int) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        for table in schema.TABLES_BY_VERSION[version]:
            _AS_MADE_BY.get(table, table).create(conn, checkfirst=True)

    return apply


def _trace_keys(conn: Connection) -> None:
    # ADD COLUMN of a nullable column without a default: a change of the catalogue only, on both databases, however
    # many trace lines there are. The unique index is built over the existing rows, all NULL, so nothing collides.
    conn.execute(text(f"ALTER TABLE traces ADD COLUMN entry_key VARCHAR({schema.TRACE_KEY_LENGTH})"))
    schema.ux_traces_key.create(conn)


def _authorization(conn: Connection) -> None:
    # ADD COLUMN of a nullable column without a default, as in step 4: the lines stored before keep NULL (their
    # `ts` was the reporter's time then, and stays what it was).
    column_type = schema.traces.c.reported_ts.type.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE traces ADD COLUMN reported_ts {column_type}"))
    _create_tables(5)(conn)


def _signing_keys(conn: Connection) -> None:
    _create_tables(6)(conn)
    # A database from before: its HS256 secret verifies the tokens already handed out for a grace period, listed as
    # a key that retires then (keys.py); nothing signs with it any more.
    s = schema.settings
    secret = conn.execute(select(s.c.value).where(s.c.key == LEGACY_SECRET_SETTING)).scalar()
    if secret:
        t = time.time()
        conn.execute(schema.signing_keys.insert().values(kid=LEGACY_KID, alg=LEGACY_ALGORITHM, jwk="", created=t,
                                                         retire_at=t + LEGACY_GRACE_S))


def _queue_index_with_user_and_hash(conn: Connection) -> None:
    # Rebuilt under the name it had: a new database gets it from schema.py under the same name. On PostgreSQL the
    # build holds off writes to jobs for as long as it takes (seconds per million jobs).
    conn.execute(text(f"DROP INDEX {schema.ix_jobs_queue.name}"))
    schema.ix_jobs_queue.create(conn)


def _add_columns(version: int) -> Callable[[Connection], None]:
    # ADD COLUMN, nullable or with a constant default: a change of the catalogue only on PostgreSQL 11+ and SQLite,
    # however many jobs there are; the jobs queued before ask for none of the new terms (NULL, or the default). A
    # column already there is left as it is (add_later_columns put it there).
    def apply(conn: Connection) -> None:
        for column in schema.COLUMNS_BY_VERSION[version]:
            if column.name in {c["name"] for c in inspect(conn).get_columns(column.table.name)}:
                continue
            ddl = f"ALTER TABLE {column.table.name} ADD COLUMN {column.name} {column.type.compile(dialect=conn.dialect)}"
            if column.server_default is not None:
                ddl += f" DEFAULT {column.server_default.arg.text} NOT NULL"  # type: ignore[attr-defined]
            conn.execute(text(ddl))

    return apply


def _history_and_ends(conn: Connection) -> None:
    _create_tables(17)(conn)
    _add_columns(17)(conn)


def add_later_columns(db: Database) -> None:
    """Give a database upgraded to an older version the columns later steps add (the steps then find them there):
    for benches and tests that measure an older step with today's code, which reads today's columns."""
    with db.write() as conn:
        for version in sorted(schema.COLUMNS_BY_VERSION):
            _add_columns(version)(conn)


def _create_indexes(version: int) -> Callable[[Connection], None]:
    # On PostgreSQL the build holds off writes to the table (not reads) for as long as it takes: about a second per
    # million files here (docs/central-api.md). CREATE INDEX CONCURRENTLY would not, but cannot run inside the
    # step's transaction, which keeps a crash from leaving the index without its version row.
    def apply(conn: Connection) -> None:
        for index in schema.INDEXES_BY_VERSION[version]:
            index.create(conn)

    return apply


STEPS: Tuple[Step, ...] = (
    Step(1, "task queue: jobs, traces, settings, revoked tokens", _create_tables(1)),
    Step(2, "file catalogue: storage elements, files, replicas", _create_tables(2)),
    Step(3, "computing elements: pilot counts", _create_tables(3)),
    Step(4, "traces: the reporter's key per entry, unique per job, so a repeated append is stored once", _trace_keys),
    Step(5, "authorization: catalogue areas granted to users; traces dated by central, the reporter's time beside",
         _authorization),
    Step(6, "signing keys: public keys of the Ed25519 token keys; the HS256 secret retires after a grace period",
         _signing_keys),
    Step(7, "jobs: the queue index also holds user and Requirements hash, so the broker skips rows without reading "
            "them", _queue_index_with_user_and_hash),
    Step(8, "nodes: the worker nodes central has heard of, their failures, and nodeBad", _create_tables(8)),
    Step(9, "match offers: the last site map per site, CE and shape that asked for work, for `gridpilot why`",
         _create_tables(9)),
    Step(10, "spy requests: what a job's owner asked its pilot to show of the running job, and the answers",
         _create_tables(10)),
    Step(11, "masterjobs: which masterjob each subjob of a split belongs to, and its counter", _create_tables(11)),
    Step(12, "files: an index on job_id (and lfn), so a job's files and a resubmission's cleanup read only that "
             "job's", _create_indexes(12)),
    Step(13, "node probes: each node's latest `gridpilot node check` as its pilot posted it, and its changes",
         _create_tables(13)),
    Step(14, "jobs: what a job needs of the node (architecture, x86-64 level, a container, the oldest pilot), as "
             "broker columns", _add_columns(14)),
    Step(15, "jobs: a GPU request's exact model, vendor and architecture, for the broker (GPUVendor, GPUArch)",
         _add_columns(15)),
    Step(16, "jobs: the ARC job id and the published pilot log URL of an attempt a tower ran (POST /reports)",
         _add_columns(16)),
    Step(17, "central history: each central host's snapshots of the jobs per state and the matches and heartbeats "
             "it served, for the web view's overview; the pilots each CE saw end, by exit reason", _history_and_ends),
)

CURRENT_VERSION = STEPS[-1].version


def current_version(conn: Connection) -> int:
    """The newest applied step, or 0 for an empty database."""
    if not inspect(conn).has_table(schema.schema_version.name):
        return 0
    v = conn.execute(select(func.max(schema.schema_version.c.version))).scalar()
    return int(v or 0)


def upgrade(db: Database, *, target: Optional[int] = None) -> List[int]:
    """Apply every missing step up to `target` (default: all). Returns the versions applied now."""
    target = CURRENT_VERSION if target is None else target
    applied: List[int] = []
    for step in STEPS:
        if step.version > target:
            break
        with db.write() as conn:
            if db.is_postgres:
                # Held to the end of this transaction; other processes wait here, then see the step done.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_UPGRADE_LOCK})")
            have = current_version(conn)
            if have > CURRENT_VERSION:
                raise SchemaError(f"database schema version {have} is newer than this gridpilot "
                                  f"({CURRENT_VERSION}); upgrade gridpilot")
            if have >= step.version:
                continue
            step.apply(conn)
            conn.execute(
                schema.schema_version.insert().values(
                    version=step.version, applied=time.time(), description=step.description
                )
            )
            applied.append(step.version)
    return applied


def check_current(db: Database) -> None:
    """Raise SchemaError unless the database is at exactly this code's version."""
    with db.read() as conn:
        have = current_version(conn)
    if have != CURRENT_VERSION:
        verb = "newer" if have > CURRENT_VERSION else "older"
        hint = "upgrade gridpilot" if have > CURRENT_VERSION else "run `gridpilot central init` to upgrade it"
        raise SchemaError(f"database schema version {have} is {verb} than this gridpilot's {CURRENT_VERSION}; {hint}")


# open_database's keyword `upgrade` (a public name) hides the function of that name inside it.
_upgrade_to_newest = upgrade


def open_database(url: str, *, upgrade: bool = True, background_checkpoints: bool = False) -> Database:
    """A Database at `url`, brought to the newest schema version when `upgrade` (see `upgrade` above).

    A long-running service passes `background_checkpoints` (see db.Checkpointer); short commands leave SQLite's own.
    """
    db = Database(url, background_checkpoints=background_checkpoints)
    try:
        if upgrade:
            _upgrade_to_newest(db)
        else:
            check_current(db)
    except BaseException:
        db.dispose()
        raise
    return db

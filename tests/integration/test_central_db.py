"""Schema versions, the upgrade path, and the transaction rules, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from gridpilot.central import keys, migrations, schema
from gridpilot.central.db import Database, normalize_url
from gridpilot.central.migrations import open_database


def test_fresh_database_is_at_the_current_version_with_every_table(db_url):
    db = open_database(db_url)
    try:
        with db.read() as conn:
            assert migrations.current_version(conn) == migrations.CURRENT_VERSION
            insp = inspect(conn)
            for table in schema.metadata.sorted_tables:
                have = {c["name"] for c in insp.get_columns(table.name)}
                assert have == {c.name for c in table.columns}, table.name
            idx = {i["name"] for i in insp.get_indexes("jobs")}
            assert {"ix_jobs_queue", "ix_jobs_user", "ix_jobs_site"} <= idx
            rows = conn.execute(select(schema.schema_version.c.version).order_by(schema.schema_version.c.version))
            assert [r.version for r in rows] == [s.version for s in migrations.STEPS]
        assert migrations.upgrade(db) == [], "a second upgrade has nothing to do"
    finally:
        db.dispose()


def test_upgrade_from_version_1_keeps_the_data(db_url):
    db = Database(db_url)
    try:
        assert migrations.upgrade(db, target=1) == [1]
        with db.write() as conn:
            # The HS256 secret an old gridpilot kept here: step 5 keeps it for the grace period (keys.py).
            conn.execute(schema.settings.insert().values(key="jwt_key", value="old-secret"))
            conn.execute(schema.jobs.insert().values(
                user="alice", state=5, state_since=1.0, kill_requested=False, jdl="Executable = \"/bin/true\";",
                cores=1, memory_mb=0, disk_mb=0, ttl=60, gpus=0, price=1.0, priority=0, req_hash="",
                resubmission=0, auto_resubmits=0, reached_running=False, created=1.0, updated=1.0))
        with db.read() as conn:
            assert not inspect(conn).has_table("files")
        with pytest.raises(migrations.SchemaError, match="older"):
            migrations.check_current(db)
        assert migrations.upgrade(db) == [s.version for s in migrations.STEPS[1:]]
        migrations.check_current(db)
        with db.read() as conn:
            assert conn.execute(select(schema.jobs.c.user)).scalar_one() == "alice"
            legacy = keys.read_key_set(conn).keys[keys.LEGACY_KID]
            assert (legacy.alg, legacy.key) == ("HS256", "old-secret")
            assert legacy.retire_at == pytest.approx(time.time() + keys.LEGACY_GRACE_S, abs=600)
            assert inspect(conn).has_table("files") and inspect(conn).has_table("replicas")
            assert inspect(conn).has_table("ce_pilots")
    finally:
        db.dispose()


def _traces_shape(conn) -> tuple:
    insp = inspect(conn)
    cols = sorted((c["name"], str(c["type"]).split("(")[0].upper(), c["nullable"]) for c in insp.get_columns("traces"))
    idx = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in insp.get_indexes("traces"))
    return cols, idx


def test_upgrading_a_version_3_database_gives_traces_their_keys(db_url, tmp_path, request):
    """Step 4 on a database with trace lines: they keep their text with no key, keyed lines are unique per job,
    and the upgraded table is the one a new database gets."""
    db = Database(db_url)
    try:
        assert migrations.upgrade(db, target=3) == [1, 2, 3]
        with db.read() as conn:
            assert "entry_key" not in {c["name"] for c in inspect(conn).get_columns("traces")}
        with db.write() as conn:
            jid = conn.execute(schema.jobs.insert().values(
                user="alice", state=5, state_since=1.0, kill_requested=False, jdl="Executable = \"/bin/true\";",
                cores=1, memory_mb=0, disk_mb=0, ttl=60, gpus=0, price=1.0, priority=0, req_hash="",
                resubmission=0, auto_resubmits=0, reached_running=False, created=1.0,
                updated=1.0)).inserted_primary_key[0]
            conn.exec_driver_sql(f"INSERT INTO traces (job_id, ts, category, text) VALUES ({jid}, 1.0, 'state', "
                                 "'WAITING: submitted'), ({jid}, 2.0, 'trace', 'old line')".replace("{jid}", str(jid)))
        assert migrations.upgrade(db) == [s.version for s in migrations.STEPS if s.version >= 4]
        with db.write() as conn:
            rows = conn.execute(select(schema.traces.c.text, schema.traces.c.entry_key)
                                .order_by(schema.traces.c.id)).all()
            assert [tuple(r) for r in rows] == [("WAITING: submitted", None), ("old line", None)]
            # Lines without a key never collide; a key is stored once per job.
            conn.execute(schema.traces.insert(), [{"job_id": jid, "ts": 3.0, "category": "trace", "text": "x"}] * 2)
            conn.execute(schema.traces.insert().values(job_id=jid, ts=4.0, category="trace", text="y", entry_key="0.a.1"))
        with pytest.raises(IntegrityError):
            with db.write() as conn:
                conn.execute(schema.traces.insert().values(job_id=jid, ts=5.0, category="trace", text="y",
                                                           entry_key="0.a.1"))
        with db.read() as conn:
            upgraded = _traces_shape(conn)
    finally:
        db.dispose()
    pg = None if db_url.startswith("sqlite") else request.getfixturevalue("postgres_server")
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}" if pg is None else pg.create_database()
    fresh = open_database(fresh_url)
    try:
        with fresh.read() as conn:
            assert _traces_shape(conn) == upgraded
    finally:
        fresh.dispose()
        if pg is not None:
            pg.drop_database(fresh_url)


def test_step_5_keeps_trace_lines_and_adds_the_reporters_time_and_user_areas(db_url, tmp_path, request):
    """Step 5 on a version 4 database: its trace lines keep their time (reported_ts NULL: the reporter's time was
    their `ts` then), user_areas is made, and both tables are those a new database gets."""
    db = Database(db_url)
    try:
        assert migrations.upgrade(db, target=4) == [1, 2, 3, 4]
        with db.write() as conn:
            jid = conn.execute(schema.jobs.insert().values(
                user="alice", state=5, state_since=1.0, kill_requested=False, jdl="Executable = \"/bin/true\";",
                cores=1, memory_mb=0, disk_mb=0, ttl=60, gpus=0, price=1.0, priority=0, req_hash="",
                resubmission=0, auto_resubmits=0, reached_running=False, created=1.0,
                updated=1.0)).inserted_primary_key[0]
            conn.exec_driver_sql(f"INSERT INTO traces (job_id, ts, category, text, entry_key) VALUES ({jid}, 2.5, "
                                 "'trace', 'old line', '0.a.1')")
            assert not inspect(conn).has_table("user_areas")
        assert migrations.upgrade(db, target=5) == [5]
        with db.write() as conn:
            rows = conn.execute(select(schema.traces.c.ts, schema.traces.c.text, schema.traces.c.reported_ts)).all()
            assert [tuple(r) for r in rows] == [(2.5, "old line", None)]
            conn.execute(schema.user_areas.insert().values(user="alice", path="/alice/data", granted=3.0,
                                                           granted_by="root"))
        with db.read() as conn:
            upgraded = _traces_shape(conn), sorted(c["name"] for c in inspect(conn).get_columns("user_areas"))
    finally:
        db.dispose()
    pg = None if db_url.startswith("sqlite") else request.getfixturevalue("postgres_server")
    fresh_url = f"sqlite:///{tmp_path / 'fresh5.db'}" if pg is None else pg.create_database()
    fresh = open_database(fresh_url)
    try:
        with fresh.read() as conn:
            assert (_traces_shape(conn), sorted(c["name"] for c in inspect(conn).get_columns("user_areas"))) == upgraded
    finally:
        fresh.dispose()
        if pg is not None:
            pg.drop_database(fresh_url)


def _queue_index(conn) -> tuple:
    ix = [i for i in inspect(conn).get_indexes("jobs") if i["name"] == "ix_jobs_queue"]
    assert len(ix) == 1
    return tuple(ix[0]["column_names"])


def test_upgrading_a_version_6_database_widens_the_queue_index(db_url, tmp_path, request):
    """Step 7: the broker's queue index gains user and req_hash (so it skips rows without reading them), as a new
    database has it; the jobs stay."""
    db = Database(db_url)
    try:
        assert migrations.upgrade(db, target=6) == [1, 2, 3, 4, 5, 6]
        with db.write() as conn:
            assert _queue_index(conn) == ("state", "priority", "price", "id")
            conn.execute(schema.jobs.insert().values(
                user="alice", state=5, state_since=1.0, kill_requested=False, jdl="Executable = \"/bin/true\";",
                cores=1, memory_mb=0, disk_mb=0, ttl=60, gpus=0, price=1.0, priority=0, req_hash="",
                resubmission=0, auto_resubmits=0, reached_running=False, created=1.0, updated=1.0))
        assert migrations.upgrade(db, target=7) == [7]
        with db.read() as conn:
            upgraded = _queue_index(conn)
            assert conn.execute(select(schema.jobs.c.user)).scalar_one() == "alice"
    finally:
        db.dispose()
    assert upgraded == ("state", "priority", "price", "id", "user", "req_hash")
    pg = None if db_url.startswith("sqlite") else request.getfixturevalue("postgres_server")
    fresh_url = f"sqlite:///{tmp_path / 'fresh.db'}" if pg is None else pg.create_database()
    fresh = open_database(fresh_url)
    try:
        with fresh.read() as conn:
            assert _queue_index(conn) == upgraded
    finally:
        fresh.dispose()
        if pg is not None:
            pg.drop_database(fresh_url)


def _files_indexes(conn) -> list:
    return sorted((i["name"], tuple(i["column_names"])) for i in inspect(conn).get_indexes("files"))


def test_upgrading_a_version_11_database_indexes_files_by_job(db_url, tmp_path, request):
    """Step 12 on a database with files: they stay, the files table gains ix_files_job (job_id, lfn), and the
    upgraded table is the one a new database gets."""
    db = Database(db_url)
    try:
        assert migrations.upgrade(db, target=11) == list(range(1, 12))
        with db.write() as conn:
            assert _files_indexes(conn) == [("ix_files_dir", ("dir",))]
            conn.execute(schema.files.insert(), [
                {"lfn": f"/alice/out/{i}", "dir": "/alice/out/", "size": i, "job_id": 7 if i % 2 else None,
                 "owner": "alice", "created": 1.0} for i in range(4)])
        assert migrations.upgrade(db, target=12) == [12]
        with db.read() as conn:
            upgraded = _files_indexes(conn)
            mine = conn.execute(select(schema.files.c.lfn).where(schema.files.c.job_id == 7)
                                .order_by(schema.files.c.lfn)).scalars().all()
            assert mine == ["/alice/out/1", "/alice/out/3"]
            assert conn.execute(select(func.count()).select_from(schema.files)).scalar_one() == 4
    finally:
        db.dispose()
    assert upgraded == [("ix_files_dir", ("dir",)), ("ix_files_job", ("job_id", "lfn"))]
    pg = None if db_url.startswith("sqlite") else request.getfixturevalue("postgres_server")
    fresh_url = f"sqlite:///{tmp_path / 'fresh12.db'}" if pg is None else pg.create_database()
    fresh = open_database(fresh_url)
    try:
        with fresh.read() as conn:
            assert _files_indexes(conn) == upgraded
    finally:
        fresh.dispose()
        if pg is not None:
            pg.drop_database(fresh_url)


def test_upgrading_a_version_12_database_gives_jobs_their_gpu_terms(db_url, tmp_path, request):
    """Step 15 on a database with a queued job: it stays and asks for no GPU term (NULL), the new columns take one,
    and the upgraded jobs table has the columns a new database's has."""
    db = Database(db_url)
    try:
        migrations.upgrade(db, target=12)
        with db.write() as conn:
            before = {c["name"] for c in inspect(conn).get_columns("jobs")}
            conn.execute(text("INSERT INTO jobs (\"user\", state, state_since, kill_requested, jdl, cores, memory_mb, "
                              "disk_mb, ttl, gpus, gpu_name, price, priority, req_hash, resubmission, auto_resubmits, "
                              "reached_running, created, updated) VALUES ('alice', 1, 1.0, false, 'x', 1, 0, 0, 60, "
                              "1, 'MI50', 1.0, 0, '', 0, 0, false, 1.0, 1.0)"))
        assert {"gpu_model", "gpu_vendor", "gpu_arch"}.isdisjoint(before)
        assert 15 in migrations.upgrade(db)
        with db.write() as conn:
            row = conn.execute(select(schema.jobs)).one()
            assert (row.gpu_name, row.gpu_model, row.gpu_vendor, row.gpu_arch) == ("MI50", None, None, None)
            conn.execute(schema.jobs.update().values(gpu_vendor="AMD", gpu_arch="gfx906", gpu_model="Vega 20"))
            assert conn.execute(select(schema.jobs.c.gpu_arch)).scalar_one() == "gfx906"
            upgraded = {c["name"] for c in inspect(conn).get_columns("jobs")}
    finally:
        db.dispose()
    assert upgraded == {c.name for c in schema.jobs.columns}


def test_a_newer_database_is_refused(db_url):
    db = open_database(db_url)
    try:
        with db.write() as conn:
            conn.execute(schema.schema_version.insert().values(version=99, applied=time.time(), description="x"))
        with pytest.raises(migrations.SchemaError, match="newer"):
            migrations.upgrade(db)
        with pytest.raises(migrations.SchemaError, match="newer"):
            open_database(db_url, upgrade=False)
    finally:
        db.dispose()


#: One upgrading process: waits for the common start time (after its imports), upgrades, prints what it applied.
_UPGRADER = """
import json, sys, time
from gridpilot.central import migrations
from gridpilot.central.db import Database
start = float(sys.argv[2])
while time.time() < start:
    pass
db = Database(sys.argv[1])
try:
    print(json.dumps(migrations.upgrade(db)))
finally:
    db.dispose()
"""


def _upgrade_in_threads(db_url: str, n: int) -> tuple:
    dbs = [Database(db_url) for _ in range(n)]
    applied: list = []
    errors: list = []

    def run(db: Database) -> None:
        try:
            applied.extend(migrations.upgrade(db))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(d,)) for d in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d in dbs:
        d.dispose()
    return applied, errors


def _upgrade_in_processes(db_url: str, n: int) -> tuple:
    # Real processes, as `central serve` processes or --workers start: each its own SQLite connections and locks
    # (fcntl locks do not exclude threads of one process from each other, they do exclude processes).
    start = time.time() + 3  # every interpreter is up and has imported everything by then, even at load 20
    procs = [subprocess.Popen([sys.executable, "-c", _UPGRADER, db_url, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    applied: list = []
    errors: list = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        if p.returncode == 0:
            applied.extend(json.loads(out))
        else:
            errors.append(err[-2000:])
    return applied, errors


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_processes_upgrading_at_once_apply_each_step_once(db_url, how):
    applied, errors = (_upgrade_in_threads if how == "threads" else _upgrade_in_processes)(db_url, 4)
    assert errors == []
    assert sorted(applied) == [s.version for s in migrations.STEPS]
    db = Database(db_url)
    try:
        with db.read() as conn:
            n = conn.execute(select(func.count()).select_from(schema.schema_version)).scalar_one()
        assert n == len(migrations.STEPS)
    finally:
        db.dispose()


#: Holds SQLite's WAL write lock (byte 120 of the -shm file, as SQLite's unix VFS takes it) from another process,
#: with a wal-index header whose two copies differ: what a writer stalled between writing the two copies (a
#: descheduled process, a page fault on the mapped -shm under heavy writeback) looks like to everyone else.
_STALLED_WRITER = """
import fcntl, os, sys, time
shm, hold = sys.argv[1], float(sys.argv[2])
fd = os.open(shm, os.O_RDWR | os.O_CREAT, 0o600)
if os.fstat(fd).st_size < 32768:
    os.ftruncate(fd, 32768)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 120)
os.pwrite(fd, b"torn", 48 + 16)  # the second copy of the header's mxFrame/nPage: the copies disagree
print("held", flush=True)
time.sleep(hold)
"""
#: Longer than SQLite's own retries before SQLITE_PROTOCOL (~10 s of sleeps), shorter than the busy timeout.
_STALL_S = 18.0


@pytest.mark.parametrize("when", ["opening", "beginning"])
def test_a_stalled_wal_writer_is_waited_out_not_failed_with_sqlite_protocol(tmp_path, when):
    """Before db._retry_sqlite, the newcomer failed "locking protocol" after ~10 s at SQLite's own give-up, far
    inside the 30 s busy timeout: the start-up failure of several processes upgrading one database at once."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    setup = open_database(url)
    setup.dispose()  # every connection closed, the WAL folded back: as a server leaves the file
    db = Database(url)
    if when == "beginning":
        with db.read() as conn:  # an open connection that knows the wal-index
            conn.execute(select(1))
    stall = subprocess.Popen([sys.executable, "-c", _STALLED_WRITER, str(tmp_path / "c.db-shm"), str(_STALL_S)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert stall.stdout is not None and stall.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with db.write() as conn:
            conn.execute(schema.settings.insert().values(key="k", value="v"))
        waited = time.monotonic() - t0
        with db.read() as conn:
            assert conn.execute(select(schema.settings.c.value).where(schema.settings.c.key == "k")).scalar() == "v"
    finally:
        stall.kill()
        stall.wait()
        db.dispose()
    assert waited >= 5, "the stalled writer's lock was not in the way: the test proved nothing"


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.dispose()


def test_sqlite_writers_take_the_lock_at_begin(tmp_path):
    """A second write transaction waits at its BEGIN until the first commits: no read-then-upgrade race."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    db1, db2 = open_database(url), Database(url)  # two engines: as two processes would have
    order = []
    first_in = threading.Event()

    def first():
        with db1.write() as conn:
            conn.execute(select(1))
            first_in.set()
            time.sleep(0.3)
            order.append("first commits")

    def second():
        first_in.wait()
        with db2.write() as conn:
            order.append("second begins")
            conn.execute(select(1))

    try:
        t1, t2 = threading.Thread(target=first), threading.Thread(target=second)
        t1.start()
        t2.start()
        t1.join()
        t2.join()
        assert order == ["first commits", "second begins"]
        # Readers are not blocked by a writer (WAL).
        with db1.write():
            with db2.read() as conn:
                assert conn.execute(select(1)).scalar() == 1
    finally:
        db1.dispose()
        db2.dispose()


def test_urls():
    assert normalize_url("postgresql://u@h:5/d") == "postgresql+psycopg://u@h:5/d"
    assert normalize_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
    assert normalize_url("sqlite:////x.db") == "sqlite:////x.db"
    with pytest.raises(ValueError, match="unsupported database"):
        Database("mysql://u:secret@h/d")


def test_a_service_checkpoints_sqlite_in_the_background(tmp_path):
    path = tmp_path / "c.db"
    db = open_database(f"sqlite:///{path}", background_checkpoints=True)
    try:
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        with db.write() as conn:
            conn.execute(schema.settings.insert(), [{"key": f"k{i}", "value": "x" * 2000} for i in range(2000)])
        # The 4 MB just written sit in the WAL; only a checkpoint copies them into the database file, and no
        # request does that any more: the file grows when the background thread has run.
        deadline = time.monotonic() + 10
        while path.stat().st_size < 3 << 20:
            assert time.monotonic() < deadline, "the checkpointer never ran"
            time.sleep(0.1)
    finally:
        db.dispose()


def test_postgres_commits_wait_for_the_disk_unless_told_not_to(postgres_url):
    db = open_database(postgres_url)
    try:
        with db.write() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        with db.write(durable=False) as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    finally:
        db.dispose()

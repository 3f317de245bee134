"""A job's files among many (`make bench`): GET /jobs/{id}/files with 100,000 files of other jobs in the catalogue,
before and after schema step 12's index on files (job_id, lfn).

For SQLite and PostgreSQL (a server started in a temp directory, durable defaults), a database whose files table is
as schema step 11 left it (the later steps' jobs columns added: migrations.add_later_columns) gets `--others` files of other jobs (100 per job) and `--mine` files of the job asked about, each file with one
replica, as jobs' registrations leave them. Then:

  in process, step 11    catalogue.job_files() called directly, without the index (the database and query part)
  step 12                what the upgrade does on that table: building the index
  in process, step 12    the same call with the index
  cleanup, step 11/12    catalogue.forget_job_files() (a resubmission's removal of the job's files), rolled back
  HTTP, with index       GET /jobs/{id}/files through `gridpilot central serve`, as `gridpilot get` sends it
  HTTP, without index    the same after dropping the index again (a step 11 table; serve does not rebuild it)

and the query plans of the statements job_files and catalogue.forget_job_files (a resubmission's cleanup) run on
files, without and with the index: tests/integration/test_catalogue_index.py asserts the plans name ix_files_job.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from sqlalchemy import event, text
from sqlalchemy.engine import Connection

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))

from gridpilot.central import catalogue, migrations, schema, tokens  # noqa: E402
from gridpilot.central.auth import Principal  # noqa: E402
from gridpilot.central.db import Database  # noqa: E402
from gridpilot.central.serve import init  # noqa: E402
from gridpilot.central.settings import CentralSettings  # noqa: E402
from gridpilot.client import CentralClient  # noqa: E402

import bench_central  # noqa: E402

OWNER = "bench"
FILES_PER_OTHER_JOB = 100


def add_job(conn: Connection, user: str = OWNER) -> int:
    """A DONE job of `user` (job_files reads its row: owner, state, OutputDir)."""
    now = time.time()
    return int(conn.execute(schema.jobs.insert().values(
        user=user, state=15, state_since=now, kill_requested=False, jdl='Executable = "/bin/true";', cores=1,
        memory_mb=0, disk_mb=0, ttl=60, gpus=0, price=1.0, priority=0, req_hash="", output_dir=f"/{user}/out",
        resubmission=0, auto_resubmits=0, reached_running=True, created=now, updated=now)).inserted_primary_key[0])


def fill_files(db: Database, others: int, mine: int) -> int:
    """`others` files of other jobs (FILES_PER_OTHER_JOB each, ids that are not the job's) and `mine` of a new job
    of OWNER, each with a replica; statistics gathered. The new job's id."""
    with db.write() as conn:
        job_id = add_job(conn)
    now = time.time()
    rows: List[Dict[str, Any]] = []
    for i in range(others):
        other = job_id + 1 + i // FILES_PER_OTHER_JOB
        d = f"/{OWNER}/out/{other}/"
        rows.append({"lfn": f"{d}file{i % FILES_PER_OTHER_JOB:03d}.root", "dir": d, "size": 1 << 20, "adler32":
                     "0badcafe", "md5": None, "job_id": other, "owner": OWNER, "created": now})
    d = f"/{OWNER}/out/{job_id}/"
    rows += [{"lfn": f"{d}file{i:03d}.root", "dir": d, "size": 1 << 20, "adler32": "0badcafe", "md5": None,
              "job_id": job_id, "owner": OWNER, "created": now} for i in range(mine)]
    # Interleaved, so the job's files are not all at the end of the table.
    rows.sort(key=lambda r: zlib.crc32(r["lfn"].encode()))
    chunk = 5000
    for k in range(0, len(rows), chunk):
        part = rows[k:k + chunk]
        with db.write() as conn:
            conn.execute(schema.files.insert(), part)
            conn.execute(schema.replicas.insert(), [{"lfn": r["lfn"], "se": "BENCH::SITE::EOS",
                                                     "pfn": f"root://eos.example{r['lfn']}", "created": now}
                                                    for r in part])
    bench_central.analyze(db, "files", "replicas")
    return job_id




def user_principal(user: str = OWNER) -> Principal:
    return Principal(tokens.Claims("user", user, "bench", 0.0, 0.0))


def query_plans(db: Database, job_id: int) -> List[Tuple[str, str]]:
    """(statement, plan) for each statement on the files table that GET /jobs/{id}/files (catalogue.job_files) and
    a resubmission's cleanup (catalogue.forget_job_files, rolled back) run for `job_id`: the statements as they are
    sent, captured from the engine, then explained with the same parameters."""
    sent: List[Tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not statement.lstrip().upper().startswith("EXPLAIN"):
            sent.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        catalogue.job_files(db, user_principal(), job_id, {})
        if not cleanup_rolled_back(db, job_id):
            raise RuntimeError(f"job {job_id} has no files: its cleanup's statements would not all run")
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    plans = []
    with db.engine.connect() as conn:
        for statement, parameters in sent:
            if " files" not in statement:
                continue
            prefix = "EXPLAIN " if db.is_postgres else "EXPLAIN QUERY PLAN "
            rows = conn.exec_driver_sql(prefix + statement, parameters).all()
            # PostgreSQL: one line of text per row; SQLite: (id, parent, notused, detail).
            plan = "\n".join(str(r[0]) if db.is_postgres else str(r[-1]) for r in rows)
            plans.append((" ".join(statement.split()), plan))
    return plans


def cleanup_rolled_back(db: Database, job_id: int) -> List[str]:
    """A resubmission's removal of the job's files (catalogue.forget_job_files), rolled back so it can repeat; the
    LFNs it removed."""
    with db.engine.connect() as conn:
        tx = conn.begin()
        try:
            return catalogue.forget_job_files(conn, job_id)
        finally:
            tx.rollback()


def drop_index(db: Database) -> None:
    with db.write() as conn:
        conn.execute(text(f"DROP INDEX {schema.ix_files_job.name}"))
    bench_central.analyze(db, "files", "replicas")




def bench_backend(name: str, db_url: str, state: Path, args: argparse.Namespace) -> Dict[str, Any]:
    print(f"\n== {name}: {args.others:,} files of other jobs, {args.mine} of the job ...", flush=True)
    res: Dict[str, Any] = {"backend": name, "other_files": args.others, "job_files": args.mine}
    db = Database(db_url)
    try:
        migrations.upgrade(db, target=11)
        migrations.add_later_columns(db)  # the jobs table as this code reads it; the files table as step 11 made it
        t0 = time.perf_counter()
        job_id = fill_files(db, args.others, args.mine)
        print(f"   filled in {time.perf_counter() - t0:.1f} s", flush=True)
        call = lambda: catalogue.job_files(db, user_principal(), job_id, {})  # noqa: E731
        assert len(call()["files"]) == args.mine
        res["plans_step_11"] = query_plans(db, job_id)
        res["in_process_step_11"] = bench_central.measure(call, args.repeat)
        res["cleanup_step_11"] = bench_central.measure(lambda: cleanup_rolled_back(db, job_id), args.repeat)
        t0 = time.perf_counter()
        assert migrations.upgrade(db, target=12) == [12]
        res["upgrade_step_12_s"] = time.perf_counter() - t0
        migrations.upgrade(db)
        bench_central.analyze(db, "files", "replicas")
        res["plans_step_12"] = query_plans(db, job_id)
        res["in_process_step_12"] = bench_central.measure(call, args.repeat)
        res["cleanup_step_12"] = bench_central.measure(lambda: cleanup_rolled_back(db, job_id), args.repeat)
    finally:
        db.dispose()

    admin_token = init(CentralSettings.from_args(state, db_url)).admin_token
    for label in ("http_with_index", "http_without_index"):
        if label == "http_without_index":
            db = Database(db_url)
            try:
                drop_index(db)
            finally:
                db.dispose()
        # A server per phase: no plan cached from the other phase survives.
        proc, url = bench_central.start_server(state, db_url)
        try:
            user = CentralClient(url, CentralClient(url, admin_token).mint_token("user", OWNER))
            assert len(user.job_files(job_id)["files"]) == args.mine
            res[label] = bench_central.measure(lambda: user.job_files(job_id), args.repeat)
        finally:
            proc.terminate()
            proc.wait(30)
    return res


def report(results: List[Dict[str, Any]], load: Tuple[float, float, float]) -> None:
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for r in results:
        print(f"\n{r['backend']}: {r['other_files']:,} files of other jobs, {r['job_files']} of the job asked about")
        print("  measurement                 p50 ms    p99 ms    max ms")
        for k in ("in_process_step_11", "in_process_step_12", "http_without_index", "http_with_index",
                  "cleanup_step_11", "cleanup_step_12"):
            m = r[k]
            print(f"  {k:<26} {m['p50_ms']:8.2f}  {m['p99_ms']:8.2f}  {m['max_ms']:8.2f}")
        print(f"  upgrade to step 12 (index build): {r['upgrade_step_12_s']:.2f} s")
        for k in ("plans_step_11", "plans_step_12"):
            print(f"  {k}:")
            for statement, plan in r[k]:
                print(f"    {statement[:100]}{'...' if len(statement) > 100 else ''}")
                for line in plan.splitlines():
                    print(f"      | {line}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--others", type=int, default=100_000, help="files of other jobs (default 100000)")
    ap.add_argument("--mine", type=int, default=20, help="files of the job asked about (default 20)")
    ap.add_argument("--repeat", type=int, default=200, help="requests timed per measurement (default 200)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    return bench_central.run_on_backends(args, bench_backend, report)


if __name__ == "__main__":
    sys.exit(main())

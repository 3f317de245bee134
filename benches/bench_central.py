"""Central under load (`make bench`): match latency with 100,000 WAITING jobs, and heartbeat throughput.

For SQLite (the state directory's file) and PostgreSQL (a server started in a temp directory with its durable
defaults: fsync and synchronous commit on), one `gridpilot central serve` process serves the database, and this
process plays the agents over HTTP, as pilots would:

  match, 1 agent       latency of one match after another (p50, p99), each assigning one job
  match, 4 agents      the same with four agents at once (latency per request under contention)
  match, in process    matching.match() called directly: the database and broker part of the above, without HTTP
  heartbeats           job updates per second with bulk requests of 100 jobs, from 4 agents at once

The queue holds a mix like a real one: 1- and 8-core jobs, several TTLs, and Requirements texts of which a
fifth never hold on the benchmark's site map (the broker must skip them). Targets on a 2-core machine: match p99
under 20 ms; at least 5,000 heartbeat job-updates per second on PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from gridpilot.central import broker, keys, matching, schema, tokens  # noqa: E402
from gridpilot.central.auth import Principal  # noqa: E402
from gridpilot.central.db import Database  # noqa: E402
from gridpilot.central.migrations import open_database  # noqa: E402
from gridpilot.central.serve import init  # noqa: E402
from gridpilot.central.settings import CentralSettings  # noqa: E402
from gridpilot.client import CentralClient  # noqa: E402
from gridpilot.endpoints import URL_FILE  # noqa: E402
from gridpilot.errors import CentralUnreachable  # noqa: E402
from gridpilot.jdl import parse_job  # noqa: E402

SITE, CE = "BENCH::SITE", "BENCH::SITE::CE"
SITE_MAP: Dict[str, Any] = {
    "ttl": 86400, "cores": 8, "memory_mb": 64000, "disk_mb": 500000, "platform": "Linux-x86_64", "arch": "x86_64",
    "avx": True, "gpus": [], "ce": CE, "site": SITE, "partition": "multicore_8", "users": [], "nousers": [],
    "close_se": ["BENCH::SITE::EOS"], "cvmfs_revision": 1, "node": "bench-node",
}
TEMPLATES = [
    ('Executable = "/bin/true"; TTL = 3600;', 30),
    ('Executable = "/bin/true"; TTL = 7200; Requirements = other.TTL > 7200;', 20),
    ('Executable = "/bin/true"; CPUCores = 8; TTL = 28800; Requirements = member(other.GridPartitions, '
     '"multicore_8") && other.TTL > 28800;', 15),
    ('Executable = "/bin/true"; TTL = 3600; Requirements = member(other.CloseSE, "BENCH::SITE::EOS");', 15),
    ('Executable = "/bin/true"; TTL = 3600; Requirements = other.CE == "SOMEWHERE::ELSE::CE";', 10),
    ('Executable = "/bin/true"; TTL = 3600; Requirements = member(other.GridPartitions, "gpu");', 10),
]
SAMPLE = {"cpu_time_s": 1234.5, "rss_bytes": 2 << 30, "pss_bytes": 1900 << 20, "swap_bytes": 0, "nprocs": 12,
          "nthreads": 48, "read_bytes": 10 << 30, "write_bytes": 1 << 30, "workdir_bytes": 3 << 30,
          "wall_s": 3600.0}


def analyze(db: Database, *tables: str) -> None:
    """Fresh statistics on the tables a bench loaded, as tables in use a while have (the planner's choice depends on
    them): VACUUM ANALYZE on PostgreSQL (outside a transaction), ANALYZE on SQLite."""
    if db.is_postgres:
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE " + ", ".join(tables))
    else:
        with db.write() as conn:
            conn.exec_driver_sql("ANALYZE")


def job_row(text: str, user: str, now: float, state: int = 5) -> Dict[str, Any]:
    """A jobs row as submitting the JDL `text` leaves it (broker columns filled from it), in `state`."""
    needs = broker.needs_of(parse_job(text))
    return dict(user=user, name=None, state=state, state_since=now, kill_requested=False, jdl=text,
                cores=needs.cores, memory_mb=needs.memory_mb, disk_mb=needs.disk_mb, ttl=needs.ttl,
                gpus=needs.gpus, gpu_name=needs.gpu_name, price=needs.price, priority=0,
                requirements=needs.requirements, req_hash=needs.req_hash, output_dir=None, resubmission=0,
                auto_resubmits=0, reached_running=False, created=now, updated=now)


def fill_queue(db: Database, n: int, user: str = "bench") -> None:
    """n WAITING jobs in the proportions of TEMPLATES, inserted in bulk (as n submissions would leave them)."""
    now = time.time()
    total = sum(w for _, w in TEMPLATES)
    rows: List[Dict[str, Any]] = []
    for text, weight in TEMPLATES:
        rows += [job_row(text, user, now)] * (n * weight // total)
    rows += [rows[0]] * (n - len(rows))
    # Interleave the kinds, so the oldest jobs are not all of one template.
    order = sorted(range(len(rows)), key=lambda i: (i * 7919) % len(rows))
    chunk = 5000
    for i in range(0, len(rows), chunk):
        with db.write() as conn:
            conn.execute(schema.jobs.insert(), [rows[j] for j in order[i:i + chunk]])
    settle(db)


def settle(db: Database) -> None:
    """The jobs table as a queue that has been running a while would be after a bulk load: statistics gathered, the
    load vacuumed (PostgreSQL) or checkpointed out of the WAL (SQLite). Neither may run inside a transaction."""
    analyze(db, "jobs")
    if not db.is_postgres:
        raw = db.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        finally:
            raw.close()


def start_server(state: Path, db_url: str, *, port: int = 0,
                 extra: Sequence[str] = ()) -> Tuple[subprocess.Popen, str]:
    """`gridpilot central serve` on the state directory (sweeper off), once it answers: (process, URL). Port 0: a
    free one, read from the state directory's URL file; several processes on one state directory (one signing key)
    need ports of their own, given here."""
    log_path = state / (f"serve-{port}.log" if port else "serve.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridpilot", "central", "serve", "--db", db_url, "--state-dir", str(state),
         "--port", str(port), "--sweep-interval", "0", "--log-level", "warning",
         # The bench's agents share one token where a grid's have one each: the per-token rate limit
         # (central/admission.py) would measure itself, not the operation.
         "--rate-limit", "0", *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text())
        f = state / URL_FILE
        if port or (f.exists() and f.read_text().strip()):
            url = f"http://127.0.0.1:{port}" if port else f.read_text().strip()
            try:
                CentralClient(url, None, retries=0).health()
                return proc, url
            except CentralUnreachable:
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("central serve did not start")


def percentiles(samples: List[float]) -> Dict[str, float]:
    s = sorted(samples)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"n": len(s), "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": s[-1] * 1000,
            "mean_ms": statistics.fmean(s) * 1000}


def timed(fn: Callable[[], Any], n: int) -> List[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = fn()
        out.append(time.perf_counter() - t0)
        if r is None:
            raise RuntimeError("the queue ran dry during the benchmark")
    return out


def measure(fn: Callable[[], Any], n: int) -> Dict[str, float]:
    """Median, p99 and max of n calls of fn, after one untimed warm-up call (connection, statement caches, pages):
    the benches of single requests (bench_users, bench_job_files) report these."""
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    s = sorted(out)
    return {"n": n, "p50_ms": s[len(s) // 2] * 1000, "p99_ms": s[min(n - 1, int(n * 0.99))] * 1000,
            "max_ms": s[-1] * 1000}


def bench_backend(name: str, db_url: str, state: Path, args: argparse.Namespace) -> Dict[str, Any]:
    print(f"\n== {name}: filling the queue with {args.jobs:,} WAITING jobs ...", flush=True)
    settings = CentralSettings.from_args(state, db_url)
    admin_token = init(settings).admin_token
    db = open_database(db_url)
    t0 = time.perf_counter()
    fill_queue(db, args.jobs)
    print(f"   filled in {time.perf_counter() - t0:.1f} s", flush=True)
    res: Dict[str, Any] = {"backend": name, "waiting_jobs": args.jobs}

    proc, url = start_server(state, db_url)
    try:
        admin = CentralClient(url, admin_token)
        agents = [CentralClient(url, admin.mint_token("agent", f"bench-agent{i}", site=SITE, ce=CE))
                  for i in range(4)]
        timed(lambda: agents[0].match(SITE_MAP), 50)  # warm-up: connections, caches, plans
        server = psutil.Process(proc.pid)
        cpu0 = server.cpu_times()
        res["match_1_agent"] = percentiles(timed(lambda: agents[0].match(SITE_MAP), args.matches))
        cpu1 = server.cpu_times()
        # CPU the serving process spent per match: unlike latency, hardly changed by other load on the machine.
        res["match_1_agent"]["server_cpu_ms"] = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) \
            / args.matches * 1000

        per: List[List[float]] = [[] for _ in agents]
        barrier = threading.Barrier(len(agents))

        def run(i: int) -> None:
            barrier.wait()
            per[i] = timed(lambda: agents[i].match(SITE_MAP), args.matches // len(agents))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(agents))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        res["match_4_agents"] = percentiles([x for p in per for x in p])

        key = keys.Keys(db, settings.signing_key_path)
        claims = tokens.Claims("agent", "bench-direct", "x", 0.0, 0.0, site=SITE, ce=CE)
        principal, cache = Principal(claims), broker.RequirementCache()
        direct = lambda: matching.match(db, principal, SITE_MAP, time.time(), key=key, cache=cache).job  # noqa: E731
        timed(direct, 20)
        res["match_in_process"] = percentiles(timed(direct, args.matches))

        res["heartbeats"] = bench_heartbeats(db, url, admin, args, psutil.Process(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
        db.dispose()
    return res


def bench_heartbeats(db: Database, url: str, admin: CentralClient, args: argparse.Namespace,
                     server: psutil.Process) -> Dict[str, Any]:
    """Agents holding RUNNING jobs send bulk heartbeats (100 jobs each) as fast as they are answered."""
    n_agents, per_agent = 4, args.held // 4
    held: List[List[int]] = []
    with db.write() as conn:
        ids = [r.id for r in conn.execute(
            schema.jobs.select().with_only_columns(schema.jobs.c.id).where(schema.jobs.c.state == 5)
            .order_by(schema.jobs.c.id).limit(n_agents * per_agent))]
        for i in range(n_agents):
            mine = ids[i * per_agent:(i + 1) * per_agent]
            conn.execute(schema.jobs.update().where(schema.jobs.c.id.in_(mine)).values(
                state=10, agent=f"hb-agent{i}", site=SITE, ce=CE, heartbeat=time.time(), reached_running=True))
            held.append(mine)
    clients = [CentralClient(url, admin.mint_token("agent", f"hb-agent{i}", site=SITE, ce=CE))
               for i in range(n_agents)]
    batches = [[[{"job_id": j, "resubmission": 0, "sample": SAMPLE} for j in h[k:k + 100]]
                for k in range(0, len(h), 100)] for h in held]
    for i in range(n_agents):  # warm-up
        clients[i].heartbeats_full(batches[i][0])
    updated = [0] * n_agents
    latencies: List[float] = []
    stop_at = time.perf_counter() + args.seconds
    barrier = threading.Barrier(n_agents)

    def run(i: int) -> None:
        barrier.wait()
        k = 0
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            r = clients[i].heartbeats_full(batches[i][k % len(batches[i])])
            latencies.append(time.perf_counter() - t0)
            updated[i] += r["updated"]
            k += 1

    t0 = time.perf_counter()
    cpu0 = server.cpu_times()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1 = server.cpu_times()
    cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    out: Dict[str, Any] = {"agents": n_agents, "bulk": 100, "seconds": elapsed, "job_updates": sum(updated),
                           "updates_per_s": sum(updated) / elapsed,
                           "server_cpu_ms_per_request": cpu / max(1, len(latencies)) * 1000}
    out.update({f"request_{k}": v for k, v in percentiles(latencies).items() if k != "n"})
    return out


def report(results: List[Dict[str, Any]], load: Tuple[float, float, float]) -> None:
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          "(other work on the machine lengthens the tails)")
    print("\nbackend      measurement           p50 ms   p99 ms   max ms   server CPU ms/match")
    for r in results:
        for k in ("match_1_agent", "match_4_agents", "match_in_process"):
            m = r[k]
            cpu = f"{m['server_cpu_ms']:8.2f}" if "server_cpu_ms" in m else ""
            print(f"{r['backend']:<12} {k:<20} {m['p50_ms']:7.2f}  {m['p99_ms']:7.2f}  {m['max_ms']:7.2f}   {cpu}")
    print("\nbackend      heartbeat job-updates/s   request p50 / p99 ms   server CPU ms/request (bulk 100, 4 agents)")
    for r in results:
        h = r["heartbeats"]
        print(f"{r['backend']:<12} {h['updates_per_s']:>10,.0f}              "
              f"{h['request_p50_ms']:5.1f} / {h['request_p99_ms']:5.1f}           {h['server_cpu_ms_per_request']:.2f}")
    for r in results:
        p99 = r["match_1_agent"]["p99_ms"]
        print(f"target {r['backend']}: match p99 {p99:.1f} ms {'<' if p99 < 20 else '>='} 20 ms")
    pg = [r for r in results if r["backend"] == "postgresql"]
    if pg:
        u = pg[0]["heartbeats"]["updates_per_s"]
        print(f"target postgresql: {u:,.0f} heartbeat job-updates/s {'>=' if u >= 5000 else '<'} 5,000")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000, help="WAITING jobs in the queue (default 100000)")
    ap.add_argument("--matches", type=int, default=2000, help="matches timed per measurement (default 2000)")
    ap.add_argument("--held", type=int, default=20_000, help="RUNNING jobs sending heartbeats (default 20000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the heartbeat run (default 10)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    return run_on_backends(args, bench_backend, report)


def run_on_backends(args: argparse.Namespace, bench: Callable[..., Dict[str, Any]],
                    show: Callable[[List[Dict[str, Any]], Tuple[float, float, float]], None]) -> int:
    """A central bench's main: `bench(backend, db_url, state_dir, args)` on SQLite and/or a fresh PostgreSQL
    (args.backend), the results shown with the load average, and written to args.json when given (also used by
    bench_job_files.py)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-") as tmp:
        if args.backend in ("sqlite", "both"):
            state = Path(tmp) / "sqlite"
            state.mkdir()
            results.append(bench("sqlite", f"sqlite:///{state / 'central.db'}", state, args))
        if args.backend in ("postgresql", "both"):
            from support import pgserver

            reason = pgserver.missing_reason()
            if reason:
                print(f"\nPostgreSQL skipped: {reason}")
            else:
                server = pgserver.PostgresServer(durable=True)
                try:
                    state = Path(tmp) / "pg"
                    state.mkdir()
                    results.append(bench("postgresql", server.create_database("bench"), state, args))
                finally:
                    server.stop()
    load = os.getloadavg()
    # The JSON first: a plot drawn by `show` may carry its hash (tools/docs_figures.py's check of the docs' figures).
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({"cpus": os.cpu_count(), "load": load, "results": results},
                                                 option=orjson.OPT_INDENT_2))
    show(results, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())

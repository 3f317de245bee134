"""Central's cost as the work grows (`make bench-scale`): matches against a growing queue, heartbeats over more processes.

  matches     16 agents match at once over HTTP against one `gridpilot central serve` while the queue holds 1k, 10k,
              100k and 1M WAITING jobs (bench_central's mix; topped up between sizes): p50/p99 per match, CPU per
              match of the serving process and of PostgreSQL, and the broker's scan as the database plans and runs
              it (EXPLAIN ANALYZE on PostgreSQL, EXPLAIN QUERY PLAN on SQLite) at each size. Then a sample of the
              matched jobs is reported STARTED, RUNNING, SAVING, DONE: CPU per state report.
  heartbeats  PostgreSQL only: 1, 2 and 4 serve processes (`--workers N` on one port when central serve has it,
              else N processes on ports of their own, clients spread over them), clients sending bulk heartbeats
              (--bulk jobs per request, as a pilot with many jobs or a tower does) from threads of this process:
              job-updates/s, CPU per update of the servers and of PostgreSQL, and this process's own CPU (a client
              near one core of CPU means the run measured the client). Updates counted in the answers are checked
              against PostgreSQL's own count of row updates (pg_stat_user_tables.n_tup_upd).

The queue is filled in the database by the bench, as submissions would leave it: a hundred template rows copied
by INSERT ... SELECT over a generated series (server side on both engines), so 1M jobs take seconds, not hours.

Targets (issue 22): match p99 < 20 ms at 100k waiting with 16 agents; >= 20,000 heartbeat job-updates/s with 4
processes on PostgreSQL; and the CPU per job lifecycle (a match, a heartbeat a minute, four state reports) that
says how many running jobs one 2-core central serves.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import orjson
import psutil
from sqlalchemy import event, func, insert, literal, select, true

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_central  # noqa: E402
import docs_figures  # noqa: E402
from bench_central import CE, SAMPLE, SITE, SITE_MAP, TEMPLATES  # noqa: E402
from support import serve_procs  # noqa: E402
from gridpilot.central import broker, keys, matching, schema, tokens  # noqa: E402
from gridpilot.central.auth import Principal  # noqa: E402
from gridpilot.central.db import Database  # noqa: E402
from gridpilot.central.migrations import open_database  # noqa: E402
from gridpilot.central.serve import init  # noqa: E402
from gridpilot.central.settings import CentralSettings  # noqa: E402
from gridpilot.client import CentralClient  # noqa: E402
from gridpilot.states import JobStatus  # noqa: E402

JOBS = schema.jobs
#: Seconds between a running job's heartbeats (the pilot's and the tower's default) and a job's mean length, for
#: the capacity figure; ALICE's jobs run hours (the issue's "running jobs / mean job length").
HEARTBEAT_INTERVAL_S = 60.0
STATE_REPORTS = ("STARTED", "RUNNING", "SAVING", "DONE")
_TEMPLATE_USER = "bench-template"


# -- filling the queue --

def add_templates(db: Database) -> Tuple[int, int]:
    """bench_central's mix as a hundred rows (one per weight unit, interleaved), KILLED so no agent takes them: the
    rows fill_to copies. Their id range."""
    now = time.time()
    rows: List[Dict[str, Any]] = []
    for text, weight in TEMPLATES:
        rows += [bench_central.job_row(text, _TEMPLATE_USER, now, state=int(JobStatus.KILLED))] * weight
    order = sorted(range(len(rows)), key=lambda i: (i * 37) % len(rows))
    with db.write() as conn:
        ids = [conn.execute(insert(JOBS).values(**rows[i]).returning(JOBS.c.id)).scalar_one() for i in order]
    return min(ids), max(ids)


def waiting(db: Database) -> int:
    with db.lookup() as conn:
        return int(conn.execute(select(func.count()).select_from(JOBS).where(JOBS.c.state == int(JobStatus.WAITING)))
                   .scalar_one())


def fill_to(db: Database, templates: Tuple[int, int], target: int, chunk: int = 100_000) -> int:
    """Add WAITING jobs until about `target` wait (whole rounds of the templates): copies of the template rows made
    by the database itself (a recursive series joined to them), in transactions of `chunk` rows. The count now."""
    lo, hi = templates
    per_round = hi - lo + 1
    missing = target - waiting(db)
    names = [c.name for c in JOBS.columns if c.name not in ("id", "state", "user")]
    while missing > 0:
        rounds = min(max(1, -(-missing // per_round)), max(1, chunk // per_round))
        g = select(literal(1).label("n")).cte("g", recursive=True)
        g = g.union_all(select(g.c.n + 1).where(g.c.n < rounds))
        src = (select(literal(int(JobStatus.WAITING)), literal("bench"), *[JOBS.c[n] for n in names])
               .select_from(JOBS.join(g, true())).where(JOBS.c.id.between(lo, hi)).order_by(g.c.n, JOBS.c.id))
        with db.write() as conn:
            conn.execute(insert(JOBS).from_select(["state", "user", *names], src))
        missing -= rounds * per_round
    bench_central.settle(db)
    return waiting(db)


# -- CPU accounting --

class CpuMeter:
    """CPU seconds (user + system) of a set of process trees: the serve processes (with their workers) and
    PostgreSQL's postmaster (with its backends). A tree is re-read at every look, so backends started meanwhile
    count; one that ended keeps the CPU it had at the last look (what it spent after that is missed), so the total
    never goes back."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self._seen: Dict[Tuple[int, float], float] = {}

    def seconds(self) -> float:
        for pid in self.roots:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        self._seen[(p.pid, p.create_time())] = t.user + t.system
                except psutil.Error:
                    pass
        return sum(self._seen.values())


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def postmaster_pid(db_url: str) -> Optional[int]:
    """The PostgreSQL server's postmaster, found as the process listening on the URL's port (ours: started here)."""
    port = int(db_url.rsplit(":", 1)[1].split("/", 1)[0])
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None


# -- serve processes --

def has_workers_flag() -> bool:
    out = subprocess.run([sys.executable, "-m", "gridpilot", "central", "serve", "--help"], capture_output=True,
                         text=True, timeout=120)
    return "--workers" in out.stdout


class Servers:
    """n serve processes on one database: one with --workers n when central serve has it, else n on ports of their
    own (the multi-host layout) sharing the state directory's signing key."""

    def __init__(self, state: Path, db_url: str, n: int, workers_flag: bool) -> None:
        self.procs: List[subprocess.Popen] = []
        self.urls: List[str] = []
        try:
            if workers_flag and n > 1:
                proc, url = bench_central.start_server(state, db_url, port=free_port(), extra=["--workers", str(n)])
                self.procs.append(proc)
                self.urls.append(url)
            else:
                for _ in range(n):
                    proc, url = bench_central.start_server(state, db_url, port=free_port())
                    self.procs.append(proc)
                    self.urls.append(url)
        except BaseException:
            self.stop()
            raise
        self.layout = f"{n} process{'es' if n > 1 else ''}" + (" (--workers, one port)" if workers_flag and n > 1 else "")

    def pids(self) -> List[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        serve_procs.stop_all(self.procs, 30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_threads(n: int, fn: Callable[[int], None]) -> float:
    """fn(0..n-1) in n threads started together; the wall seconds they took."""
    barrier = threading.Barrier(n + 1)
    errors: List[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            fn(i)
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the calling thread
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


# -- the broker's plan --

def scan_plans(db: Database, key: tokens.Keys) -> List[Dict[str, Any]]:
    """The broker's scans of a match made here (matching.match, the bench's site map, after one match that warmed
    this process's memory of Requirements), as the engine got them,
    explained with the same parameters: PostgreSQL's EXPLAIN (ANALYZE, BUFFERS) runs the scan and says which index
    it used, how many rows it read and how many pages it touched; SQLite's EXPLAIN QUERY PLAN says the index."""
    sent: List[Tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        s = " ".join(statement.split())
        if s.upper().startswith("SELECT") and "FROM jobs" in s and "ORDER BY" in s:
            sent.append((statement, parameters))

    claims = tokens.Claims("agent", "bench-explain", "x", 0.0, 0.0, site=SITE, ce=CE)
    cache = broker.RequirementCache()
    # A first match warms this process's memory (texts compiled, verdicts), as in a server that has been matching;
    # the second one's scans are explained.
    matching.match(db, Principal(claims), SITE_MAP, time.time(), key=key, cache=cache)
    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        matching.match(db, Principal(claims), SITE_MAP, time.time(), key=key, cache=cache)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    plans = []
    with db.engine.connect() as conn:
        for statement, parameters in sent:
            if db.is_postgres:
                doc = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters).scalar()
                doc = orjson.loads(doc) if isinstance(doc, (str, bytes)) else doc
                top = doc[0]["Plan"]
                text = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement,
                                                                    parameters))
                scans = list(_nodes(top))
                scan = next((n for n in scans if "Index Name" in n or n["Node Type"].endswith("Scan")), top)
                plans.append({"plan": text, "node": scan["Node Type"], "index": scan.get("Index Name"),
                              "rows_read": scan.get("Actual Rows", 0) + scan.get("Rows Removed by Filter", 0),
                              "rows_removed_by_filter": scan.get("Rows Removed by Filter", 0),
                              "pages": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
                              "ms": doc[0].get("Execution Time")})
            else:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                text = "\n".join(str(r[-1]) for r in rows)
                index = next((w.split(" ")[0] for line in text.splitlines() for w in [line.split("INDEX ", 1)[-1]]
                              if "INDEX " in line), None)
                plans.append({"plan": text, "node": "SEARCH" if "SEARCH" in text else "SCAN", "index": index})
    return plans


def _nodes(plan: Dict[str, Any]) -> Any:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


# -- the measurements --

def bench_matches(db: Database, url: str, admin: CentralClient, key: tokens.Keys, meters: Dict[str, CpuMeter],
                  size: int, args: argparse.Namespace) -> Tuple[Dict[str, Any], List[Tuple[CentralClient, Dict]]]:
    """args.agents agents matching at once: first each as soon as its last match is answered (the most the server
    does: matches/s and CPU per match; the latency then is mostly waiting behind the other agents), then paced at
    args.match_rate matches/s in all (the latency of a match at that load). The jobs they got, with their agent."""
    n = args.agents
    agents = [CentralClient(url, admin.mint_token("agent", f"scale-agent{i}", site=SITE, ce=CE)) for i in range(n)]
    for a in agents:
        if a.match(SITE_MAP) is None:  # warm-up: connections, this process's caches, plans
            raise RuntimeError("the queue ran dry during the warm-up")
    # A quarter of the queue at most: a fifth of it never fits, and the size measured should stay about the size.
    per = max(1, min(args.matches, size // 4) // n // 2)
    res, got = _match_run(agents, per, 0.0, meters)
    if args.match_rate > 0:
        res["paced"], more = _match_run(agents, per, args.match_rate, meters)
        got += more
    res["waiting"] = size
    res["plans"] = scan_plans(db, key)
    # One match's scans together (a match may scan more than once): PostgreSQL's rows read for it.
    res["scan_rows_read"] = sum(p.get("rows_read", 0) for p in res["plans"]) if db.is_postgres else None
    return res, got


def _match_run(agents: List[CentralClient], per: int, rate: float,
               meters: Dict[str, CpuMeter]) -> Tuple[Dict[str, Any], List[Tuple[CentralClient, Dict]]]:
    """`per` matches by each agent at once; rate > 0: the k-th match of agent i is sent at (k * agents + i) / rate
    seconds from the start (or at once when it is late)."""
    n = len(agents)
    lat: List[List[float]] = [[] for _ in range(n)]
    got: List[List[Tuple[CentralClient, Dict]]] = [[] for _ in range(n)]
    none = [0] * n
    start = time.perf_counter() + 0.05

    def agent(i: int) -> None:
        for k in range(per):
            if rate > 0:
                delay = start + (k * n + i) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            t0 = time.perf_counter()
            job = agents[i].match(SITE_MAP)
            lat[i].append(time.perf_counter() - t0)
            if job is None:
                # Jobs that fit wait (a quarter of the queue at most is matched): the broker gave up too early.
                none[i] += 1
            else:
                got[i].append((agents[i], job))

    c0 = {k: m.seconds() for k, m in meters.items()}
    wall = run_threads(n, agent)
    c1 = {k: m.seconds() for k, m in meters.items()}
    count = n * per
    res: Dict[str, Any] = bench_central.percentiles([x for p in lat for x in p])
    res.update({"agents": n, "rate": rate or None, "matches_per_s": count / wall, "no_job_answers": sum(none),
                "server_cpu_ms_per_match": (c1["server"] - c0["server"]) / count * 1000,
                "db_cpu_ms_per_match": (c1["db"] - c0["db"]) / count * 1000 if "db" in c1 else 0.0})
    return res, [x for g in got for x in g]


def bench_reports(jobs: List[Tuple[CentralClient, Dict]], meters: Dict[str, CpuMeter], threads: int,
                  limit: int) -> Dict[str, Any]:
    """STARTED, RUNNING, SAVING and DONE of up to `limit` matched jobs, by their agents, from `threads` threads: CPU per
    state report (the rest of a job's lifecycle at central, beside its match and heartbeats)."""
    sample = jobs[:limit]
    lat: List[float] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for agent, job in sample[i::threads]:
            for state in STATE_REPORTS:
                extra = {"exit_code": 0} if state == "DONE" else {}
                t0 = time.perf_counter()
                agent.set_status(job["id"], state, job["resubmission"], **extra)
                with lock:
                    lat.append(time.perf_counter() - t0)

    c0 = {k: m.seconds() for k, m in meters.items()}
    run_threads(threads, worker)
    c1 = {k: m.seconds() for k, m in meters.items()}
    out: Dict[str, Any] = bench_central.percentiles(lat)
    out.update({"jobs": len(sample), "reports": len(lat),
                "server_cpu_ms_per_report": (c1["server"] - c0["server"]) / max(1, len(lat)) * 1000,
                "db_cpu_ms_per_report": (c1["db"] - c0["db"]) / max(1, len(lat)) * 1000 if "db" in c1 else 0.0})
    return out


def pg_updates(db: Database) -> int:
    with db.lookup() as conn:
        return int(conn.exec_driver_sql("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'jobs'")
                   .scalar_one())


def hold_jobs(db: Database, agents: int, per_agent: int) -> List[List[int]]:
    """agents x per_agent WAITING jobs made RUNNING on agents hb-agent0.. (as matches and reports would)."""
    held: List[List[int]] = []
    with db.write() as conn:
        ids = [r.id for r in conn.execute(select(JOBS.c.id).where(JOBS.c.state == int(JobStatus.WAITING))
                                          .order_by(JOBS.c.id).limit(agents * per_agent))]
        if len(ids) < agents * per_agent:
            raise RuntimeError(f"{len(ids)} WAITING jobs, {agents * per_agent} wanted for heartbeats")
        for i in range(agents):
            mine = ids[i * per_agent:(i + 1) * per_agent]
            conn.execute(JOBS.update().where(JOBS.c.id.in_(mine)).values(
                state=int(JobStatus.RUNNING), agent=f"hb-agent{i}", site=SITE, ce=CE, heartbeat=time.time(),
                reached_running=True))
            held.append(mine)
    bench_central.settle(db)
    return held


def bench_heartbeats(db: Database, db_url: str, state: Path, admin_token: str, held: List[List[int]], n_proc: int,
                     workers_flag: bool, pg_meter: CpuMeter, args: argparse.Namespace) -> Dict[str, Any]:
    """Bulk heartbeats as fast as n_proc serve processes answer them, for args.hb_seconds."""
    servers = Servers(state, db_url, n_proc, workers_flag)
    counted_before = pg_updates(db)
    try:
        admin = CentralClient(servers.urls[0], admin_token)
        threads = len(held)
        clients = [CentralClient(servers.urls[i % len(servers.urls)],
                                 admin.mint_token("agent", f"hb-agent{i}", site=SITE, ce=CE)) for i in range(threads)]
        batches = [[[{"job_id": j, "resubmission": 0, "sample": SAMPLE} for j in h[k:k + args.bulk]]
                    for k in range(0, len(h), args.bulk)] for h in held]
        for i in range(threads):  # warm-up: connections on every process
            clients[i].heartbeats_full(batches[i][0])
        counted_before = pg_updates(db)  # the warm-up's are flushed later: see below
        warm = threads
        updated = [0] * threads
        requests = [0] * threads
        lat: List[List[float]] = [[] for _ in range(threads)]
        stop_at = time.perf_counter() + args.hb_seconds

        def client(i: int) -> None:
            k = 0
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = clients[i].heartbeats_full(batches[i][k % len(batches[i])])
                lat[i].append(time.perf_counter() - t0)
                updated[i] += int(r["updated"])
                requests[i] += 1
                k += 1

        server_meter = CpuMeter(servers.pids())
        s0, d0, me0 = server_meter.seconds(), pg_meter.seconds(), self_cpu()
        wall = run_threads(threads, client)
        s1, d1, me1 = server_meter.seconds(), pg_meter.seconds(), self_cpu()
    finally:
        servers.stop()
    total = sum(updated)
    # PostgreSQL's own count of row updates on jobs: a backend sends its counts when its connection closes (the
    # servers were just stopped), so wait for them. The warm-up's requests may or may not be in counted_before.
    deadline = time.monotonic() + 60
    in_db = pg_updates(db) - counted_before
    while in_db < total and time.monotonic() < deadline:
        time.sleep(0.2)
        in_db = pg_updates(db) - counted_before
    out: Dict[str, Any] = {
        "processes": n_proc, "layout": servers.layout, "client_threads": threads, "bulk": args.bulk,
        "seconds": wall, "requests": sum(requests), "job_updates": total, "updates_per_s": total / wall,
        "db_row_updates": in_db, "warmup_updates": warm * args.bulk,
        "server_cpu_us_per_update": (s1 - s0) / max(1, total) * 1e6,
        "db_cpu_us_per_update": (d1 - d0) / max(1, total) * 1e6,
        "server_cpu_cores": (s1 - s0) / wall, "db_cpu_cores": (d1 - d0) / wall,
        "client_cpu_cores": (me1 - me0) / wall,
    }
    out.update({f"request_{k}": v for k, v in bench_central.percentiles([x for p in lat for x in p]).items()
                if k != "n"})
    return out


def bench_backend(name: str, db_url: str, state: Path, args: argparse.Namespace) -> Dict[str, Any]:
    settings = CentralSettings.from_args(state, db_url)
    admin_token = init(settings).admin_token
    db = open_database(db_url)
    key = keys.Keys(db, settings.signing_key_path)
    sizes = args.sizes if db.is_postgres else args.sqlite_sizes
    res: Dict[str, Any] = {"backend": name, "matches": [], "heartbeats": []}
    templates = add_templates(db)
    pg = postmaster_pid(db_url) if db.is_postgres else None
    proc, url = bench_central.start_server(state, db_url)
    jobs: List[Tuple[CentralClient, Dict]] = []
    try:
        meters = {"server": CpuMeter([proc.pid])}
        if pg is not None:
            meters["db"] = CpuMeter([pg])
        admin = CentralClient(url, admin_token)
        for size in sizes:
            t0 = time.perf_counter()
            now_waiting = fill_to(db, templates, size)
            fill_s = time.perf_counter() - t0
            print(f"== {name}: {now_waiting:,} WAITING (filled in {fill_s:.1f} s); {args.agents} agents matching ...",
                  flush=True)
            m, got = bench_matches(db, url, admin, key, meters, now_waiting, args)
            m["fill_s"] = fill_s
            res["matches"].append(m)
            jobs = got
            p = m["plans"][-1] if m["plans"] else {}
            paced = f"; paced at {args.match_rate:g}/s: p50 {m['paced']['p50_ms']:.1f}, p99 {m['paced']['p99_ms']:.1f} ms" \
                if "paced" in m else ""
            print(f"   p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms{paced}, server CPU {m['server_cpu_ms_per_match']:.2f}"
                  f" ms/match, plan: {p.get('node')} {p.get('index')}, rows read {m['scan_rows_read']} in {len(m['plans'])} scans",
                  flush=True)
        res["state_reports"] = bench_reports(jobs, meters, min(args.agents, 8), args.report_jobs)
    finally:
        proc.terminate()
        proc.wait(30)
    if db.is_postgres and args.processes:
        workers_flag = has_workers_flag()
        threads = max(args.clients, 2 * max(args.processes))
        held = hold_jobs(db, threads, args.held // threads)
        for n in args.processes:
            print(f"== {name}: heartbeats, {n} serve process(es), {threads} client threads, bulk {args.bulk} ...",
                  flush=True)
            h = bench_heartbeats(db, db_url, state, admin_token, held, n, workers_flag, CpuMeter([pg] if pg else []),
                                 args)
            res["heartbeats"].append(h)
            print(f"   {h['updates_per_s']:,.0f} job-updates/s; CPU cores: servers {h['server_cpu_cores']:.2f}, "
                  f"PostgreSQL {h['db_cpu_cores']:.2f}, client {h['client_cpu_cores']:.2f}", flush=True)
    db.dispose()
    return res


# -- the summary --

def lifecycle(r: Dict[str, Any], args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """CPU per job lifecycle at central (server + database): a match at the largest queue, a heartbeat every
    HEARTBEAT_INTERVAL_S while it runs (in bulk, at the fewest processes measured), four state reports; and the
    running jobs a machine of args.cores cores serves with it."""
    if not r["matches"] or "state_reports" not in r:
        return None
    m = r["matches"][-1]
    match_ms = m["server_cpu_ms_per_match"] + m["db_cpu_ms_per_match"]
    s = r["state_reports"]
    report_ms = (s["server_cpu_ms_per_report"] + s["db_cpu_ms_per_report"]) * len(STATE_REPORTS)
    hbs = r["heartbeats"]
    hb_ms = (hbs[0]["server_cpu_us_per_update"] + hbs[0]["db_cpu_us_per_update"]) / 1000 if hbs else None
    if hb_ms is None:
        return None
    beats = args.job_hours * 3600 / HEARTBEAT_INTERVAL_S
    per_job_ms = match_ms + report_ms + beats * hb_ms
    # A running job costs its heartbeats continuously and its match and reports once per job length.
    per_running_job_cores = hb_ms / 1000 / HEARTBEAT_INTERVAL_S + (match_ms + report_ms) / 1000 / (args.job_hours
                                                                                                     * 3600)
    return {"job_hours": args.job_hours, "heartbeat_interval_s": HEARTBEAT_INTERVAL_S, "match_cpu_ms": match_ms,
            "state_reports_cpu_ms": report_ms, "heartbeat_cpu_ms": hb_ms, "heartbeats_per_job": beats,
            "cpu_ms_per_job": per_job_ms, "cores": args.cores,
            "running_jobs_served": args.cores / per_running_job_cores,
            "at_waiting": m["waiting"]}


def report(results: List[Dict[str, Any]], load: Tuple[float, float, float], args: argparse.Namespace) -> None:
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"\n{args.agents} agents; as fast as answered: p50/p99 ms, matches/s, CPU ms per match; paced at "
          f"{args.match_rate:g} matches/s: p50/p99 ms")
    print("backend      waiting    p50 ms  p99 ms  matches/s  CPU ms/match server + db   paced p50 / p99   plan "
          "(rows read)")
    for r in results:
        for m in r["matches"]:
            p = m["plans"][-1] if m["plans"] else {}
            paced = f"{m['paced']['p50_ms']:6.1f} / {m['paced']['p99_ms']:6.1f}" if "paced" in m else " " * 15
            print(f"{r['backend']:<12} {m['waiting']:>9,} {m['p50_ms']:7.1f} {m['p99_ms']:7.1f} {m['matches_per_s']:9.0f}"
                  f"  {m['server_cpu_ms_per_match']:6.2f} + {m['db_cpu_ms_per_match']:5.2f}     {paced}"
                  f"          {p.get('index')} ({m['scan_rows_read'] if m['scan_rows_read'] is not None else '-'})"
                  + (f"  {m['no_job_answers']} answered no job" if m["no_job_answers"] else ""))
    for r in results:
        if r["heartbeats"]:
            print(f"\n{r['backend']}: heartbeats   updates/s   us CPU/update server + db   cores server/db/client"
                  "   request p99 ms")
            for h in r["heartbeats"]:
                print(f"  {h['layout']:<14} {h['updates_per_s']:>10,.0f}   {h['server_cpu_us_per_update']:7.1f} + "
                      f"{h['db_cpu_us_per_update']:6.1f}          {h['server_cpu_cores']:.2f} / {h['db_cpu_cores']:.2f}"
                      f" / {h['client_cpu_cores']:.2f}      {h['request_p99_ms']:.1f}")
    for r in results:
        at = [m for m in r["matches"] if m["waiting"] >= 100_000]
        if at:
            m = at[0]
            runs = [("as fast as answered", m)] + ([(f"paced at {args.match_rate:g}/s", m["paced"])]
                                                    if "paced" in m else [])
            for how, run in runs:
                p99 = run["p99_ms"]
                print(f"target {r['backend']}: match p99 {p99:.1f} ms at {m['waiting']:,} waiting, {args.agents} agents "
                      f"{how} {'<' if p99 < 20 else '>='} 20 ms")
        four = [h for h in r["heartbeats"] if h["processes"] == 4]
        if four:
            u = four[0]["updates_per_s"]
            print(f"target {r['backend']}: {u:,.0f} heartbeat job-updates/s with 4 processes "
                  f"{'>=' if u >= 20_000 else '<'} 20,000")
        life = r.get("lifecycle")
        if life:
            print(f"{r['backend']}: CPU per job lifecycle {life['cpu_ms_per_job']:.0f} ms (match "
                  f"{life['match_cpu_ms']:.1f}, 4 state reports {life['state_reports_cpu_ms']:.1f}, "
                  f"{life['heartbeats_per_job']:.0f} heartbeats x {life['heartbeat_cpu_ms']:.3f} ms, for "
                  f"{life['job_hours']:g} h jobs): one {life['cores']}-core central serves "
                  f"{life['running_jobs_served']:,.0f} running jobs with 60 s heartbeats "
                  f"({'>=' if life['running_jobs_served'] >= 100_000 else '<'} 100,000)")


def plot(doc: Dict[str, Any], path: Path, source: Optional[str] = None) -> Optional[str]:
    """Match p50/p99 against the queue's size (log axes), and heartbeat updates/s against processes; None when
    written, else why not. An SVG carries the SHA-256 of `source` (the run's JSON) as tools/docs_figures.py's figures
    do, so the docs' test sees a plot older than its numbers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (the bench extra: pip install 'matplotlib>=3.7')"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for r in doc["results"]:
        xs = [m["waiting"] for m in r["matches"]]
        ax1.plot(xs, [m["p50_ms"] for m in r["matches"]], marker="o", label=f"{r['backend']} p50")
        ax1.plot(xs, [m["p99_ms"] for m in r["matches"]], marker="s", linestyle="--", label=f"{r['backend']} p99")
        paced = [m for m in r["matches"] if "paced" in m]
        if paced:
            ax1.plot([m["waiting"] for m in paced], [m["paced"]["p99_ms"] for m in paced], marker="^", linestyle=":",
                     label=f"{r['backend']} p99, paced at {paced[0]['paced']['rate']:g}/s")
        if r["heartbeats"]:
            ax2.plot([h["processes"] for h in r["heartbeats"]], [h["updates_per_s"] for h in r["heartbeats"]],
                     marker="o", label=f"{r['backend']} (bulk {r['heartbeats'][0]['bulk']})")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.axhline(20, color="grey", linewidth=0.8)
    ax1.set_xlabel("WAITING jobs")
    ax1.set_ylabel("match latency, ms (16 agents at once)")
    ax1.legend(fontsize=8)
    ax2.axhline(20_000, color="grey", linewidth=0.8)
    ax2.set_xlabel("serve processes")
    ax2.set_ylabel("heartbeat job-updates/s")
    ax2.legend(fontsize=8)
    fig.suptitle(f"gridpilot central, {doc['cpus']} CPUs, load {doc['load'][0]:.1f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    if source and Path(path).suffix == ".svg":
        text = Path(path).read_text()
        declaration, rest = text.split("\n", 1) if text.startswith("<?xml") else ("", text)
        digest = docs_figures.source_hash(Path(source))
        Path(path).write_text(f"{declaration}\n<!-- {docs_figures.SOURCE_KEY}: {digest} -->\n{rest}".lstrip("\n"))
    return None


def sizes(text: str) -> List[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of whole numbers, got {text!r}") from None
    if not out or any(x < 0 for x in out):
        raise argparse.ArgumentTypeError(f"a comma-separated list of whole numbers >= 0, got {text!r}")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=sizes, default=[1000, 10_000, 100_000, 1_000_000],
                    help="WAITING jobs on PostgreSQL, in growing order (default 1000,10000,100000,1000000)")
    ap.add_argument("--sqlite-sizes", type=sizes, default=[1000, 10_000, 100_000, 1_000_000],
                    help="WAITING jobs on SQLite (default as --sizes)")
    ap.add_argument("--agents", type=int, default=16, help="agents matching at once (default 16)")
    ap.add_argument("--matches", type=int, default=800, help="matches timed per queue size, half as fast as answered, half paced; at most a quarter of the "
                         "queue (default 800)")
    ap.add_argument("--match-rate", type=float, default=50.0,
                    help="matches/s of all agents together in the paced run (default 50; 0: no paced run)")
    ap.add_argument("--report-jobs", type=int, default=200, help="matched jobs reported to DONE (default 200)")
    ap.add_argument("--processes", type=sizes, default=[1, 2, 4], help="serve processes for heartbeats (1,2,4)")
    ap.add_argument("--clients", type=int, default=8, help="client threads sending heartbeats (default 8, at least"
                                                           " two per process)")
    ap.add_argument("--bulk", type=int, default=100, help="jobs per heartbeat request (default 100)")
    ap.add_argument("--held", type=int, default=20_000, help="RUNNING jobs sending heartbeats (default 20000)")
    ap.add_argument("--hb-seconds", type=float, default=15.0, help="length of each heartbeat run (default 15)")
    ap.add_argument("--job-hours", type=float, default=6.0, help="mean job length for the capacity figure (6)")
    ap.add_argument("--cores", type=int, default=2, help="cores of the central for the capacity figure (2)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--plot", type=Path, help="write the plot here (.svg or .png; needs matplotlib)")
    args = ap.parse_args(argv)
    if sorted(args.sizes) != args.sizes or sorted(args.sqlite_sizes) != args.sqlite_sizes:
        ap.error("--sizes and --sqlite-sizes must grow (the queue is topped up between sizes, never emptied)")
    if args.held < args.bulk * max(args.clients, 2 * max(args.processes or [1])):
        ap.error("--held must give every client thread at least one full --bulk batch")

    def bench(name: str, db_url: str, state: Path, a: argparse.Namespace) -> Dict[str, Any]:
        r = bench_backend(name, db_url, state, a)
        r["lifecycle"] = lifecycle(r, a)
        return r

    def show(results: List[Dict[str, Any]], load: Tuple[float, float, float]) -> None:
        report(results, load, args)
        if args.plot:
            why = plot({"cpus": os.cpu_count(), "load": load, "results": results}, args.plot, args.json)
            print(f"plot: {why}" if why else f"plot written to {args.plot}")

    return bench_central.run_on_backends(args, bench, show)


if __name__ == "__main__":
    sys.exit(main())

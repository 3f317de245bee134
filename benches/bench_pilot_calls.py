"""What each call a running pilot makes costs central (`make bench-scale`): server CPU per request, and from it the
cores a central needs for a grid of N running jobs.

A real `gridpilot central serve` process on a private PostgreSQL (durable defaults), one process (`--workers 1`):
agents, each holding `--jobs-per-pilot` RUNNING jobs, call it from `--clients` threads as fast as it answers, one
call at a time for `--seconds` each:

  whoami              GET /whoami: the floor of any authenticated request (HTTP, token, revocation check)
  control, per job    GET /jobs/{id}/control: an agent polling for its own job (runners before bulk polls)
  control, bulk       POST /control for the pilot's jobs: the runner's poll (pilot/bulkbeats.py)
  heartbeat, bulk     POST /heartbeats for the pilot's jobs, with samples

CPU is read from the serve process (user + system) and from PostgreSQL's processes, so the figure does not move with
the machine's other load the way a latency does. The capacity lines then say what a grid of `--running` jobs costs
in cores at the pilot's rates: a control poll every `--poll` seconds and a heartbeat every `--heartbeat` seconds per
pilot, with jobs `--jobs-per-pilot` to a pilot.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_central  # noqa: E402
from bench_central import CE, SAMPLE, SITE  # noqa: E402
from bench_scale_cost import CpuMeter, postmaster_pid  # noqa: E402
from support import pgserver  # noqa: E402

from gridpilot.central import schema  # noqa: E402
from gridpilot.central.migrations import open_database  # noqa: E402
from gridpilot.central.serve import init  # noqa: E402
from gridpilot.central.settings import CentralSettings  # noqa: E402
from gridpilot.client import CentralClient  # noqa: E402

Call = Callable[[CentralClient, List[int]], Any]
CALLS: Dict[str, Call] = {
    "whoami": lambda c, jobs: c.request("GET", "/api/v1/whoami"),
    "control, per job": lambda c, jobs: c.control(jobs[0], 0),
    "control, bulk": lambda c, jobs: c.control_many([{"job_id": j, "resubmission": 0} for j in jobs]),
    "heartbeat, bulk": lambda c, jobs: c.heartbeats_full([{"job_id": j, "resubmission": 0, "sample": SAMPLE}
                                                          for j in jobs]),
}


def measure(name: str, call: Call, clients: List[CentralClient], jobs: List[List[int]], seconds: float,
            server: CpuMeter, db: CpuMeter) -> Dict[str, Any]:
    for c, mine in zip(clients, jobs):  # warm-up: connections, prepared statements, caches
        call(c, mine)
    done = [0] * len(clients)
    stop_at = time.perf_counter() + seconds

    def run(i: int) -> None:
        while time.perf_counter() < stop_at:
            call(clients[i], jobs[i])
            done[i] += 1

    s0, d0, t0 = server.seconds(), db.seconds(), time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    n = max(1, sum(done))
    return {"call": name, "requests": sum(done), "requests_per_s": sum(done) / elapsed,
            "server_cpu_ms": (server.seconds() - s0) / n * 1000, "db_cpu_ms": (db.seconds() - d0) / n * 1000}


def capacity(results: List[Dict[str, Any]], args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Cores (serve + database) for `args.running` jobs at the pilots' rates, bulk and per job."""
    cost = {r["call"]: (r["server_cpu_ms"] + r["db_cpu_ms"]) / 1000 for r in results}
    pilots = args.running / args.jobs_per_pilot
    bulk = pilots / args.poll * cost["control, bulk"] + pilots / args.heartbeat * cost["heartbeat, bulk"]
    # Before bulk polls every agent polled and beat for its own job; a one-job heartbeat costs about a one-job
    # poll (both a locked read of one row; the heartbeat also writes it), so the per-job poll stands for both.
    per_job = args.running / args.poll * cost["control, per job"] + args.running / args.heartbeat * cost[
        "control, per job"]
    return [{"layout": f"bulk ({args.jobs_per_pilot} jobs per pilot)", "cores": bulk},
            {"layout": "each agent on its own", "cores": per_job}]


def report(doc: Dict[str, Any]) -> None:
    a = doc["args"]
    print(f"\nmachine: {doc['cpus']} CPUs, load average {' '.join(f'{x:.2f}' for x in doc['load'])}; one serve "
          f"process on PostgreSQL, {a['clients']} clients, {a['jobs_per_pilot']} jobs per pilot")
    print(f"{'call':<20} {'requests/s':>11} {'serve CPU ms':>13} {'PostgreSQL CPU ms':>18}")
    for r in doc["results"]:
        print(f"{r['call']:<20} {r['requests_per_s']:>11,.0f} {r['server_cpu_ms']:>13.2f} {r['db_cpu_ms']:>18.2f}")
    print(f"\n{a['running']:,} running jobs, a control poll every {a['poll']:g} s and a heartbeat every "
          f"{a['heartbeat']:g} s per pilot:")
    for c in doc["capacity"]:
        print(f"  {c['layout']:<32} {c['cores']:6.1f} cores of central (serve + PostgreSQL)")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4, help="client threads, each a pilot (default 4)")
    ap.add_argument("--jobs-per-pilot", type=int, default=8, help="RUNNING jobs each pilot holds (default 8)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each call's run (default 10)")
    ap.add_argument("--running", type=int, default=100_000, help="running jobs for the capacity lines (100000)")
    ap.add_argument("--poll", type=float, default=3.0, help="seconds between a pilot's control polls (3)")
    ap.add_argument("--heartbeat", type=float, default=60.0, help="seconds between a pilot's heartbeats (60)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args(argv)
    for name in ("clients", "jobs_per_pilot"):
        if not 1 <= getattr(args, name) <= 1000:
            ap.error(f"--{name.replace('_', '-')} must be 1 to 1000")
    if args.seconds <= 0 or args.poll <= 0 or args.heartbeat <= 0 or args.running <= 0:
        ap.error("--seconds, --poll, --heartbeat and --running must be above 0")

    pg = pgserver.PostgresServer(durable=True)
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-calls-") as tmp:
        state = Path(tmp)
        proc: Optional[Any] = None
        try:
            db_url = pg.create_database("calls")
            admin_token = init(CentralSettings.from_args(state, db_url)).admin_token
            db = open_database(db_url)
            n = args.clients * args.jobs_per_pilot
            bench_central.fill_queue(db, n)
            proc, url = bench_central.start_server(state, db_url)
            admin = CentralClient(url, admin_token)
            with db.write() as conn:
                ids = [r.id for r in conn.execute(schema.jobs.select().with_only_columns(schema.jobs.c.id)
                                                  .order_by(schema.jobs.c.id).limit(n))]
                jobs = [ids[i * args.jobs_per_pilot:(i + 1) * args.jobs_per_pilot] for i in range(args.clients)]
                for i, mine in enumerate(jobs):
                    conn.execute(schema.jobs.update().where(schema.jobs.c.id.in_(mine)).values(
                        state=10, agent=f"calls-agent{i}", site=SITE, ce=CE, heartbeat=time.time(),
                        reached_running=True))
            db.dispose()
            clients = [CentralClient(url, admin.mint_token("agent", f"calls-agent{i}", site=SITE, ce=CE))
                       for i in range(args.clients)]
            server, database = CpuMeter([proc.pid]), CpuMeter([p for p in [postmaster_pid(db_url)] if p])
            results = [measure(name, call, clients, jobs, args.seconds, server, database)
                       for name, call in CALLS.items()]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            pg.stop()
    doc = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load": os.getloadavg(),
           "args": {k: getattr(args, k) for k in ("clients", "jobs_per_pilot", "seconds", "running", "poll",
                                                  "heartbeat")},
           "results": results}
    doc["capacity"] = capacity(results, args)
    report(doc)
    if args.json:
        args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cost of the web view overview's history (central/history.py): history.overview over the last 6 h, 24 h and
7 days, and the three charts drawn from it (charts.render), with HOSTS central hosts that wrote a snapshot every
INTERVAL seconds for DAYS days; and one snapshot (the jobs GROUP BY over JOBS jobs, one insert).

Workload: a fresh database (SQLite in a temp directory, or --db URL, e.g. a PostgreSQL database to be filled),
HOSTS x DAYS x 86400 / INTERVAL snapshots, each with six states, counters rising (one host restarting halfway).
Figures: wall time per call, min/median/max over REPEATS, with the machine's load.

    .venv/bin/python benches/bench_history.py [--hosts 2] [--days 7] [--interval 60] [--jobs 10000] [--repeats 7]
                                              [--db URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Callable, List

from sqlalchemy import insert

from gridpilot.central import history, schema
from gridpilot.central.migrations import open_database
from gridpilot.central.ui.charts import Chart, Series, render


def timed(fn: Callable[[], object], repeats: int) -> List[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def line(name: str, v: List[float]) -> str:
    return (f"  {name:<28} min {min(v) * 1e3:8.1f} ms  median {statistics.median(v) * 1e3:8.1f} ms  "
            f"max {max(v) * 1e3:8.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--interval", type=float, default=60.0)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--db", help="a database URL to fill (default: SQLite in a temp directory)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    db = open_database(args.db or f"sqlite:///{tmp.name}/central.db")
    try:
        now = time.time()
        n = int(args.days * 86400 / args.interval)
        states = json.dumps({"WAITING": 1000, "ASSIGNED": 20, "RUNNING": 500, "DONE": 100_000, "ERROR_E": 300,
                             "EXPIRED": 20})
        with db.write() as conn:
            for h in range(args.hosts):
                rows = [{"host": f"central{h}", "ts": now - (n - i) * args.interval, "states": states,
                         "matches": (i if h or i < n // 2 else i - n // 2) * 100, "assigned": i * 50,
                         "heartbeats": i * 1000} for i in range(n)]
                conn.execute(insert(schema.central_history), rows)
            if args.jobs:
                conn.execute(insert(schema.jobs), [_job(now, i) for i in range(args.jobs)])
        print(f"central history: {args.hosts} hosts x {n} snapshots ({args.days:g} days every {args.interval:g} s), "
              f"{args.jobs} jobs, {'PostgreSQL' if db.is_postgres else 'SQLite'}, {args.repeats} repeats, "
              f"load {open('/proc/loadavg').read().split()[:3]}")
        for hours in (6, 24, 168):
            if hours > args.days * 24 and hours != 6:
                continue
            seconds = hours * 3600.0
            o = history.overview(db, now, seconds)  # warm: statements compiled
            print(line(f"overview, last {hours} h", timed(lambda s=seconds: history.overview(db, now, s),
                                                           args.repeats)) + f"  ({o.snapshots} snapshots)")

            def draw(s: float = seconds) -> None:
                o = history.overview(db, now, s)
                for series in (o.states, o.rates):
                    render(Chart("x", "", [Series(k, v) for k, v in series.items()]))
            print(line("  + its charts drawn", timed(draw, args.repeats)))
        print(line("snapshot (GROUP BY + insert)",
                   timed(lambda: history.snapshot(db, "bench", {"matches": 1}, time.time()), args.repeats)))
    finally:
        db.dispose()
        tmp.cleanup()
    return 0


def _job(now: float, i: int) -> dict:
    return {"user": "alice", "state": (5, 10, 15, -3)[i % 4], "state_since": now, "kill_requested": False,
            "jdl": "x", "cores": 1, "memory_mb": 0, "disk_mb": 0, "ttl": 60, "gpus": 0, "price": 1.0, "priority": 0,
            "req_hash": "", "resubmission": 0, "auto_resubmits": 0, "reached_running": False, "created": now,
            "updated": now}


if __name__ == "__main__":
    raise SystemExit(main())

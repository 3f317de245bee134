"""A job's page in the web view (`make bench`): GET /ui/jobs/{id} for a killed job with 10,000 trace lines, on SQLite
and PostgreSQL (a server started in a temp directory, durable defaults), through `gridpilot central serve` over HTTP
with the owner's session cookie, as a browser asks it: authentication, admission, the job and trace queries, the
plots (ui/plots.py), the template and its charts' SVG. Target: < 200 ms (issue 23).

Workloads (the job is one of `--others` other jobs' rows; its trace is `--lines` lines, what the page reads at
most, jobpage.MAX_TRACE_LINES):

  day     24 h of samples, one `proc` line and its `usage` record a minute (1,440 samples, 2,880 lines; the pilot's
          default proc_trace_interval is 600 s, so 10 times denser than a real day), the rest of the lines ordinary
          `trace` lines of ~80 characters
  dense   every line a sample: 4,999 proc+usage pairs over 24 h (the most samples the page reads: the procfmt and
          the final state line besides), each usage record with 8 GPUs (~1.9 KB)

Measured: the server's time (the Server-Timing header every page carries: from the request's arrival to the page
ready to send, what the target is about), the HTTP time the client sees (that and the page's transfer), and, in
process: the job's and its trace's queries (jobs.get_job and
jobs.read_trace_window, as jobpage.page reads them; the page also reads the state history and the outputs), the plots
(plots.job_plots) and the charts' SVG (charts.render of each): where the time goes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import urllib3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))

import bench_central  # noqa: E402
from gridpilot.central import jobs, schema, tokens  # noqa: E402
from gridpilot.central.auth import Principal  # noqa: E402
from gridpilot.central.db import Database  # noqa: E402
from gridpilot.central.migrations import open_database  # noqa: E402
from gridpilot.central.serve import init  # noqa: E402
from gridpilot.central.settings import CentralSettings  # noqa: E402
from gridpilot.central.ui import charts, jobpage, plots, web  # noqa: E402
from gridpilot.client import CentralClient  # noqa: E402
from gridpilot.states import JobStatus, KillReason  # noqa: E402
from support.proctrace import run_entries  # noqa: E402

USER = "alice"
JDL = 'Executable = "/bin/run.sh";\nCPUCores = 8;\nMemorySize = "16GB";\nWorkDirectorySize = "80GB";\nTTL = 90000;\n'
GPUS = 8
WORKLOADS = ("day", "dense")


def trace_rows(job_id: int, workload: str, lines: int, end: float) -> List[Dict[str, Any]]:
    """The job's trace as stored: `lines` rows ending at `end`, the samples spread over them in time order."""
    if workload == "day":
        samples, interval = min(1440, (lines - 2) // 2), 60.0

        def usage(i: int) -> Optional[Dict[str, Any]]:
            return None
    else:
        samples = (lines - 2) // 2  # the procfmt and the final state line besides
        interval = 86400.0 / samples

        def usage(i: int) -> Optional[Dict[str, Any]]:
            return {"nprocs": 40, "nthreads": 300, "read_bytes": i * 10 ** 8, "write_bytes": i * 10 ** 7,
                    "io_source": "cgroup io.stat", "rchar_bytes": i * 10 ** 8, "wchar_bytes": i * 10 ** 7,
                    "pss_swap_bytes": (8 << 30) + i % 100 * (1 << 24), "disk_bytes": i * (1 << 22),
                    "gpus": [{"pci_address": f"0000:{g + 1:02x}:00.0", "vendor": "NVIDIA", "source": "nvml",
                              "util_percent": float((i + g) % 100), "memory_used_bytes": (20 << 30) + i,
                              "memory_total_bytes": 80 << 30, "job_memory_bytes": (18 << 30) + i,
                              "job_processes": 2} for g in range(GPUS)]}

    start = end - samples * interval
    entries = run_entries(start, samples, interval, cores=8, usage=(None if workload == "day" else usage))
    out = [{"job_id": job_id, "ts": e["ts"] + 1.0, "category": e["category"], "text": e["text"], "entry_key": None,
            "reported_ts": e["ts"]} for e in entries]
    others = lines - len(out) - 1
    step = (end - start) / max(others, 1)
    out += [{"job_id": job_id, "ts": start + k * step, "category": "trace", "entry_key": None, "reported_ts": None,
             "text": f"event {k}: processed /data/run{k % 7}/AO2D_{k:06d}.root in {k % 97 / 10:.1f} s"}
            for k in range(max(others, 0))]
    out.append({"job_id": job_id, "ts": end, "category": "state", "entry_key": None, "reported_ts": None,
                "text": "Job state transition from RUNNING to ERROR_E"})
    out.sort(key=lambda r: r["ts"])
    return out


def add_job(db: Database, workload: str, lines: int) -> int:
    """A job of USER's killed for memory after 24 h, with its trace."""
    now = time.time()
    row = bench_central.job_row(JDL, USER, now - 90000, int(JobStatus.ERROR_E))
    row.update(kill_reason=int(KillReason.MEMORY_USAGE), reached_running=True, site="BENCH::SITE",
               ce="BENCH::SITE::CE", node="node01", exit_code=137, updated=now)
    with db.write() as conn:
        job_id = int(conn.execute(schema.jobs.insert().values(**row)).inserted_primary_key[0])
    rows = trace_rows(job_id, workload, lines, now)
    for k in range(0, len(rows), 5000):
        with db.write() as conn:
            conn.execute(schema.traces.insert(), rows[k:k + 5000])
    return job_id


def in_process(db: Database, job_id: int, repeat: int) -> Dict[str, Any]:
    p = Principal(tokens.Claims("user", USER, "bench", 0.0, 0.0))
    def read() -> Any:
        return (jobs.get_job(db, p, job_id),
                jobs.read_trace_window(db, p, job_id, head=jobpage.TRACE_HEAD, tail=jobpage.TRACE_TAIL)["lines"])

    job, trace = read()
    made = plots.job_plots(job, trace)
    return {
        "trace_lines": len(trace),
        "charts": len(made),
        "points": sum(len(s.points) for c in made for s in c.series),
        "queries": bench_central.measure(read, repeat),
        "plots": bench_central.measure(lambda: plots.job_plots(job, trace), repeat),
        "svg": bench_central.measure(lambda: [charts.render(c) for c in made], repeat),
        "svg_bytes": sum(len(charts.render(c)) for c in made),
    }


def bench_backend(name: str, db_url: str, state: Path, args: argparse.Namespace) -> Dict[str, Any]:
    print(f"\n== {name}: {args.others:,} other jobs, the job's trace {args.lines:,} lines ...", flush=True)
    res: Dict[str, Any] = {"backend": name, "others": args.others, "lines": args.lines, "repeat": args.repeat,
                           "workloads": {}}
    admin_token = init(CentralSettings.from_args(state, db_url)).admin_token
    db = open_database(db_url)
    try:
        bench_central.fill_queue(db, args.others, user=USER)
        ids = {w: add_job(db, w, args.lines) for w in args.workloads}
        bench_central.analyze(db, "jobs", "traces")
        proc, url = bench_central.start_server(state, db_url)
        try:
            token = CentralClient(url, admin_token).mint_token("user", USER)
            http = urllib3.PoolManager(retries=False, timeout=120)
            for w, job_id in ids.items():
                size = 0
                server: List[float] = []

                def get() -> None:
                    nonlocal size
                    r = http.request("GET", f"{url}/ui/jobs/{job_id}", headers={"Cookie": f"{web.SESSION_COOKIE}={token}"})
                    if r.status != 200 or b'id="plots"' not in r.data:
                        raise RuntimeError(f"GET /ui/jobs/{job_id}: {r.status} {r.data[:300]!r}")
                    size = len(r.data)
                    server.append(server_ms(r.headers.get("Server-Timing", "")))

                m = {"http": bench_central.measure(get, args.repeat), **in_process(db, job_id, args.repeat)}
                timed = sorted(server[1:])  # the first is measure()'s warm-up
                m["server"] = {"n": len(timed), "p50_ms": timed[len(timed) // 2],
                               "p99_ms": timed[min(len(timed) - 1, int(len(timed) * 0.99))], "max_ms": timed[-1]}
                m["page_bytes"] = size
                res["workloads"][w] = m
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        db.dispose()
    return res


def server_ms(header: str) -> float:
    """The page's own time from its Server-Timing header (`app;dur=MS`, web.page_route)."""
    for part in header.split(";"):
        if part.strip().startswith("dur="):
            return float(part.strip()[4:])
    raise RuntimeError(f"the page has no Server-Timing duration: {header!r}")


def report(results: List[Dict[str, Any]], load: Tuple[float, float, float]) -> None:
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for r in results:
        print(f"\n{r['backend']}: GET /ui/jobs/{{id}}, {r['lines']:,} trace lines, {r['repeat']} requests each")
        print("  workload  lines  charts  points   server p50 ms  p99 ms   HTTP p50 ms  p99 ms   queries  plots   svg ms"
              "   page KB")
        for w, m in r["workloads"].items():
            print(f"  {w:<8} {m['trace_lines']:6d}  {m['charts']:6d}  {m['points']:6d}   {m['server']['p50_ms']:12.1f}  "
                  f"{m['server']['p99_ms']:6.1f}   {m['http']['p50_ms']:10.1f}  "
                  f"{m['http']['p99_ms']:6.1f}   {m['queries']['p50_ms']:7.1f}  {m['plots']['p50_ms']:5.1f}  "
                  f"{m['svg']['p50_ms']:6.1f}   {m['page_bytes'] / 1024:7.0f}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--others", type=int, default=10_000, help="other jobs of the user's (default 10000)")
    ap.add_argument("--lines", type=int, default=jobpage.MAX_TRACE_LINES,
                    help=f"the job's trace lines (default {jobpage.MAX_TRACE_LINES}, what the page reads)")
    ap.add_argument("--repeat", type=int, default=30, help="requests timed per measurement (default 30)")
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    return bench_central.run_on_backends(args, bench_backend, report)


if __name__ == "__main__":
    sys.exit(main())

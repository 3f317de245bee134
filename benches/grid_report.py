"""What benches/simulate_grid.py reports: the run's JSON made from the simulator's counters, the printed summary
with ALICE's and aCT's rates beside the measured ones, and the plot."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from grid_pilots import SimConfig, Stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import docs_figures  # noqa: E402  (the figures' source-hash key, as the docs' test reads it)

#: ALICE (issue 22): 100,000-200,000 running jobs; with a mean job of 8 h, running / length starts per second.
ALICE_RUNNING = (100_000, 150_000, 200_000)
ALICE_MEAN_JOB_S = 8 * 3600.0
#: The agent's heartbeat interval (config.heartbeat_interval).
HEARTBEAT_S = 60.0
#: aCT (ARC Control Tower): ~20 Hz of heartbeats for 70k jobs/hour from one process.
ACT_HZ = 20.0
#: The requests of one lifecycle besides heartbeats and the pilot's token, as grid_pilots.Grid.run_job sends them:
#: one match, four states, three trace posts, one registration. The model of `compare` uses this count, not the
#: run's ratio of requests to ended jobs, which a saturated run (starts outrunning ends) inflates.
LIFECYCLE_REQUESTS = 9


def percentiles(xs: Sequence[float]) -> Dict[str, float]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1000

    return {"n": len(s), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": s[-1] * 1000}


def series(per_second: Dict[int, int], seconds: int) -> List[int]:
    return [per_second.get(t, 0) for t in range(seconds)]


def build(stats: Stats, extra: Dict[str, Any], cfg: SimConfig, args: argparse.Namespace, before: Dict[str, float],
          sizes: Tuple[Optional[int], Optional[int], Optional[int]], layout: str, load: Tuple[float, float, float]) -> Dict[str, Any]:
    wall = extra["wall_s"]
    seconds = int(wall) + 1
    endpoints = {name: {**percentiles(e.latencies), "statuses": dict(sorted(e.statuses.items()))}
                 for name, e in sorted(stats.endpoints.items())}
    errors: Dict[str, int] = {}
    for e in stats.endpoints.values():
        for status, n in e.statuses.items():
            if not status.startswith("2"):
                errors[status] = errors.get(status, 0) + n
    requests = sum(len(e.latencies) for e in stats.endpoints.values())
    starts, ends = series(stats.starts, seconds), series(stats.ends, seconds)
    # The steady window: every pilot started and its first jobs had time to end.
    steady_from = min(int(cfg.ramp_s + cfg.job_max_s), seconds // 2)
    steady = max(1, seconds - steady_from)
    after = extra["after_cpu"]
    serve_cpu = after["serve_s"] - before["serve_s"]
    pg_cpu = after["postgres_s"] - before["postgres_s"]
    lifecycles = sum(ends)
    server_cpu = serve_cpu + pg_cpu
    per_lifecycle = server_cpu / lifecycles if lifecycles else None
    per_request = server_cpu / requests if requests else None
    hb_requests = len(stats.endpoints["POST /heartbeats"].latencies) if "POST /heartbeats" in stats.endpoints else 0
    non_hb_per_lifecycle = (requests - hb_requests) / lifecycles if lifecycles else None
    size0, filled, size1 = sizes
    grown = (size1 - filled) if filled is not None and size1 is not None else None
    return {
        "bench": "simulate_grid",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["benches/simulate_grid.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "load_at_end": load},
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__} | {
            "db": args.db, "processes": args.processes, "layout": layout, "connections_per_url": args.connections,
            "zombie_after_s": args.zombie_after, "expire_after_s": args.expire_after,
            "sweep_interval_s": args.sweep_interval},
        "fill": extra.get("fill"),
        "wall_s": wall,
        "endpoints": endpoints,
        "requests": requests,
        "requests_per_s": requests / wall,
        "errors_by_status": dict(sorted(errors.items())),
        "jobs": {"matched": stats.matched, "empty_matches": stats.empty_matches, "done": stats.done,
                 "failed": stats.fails, "resubmitted": stats.resubmitted,
                 "resubmit_refused": stats.resubmit_refused, "submitted_during_run": stats.submitted,
                 "pilots_started": stats.pilots_started, "pilots_vanished": stats.pilots_vanished,
                 "jobs_of_vanished_pilots": len(stats.vanished), "vanished_check": extra.get("vanished_check"),
                 "final_states": extra.get("final_states")},
        "rates": {"steady_from_s": steady_from,
                  "starts_per_s": sum(starts[steady_from:]) / steady,
                  "ends_per_s": sum(ends[steady_from:]) / steady,
                  "heartbeat_job_updates_per_s": stats.hb_job_updates / wall,
                  "heartbeat_requests_per_s": hb_requests / wall,
                  "jobs_per_heartbeat": (sum(stats.hb_requests_jobs) / len(stats.hb_requests_jobs)
                                         if stats.hb_requests_jobs else None),
                  "held_jobs_max": max((h for _, h in stats.held_series), default=0),
                  "held_jobs_mean_steady": _mean([h for t, h in stats.held_series if t >= steady_from])},
        "timeline": {"starts": starts, "ends": ends, "held": stats.held_series, "cpu": extra.get("cpu_series", [])},
        "server_cpu": {"serve_s": serve_cpu, "postgres_s": pg_cpu, "cores_busy": server_cpu / wall,
                       "per_lifecycle_ms": None if per_lifecycle is None else per_lifecycle * 1000,
                       "per_request_ms": None if per_request is None else per_request * 1000,
                       "requests_per_lifecycle_without_heartbeats": non_hb_per_lifecycle},
        "client": {"cpu_s": extra["client_cpu_s"], "cpu_share_of_one_core": extra["client_cpu_s"] / wall,
                   "loop_lag": percentiles(stats.loop_lag),
                   "connection_pool_wait": percentiles(stats.pool_wait)},
        "database": {"bytes_before": size0, "bytes_after_fill": filled, "bytes_after": size1,
                     "grown_during_run_bytes": grown,
                     "per_million_lifecycles_gb": (grown / lifecycles * 1e6 / 1e9) if grown and lifecycles else None},
        "comparison": compare(per_request, LIFECYCLE_REQUESTS),
    }


def _mean(xs: List[int]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def compare(per_request_s: Optional[float], non_hb_per_lifecycle: Optional[float]) -> Dict[str, Any]:
    """ALICE's rates, and the server cores they would need at this run's CPU per request. The model: a lifecycle's
    own requests (match, states, traces, registration) at the starts rate, plus one bulk heartbeat per pilot per
    interval; every request costs the run's mean server CPU per request (match costs more than a heartbeat, so this
    is an estimate, not a measurement of that mix)."""
    out: Dict[str, Any] = {"act_hz": ACT_HZ, "alice": []}
    for running in ALICE_RUNNING:
        starts = running / ALICE_MEAN_JOB_S
        row: Dict[str, Any] = {"running": running, "mean_job_h": ALICE_MEAN_JOB_S / 3600, "starts_per_s": starts,
                               "heartbeat_job_updates_per_s": running / HEARTBEAT_S}
        if per_request_s is not None and non_hb_per_lifecycle is not None:
            for jobs_per_hb in (1, 8):
                reqs = starts * non_hb_per_lifecycle + running / HEARTBEAT_S / jobs_per_hb
                row[f"cores_needed_{jobs_per_hb}_jobs_per_heartbeat"] = reqs * per_request_s
        out["alice"].append(row)
    return out


def show(r: Dict[str, Any]) -> None:
    c, rates, cpu, jobs = r["config"], r["rates"], r["server_cpu"], r["jobs"]
    print(f"\n== simulated grid: {c['pilots']:,} pilots, {r['wall_s']:.0f} s, jobs {c['job_min_s']:.0f}-"
          f"{c['job_max_s']:.0f} s, heartbeats every {c['heartbeat_s']:.0f} s, {c['processes']} serve process(es) "
          f"({c['layout']}) on {c['db']}; load at end {r['machine']['load_at_end'][0]:.1f} on "
          f"{r['machine']['cpus']} CPUs")
    print("\nendpoint                     count     p50 ms   p99 ms    max ms   statuses")
    for name, e in r["endpoints"].items():
        if e["n"]:
            print(f"{name:<26} {e['n']:>8,}  {e['p50_ms']:8.1f} {e['p99_ms']:8.1f} {e['max_ms']:9.1f}   "
                  f"{e['statuses']}")
    print(f"\nrequests {r['requests']:,} ({r['requests_per_s']:.0f}/s); errors by status {r['errors_by_status']}")
    print(f"jobs: {jobs['done']:,} DONE, {jobs['failed']:,} ERROR_E, {jobs['resubmitted']:,} resubmitted, "
          f"{jobs['pilots_vanished']:,} pilots vanished holding {jobs['jobs_of_vanished_pilots']:,} jobs "
          f"(checked {jobs['vanished_check']})")
    print(f"steady (from {rates['steady_from_s']} s): {rates['starts_per_s']:.1f} starts/s, {rates['ends_per_s']:.1f} "
          f"ends/s, {rates['heartbeat_job_updates_per_s']:.0f} heartbeat job-updates/s in "
          f"{rates['heartbeat_requests_per_s']:.1f} requests/s, held jobs max {rates['held_jobs_max']:,}")
    if rates["starts_per_s"] and rates["ends_per_s"] < 0.8 * rates["starts_per_s"]:
        print("  ends lag behind starts: central is past what it answers (the queue in front of it grows), so the "
              "figures per lifecycle below overstate; the CPU per request holds")
    pl = cpu["per_lifecycle_ms"]
    print(f"server CPU: serve {cpu['serve_s']:.0f} s + PostgreSQL {cpu['postgres_s']:.0f} s = "
          f"{cpu['cores_busy']:.2f} cores busy; " + (f"{pl:.1f} ms per job lifecycle, " if pl else "") +
          (f"{cpu['per_request_ms']:.2f} ms per request" if cpu["per_request_ms"] else ""))
    cl = r["client"]
    lag = cl["loop_lag"]
    pw = cl["connection_pool_wait"]
    if pw.get("n"):
        print(f"{pw['n']:,} requests waited for a free connection (the queue in front of central): p50 "
              f"{pw['p50_ms']:.0f} ms, p99 {pw['p99_ms']:.0f} ms (inside the latencies above)")
    print(f"simulator: {cl['cpu_share_of_one_core']:.2f} of one core"
          + (f", event-loop lag p50 {lag['p50_ms']:.0f} ms p99 {lag['p99_ms']:.0f} ms" if lag.get("n") else "")
          + (" (saturated: the simulator, not central, limits the rates)" if cl["cpu_share_of_one_core"] > 0.9
             else " (late by over a second at times: the simulator's own delays are in the latencies)"
             if lag.get("n") and lag["p99_ms"] > 1000 else ""))
    d = r["database"]
    if d["grown_during_run_bytes"] is not None:
        gb = d["per_million_lifecycles_gb"]
        print(f"database: {d['bytes_before'] / 1e6:.1f} MB, {d['bytes_after_fill'] / 1e6:.1f} MB with the queue "
              f"filled, {d['bytes_after'] / 1e6:.1f} MB at the end"
              + (f", {gb:.1f} GB per million job lifecycles" if gb else ""))
    print(f"\ncompared: aCT needed {ACT_HZ:.0f} Hz of heartbeats from one process; this run sustained "
          f"{rates['heartbeat_requests_per_s']:.1f} heartbeat requests/s and {r['requests_per_s']:.0f} requests/s "
          "in all")
    for row in r["comparison"]["alice"]:
        need = ""
        if "cores_needed_1_jobs_per_heartbeat" in row:
            need = (f"; at this run's CPU per request central needs {row['cores_needed_1_jobs_per_heartbeat']:.1f} "
                    f"cores (one job per heartbeat) or {row['cores_needed_8_jobs_per_heartbeat']:.1f} (8 per pilot)")
        print(f"ALICE {row['running']:,} running, {row['mean_job_h']:.0f} h jobs: {row['starts_per_s']:.1f} starts/s "
              f"(this run {rates['starts_per_s']:.1f}), {row['heartbeat_job_updates_per_s']:,.0f} heartbeat "
              f"job-updates/s{need}")


def plot(r: Dict[str, Any], path: str, source: Optional[str] = None) -> Optional[str]:
    """Starts and ends per second with the held jobs, the cores busy on each side, and each endpoint's p50/p99;
    None or why no plot. A PNG carries the SHA-256 of `source` (the run's JSON) as tools/docs_figures.py's figures do,
    so a figure in docs/ can be checked against its JSON."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (the bench extra: pip install 'matplotlib>=3.7')"
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(8, 10))
    win = 10
    t = r["timeline"]

    def smooth(xs: List[int]) -> List[float]:
        return [sum(xs[i:i + win]) / win for i in range(0, len(xs), win)]

    xs = list(range(0, len(t["starts"]), win))
    a1.plot(xs, smooth(t["starts"]), label="job starts/s")
    a1.plot(xs, smooth(t["ends"]), label="job ends/s")
    a1.set_xlabel("s")
    a1.set_ylabel("per second (10 s mean)")
    ax = a1.twinx()
    ax.plot([h[0] for h in t["held"]], [h[1] for h in t["held"]], color="grey", alpha=0.5, label="held jobs")
    ax.set_ylabel("held jobs")
    a1.legend(loc="upper left")
    c = r["config"]
    a1.set_title(f"{c['pilots']:,} simulated pilots, {c['processes']} serve process(es) on {c['db']} "
                 f"({r['date'][:10]})")
    cpu = t["cpu"]
    if len(cpu) > 1:
        ts = [p["t"] for p in cpu[1:]]
        for key, label in (("serve_s", "serve processes"), ("postgres_s", "PostgreSQL"), ("client_s", "simulator")):
            vals = [(b[key] - a[key]) / (b["t"] - a["t"]) for a, b in zip(cpu, cpu[1:])]
            a2.plot(ts, vals, label=label)
        a2.set_ylabel("cores busy")
        a2.set_xlabel("s")
        a2.legend()
    names = [n for n, e in r["endpoints"].items() if e.get("n")]
    a3.barh(names, [r["endpoints"][n]["p99_ms"] for n in names], label="p99", color="tab:orange")
    a3.barh(names, [r["endpoints"][n]["p50_ms"] for n in names], label="p50", color="tab:blue")
    a3.set_xscale("log")
    a3.set_xlabel("latency, ms (log)")
    a3.legend()
    fig.tight_layout()
    meta = {"Software": None}
    if source is not None and path.endswith(".png"):
        meta[docs_figures.SOURCE_KEY] = docs_figures.source_hash(Path(source))
    fig.savefig(path, dpi=100, metadata=meta)
    plt.close(fig)
    return None

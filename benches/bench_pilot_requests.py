"""Requests per running job per hour that one pilot sends central: each agent reporting on its own
(bulk_heartbeats false, as before issue 22) against the runner's bulk heartbeats and control polls.

A real `gridpilot runner` with JOBS sleeping jobs against an embedded central (SQLite); central's per-route request
counters are read once every job runs and again WINDOW seconds later. The heartbeat interval is shortened
(--heartbeat, 10 s) so that a short window sees several; `per_job_hour_default` scales the heartbeats to the
default 60 s interval (the polls already run at the default 3 s). Prints one JSON document.

    .venv/bin/python benches/bench_pilot_requests.py --jobs 8 --window 60
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import orjson

from gridpilot.testing import LocalGrid

DEFAULT_HEARTBEAT_S = 60.0
_LABEL = re.compile(r'(\w+)="([^"]*)"')
JDL = 'Executable = "/bin/sleep";\nArguments = "{seconds}";\nTTL = {ttl};\n'


def _counts(grid: LocalGrid) -> Dict[str, float]:
    """Requests central served so far, per "METHOD route"."""
    out: Dict[str, float] = {}
    for line in grid.admin.metrics().splitlines():
        if not line.startswith("gridpilot_http_requests_total{"):
            continue
        labels = dict(_LABEL.findall(line))
        key = f"{labels['method']} {labels['route']}"
        out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def run(jobs: int, window: float, heartbeat: float, bulk: bool) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-") as tmp, LocalGrid(Path(tmp) / "grid") as grid:
        ids = [grid.user.submit(JDL.format(seconds=int(window) + 600, ttl=int(window) + 900)) for _ in range(jobs)]
        grid.start_runner(cores=jobs, heartbeat_interval=heartbeat, bulk_heartbeats=bulk, cgroups="off",
                          match_backoff=0.3, match_backoff_max=1.0)
        try:
            deadline = time.monotonic() + 120 + 10 * jobs
            while any(grid.admin.get_job(j)["state"] != "RUNNING" for j in ids):
                if time.monotonic() > deadline:
                    raise SystemExit("the jobs did not all reach RUNNING")
                time.sleep(0.5)
            # One heartbeat interval to settle (the jobs' start-up lines, the runner's first beat), then the window.
            time.sleep(heartbeat)
            before, t0 = _counts(grid), time.monotonic()
            time.sleep(window)
            after, elapsed = _counts(grid), time.monotonic() - t0
        finally:
            grid.stop_runner()
    routes = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    # The bench's own reads (metrics, the jobs' states) are not the pilot's.
    routes = {k: v for k, v in routes.items() if v and k not in ("GET /metrics", "GET /api/v1/jobs/{job_id}")}
    per_job_hour = {k: v / jobs / elapsed * 3600 for k, v in routes.items()}
    beats = per_job_hour.get("POST /api/v1/heartbeats", 0.0)
    default = dict(per_job_hour)
    if beats:
        default["POST /api/v1/heartbeats"] = beats * heartbeat / DEFAULT_HEARTBEAT_S
    return {"bulk": bulk, "elapsed_s": round(elapsed, 1), "requests": routes,
            "per_job_hour": {k: round(v, 1) for k, v in per_job_hour.items()},
            "per_job_hour_total": round(sum(per_job_hour.values()), 1),
            "per_job_hour_default": {k: round(v, 1) for k, v in default.items()},
            "per_job_hour_default_total": round(sum(default.values()), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--heartbeat", type=float, default=10.0)
    args = ap.parse_args()
    # SIGTERM ends the bench through its `finally`s: the runner stopped, the embedded central closed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    per_job = run(args.jobs, args.window, args.heartbeat, bulk=False)
    bulk = run(args.jobs, args.window, args.heartbeat, bulk=True)
    ratio = (per_job["per_job_hour_default_total"] / bulk["per_job_hour_default_total"]
             if bulk["per_job_hour_default_total"] else None)
    out = {"bench": "pilot_requests", "date": time.strftime("%Y-%m-%d"), "jobs": args.jobs, "window_s": args.window,
           "heartbeat_s": args.heartbeat, "load": os.getloadavg(), "per_job": per_job, "bulk": bulk,
           "ratio_default": round(ratio, 2) if ratio else None}
    sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Kill latency (issue 19): from a user's kill request to the JobAgent learning it, and to the job's KILLED.

    .venv/bin/python benches/bench_kill.py [--kills 20] [--heartbeat 60] [--poll S] [--json FILE]

A LocalGrid (embedded central on SQLite, a real `gridpilot runner`, its agents, wrappers and payloads) runs one
sleeping payload at a time, with heartbeats `--heartbeat` s apart (60: a site's default) and the control poll every
`--poll` s (kill_poll_interval; its default when not given). For each of `--kills` jobs, once it is RUNNING and a
random part of a poll interval later (so that the kill falls anywhere in the poll's cycle), the user's kill
request (POST /jobs/{id}/kill, through the client); then
  learned   the agent's trace line "kill requested by central (...)", dated by the agent on this host's clock
  KILLED    central's job in KILLED (polled every 20 ms)
each counted from just before the kill request. Then the cost of one control poll as the agent makes it: `--polls`
GET /jobs/{id}/control on one connection. Prints median and p95 (and max); `--json` writes them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import orjson

from gridpilot.client import CentralClient
from gridpilot.config import PilotConfig
from gridpilot.testing import LocalGrid

PAYLOAD = Path(__file__).resolve().parent.parent / "tests" / "support" / "pilot_payload.py"
LEARNED = "kill requested by central (kill requested)"


def sleep_jdl(seconds: int) -> str:
    return (f'Executable = "{sys.executable}";\nArguments = "{PAYLOAD} sleep {seconds}";\nTTL = 3600;\n'
            f'ForcedKillTimeout = 2;\n')


def wait_for(what: str, check: Any, timeout: float, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f} s")
        time.sleep(step)


def pct(values: List[float], p: float) -> float:
    """The p-th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "p95": pct(values, 95), "max": max(values), "n": len(values)}


def one_kill(grid: LocalGrid, rng: random.Random, poll: float) -> Dict[str, float]:
    user = grid.user
    job_id = user.submit(sleep_jdl(600))
    wait_for(f"job {job_id} RUNNING", lambda: user.get_job(job_id)["state"] == "RUNNING", 120)
    time.sleep(rng.uniform(0, poll or 1.0))
    t0 = time.time()
    assert user.kill(job_id)["kill_requested"] is True
    killed = wait_for(f"job {job_id} KILLED", lambda: user.get_job(job_id)["state"] == "KILLED" and time.time(), 120)
    learned = wait_for(f"job {job_id}'s agent learning the kill",
                       lambda: next((e["ts"] for e in user.trace(job_id) if e["text"] == LEARNED), None), 120, 0.1)
    return {"job_id": job_id, "learned": learned - t0, "killed": killed - t0}


def poll_cost(grid: LocalGrid, job_id: int, n: int) -> Dict[str, float]:
    agent = CentralClient(grid.central.url, grid.token_file.read_text().strip())
    times = []
    for _ in range(n):
        t = time.perf_counter()
        agent.control(job_id, 0)
        times.append((time.perf_counter() - t) * 1000)
    return summary(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--heartbeat", type=float, default=60.0, help="heartbeat_interval, s (default 60)")
    ap.add_argument("--poll", type=float, default=None, help="kill_poll_interval, s (default: the setting's)")
    ap.add_argument("--polls", type=int, default=500, help="control polls timed for their cost (default 500)")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    poll = PilotConfig.kill_poll_interval if args.poll is None else args.poll
    rng = random.Random(args.seed)
    rows: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as tmp, LocalGrid(Path(tmp)) as grid:
        grid.start_runner(cores=1, heartbeat_interval=args.heartbeat, kill_poll_interval=poll,
                          max_empty_matches=1_000_000, match_backoff=0.2, match_backoff_max=0.5,
                          monitor_slow_s=1.0)
        for i in range(args.kills):
            row = one_kill(grid, rng, poll)
            rows.append(row)
            print(f"kill {i + 1:2d}/{args.kills}: learned {row['learned']:.2f} s, KILLED {row['killed']:.2f} s",
                  flush=True)
        cost = poll_cost(grid, int(rows[-1]["job_id"]), args.polls) if args.polls else None
        grid.stop_runner()
    learned, killed = summary([r["learned"] for r in rows]), summary([r["killed"] for r in rows])
    one, five, fifteen = os.getloadavg()
    print(f"\nheartbeat_interval {args.heartbeat:g} s, kill_poll_interval {poll:g} s, {len(rows)} kills; "
          f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':28s} {'median':>8s} {'p95':>8s} {'max':>8s}")
    print(f"{'kill -> agent learned it':28s} {learned['median']:7.2f}s {learned['p95']:7.2f}s {learned['max']:7.2f}s")
    print(f"{'kill -> job KILLED':28s} {killed['median']:7.2f}s {killed['p95']:7.2f}s {killed['max']:7.2f}s")
    if cost:
        print(f"{'one control poll (HTTP)':28s} {cost['median']:6.2f}ms {cost['p95']:6.2f}ms {cost['max']:6.2f}ms")
    if args.json:
        args.json.write_bytes(orjson.dumps({"heartbeat_interval": args.heartbeat, "kill_poll_interval": poll,
                                            "learned_s": learned, "killed_s": killed, "poll_ms": cost,
                                            "kills": rows}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

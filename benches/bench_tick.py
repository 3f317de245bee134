"""What one running job costs the pilot each second it is watched (issue 16): CPU of the real JobAgent and JobWrapper
of a job, and of the JobRunner, over a window of the job's RUNNING state, at the pilot's default cadence (fast tier
1 s, slow tier 60 s, heartbeats 60 s, proc lines 600 s).

    .venv/bin/python benches/bench_tick.py [--procs 100] [--seconds 60] [--runs 3] [--json FILE]

A real local grid (gridpilot.testing.LocalGrid: central on SQLite in this process, a `gridpilot runner` subprocess)
runs one job per run whose payload is a shell that starts `--procs - 1` sleepers (1: the payload is one `sleep`).
CPU is the scheduler's run time (/proc/<pid>/task/*/schedstat, summed over threads) of each pilot process over the
window. The node figure is the per-job cost x `--jobs` (64) plus the runner's idle cost, as % of one core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import orjson

from gridpilot import _native
from gridpilot.testing import LocalGrid


def cpu_s(pid: int) -> float:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def below(parent: int, module: str, timeout: float = 60.0) -> int:
    """The first process under `parent` (searching down the tree) whose command line runs `module`."""
    deadline = time.monotonic() + timeout
    while True:
        todo = [parent]
        while todo:
            pid = todo.pop()
            for c in _native.children(pid):
                if f"-m {module}" in cmdline(c):
                    return c
                todo.append(c)
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {module} below {parent}")
        time.sleep(0.1)


def wait_state(grid: LocalGrid, job_id: int, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while grid.user.get_job(job_id)["state"] != state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not {state} after {timeout:.0f} s")
        time.sleep(0.2)


def one_run(grid: LocalGrid, tmp: Path, procs: int, seconds: float) -> Dict[str, float]:
    if procs <= 1:
        jdl = f'Executable = "/bin/sleep";\nArguments = "{seconds + 30:g}";\nTTL = {int(seconds) + 600};\n'
    else:
        script = tmp / f"fanout{procs}.sh"
        script.write_text(f"#!/bin/sh\nfor i in $(seq {procs - 1}); do sleep {seconds + 30:g} & done\nwait\n")
        script.chmod(0o755)
        jdl = f'Executable = "{script}";\nTTL = {int(seconds) + 600};\n'
    job_id = grid.user.submit(jdl, name="bench-tick")
    runner = grid.start_runner(cores=1, heartbeat_interval=60.0, monitor_fast_s=1.0, monitor_slow_s=60.0,
                               proc_trace_interval=600.0, match_backoff=600.0, match_backoff_max=600.0,
                               max_empty_matches=1000)
    try:
        wait_state(grid, job_id, "RUNNING", 120)
        agent = below(runner.pid, "gridpilot.pilot.agent")
        wrapper = below(agent, "gridpilot.pilot.wrapper")
        time.sleep(3.0)  # past the start: the steady state only
        pids = {"runner": runner.pid, "agent": agent, "wrapper": wrapper}
        t0, c0 = time.monotonic(), {k: cpu_s(p) for k, p in pids.items()}
        time.sleep(seconds)
        used = {k: cpu_s(p) - c0[k] for k, p in pids.items()}
        span = time.monotonic() - t0
    finally:
        try:
            grid.user.kill(job_id)
        finally:
            grid.stop_runner()
    return {k: 100.0 * v / span for k, v in used.items()}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=100, help="processes in the payload (default 100)")
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring window per run (default 60)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=64, help="jobs per node for the node figure (default 64)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    runs: List[Dict[str, float]] = []
    loads: List[str] = []
    with tempfile.TemporaryDirectory(prefix="gridpilot-tick-") as tmp, LocalGrid(Path(tmp)) as grid:
        for _ in range(args.runs):
            loads.append(open("/proc/loadavg").read().split()[0])
            runs.append(one_run(grid, Path(tmp), args.procs, args.seconds))
            print(" ".join(f"{k} {v:.3f}%" for k, v in runs[-1].items()), f"(load {loads[-1]})", flush=True)
    print(f"\npayload: {args.procs} process(es); {args.runs} runs of {args.seconds:.0f} s; loads {', '.join(loads)}")
    print(f"machine: {os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}")
    summary: Dict[str, Dict[str, float]] = {}
    for k in ("agent", "wrapper", "runner"):
        vals = [r[k] for r in runs]
        summary[k] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
        print(f"  {k:<8} % of one core: min {min(vals):.3f}  median {statistics.median(vals):.3f}  max {max(vals):.3f}")
    per_job = [r["agent"] + r["wrapper"] for r in runs]
    node = [args.jobs * p for p in per_job]
    print(f"  agent + wrapper x {args.jobs} jobs: min {min(node):.2f}%  median {statistics.median(node):.2f}%  "
          f"max {max(node):.2f}% of one core (the runner's share is measured apart)")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({"procs": args.procs, "seconds": args.seconds, "loads": loads,
                                                  "runs": runs, "summary": summary}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

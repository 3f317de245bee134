"""What the pilot itself costs, for docs/benchmarks.md (issue 5): memory of an idle JobRunner and of one JobAgent, and
the CPU the pilot (runner + agent + wrapper, not the payload) spends per job-hour of monitoring.

    .venv/bin/python benches/bench_pilot.py [--seconds 60] [--json FILE]

A real local grid (gridpilot.testing.LocalGrid: central on SQLite in this process, a `gridpilot runner` subprocess):
  1. an idle runner (nothing to match; it sleeps in its backoff): its PSS and its CPU over a quiet minute;
  2. a job whose payload sleeps `--seconds` under the default monitoring (fast tier 1 s, slow tier 60 s, heartbeats
     60 s): PSS of the runner, the agent and the wrapper while it runs, and their CPU over the RUNNING window,
     extrapolated to one hour; then the fixed cost of one job (agent and wrapper start, staging, reports, cleanup);
  3. for comparison, where `java` is installed: an idle JVM with a 50 MB heap (-Xmx50m), as the ALICE JobAgent runs.
     It does nothing, so it is a floor for the real JobAgent, which loads the whole jAliEn jar.

PSS (proportional set size, from /proc/<pid>/smaps_rollup) shares each shared page among the processes that map it,
so the runner's, the agent's, the runtime's (unshare, when the wrapper has its own PID namespace) and the wrapper's
figures add up to what they cost together. The wrapper is the Python running `-m gridpilot.pilot.wrapper`, found at any
depth below the agent: the runtime's process names the module in its arguments too, but is not the wrapper.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import orjson
import psutil

from gridpilot.testing import LocalGrid

TICK = os.sysconf("SC_CLK_TCK")


def rollup(pid: int) -> Dict[str, int]:
    """smaps_rollup fields in kB (Rss, Pss, Private_Clean, Private_Dirty, ...)."""
    out: Dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def memory(pid: int) -> Dict[str, float]:
    r = rollup(pid)
    return {"pss_mb": r["Pss"] / 1024, "rss_mb": r["Rss"] / 1024,
            "private_mb": (r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)) / 1024}


def cpu_s(pid: int) -> float:
    """CPU time of the process in seconds, to the nanosecond: the scheduler's run time summed over its threads
    (stat's utime/stime count 10 ms ticks, too coarse for a process that uses 0.1 s a minute)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def reaped_children_cpu_s(pid: int) -> float:
    """cutime + cstime: what the children this process has reaped (and theirs) used, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICK


def runs_module(proc: psutil.Process, module: str) -> bool:
    """Whether `proc` is a Python interpreter running `python -m module`: its executable is a Python, not a
    runtime such as `unshare ... python -m module` or `bwrap ...` whose argument list merely names the module."""
    try:
        argv = proc.cmdline()
        exe = os.path.basename(proc.exe())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return exe.startswith("python") and any(a == "-m" and b == module for a, b in zip(argv, argv[1:]))


def python_module_below(parent: int, module: str, timeout: float = 60.0) -> psutil.Process:
    """The one process below `parent` (at any depth: the JobWrapper runs under its runtime, e.g. unshare) that runs
    `python -m module`. More than one is an error: the bench would measure the wrong process."""
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in psutil.Process(parent).children(recursive=True) if runs_module(c, module)]
        if len(found) > 1:
            raise RuntimeError(f"{len(found)} processes run {module} below {parent}: {[c.pid for c in found]}")
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no python -m {module} below {parent}")
        time.sleep(0.1)


def wait_state(grid: LocalGrid, job_id: int, state: str, timeout: float) -> Dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = grid.user.get_job(job_id)
        if job["state"] == state:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} is {job['state']}, not {state}, after {timeout:.0f} s")
        time.sleep(0.2)


def idle_runner(grid: LocalGrid, quiet_s: float) -> Dict[str, float]:
    # Nothing to match, and a long backoff: after its first (empty) match the runner only waits.
    runner = grid.start_runner(cores=1, match_backoff=600.0, match_backoff_max=600.0, max_empty_matches=1000)
    deadline = time.monotonic() + 60
    time.sleep(1.0)
    while psutil.Process(runner.pid).children() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    mem = memory(runner.pid)
    # The one agent that looked for a job and found none: what an empty match costs.
    mem["empty_match_cpu_s"] = reaped_children_cpu_s(runner.pid)
    c0 = cpu_s(runner.pid)
    time.sleep(quiet_s)
    mem["cpu_s_per_hour"] = (cpu_s(runner.pid) - c0) / quiet_s * 3600
    grid.stop_runner()
    return mem


def job_hour(grid: LocalGrid, seconds: float, empty_match_cpu_s: float) -> Dict[str, object]:
    job_id = grid.user.submit(
        f'Executable = "/bin/sleep";\nArguments = "{seconds:g}";\nTTL = {int(seconds) + 600};\n', name="bench")
    # The pilot's defaults for everything the job's monitoring costs; only matching is kept from retrying.
    runner = grid.start_runner(cores=1, heartbeat_interval=60.0, monitor_fast_s=1.0, monitor_slow_s=60.0,
                               proc_trace_interval=600.0, match_backoff=600.0, match_backoff_max=600.0,
                               max_empty_matches=1000)
    wait_state(grid, job_id, "RUNNING", 120)
    agent = python_module_below(runner.pid, "gridpilot.pilot.agent")
    wrapper = python_module_below(agent.pid, "gridpilot.pilot.wrapper")
    # Between the agent and the wrapper there may be the runtime's process (unshare, bwrap): it is counted with the
    # pilot, as it is the pilot's cost, but it is not the wrapper.
    runtime = [p for p in psutil.Process(agent.pid).children() if p.pid != wrapper.pid]
    time.sleep(2.0)  # past the start: only the steady monitoring is measured
    pids = {"runner": runner.pid, "agent": agent.pid, "wrapper": wrapper.pid}
    if runtime:
        pids["runtime"] = runtime[0].pid
    mem = {name: memory(pid) for name, pid in pids.items()}
    t0, c0 = time.monotonic(), {name: cpu_s(pid) for name, pid in pids.items()}
    window = max(5.0, seconds - 6.0)
    time.sleep(window)
    used = {name: cpu_s(pid) - c0[name] for name, pid in pids.items()}
    span = time.monotonic() - t0
    job = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = grid.user.get_job(job_id)
        if job["state"] == "DONE" and not psutil.Process(runner.pid).children():
            break
        time.sleep(0.2)
    assert job is not None and job["state"] == "DONE", job
    # Everything the runner's agents (and, below them, the wrapper and the payload) spent, less the payload's own
    # and less the empty match the runner makes once the job is over (it would be the next job's match).
    rusage = (job.get("resources") or {}).get("rusage") or {}
    payload_cpu = float(rusage.get("utime_s", 0.0)) + float(rusage.get("stime_s", 0.0))
    per_job = reaped_children_cpu_s(runner.pid) - payload_cpu - empty_match_cpu_s
    grid.stop_runner()
    per_hour = {name: u / span * 3600 for name, u in used.items()}
    return {
        "memory": mem,
        "window_s": span,
        "cpu_s_per_job_hour": per_hour,
        "cpu_s_per_job_hour_total": sum(per_hour.values()),
        "cpu_s_per_job_fixed": per_job,
    }


def jvm(heap: str = "50m") -> Optional[Dict[str, float]]:
    if not (shutil.which("java") and shutil.which("javac")):
        return None
    with tempfile.TemporaryDirectory(prefix="gridpilot-jvm-") as tmp:
        src = Path(tmp) / "Idle.java"
        src.write_text("public class Idle { public static void main(String[] a) throws Exception {"
                       " Thread.sleep(600000); } }\n")
        subprocess.run(["javac", "-d", tmp, str(src)], check=True, capture_output=True)
        proc = subprocess.Popen(["java", f"-Xmx{heap}", "-cp", tmp, "Idle"])
        try:
            time.sleep(3.0)
            mem = memory(proc.pid)
            mem["threads"] = psutil.Process(proc.pid).num_threads()
            return mem
        finally:
            proc.kill()
            proc.wait()


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the payload sleeps (default 60)")
    ap.add_argument("--quiet", type=float, default=20.0, help="how long the idle runner is watched (default 20)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-") as tmp, LocalGrid(Path(tmp)) as grid:
        idle = idle_runner(grid, args.quiet)
        run = job_hour(grid, args.seconds, idle["empty_match_cpu_s"])
    java = jvm()
    mem = run["memory"]
    print(f"machine: {os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}")
    print("\nmemory (PSS from smaps_rollup; RSS and private in brackets), MB:")
    print(f"  idle JobRunner           {idle['pss_mb']:6.1f}  (RSS {idle['rss_mb']:.1f}, private {idle['private_mb']:.1f})")
    for name, m in mem.items():
        print(f"  {name:<8} with one job     {m['pss_mb']:6.1f}  (RSS {m['rss_mb']:.1f}, "
              f"private {m['private_mb']:.1f})")
    total = sum(m["pss_mb"] for m in mem.values())
    print(f"  {' + '.join(mem):<24} {total:6.1f}")
    if java is not None:
        print(f"  idle JVM -Xmx50m (ALICE JobAgent floor) {java['pss_mb']:6.1f}  (RSS {java['rss_mb']:.1f}, "
              f"{java['threads']:.0f} threads)")
    else:
        print("  idle JVM -Xmx50m: java not installed here")
    print(f"\nCPU per job-hour of monitoring (payload excluded; measured over {run['window_s']:.0f} s of RUNNING):")
    for name, v in run["cpu_s_per_job_hour"].items():
        print(f"  {name:<8} {v:7.1f} CPU-s/h")
    tot = run["cpu_s_per_job_hour_total"]
    print(f"  total    {tot:7.1f} CPU-s/h  = {tot / 36:.3f}% of one core")
    print(f"  fixed cost per job (agent + wrapper start, staging, reports, cleanup): {run['cpu_s_per_job_fixed']:.2f} CPU-s")
    print(f"  one empty match (an agent starts, asks central, exits): {idle['empty_match_cpu_s']:.2f} CPU-s")
    print(f"  idle runner: {idle['cpu_s_per_hour']:.1f} CPU-s/h")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({"idle_runner": idle, "job": run, "jvm": java},
                                                 option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

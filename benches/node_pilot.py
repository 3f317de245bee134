"""The whole gridpilot pilot on W64-style jobs, for benches/bench_node.py: a real local grid
(gridpilot.testing.LocalGrid: central on SQLite in this process, a `gridpilot runner` subprocess, as
benches/bench_pilot.py uses), K jobs whose payload is benches/node_payload.c, the pilot's default monitoring (fast
tier 1 s). Measured: the CPU time of the runner and of every process below it that is not the payload (agents,
runtimes such as unshare, wrappers).

A node of N jobs has one runner and N agents and wrappers; with K < N measured, the figure for N is extrapolated:
runner + N x (agents and wrappers of the K jobs) / K. It says so in its results."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List

import psutil

from gridpilot.testing import LocalGrid

import nodework


class PilotNode:
    def __init__(self, state_dir: Path, payload: Path, jobs: int, procs: int) -> None:
        self.grid = LocalGrid(state_dir)
        self.payload, self.jobs, self.procs = payload, jobs, procs
        self.runner: psutil.Process | None = None

    def __enter__(self) -> "PilotNode":
        self.grid.__enter__()
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = 600.0) -> None:
        jdl = (f'Executable = "{self.payload}";\nArguments = "{self.procs} 10";\nTTL = 86400;\n')
        ids = [self.grid.user.submit(jdl, name=f"node{i}") for i in range(self.jobs)]
        runner = self.grid.start_runner(cores=self.jobs, heartbeat_interval=60.0, monitor_fast_s=1.0,
                                        monitor_slow_s=60.0, proc_trace_interval=600.0, match_backoff=600.0,
                                        match_backoff_max=600.0, max_empty_matches=1000)
        self.runner = psutil.Process(runner.pid)
        deadline = time.monotonic() + timeout
        while True:
            states = [self.grid.user.get_job(i)["state"] for i in ids]
            payload, _ = self.split()
            if states.count("RUNNING") == self.jobs and len(payload) == self.jobs * self.procs:
                return
            if any(s in ("DONE", "FAILED", "ERROR_E", "EXPIRED", "KILLED") or s.startswith("ERROR") for s in states):
                raise RuntimeError(f"a pilot job ended before it was measured: {states}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs {states}, {len(payload)} of {self.jobs * self.procs} payload processes "
                                   f"after {timeout:.0f} s")
            time.sleep(0.5)

    def split(self) -> tuple[List[int], List[int]]:
        """(payload pids, pilot pids below the runner)."""
        assert self.runner is not None
        payload, pilot = [], []
        for p in self.runner.children(recursive=True):
            try:
                (payload if p.exe() == str(self.payload) else pilot).append(p.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return payload, pilot

    def measure(self, seconds: float) -> Dict[str, float]:
        assert self.runner is not None
        _, pilot = self.split()
        t0 = time.monotonic()
        r0, p0 = nodework.cpu_s(self.runner.pid), {p: nodework.cpu_s(p) for p in pilot}
        time.sleep(seconds)
        r1, p1 = nodework.cpu_s(self.runner.pid), {p: nodework.cpu_s(p) for p in pilot}
        span = time.monotonic() - t0
        below = sum(max(0.0, p1[p] - p0[p]) for p in pilot)
        return {"runner_pct": (r1 - r0) / span * 100, "per_job_pct": below / span * 100 / self.jobs,
                "pilot_processes": len(pilot), "window_s": span}

    def close(self) -> None:
        payload: List[int] = []
        if self.runner is not None:
            try:
                payload, _ = self.split()
            except psutil.NoSuchProcess:
                pass
        try:
            self.grid.stop_runner()
        finally:
            for pid in payload:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            self.grid.__exit__(None, None, None)

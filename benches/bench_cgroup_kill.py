"""Time from the kill decision to an empty cgroup, for a job of 1000 processes (issue 6, for docs/benchmarks.md).

    .venv/bin/python benches/bench_cgroup_kill.py [--procs 1000] [--runs 7] [--json FILE]

Each run puts a shell and `--procs` sleeping children of it in a fresh cgroup v2 child of this process's own cgroup,
then times, from the call to the moment cgroup.events says `populated 0`:
  terminate_tree, grace 0   gridpilot._native.terminate_tree(cgroup=...): freeze, cgroup.kill, thaw, wait for the
                            listed pids to be gone (the path the agent takes once ForcedKillTimeout is over)
  terminate_tree, SIGTERM   the same with a grace period the processes honour: SIGTERM to each, all exit within it
  cgroup.kill alone         one write to cgroup.kill and polling cgroup.events: the kernel's floor
  tree walk, no cgroup      terminate_tree(root_pid, grace 0) without the cgroup: discovery through /proc children
Printed: the median (and min, max) of `--runs` runs each. Needs a writable cgroup v2 with cgroup.kill (Linux >= 5.14).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import orjson

from gridpilot import _native
from gridpilot.isolation import cgroupfs


def start_job(cg: Path, n: int) -> subprocess.Popen:
    """A shell in `cg` with `n` sleeping children; returns once all of them are in the cgroup."""
    script = f"i=0; while [ $i -lt {n} ]; do sleep 600 & i=$((i+1)); done; wait"

    def join() -> None:
        with open(cg / "cgroup.procs", "w") as f:
            f.write("0")

    sh = subprocess.Popen(["/bin/sh", "-c", script], preexec_fn=join, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(cgroupfs.procs(cg)) < n + 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(cgroupfs.procs(cg))} of {n + 1} processes started in {cg}")
        time.sleep(0.05)
    return sh


def wait_empty(cg: Path) -> None:
    # Tight polling: the figure is the time to populated 0, and a 10 ms step would be most of it.
    while cgroupfs.is_populated(cg):
        pass


def kill_only(cg: Path, sh: subprocess.Popen) -> None:
    (cg / "cgroup.kill").write_text("1")


METHODS: Dict[str, Callable[[Path, subprocess.Popen], object]] = {
    "terminate_tree, grace 0": lambda cg, sh: _native.terminate_tree(cgroup=str(cg), grace_s=0),
    "terminate_tree, SIGTERM": lambda cg, sh: _native.terminate_tree(cgroup=str(cg), grace_s=30),
    "cgroup.kill alone": kill_only,
    "tree walk, no cgroup": lambda cg, sh: _native.terminate_tree(sh.pid, grace_s=0),
}


def one_run(parent: Path, method: str, n: int, run: int) -> float:
    cg = cgroupfs.make_child(parent, f"bench-kill-{os.getpid()}-{run}")
    sh = None
    try:
        sh = start_job(cg, n)
        t0 = time.perf_counter()
        METHODS[method](cg, sh)
        wait_empty(cg)
        elapsed = time.perf_counter() - t0
        sh.wait(timeout=10)
        return elapsed
    finally:
        cgroupfs.remove(cg)
        if sh is not None and sh.poll() is None:
            sh.kill()
            sh.wait()


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        own = cgroupfs.own_v2_dir()
    except Exception as e:  # noqa: BLE001 - any reason there is no cgroup is a reason to stop here
        print(f"SKIP: no cgroup v2: {e}")
        return 0
    if not cgroupfs.can_make_children(own) or not (own / "cgroup.procs").exists():
        print(f"SKIP: {own} is not writable")
        return 0
    parent = cgroupfs.make_child(own, f"bench-cgroup-kill-{os.getpid()}")
    results: Dict[str, Dict[str, float]] = {}
    try:
        if not (parent / "cgroup.kill").exists():
            print("SKIP: no cgroup.kill (Linux < 5.14)")
            return 0
        print(f"{args.procs} sleeping processes in a cgroup v2 child, {args.runs} runs each; time from the call to "
              f"cgroup.events 'populated 0'")
        for method in METHODS:
            times = [one_run(parent, method, args.procs, i) for i in range(args.runs)]
            results[method] = {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
                               "max_ms": max(times) * 1e3}
            r = results[method]
            print(f"  {method:<26} median {r['median_ms']:7.1f} ms   (min {r['min_ms']:.1f}, max {r['max_ms']:.1f})")
        floor = results["cgroup.kill alone"]["median_ms"]
        print(f"  terminate_tree grace 0 / cgroup.kill alone: "
              f"{results['terminate_tree, grace 0']['median_ms'] / floor:.2f}x")
    finally:
        cgroupfs.remove(parent)
    if args.json:
        args.json.write_bytes(orjson.dumps({"procs": args.procs, "runs": args.runs, "results": results},
                                           option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

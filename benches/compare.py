"""Side-by-side costs of sampling a job's processes, printed as ratios (`make bench`).

On the same real trees of 10, 100 and 1000 processes, in one run:
  native   gridpilot._native.TreeSampler.sample(): discovery + stat + io per process, kept-open descriptors
  psutil   Process.children(recursive=True), then cpu_times, memory_info, io_counters per process
  floor    raw reads of stat+statm per pid through kept-open descriptors, no parsing, no discovery
  floor_io raw reads of the files the native fast tier reads (stat, io, task/<pid>/children), kept open, no parsing
and CgroupSampler.sample() on a cgroup holding 10 and 1000 processes.

Each figure is the best of several repeats (the minimum is the least disturbed by other work on a shared machine).
Results are printed and, with --json FILE, written for the README.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import proctree  # noqa: E402

from gridpilot import _native  # noqa: E402


def best_of(fn: Callable[[], object], *, repeats: int, inner: int) -> float:
    """Seconds per call: the best of `repeats` timings of `inner` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def psutil_sample(root: psutil.Process) -> tuple[float, int]:
    cpu = 0.0
    rss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
            p.io_counters()
        except psutil.NoSuchProcess:
            pass
    return cpu, rss


class RawFloor:
    """Reads the named files of every pid through descriptors opened once: the cost no sampler can go below."""

    def __init__(self, pids: list[int], files: list[str]) -> None:
        self.fds = [os.open(f"/proc/{pid}/{name.format(pid=pid)}", os.O_RDONLY) for pid in pids for name in files]

    def read(self) -> None:
        for fd in self.fds:
            os.pread(fd, 4096, 0)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def v2_parent() -> Path | None:
    """A writable cgroup v2 directory below this process's own cgroup, or None."""
    mount = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                mount = Path(left.split()[4])
    if mount is None:
        return None
    own = next((line[3:].strip() for line in open("/proc/self/cgroup") if line.startswith("0::")), "/")
    base = mount / own.lstrip("/")
    return base if os.access(base, os.W_OK) else None


def cgroup_cost(tree: proctree.Tree, repeats: int) -> float | None:
    parent = v2_parent()
    if parent is None:
        return None
    cg = parent / f"gridpilot-bench-{os.getpid()}-{len(tree.pids)}"
    cg.mkdir()
    try:
        for pid in sorted(tree.pids):
            (cg / "cgroup.procs").write_text(str(pid))
        sampler = _native.CgroupSampler(str(cg))
        return best_of(sampler.sample, repeats=repeats, inner=200)
    finally:
        tree.cleanup()
        (cg / "cgroup.kill").write_text("1") if (cg / "cgroup.kill").exists() else None
        proctree.wait_until(lambda: (cg / "cgroup.procs").read_text().strip() == "")
        cg.rmdir()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100,1000", help="tree sizes (default 10,100,1000)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    results: dict[str, object] = {
        "machine": {
            "cpu": _native.cpu_info().model if hasattr(_native, "cpu_info") else platform.processor(),
            "arch": platform.machine(),
            "kernel": platform.release(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "psutil": psutil.__version__,
        },
        "trees": [],
    }
    print(f"machine: {results['machine']}")
    header = f"{'procs':>6} {'native':>10} {'psutil':>10} {'floor':>10} {'floor_io':>10}  {'psutil/native':>13} {'native/floor_io':>15} {'native/floor':>12}"
    print(header)
    for n in sizes:
        tree = proctree.spawn(proctree.balanced(n), timeout=120)
        try:
            pids = sorted(tree.pids)
            inner = max(3, 3000 // n)
            sampler = _native.TreeSampler(tree.root)
            assert sampler.sample().nprocs == n
            native = best_of(sampler.sample, repeats=args.repeats, inner=inner)
            root = psutil.Process(tree.root)
            ps = best_of(lambda: psutil_sample(root), repeats=args.repeats, inner=max(1, inner // 10))
            floor = RawFloor(pids, ["stat", "statm"])
            floor_io = RawFloor(pids, ["stat", "io", "task/{pid}/children"])
            try:
                f1 = best_of(floor.read, repeats=args.repeats, inner=inner)
                f2 = best_of(floor_io.read, repeats=args.repeats, inner=inner)
            finally:
                floor.close()
                floor_io.close()
            row = {
                "procs": n,
                "native_us": native * 1e6,
                "psutil_us": ps * 1e6,
                "floor_us": f1 * 1e6,
                "floor_io_us": f2 * 1e6,
                "native_per_proc_us": native * 1e6 / n,
                "psutil_over_native": ps / native,
                "native_over_floor_io": native / f2,
                "native_over_floor": native / f1,
            }
            results["trees"].append(row)  # type: ignore[union-attr]
            print(
                f"{n:>6} {native*1e6:>9.0f}u {ps*1e6:>9.0f}u {f1*1e6:>9.0f}u {f2*1e6:>9.0f}u "
                f" {ps/native:>12.1f}x {native/f2:>14.2f}x {native/f1:>11.2f}x"
            )
        finally:
            tree.cleanup()

    if hasattr(_native, "CgroupSampler"):
        costs = {}
        for n in (10, 1000):
            tree = proctree.spawn(proctree.balanced(n), timeout=120)
            costs[n] = cgroup_cost(tree, args.repeats)
        if costs[10] is not None and costs[1000] is not None:
            ratio = costs[1000] / costs[10]
            results["cgroup"] = {"at_10_us": costs[10] * 1e6, "at_1000_us": costs[1000] * 1e6, "ratio": ratio}
            print(f"CgroupSampler.sample: {costs[10]*1e6:.1f} us at 10 procs, {costs[1000]*1e6:.1f} us at 1000: {ratio:.2f}x")
        else:
            print("CgroupSampler: skipped, no writable cgroup v2 directory here")
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Side-by-side costs of sampling one job's processes, printed as ratios (`make bench`).

On the same real trees of 10, 100 and 1000 processes (tests/support/proctree.py, fanout 10), in one run:
  native   gridpilot._native.TreeSampler.sample(): discovery + stat + io per process, kept-open descriptors
  psutil   Process.children(recursive=True), then cpu_times, memory_info, io_counters per process
  cfloor   benches/cfloor.c, built here with the system cc: the reads and parsing of the native fast tier (stat, io,
           children files, kept-open descriptors) in C, timed in its own process: no sampler doing that work can
           go below it (skipped, with the reason, when there is no cc)
  prmon    prmon --interval 1 --pid ROOT (and --fast-memmon), when prmon is on PATH or PRMON=path is set: its CPU
           time over a window divided by the samples it took in it (it cannot be timed per call)
and CgroupSampler.sample() on a cgroup holding 10 and 1000 processes.

psutil's children() reads the stat file of every process on the node, not only the job's, so its cost (and every
ratio against it) follows how many processes the node has: each row prints that count with the ratios.
Each timed figure is the best of several repeats (the minimum is the least disturbed by other work on a shared
machine). Results are printed and, with --json FILE, written out. The full-node comparison at 1 Hz, with prmon, is
benches/bench_node.py (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import proctree  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nodework  # noqa: E402

from gridpilot import _native  # noqa: E402
from gridpilot.isolation import cgroupfs  # noqa: E402


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


def cfloor_us(binary: Path, root: int, repeats: int, inner: int) -> tuple[float, int]:
    """The C floor's best time per sample of the tree under root, in µs, and the processes it saw."""
    out = subprocess.run([str(binary), "time", str(repeats), str(inner), str(root)], capture_output=True, text=True,
                         check=True).stdout
    fields = dict(kv.split("=") for kv in out.split())
    return float(fields["best_s"]) * 1e6, int(fields["nprocs"])


def prmon_us_per_sample(binary: Path, root: int, fast: bool, seconds: float) -> tuple[float, int]:
    """prmon's CPU time per sample, in µs, over `seconds` of sampling at 1 Hz after its first sample; and the
    processes it counted in its last sample."""
    with tempfile.TemporaryDirectory(prefix="gridpilot-prmon-") as d:
        argv = [str(binary), "--pid", str(root), "--interval", "1"] + (["--fast-memmon"] if fast else [])
        proc = subprocess.Popen(argv, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        txt = Path(d) / "prmon.txt"

        def lines() -> list[str]:
            return txt.read_text().splitlines() if txt.exists() else []

        try:
            if not proctree.wait_until(lambda: len(lines()) >= 2, timeout=120):
                raise RuntimeError("prmon took no sample in 120 s")
            n0, c0 = len(lines()), nodework.cpu_s(proc.pid)
            time.sleep(seconds)
            c1, n1 = nodework.cpu_s(proc.pid), len(lines())
        finally:
            nodework.terminate([proc])
        rows = lines()
        seen = int(rows[-1].split("\t")[rows[0].split("\t").index("nprocs")])
        return (c1 - c0) / max(1, n1 - n0) * 1e6, seen


def v2_parent() -> Path | None:
    """A writable cgroup v2 directory (this process's own), or None."""
    try:
        base = cgroupfs.own_v2_dir()
    except cgroupfs.CgroupError:
        return None
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
    ap.add_argument("--prmon-seconds", type=float, default=10.0, help="prmon's measured window (default 10)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="a test's scale: trees of 10 and 30, 2 repeats, 3 s of prmon")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.prmon_seconds = "10,30", 2, 3.0
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
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["benches/compare.py", *sys.argv[1:]]),
        "trees": [],
        "skipped": {},
    }
    skipped: dict[str, str] = results["skipped"]  # type: ignore[assignment]
    tmp = tempfile.TemporaryDirectory(prefix="gridpilot-compare-")
    cfloor = prmon = None
    try:
        cfloor = nodework.build_c("cfloor", Path(tmp.name))
    except nodework.Unavailable as e:
        skipped["cfloor"] = str(e)
    try:
        prmon = nodework.prmon_binary()
    except nodework.Unavailable as e:
        skipped["prmon"] = str(e)
    print(f"machine: {results['machine']}")
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}")
    for n in sizes:
        tree = proctree.spawn(proctree.balanced(n), timeout=120)
        try:
            inner = max(3, 3000 // n)
            sampler = _native.TreeSampler(tree.root)
            assert sampler.sample().nprocs == n
            native = best_of(sampler.sample, repeats=args.repeats, inner=inner) * 1e6
            root = psutil.Process(tree.root)
            node = nodework.node_procs()
            ps = best_of(lambda: psutil_sample(root), repeats=args.repeats, inner=max(1, inner // 10)) * 1e6
            row: dict[str, object] = {"procs": n, "node_procs": node, "native_us": native, "psutil_us": ps,
                                      "native_per_proc_us": native / n, "psutil_over_native": ps / native}
            if cfloor is not None:
                floor, seen = cfloor_us(cfloor, tree.root, args.repeats, inner)
                assert seen == n, f"the C floor saw {seen} of {n} processes"
                row.update(cfloor_us=floor, native_over_cfloor=native / floor)
            if prmon is not None:
                for label, fast in (("prmon_fast", True), ("prmon", False)):
                    per, seen = prmon_us_per_sample(prmon, tree.root, fast, args.prmon_seconds)
                    assert seen == n, f"{label} saw {seen} of {n} processes"
                    row.update({f"{label}_us": per, f"{label}_over_native": per / native})
            results["trees"].append(row)  # type: ignore[union-attr]
            print(f"\n{n} processes in the job, {node} processes on the node (psutil scans them all):")
            print(f"  native {native:10.0f} µs   psutil {ps:10.0f} µs  psutil/native {ps / native:6.1f}x")
            if "cfloor_us" in row:
                print(f"  C floor {row['cfloor_us']:9.0f} µs   native/C floor {row['native_over_cfloor']:.2f}x")
            if "prmon_us" in row:
                print(f"  prmon --fast-memmon {row['prmon_fast_us']:9.0f} µs CPU/sample "
                      f"({row['prmon_fast_over_native']:.1f}x native), prmon {row['prmon_us']:9.0f} µs CPU/sample "
                      f"({row['prmon_over_native']:.1f}x native)")
        finally:
            tree.cleanup()
    tmp.cleanup()

    if hasattr(_native, "CgroupSampler"):
        costs = {}
        for n in (10, 1000):
            tree = proctree.spawn(proctree.balanced(n), timeout=120)
            costs[n] = cgroup_cost(tree, args.repeats)
        if costs[10] is not None and costs[1000] is not None:
            ratio = costs[1000] / costs[10]
            results["cgroup"] = {"at_10_us": costs[10] * 1e6, "at_1000_us": costs[1000] * 1e6, "ratio": ratio}
            print(f"CgroupSampler.sample: {costs[10]*1e6:.1f} us at 10 procs, {costs[1000]*1e6:.1f} us at 1000: "
                  f"{ratio:.2f}x")
        else:
            print("CgroupSampler: skipped, no writable cgroup v2 directory here")
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

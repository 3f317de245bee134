"""CPU cost of TreeSampler.sample() by discovery method, on trees where some processes have threads.

Workload: TREES trees of PROCS processes (fanout 10), every 10th process with 4 threads (3 extra), as in the
full-node workload of issue 16 but smaller. Every tree is sampled by its own TreeSampler, once through tree
discovery (children files) and, where a cgroup v2 parent is writable, once through its cgroup.procs. The figure is
this process's CPU time (user + system, so the kernel's work in /proc reads counts) per round of samples of every
tree, divided per sample and per process; repeats give min/median/max.

    .venv/bin/python benches/bench_discovery.py [--trees 20] [--procs 100] [--rounds 200] [--repeats 7] [--cgroup]
        [--io-every N] [--native path/to/another/lib_native.so]

--io-every N: the samplers read io at every Nth sample only, as the native fast tier does (15); the C floor then
reads io in every Nth round too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import proctree  # noqa: E402

from gridpilot import _native  # noqa: E402
from gridpilot.isolation import cgroupfs  # noqa: E402


def load_native(path: str):
    """Another build of the extension (an older commit's, for before/after), under its own module name."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("_native", path)
    spec = importlib.util.spec_from_loader("_native", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def threaded_tree(total: int, fanout: int = 10, every: int = 10) -> dict:
    spec = proctree.balanced(total, fanout)
    nodes = [spec]
    i = 0
    while i < len(nodes):
        nodes.extend(nodes[i]["children"])
        i += 1
    for n, node in enumerate(nodes):
        if n % every == every - 1:
            node["threads"] = 3
    return spec


# The floor: the same files the fast tier reads (stat and io of every process, and for tree discovery the children
# file of every thread; io only every Nth round with --io-every),
# through descriptors opened once, read with pread into one buffer, not parsed; pids on stdin, CPU per round out.
_FLOOR_C = r"""
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
static double cpu(void) {
    struct rusage r; getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}
int main(int argc, char **argv) {
    int rounds = atoi(argv[1]), repeats = atoi(argv[2]), children = atoi(argv[3]);
    int io_every = argc > 4 ? atoi(argv[4]) : 1;
    static int fds[1 << 16]; static char is_io[1 << 16]; int n = 0, pid; char path[256], buf[4096];
    while (scanf("%d", &pid) == 1) {
        snprintf(path, sizeof path, "/proc/%d/stat", pid); fds[n++] = open(path, O_RDONLY);
        snprintf(path, sizeof path, "/proc/%d/io", pid); is_io[n] = 1; fds[n++] = open(path, O_RDONLY);
        snprintf(path, sizeof path, "/proc/%d/task", pid);
        DIR *d = children ? opendir(path) : NULL; struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            snprintf(path, sizeof path, "/proc/%d/task/%s/children", pid, e->d_name);
            fds[n++] = open(path, O_RDONLY);
        }
        if (d) closedir(d);
    }
    for (int r = 0; r < repeats; r++) {
        double t0 = cpu();
        for (int i = 0; i < rounds; i++)
            for (int k = 0; k < n; k++)
                if (fds[k] >= 0 && (!is_io[k] || i % io_every == 0)) (void)pread(fds[k], buf, sizeof buf, 0);
        printf("%.9f\n", (cpu() - t0) / rounds);
    }
    return 0;
}
"""


def floor(trees: list, rounds: int, repeats: int, children: bool, io_every: int = 1) -> list[float] | None:
    """CPU seconds of one round of the C floor over every tree's processes, once per repeat; None without cc."""
    cc = shutil.which("cc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "floor.c"), os.path.join(d, "floor")
        with open(src, "w") as f:
            f.write(_FLOOR_C)
        subprocess.run([cc, "-O2", "-o", exe, src], check=True)
        pids = " ".join(str(p) for t in trees for p in t.pids)
        out = subprocess.run([exe, str(rounds), str(repeats), str(int(children)), str(io_every)], input=pids, capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def v2_parent() -> Path | None:
    """A writable cgroup v2 directory (this process's own), or None."""
    try:
        base = cgroupfs.own_v2_dir()
    except cgroupfs.CgroupError:
        return None
    return base if os.access(base, os.W_OK) else None


def measure(samplers: list, rounds: int, repeats: int) -> list[float]:
    """CPU seconds of one round (one sample of every sampler), once per repeat."""
    for s in samplers:
        s.sample()  # warm: descriptors opened
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(rounds):
            for s in samplers:
                s.sample()
        out.append((time.process_time() - t0) / rounds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", type=int, default=20)
    ap.add_argument("--procs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cgroup", action="store_true", help="each tree in its own cgroup v2, discovered through it")
    ap.add_argument("--io-every", type=int, default=1, help="read io at every Nth sample (TreeSampler io_every)")
    ap.add_argument("--native", help="path of another build of _native (a .so) to measure instead of the installed one")
    args = ap.parse_args()
    native = load_native(args.native) if args.native else _native
    trees = []
    groups: list[Path] = []
    parent = v2_parent() if args.cgroup else None
    if args.cgroup and parent is None:
        print("no writable cgroup v2 directory: --cgroup cannot run here")
        return 1
    try:
        for i in range(args.trees):
            trees.append(proctree.spawn(threaded_tree(args.procs), timeout=120))
            if parent is not None:
                cg = parent / f"gridpilot-bench-discovery-{os.getpid()}-{i}"
                cg.mkdir()
                groups.append(cg)
                for pid in sorted(trees[-1].pids):
                    (cg / "cgroup.procs").write_text(str(pid))
        kw = {"io_every": args.io_every} if args.io_every != 1 else {}
        if groups:
            samplers = [native.TreeSampler(t.root, cgroup=str(g), **kw) for t, g in zip(trees, groups)]
        else:
            samplers = [native.TreeSampler(t.root, **kw) for t in trees]
        got = sum(s.sample().nprocs for s in samplers)
        want = sum(len(t.pids) for t in trees)
        assert got == want, (got, want)
        per_round = measure(samplers, args.rounds, args.repeats)
        n = args.trees
        total = n * args.procs
        lo, med, hi = min(per_round), statistics.median(per_round), max(per_round)
        print(f"{'cgroup' if groups else 'tree'} discovery, {n} trees x {args.procs} processes (10% with 4 threads), {args.rounds} rounds x "
              f"{args.repeats} repeats, io every {args.io_every} samples, load {open('/proc/loadavg').read().split()[:3]}")
        print(f"  per sample (one tree):  min {lo / n * 1e6:8.1f} us  median {med / n * 1e6:8.1f} us  "
              f"max {hi / n * 1e6:8.1f} us")
        print(f"  per process:            min {lo / total * 1e6:8.2f} us  median {med / total * 1e6:8.2f} us  "
              f"max {hi / total * 1e6:8.2f} us")
        print(f"  at 1 Hz, all {n} trees: median {med * 100:.3f}% of one core")
        f = floor(trees, args.rounds, args.repeats, children=not groups, io_every=args.io_every)
        if f is not None:
            flo, fmed, fhi = min(f), statistics.median(f), max(f)
            print(f"  C floor per process:    min {flo / total * 1e6:8.2f} us  median {fmed / total * 1e6:8.2f} us  "
                  f"max {fhi / total * 1e6:8.2f} us")
            print(f"  sampler / floor:        min-to-min {lo / flo:.2f}x  median-to-median {med / fmed:.2f}x")
    finally:
        for t in trees:
            t.cleanup()
        for cg in groups:
            proctree.wait_until(lambda: (cg / "cgroup.procs").read_text().strip() == "", timeout=30)
            cg.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

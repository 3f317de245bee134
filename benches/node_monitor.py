"""One monitoring method of benches/bench_node.py, run as its own process so its CPU time can be measured from
outside: it samples every job it is given HZ times a second until SIGTERM.

    node_monitor.py METHOD HZ TARGET...

METHOD: native-tree (gridpilot TreeSampler from the job's root pid), native-cgroup (TreeSampler with the job's
cgroup: members from cgroup.procs), cgroup (CgroupSampler: the cgroup's own counters, no per-process reads), psutil
(Process.children(recursive=True), then cpu_times, memory_info and io_counters of each process, as a psutil-based
agent would). A TARGET is ROOT_PID or ROOT_PID:CGROUP_DIR.

Prints "ready nprocs=N" after the first sample (every descriptor opened) and "done ticks=T late=L nprocs=N" on
SIGTERM; N is the number of processes the last sample saw over all jobs (-1 for cgroup, which does not count them).
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Callable, List


def samplers(method: str, targets: List[str]) -> List[Callable[[], int]]:
    out: List[Callable[[], int]] = []
    for t in targets:
        pid_s, _, cg = t.partition(":")
        pid = int(pid_s)
        if method == "native-tree":
            from gridpilot import _native
            s = _native.TreeSampler(pid)
            out.append(lambda s=s: s.sample().nprocs)
        elif method == "native-cgroup":
            from gridpilot import _native
            s = _native.TreeSampler(pid, cgroup=cg)
            out.append(lambda s=s: s.sample().nprocs)
        elif method == "cgroup":
            from gridpilot import _native
            c = _native.CgroupSampler(cg)
            out.append(lambda c=c: (c.sample(), -1)[1])
        elif method == "psutil":
            import psutil
            root = psutil.Process(pid)
            out.append(lambda root=root: psutil_sample(root))
        else:
            raise SystemExit(f"node_monitor: unknown method {method!r}")
    return out


def psutil_sample(root) -> int:
    import psutil
    n = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            p.cpu_times()
            p.memory_info()
            p.io_counters()
            n += 1
        except psutil.NoSuchProcess:
            pass
    return n


def main(argv: List[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    method, hz, targets = argv[0], float(argv[1]), argv[2:]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    fns = samplers(method, targets)
    period = 1.0 / hz
    ticks = late = 0
    seen = 0
    nxt = time.monotonic()
    while not stop:
        counts = []
        for fn in fns:
            # A slow method (psutil on a full node) can take longer than the bench waits after SIGTERM for one
            # round: stop between jobs, and report the last complete round.
            if stop and ticks:
                break
            counts.append(fn())
        if len(counts) < len(fns):
            break
        seen = -1 if method == "cgroup" else sum(counts)
        if ticks == 0:
            print(f"ready nprocs={seen}", flush=True)
        ticks += 1
        nxt += period
        wait = nxt - time.monotonic()
        if wait < 0:
            # This tick overran the period: count it and start again from now.
            late += 1
            nxt = time.monotonic()
            continue
        time.sleep(wait)
    print(f"done ticks={ticks} late={late} nprocs={seen}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""CPU of TreeSampler.sample() per process per sample with io read at every sample and at every Nth (issue 16).

Workload: TREES trees of PROCS processes (fanout 10, every 10th process with 4 threads: bench_discovery's), each
watched by two TreeSamplers in this one process, one per io_every value; the two sets are measured in turn, ROUNDS
samples of every tree per repeat, the order alternating, so both see the same trees and the same moments of a busy
machine. The figure is this process's CPU time (user + system) per sample per process; min/median/max over repeats.

    .venv/bin/python benches/bench_io_every.py [--trees 20] [--procs 100] [--rounds 60] [--repeats 9] [--every 1,15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from support import proctree  # noqa: E402
from bench_discovery import threaded_tree  # noqa: E402

from gridpilot import _native  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", type=int, default=20)
    ap.add_argument("--procs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--every", default="1,15", help="io_every values to compare (default 1,15)")
    args = ap.parse_args()
    values = [int(v) for v in args.every.split(",")]
    trees = [proctree.spawn(threaded_tree(args.procs), timeout=120) for _ in range(args.trees)]
    try:
        sets = {n: [_native.TreeSampler(t.root, io_every=n) for t in trees] for n in values}
        for samplers in sets.values():
            for s in samplers:
                s.sample()  # warm: descriptors opened
        per: dict[int, list[float]] = {n: [] for n in values}
        total = args.trees * args.procs
        for rep in range(args.repeats):
            for n in values if rep % 2 == 0 else values[::-1]:
                t0 = time.process_time()
                for _ in range(args.rounds):
                    for s in sets[n]:
                        s.sample()
                per[n].append((time.process_time() - t0) / args.rounds / total)
        print(f"tree discovery, {args.trees} trees x {args.procs} processes (10% with 4 threads), {args.rounds} "
              f"rounds x {args.repeats} repeats, load {open('/proc/loadavg').read().split()[:3]}")
        for n, v in per.items():
            print(f"  io every {n:3} samples: per process per sample min {min(v) * 1e6:6.2f} us  median "
                  f"{statistics.median(v) * 1e6:6.2f} us  max {max(v) * 1e6:6.2f} us")
    finally:
        for t in trees:
            t.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

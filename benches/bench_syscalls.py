"""System calls of TreeSampler.sample() per process per sample, by call, counted by strace.

Workload: TREES trees of PROCS processes (fanout 10, every 10th process with 4 threads: bench_discovery's), each
sampled by its own TreeSampler through tree discovery. The script runs itself twice under `strace -c` (this process
only, not the trees): once sampling every tree ROUNDS times after a warm-up sample, once with the warm-up alone; the
difference is what the ROUNDS samples cost. With --io-every N the samplers read io at every Nth sample (as the
native fast tier does, issue 16); --native measures another build of the extension (one without io_every).

    .venv/bin/python benches/bench_syscalls.py [--trees 20] [--procs 100] [--rounds 30] [--io-every 15]
        [--native path/to/another/_native.so]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))


def sample(args: argparse.Namespace) -> int:
    """The traced part: build the trees, sample each once (descriptors opened), then ROUNDS more times."""
    from support import proctree
    from bench_discovery import load_native, threaded_tree

    from gridpilot import _native

    native = load_native(args.native) if args.native else _native
    trees = [proctree.spawn(threaded_tree(args.procs), timeout=120) for _ in range(args.trees)]
    try:
        kw = {"io_every": args.io_every} if args.io_every != 1 else {}
        samplers = [native.TreeSampler(t.root, **kw) for t in trees]
        got = sum(s.sample().nprocs for s in samplers)
        assert got == sum(len(t.pids) for t in trees), got
        for _ in range(args.rounds):
            for s in samplers:
                s.sample()
    finally:
        for t in trees:
            t.cleanup()
    return 0


def strace_counts(argv: list[str]) -> dict[str, int]:
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        subprocess.run(["strace", "-c", "-o", out.name, *argv], check=True)
        counts: dict[str, int] = {}
        for line in out.read().splitlines():
            f = line.split()
            # "% time seconds usecs/call calls [errors] syscall"
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                counts[f[-1]] = int(f[3])
        return counts


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", type=int, default=20)
    ap.add_argument("--procs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--io-every", type=int, default=1)
    ap.add_argument("--native")
    ap.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.traced:
        return sample(args)
    if shutil.which("strace") is None:
        print("needs strace")
        return 1
    base = [sys.executable, __file__, "--traced", "--trees", str(args.trees), "--procs", str(args.procs),
            "--io-every", str(args.io_every)] + (["--native", args.native] if args.native else [])
    full = strace_counts(base + ["--rounds", str(args.rounds)])
    warm = strace_counts(base + ["--rounds", "0"])
    n = args.trees * args.procs * args.rounds
    print(f"{args.trees} trees x {args.procs} processes, {args.rounds} samples each, io_every {args.io_every}"
          f"{', ' + os.path.basename(args.native) if args.native else ''}; load {open('/proc/loadavg').read().split()[:3]}")
    total = 0.0
    for name in sorted(full, key=lambda k: -(full[k] - warm.get(k, 0))):
        per = (full[name] - warm.get(name, 0)) / n
        if per >= 0.005:
            print(f"  {name:<12} {per:6.3f} per process per sample")
        total += max(per, 0.0)
    print(f"  {'all':<12} {total:6.3f} per process per sample")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

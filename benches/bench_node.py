"""A full node, monitored at 1 Hz: what each way of watching its jobs costs, in CPU % of one core (`make bench-node`).

    .venv/bin/python benches/bench_node.py [--jobs 8,16,32,64] [--procs 100] [--seconds 10] [--rounds 3]
                                           [--json FILE] [--plot FILE] [--quick]

The workload (W64 at --jobs 64): JOBS jobs of PROCS processes each, in fanout-10 trees (benches/node_payload.c), one
process in ten with 4 threads, every process waking once a second; each job in its own cgroup v2 where this process
may make one (else tree discovery only, and the cgroup methods are skipped with the reason). The jobs are started
once, for the largest JOBS; a smaller point of the sweep monitors the first JOBS of them, so every method watches the
same trees. Each method runs as its own process(es), samples every job once a second, and is measured by the CPU time
of those processes (the scheduler's run time, /proc/<pid>/task/*/schedstat) over SECONDS after its first sample. In
each round every method runs in turn (the order rotates from round to round); figures are min/median/max over the
rounds and ratios are taken within a round, so a busy moment of the machine weighs on both sides of a ratio.

Methods:
  cfloor-tree    benches/cfloor.c: the reads and parsing of gridpilot's native fast tier (stat, io, children files,
                 kept-open descriptors) in C, one process for all jobs: the floor for tree discovery
  cfloor-cgroup  the same with the members read from each job's cgroup.procs: the floor for cgroup discovery
  native-tree    gridpilot._native.TreeSampler(root) per job, one Python process for all jobs
  native-cgroup  TreeSampler(root, cgroup=job's cgroup) per job
  cgroup         CgroupSampler(job's cgroup): the cgroup's own counters, no per-process figures
  psutil         children(recursive=True), then cpu_times, memory_info, io_counters per process, per job
  prmon-fast     prmon --interval 1 --fast-memmon --pid ROOT, one prmon per job (when prmon is found)
  prmon          prmon --interval 1 --pid ROOT, one per job (when prmon is found)
  pilot          the whole gridpilot pilot (benches/node_pilot.py): a real local grid, a `gridpilot runner` with
                 --pilot-jobs K jobs of the same payload, default monitoring; CPU of the runner and of every agent,
                 runtime and wrapper below it. Measured on K jobs (its own trees, while the shared jobs run) and
                 extrapolated to each point of the sweep as runner + JOBS x (per-job cost): the results say so.
prmon is found on PATH or through PRMON=path (tools/build-prmon.sh builds it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nodework  # noqa: E402
from nodework import Job, Jobs, Unavailable  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
METHODS = ["cfloor-tree", "cfloor-cgroup", "native-tree", "native-cgroup", "cgroup", "psutil", "prmon-fast", "prmon"]
#: Methods that need each job's cgroup.
CGROUP_METHODS = {"cfloor-cgroup", "native-cgroup", "cgroup"}
#: Methods that report no process count (cgroup: none; pilot: its own jobs, counted when it starts them).
UNCOUNTED = {"cgroup", "pilot"}
READY_TIMEOUT_S = 300.0


class Running:
    """The process(es) of one method watching a set of jobs."""

    def __init__(self, method: str, jobs: Sequence[Job], tools: Dict[str, Path], workdir: Path) -> None:
        self.method = method
        self.jobs = list(jobs)
        self.procs: List[subprocess.Popen] = []
        self.prmon_dirs: List[Path] = []
        if method.startswith("cfloor"):
            mode = "cgroup" if method == "cfloor-cgroup" else "tree"
            targets = [str(j.cgroup) if mode == "cgroup" else str(j.root) for j in jobs]
            self.procs.append(subprocess.Popen([str(tools["cfloor"]), "loop", "1", mode, *targets],
                                               stdout=subprocess.PIPE, text=True))
        elif method.startswith("prmon"):
            for i, j in enumerate(jobs):
                d = workdir / f"{method}-{i}"
                d.mkdir(parents=True, exist_ok=True)
                argv = [str(tools["prmon"]), "--pid", str(j.root), "--interval", "1"]
                if method == "prmon-fast":
                    argv.append("--fast-memmon")
                self.procs.append(subprocess.Popen(argv, cwd=d, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL))
                self.prmon_dirs.append(d)
        else:
            targets = [f"{j.root}:{j.cgroup or ''}" for j in jobs]
            self.procs.append(subprocess.Popen([sys.executable, str(HERE / "node_monitor.py"), method, "1", *targets],
                                               stdout=subprocess.PIPE, text=True))

    def wait_ready(self) -> Optional[int]:
        """Until the first sample is taken: processes seen then (None for prmon, read from its file at the end)."""
        if self.prmon_dirs:
            # prmon writes its first line of prmon.txt after its first sample.
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not all(self._prmon_lines(d) >= 1 for d in self.prmon_dirs):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"{self.method}: not every prmon took a sample")
                time.sleep(0.1)
            return None
        assert self.procs[0].stdout is not None
        line = self.procs[0].stdout.readline()
        if not line.startswith("ready "):
            raise RuntimeError(f"{self.method}: no first sample (exit {self.procs[0].poll()}): {line!r}")
        return int(line.split("nprocs=")[1])

    @staticmethod
    def _prmon_lines(d: Path) -> int:
        try:
            return max(0, len((d / "prmon.txt").read_text().splitlines()) - 1)
        except FileNotFoundError:
            return 0

    def cpu_s(self) -> float:
        return sum(nodework.cpu_s(p.pid) for p in self.procs)


    def stop(self) -> Dict[str, int]:
        """Stop the method; what it reports: ticks, late ticks and processes seen in its last sample."""
        nodework.terminate(self.procs)
        if self.prmon_dirs:
            seen = 0
            ticks = []
            rates = []
            for d in self.prmon_dirs:
                lines = (d / "prmon.txt").read_text().splitlines()
                header = lines[0].split("\t")
                seen += int(lines[-1].split("\t")[header.index("nprocs")])
                ticks.append(len(lines) - 1)
                # prmon's `--interval 1` samples every 2 s: its loop waits until more than one whole second has
                # passed. The rate from its own timestamps (whole seconds) over its life, not from counting lines in
                # the window, which a 2 s step quantises.
                times = [int(ln.split("\t")[header.index("Time")]) for ln in lines[1:]]
                if len(times) >= 2 and times[-1] > times[0]:
                    rates.append((len(times) - 1) / (times[-1] - times[0]))
            rate = statistics.median(rates) if rates else 1.0
            return {"ticks": min(ticks), "late": -1, "nprocs": seen, "samples_per_s": rate}
        assert self.procs[0].stdout is not None
        last = self.procs[0].stdout.read().strip().splitlines()
        done = next((ln for ln in reversed(last) if ln.startswith("done ")), "")
        if not done:
            raise RuntimeError(f"{self.method}: no final report (exit {self.procs[0].returncode})")
        fields = dict(kv.split("=") for kv in done.split()[1:])
        return {k: int(v) for k, v in fields.items()}


def measure(method: str, jobs: Sequence[Job], tools: Dict[str, Path], workdir: Path, seconds: float) -> Dict:
    run = Running(method, jobs, tools, workdir)
    try:
        first = run.wait_ready()
        t0, c0 = time.monotonic(), run.cpu_s()
        time.sleep(seconds)
        used = run.cpu_s() - c0
        span = time.monotonic() - t0
    except BaseException:
        nodework.terminate(run.procs)
        raise
    report = run.stop()
    return {"cpu_pct": used / span * 100, "window_s": span, "nprocs_first": first, "samples_per_s": 1.0, **report}


def summary(values: List[float]) -> Dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def machine() -> Dict[str, object]:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil
    return {"cpu": model, "cores": os.cpu_count(), "arch": platform.machine(), "kernel": platform.release(),
            "python": platform.python_version(), "psutil": psutil.__version__}


def plot(results: Dict, path: Path) -> Optional[str]:
    """CPU % of one core (median over rounds) against jobs per node, one line per method; None or why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (the bench extra: pip install 'matplotlib>=3.7')"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = [p["jobs"] for p in results["points"]]
    for method in results["methods"]:
        ys = [p["methods"][method]["median"] for p in results["points"] if method in p["methods"]]
        if len(ys) == len(xs):
            label = method
            if method == "pilot":
                label += f" (extrapolated from {results['pilot']['measured_jobs']} jobs)"
            elif any(max(p["methods"][method]["late"] or [0]) > 0 for p in results["points"]):
                label += " (could not keep 1 Hz)"
            ax.plot(xs, ys, marker="o", label=label)
    w = results["workload"]
    ax.set_xlabel(f"jobs per node ({w['procs_per_job']} processes each, fanout {w['fanout']})")
    ax.set_ylabel("CPU % of one core (median of rounds)")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"Monitoring a node at 1 Hz ({results['date']}, {results['machine']['cores']} cores)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default="8,16,32,64", help="jobs per node to sweep (default 8,16,32,64)")
    ap.add_argument("--procs", type=int, default=100, help="processes per job (default 100)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per method (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per point (default 3)")
    ap.add_argument("--methods", default=",".join(METHODS), help="methods to run (default all)")
    ap.add_argument("--pilot-jobs", type=int, default=4,
                    help="jobs the whole pilot runs for its measurement (default 4; 0: no pilot)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--plot", type=Path, help="write the plot here (.svg or .png; needs matplotlib)")
    ap.add_argument("--quick", action="store_true",
                    help="a test's scale: jobs 2,4 of 10 processes, 2 s windows, 1 round")
    args = ap.parse_args(argv)
    if args.quick:
        args.jobs, args.procs, args.seconds, args.rounds, args.pilot_jobs = "2,4", 10, 2.0, 1, min(args.pilot_jobs, 2)
    try:
        sweep = sorted({int(j) for j in args.jobs.split(",")})
    except ValueError:
        ap.error(f"--jobs: a comma-separated list of numbers, got {args.jobs!r}")
    wanted = [m for m in args.methods.split(",") if m]
    unknown = [m for m in wanted if m not in METHODS]
    if unknown or not sweep or sweep[0] < 1 or args.procs < 1 or args.seconds <= 0 or args.rounds < 1:
        ap.error(f"bad arguments (unknown methods {unknown})" if unknown else "--jobs, --procs, --seconds, --rounds "
                 "must be positive")

    skipped: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-node-") as tmp_s:
        tmp = Path(tmp_s)
        tools: Dict[str, Path] = {}
        try:
            tools["payload"] = nodework.build_c("node_payload", tmp)
            tools["cfloor"] = nodework.build_c("cfloor", tmp)
        except Unavailable as e:
            # The workload itself is C: without cc there is nothing to measure.
            print(f"bench_node: skipped: {e}")
            return 0
        if any(m.startswith("prmon") for m in wanted):
            try:
                tools["prmon"] = nodework.prmon_binary()
            except Unavailable as e:
                for m in wanted:
                    if m.startswith("prmon"):
                        skipped[m] = str(e)
        jobs = Jobs(tools["payload"], count=sweep[-1], nprocs=args.procs)
        print(f"starting {sweep[-1]} jobs x {args.procs} processes ...", flush=True)
        with jobs:
            if jobs.no_cgroup:
                for m in wanted:
                    if m in CGROUP_METHODS:
                        skipped[m] = jobs.no_cgroup
            methods = [m for m in wanted if m not in skipped]
            results: Dict = {
                "date": datetime.date.today().isoformat(),
                "command": " ".join(["benches/bench_node.py", *(argv if argv is not None else sys.argv[1:])]),
                "machine": machine(),
                "workload": {"jobs": sweep, "procs_per_job": args.procs, "fanout": 10,
                             "threads": "one process in ten has 4 threads", "wakes_per_s": 1,
                             "cgroups": jobs.no_cgroup or "one cgroup v2 per job", "hz": 1},
                "seconds": args.seconds, "rounds": args.rounds, "prmon": str(tools.get("prmon", "")),
                "methods": methods, "skipped": skipped, "points": [],
            }
            for m, why in skipped.items():
                print(f"  {m}: skipped: {why}")
            print(f"machine: {results['machine']}")
            for k in sweep:
                point = run_point(jobs.first(k), methods, tools, tmp, args)
                results["points"].append(point)
                print_point(point, methods)
            if args.pilot_jobs > 0:
                pilot_phase(results, tools, tmp, args)
        if args.json:
            args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        if args.plot:
            why = plot(results, args.plot)
            print(f"plot: {why}" if why else f"plot written to {args.plot}")
    return 0


def pilot_phase(results: Dict, tools: Dict[str, Path], tmp: Path, args) -> None:
    """The whole pilot on --pilot-jobs real jobs, then extrapolated to every point of the sweep."""
    import node_pilot  # LocalGrid and central's dependencies only when the pilot is measured

    k = args.pilot_jobs
    print(f"\nwhole pilot: a real runner with {k} jobs x {args.procs} processes ...", flush=True)
    with node_pilot.PilotNode(tmp / "pilot", tools["payload"], k, args.procs) as node:
        rounds = [node.measure(args.seconds) for _ in range(args.rounds)]
    results["pilot"] = {"measured_jobs": k, "rounds": rounds,
                        "extrapolated": "runner + JOBS x (agents, runtimes and wrappers of the measured jobs) / "
                                        f"{k}; measured on {k} jobs of its own, not the shared trees"}
    results["methods"].append("pilot")
    for point in results["points"]:
        cpu = [r["runner_pct"] + point["jobs"] * r["per_job_pct"] for r in rounds]
        point["methods"]["pilot"] = {**summary(cpu), "cpu_pct": cpu, "nprocs_seen": [], "ticks": [], "late": [],
                                     "extrapolated_from_jobs": k}
        base = point["methods"].get("cfloor-tree")
        if base:
            # Rounds paired by index: the pilot's rounds ran after the others, on the same loaded node.
            point["ratios"]["pilot/cfloor-tree"] = summary([c / b for c, b in zip(cpu, base["cpu_pct"])])
        print(f"  {point['jobs']} jobs: whole pilot {statistics.median(cpu):.2f}% of one core (median; extrapolated "
              f"from {k} jobs: runner {statistics.median(r['runner_pct'] for r in rounds):.3f}%, per job "
              f"{statistics.median(r['per_job_pct'] for r in rounds):.3f}%)")


def run_point(jobs: List[Job], methods: List[str], tools: Dict[str, Path], tmp: Path, args) -> Dict:
    rounds: List[Dict[str, Dict]] = []
    loads: List[List[float]] = []
    node_procs: List[int] = []
    for r in range(args.rounds):
        order = methods[r % len(methods):] + methods[:r % len(methods)]
        this: Dict[str, Dict] = {}
        for m in order:
            node_procs.append(nodework.node_procs())
            this[m] = measure(m, jobs, tools, tmp / f"j{len(jobs)}-r{r}", args.seconds)
        loads.append([float(x) for x in open("/proc/loadavg").read().split()[:3]])
        rounds.append(this)
    point: Dict = {"jobs": len(jobs), "nprocs": sum(j.nprocs for j in jobs),
                   "node_procs": {"min": min(node_procs), "max": max(node_procs)}, "loadavg": loads,
                   "methods": {}, "ratios": {}}
    for m in methods:
        cpu = [rd[m]["cpu_pct"] for rd in rounds]
        point["methods"][m] = {**summary(cpu), "cpu_pct": cpu,
                               "nprocs_seen": [rd[m]["nprocs"] for rd in rounds],
                               "ticks": [rd[m]["ticks"] for rd in rounds], "late": [rd[m]["late"] for rd in rounds],
                               "samples_per_s": [rd[m]["samples_per_s"] for rd in rounds],
                               # CPU % for one sample of every job each second: what it would cost at 1 Hz.
                               "cpu_pct_per_hz": [rd[m]["cpu_pct"] / rd[m]["samples_per_s"] if rd[m]["samples_per_s"]
                                                  else None for rd in rounds]}
    # Each method against the C floor; the peers (psutil, prmon) also against gridpilot's native sampler.
    pairs = [(m, "cfloor-tree") for m in methods if m != "cfloor-tree"]
    pairs += [(m, "native-tree") for m in methods if m == "psutil" or m.startswith("prmon")]
    for m, base in pairs:
        if base in methods:
            point["ratios"][f"{m}/{base}"] = summary([rd[m]["cpu_pct"] / rd[base]["cpu_pct"] for rd in rounds])
            if m.startswith("prmon"):
                # prmon samples every 2 s at --interval 1: per sample it costs CPU % / samples per second.
                point["ratios"][f"{m}/{base} per sample"] = summary(
                    [rd[m]["cpu_pct"] / rd[m]["samples_per_s"] / rd[base]["cpu_pct"] for rd in rounds
                     if rd[m]["samples_per_s"] > 0] or [float("nan")])
    return point


def print_point(point: Dict, methods: List[str]) -> None:
    print(f"\n{point['jobs']} jobs, {point['nprocs']} processes monitored, {point['node_procs']['min']}-"
          f"{point['node_procs']['max']} processes on the node, load {point['loadavg']}")
    print(f"  {'method':<14} {'CPU % of one core: min':>22} {'median':>8} {'max':>8}  {'seen':>6} {'late ticks':>10} "
          f"{'samples/s':>9}")
    for m in methods:
        s = point["methods"][m]
        print(f"  {m:<14} {s['min']:>22.2f} {s['median']:>8.2f} {s['max']:>8.2f}  {min(s['nprocs_seen']):>6} "
              f"{max(s['late']):>10} {statistics.median(s['samples_per_s']):>9.2f}")
    for name, s in point["ratios"].items():
        print(f"  {name:<28} {s['median']:7.2f}x (min {s['min']:.2f}, max {s['max']:.2f}) on {point['jobs']} jobs x "
              f"{point['nprocs'] // point['jobs']} processes, {point['node_procs']['max']} on the node")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        # The jobs' with-block has killed the payloads and removed their cgroups on the way out.
        print("bench_node: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

"""The computing element (`make bench`): how long a job waits for a pilot, and how fast one CE process submits.

  submission -> RUNNING   one job at a time: submitted to central, the CE (cycling every --cycle seconds) submits a
                          pilot, the batch system starts it, its runner matches the job and the job reports RUNNING.
                          Central's own timestamps (job creation, the RUNNING trace entry). Median, p90, max of N jobs,
                          through a real single-node Slurm (tests/support/slurm_cluster.py) and through local fork.
                          Each job runs in a fresh pilot: the next job is submitted once every pilot has ended.
  pilots per minute       one CE process submitting M pilots back to back (mint the pilot's token at central, write its
                          directory, token file and script, submit). Slurm: sbatch --hold, so none starts (then
                          scancel); local: fork + exec of a script whose installation path is empty, so it exits at
                          once. The CE's side of the cost, not the pilots'.

Prints a table; `--json` one line of the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import orjson

from gridpilot.tracefmt import state_of

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.ce import ce_grid, shell_jdl  # noqa: E402
from support.slurm_cluster import SlurmCluster, missing_reason  # noqa: E402



def running_at(grid: Any, job_id: int) -> float:
    for e in grid.user.trace(job_id):
        if e["category"] == "state" and state_of(e["text"]) == "RUNNING":
            return float(e["ts"])
    raise AssertionError(f"job {job_id} has no RUNNING entry:\n{grid.trace_text(job_id)}")


def latency(grid: Any, backend: str, n: int, cycle: float) -> List[float]:
    f = grid.factory(backend, cycle_interval=cycle)
    out = []
    for i in range(n):
        job_id = grid.user.submit(shell_jdl("true"))
        created = float(grid.job(job_id)["created"])
        grid.drive(f, lambda: grid.job(job_id)["state"] in ("RUNNING", "SAVING", "DONE"), 120,
                   f"job {job_id} running", step=cycle)
        out.append(running_at(grid, job_id) - created)
        grid.wait_jobs(f, [job_id], {"DONE"}, timeout=120)
        grid.drive(f, lambda: not f.pilots, 120, "pilots ended", step=0.5)
        print(f"  {backend} job {i + 1}/{n}: {out[-1]:.2f} s", file=sys.stderr)
    return out


def submission_rate(grid: Any, backend: str, m: int, base: Path) -> float:
    over: Dict[str, Any] = {"pilot_dir": str(base / f"rate-{backend}")}
    if backend == "slurm":
        over["slurm_args"] = ["--hold"]
    else:
        empty = base / "no-installation"
        empty.mkdir(exist_ok=True)
        over["install_path"] = str(empty)
    f = grid.factory(backend, **over)
    (shape,) = f.shapes
    t0 = time.perf_counter()
    pilots = [f.submit_one(shape) for _ in range(m)]
    dt = time.perf_counter() - t0
    if backend == "slurm":
        subprocess.run(["scancel", *[p.batch_id for p in pilots]], check=True)
    grid.drive(f, lambda: not f.pilots, 60, "the rate pilots ended")
    return m / dt * 60


def stats(xs: List[float]) -> Dict[str, float]:
    s = sorted(xs)
    return {"median": statistics.median(s), "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "max": s[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--pilots", type=int, default=50)
    ap.add_argument("--cycle", type=float, default=1.0, help="CE cycle interval during the latency runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: Dict[str, Any] = {"cycle_s": args.cycle}
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-ce-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        reason = missing_reason()
        cluster = None
        if reason is None:
            (base / "slurm").mkdir()
            (base / "slurm").chmod(0o755)
            cluster = SlurmCluster(base / "slurm")
            cluster.start()
            os.environ["SLURM_CONF"] = str(cluster.conf)
        else:
            print(f"SKIP: Slurm: {reason}", file=sys.stderr)
        try:
            with ce_grid(base / "grid") as grid:
                backends = (["slurm"] if cluster else []) + ["local"]
                for b in backends:
                    results[f"{b}_to_running"] = stats(latency(grid, b, args.jobs, args.cycle))
                for b in backends:
                    results[f"{b}_pilots_per_min"] = submission_rate(grid, b, args.pilots, base)
        finally:
            if cluster is not None:
                cluster.stop()
    if args.json:
        print(orjson.dumps(results).decode())
        return 0
    print(f"computing element, CE cycle {args.cycle:g} s, {args.jobs} jobs one at a time, {args.pilots} pilots")
    print(f"{'':<28}{'median':>10}{'p90':>10}{'max':>10}")
    for b in ("slurm", "local"):
        if f"{b}_to_running" in results:
            s = results[f"{b}_to_running"]
            print(f"{b + ': submission -> RUNNING':<28}{s['median']:>9.2f}s{s['p90']:>9.2f}s{s['max']:>9.2f}s")
    for b in ("slurm", "local"):
        if f"{b}_pilots_per_min" in results:
            print(f"{b + ': pilots per minute':<28}{results[f'{b}_pilots_per_min']:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

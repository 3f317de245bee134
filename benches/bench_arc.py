"""The arc backend of the computing element against a real A-REX 6.17 (fork LRMS, on 127.0.0.1; needs root and the
ARC packages, as tests/support/arex.py): how fast one CE process submits pilots through one ARC CE, and how long a
job waits for its pilot.

  pilots per minute   M pilots submitted by one CE process, each: its agent token minted at central, its directory,
                      token file and script written, its xRSL submitted, its script and token PUT into its session
                      directory. "bulk": the M in one POST /jobs?action=new (the factory's way); "single": one POST
                      per pilot. The pilots' installation path is empty, so each exits at once where it starts; the
                      jobs are killed and cleaned after the count. The CE's side of the cost, not the pilots'.
  latency             N jobs one at a time, each run by a fresh pilot that ARC starts: submission to central ->
                      RUNNING (central's timestamps: job creation, its RUNNING trace entry) -> final state (DONE),
                      and -> the CE seeing the ARC job end (its output fetched, the job cleaned). A-REX's fork LRMS
                      scans every 10 s, which dominates.

Prints a table; `--json` one line of the numbers.
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
from typing import Any, Dict, List

import orjson

from gridpilot.ce.factory import CycleReport
from gridpilot.tracefmt import state_of

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.arex import ArexServer, missing_reason  # noqa: E402
from support.ce import ce_grid, shell_jdl  # noqa: E402
from support.wheels import WHEELHOUSE, build_wheel  # noqa: E402

NODE_PYTHON = "/usr/bin/python3"


def node_install(base: Path) -> Path:
    """This checkout laid out over the node's CPython where the mapped user can run it (as support/arcnode.py)."""
    wheels = base / "wheels"
    wheels.mkdir(parents=True)
    os.chmod(base, 0o755)
    build_wheel(wheels)
    version = subprocess.run([NODE_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    root = base / "cvmfs"
    subprocess.run([sys.executable, str(ROOT / "tools" / "cvmfs_tree.py"), "--python", version, "--node-python",
                    NODE_PYTHON, "--root", str(root), "--wheels", str(wheels), "--wheelhouse", str(WHEELHOUSE),
                    "--fetch"], check=True, capture_output=True)
    (install,) = [p for p in (root / "latest").iterdir() if (p / "bin" / "gridpilot").exists()]
    return install


def settings(arex: ArexServer, install: str, **over: Any) -> Dict[str, Any]:
    values: Dict[str, Any] = dict(install_path=install, arc_ces=[{"name": "arex", "url": arex.url}],
                                  arc_cert=str(arex.user_cert), arc_key=str(arex.user_key),
                                  arc_ca_file=str(arex.ca_file), max_queue_time=600.0)
    values.update(over)
    return values


def submission_rate(grid: Any, arex: ArexServer, m: int, base: Path, bulk: bool) -> float:
    empty = base / "no-installation"
    empty.mkdir(exist_ok=True)
    f = grid.factory("arc", **settings(arex, str(empty), pilot_dir=str(base / f"rate-{bulk}")))
    (shape,) = f.shapes
    t0 = time.perf_counter()
    if bulk:
        r = CycleReport(started=time.time())
        f.submit_bulk(shape, m, r)
        assert not r.errors, r.errors
        pilots = r.submitted
    else:
        pilots = [f.submit_one(shape) for _ in range(m)]
    dt = time.perf_counter() - t0
    assert len(pilots) == m
    rest = f.backend.endpoints["arex"].rest
    ids = [p.batch_id.split("/", 1)[1] for p in pilots]
    rest.kill(ids)
    grid.drive(f, lambda: not f.pilots, 300, "the rate pilots ended", step=2.0)
    f.close()
    return m / dt * 60


def latency(grid: Any, arex: ArexServer, install: Path, n: int, cycle: float) -> Dict[str, List[float]]:
    f = grid.factory("arc", **settings(arex, str(install), cycle_interval=cycle))
    out: Dict[str, List[float]] = {"to_running": [], "to_done": [], "to_pilot_seen_ended": []}
    for i in range(n):
        job_id = grid.user.submit(shell_jdl("true"))
        created = float(grid.job(job_id)["created"])
        grid.wait_jobs(f, [job_id], {"DONE"}, timeout=300)
        done_at = time.time()
        trace = grid.user.trace(job_id)
        running = next(float(e["ts"]) for e in trace if e["category"] == "state" and state_of(e["text"]) == "RUNNING")
        final = next(float(e["ts"]) for e in trace if e["category"] == "state" and state_of(e["text"]) == "DONE")
        grid.drive(f, lambda: not f.pilots, 300, "the pilot ended", step=cycle)
        out["to_running"].append(running - created)
        out["to_done"].append(final - created)
        out["to_pilot_seen_ended"].append(time.time() - created)
        print(f"  job {i + 1}/{n}: RUNNING after {running - created:.1f} s, DONE after {final - created:.1f} s "
              f"(seen at {done_at - created:.1f} s), pilot's ARC job seen ended and cleaned after "
              f"{out['to_pilot_seen_ended'][-1]:.1f} s", file=sys.stderr)
    f.close()
    return out


def stats(xs: List[float]) -> Dict[str, float]:
    s = sorted(xs)
    return {"median": statistics.median(s), "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "max": s[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--pilots", type=int, default=50)
    ap.add_argument("--cycle", type=float, default=2.0, help="CE cycle interval during the latency runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    reason = missing_reason()
    if reason is not None:
        print(f"SKIP: A-REX: {reason}", file=sys.stderr)
        return 0
    results: Dict[str, Any] = {"cycle_s": args.cycle, "pilots": args.pilots, "jobs": args.jobs}
    base = Path(tempfile.mkdtemp(prefix="gridpilot-bench-arc-"))
    os.chmod(base, 0o755)
    arex = ArexServer(base / "arex")
    try:
        (base / "arex").mkdir()
        arex.start()
        install = node_install(base / "node") if args.jobs else None
        with ce_grid(base / "grid") as grid:
            for bulk in (True, False):
                results["bulk_pilots_per_min" if bulk else "single_pilots_per_min"] = submission_rate(
                    grid, arex, args.pilots, base, bulk)
            if install is not None:
                lat = latency(grid, arex, install, args.jobs, args.cycle)
                results.update({k: stats(v) for k, v in lat.items()})
    finally:
        arex.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(orjson.dumps(results).decode())
        return 0
    print(f"arc backend through one A-REX 6.17 (fork LRMS), CE cycle {args.cycle:g} s, {args.pilots} pilots, "
          f"{args.jobs} jobs one at a time")
    for k in ("bulk", "single"):
        print(f"{k + ': pilots per minute':<36}{results[f'{k}_pilots_per_min']:>10.0f}")
    if "to_running" in results:
        print(f"{'':<36}{'median':>10}{'p90':>10}{'max':>10}")
        for k, label in (("to_running", "submission -> RUNNING"), ("to_done", "submission -> DONE"),
                         ("to_pilot_seen_ended", "submission -> pilot ended, cleaned")):
            s = results[k]
            print(f"{label:<36}{s['median']:>9.1f}s{s['p90']:>9.1f}s{s['max']:>9.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

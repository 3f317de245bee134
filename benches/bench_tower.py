"""The tower (`make bench`): how many ARC jobs one tower process follows per second of its CPU, and how many reports
per second it brings to central, against aCT's ~20 Hz of heartbeats from one process (its 70k jobs/hour).

  jobs tracked per CPU second   N ARC jobs (/bin/sleep) submitted in one POST to a private A-REX (fork LRMS,
                                tests/support/arex.py), held by a tower in phase QUEUED; the tower's follow step (the
                                live state of each job through diagnose/status, its row updated) run R times with
                                poll_interval 0. The tower process's CPU time (time.process_time) per job followed;
                                the wall time too (A-REX answers on the same 2 cores).
  reports per second            M jobs matched by a tower token of an embedded central (SQLite), a report queued for
                                each (a state, STARTED, and three keyed trace lines), sent by the tower's report step
                                (POST /api/v1/reports, report_batch per request). M / wall seconds of that step.

Prints a table; `--json` one line of the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from gridpilot.private_files import write_private  # noqa: E402
from gridpilot.testing import LocalGrid  # noqa: E402
from gridpilot.tower import db as phases  # noqa: E402
from gridpilot.tower.service import CycleReport, Tower  # noqa: E402
from gridpilot.tower.settings import load_settings  # noqa: E402

from support.arex import ArexServer, missing_reason  # noqa: E402

SLEEP_XRSL = '&(executable="/bin/sleep")(arguments="600")(jobname="gridpilot-bench-tower")'
ACT_REPORT_HZ = 20.0


def _tower(tmp: Path, grid: LocalGrid, arex: ArexServer, **extra: Any) -> Tower:
    write_private(tmp / "tower.token", grid.admin.mint_token("tower", "benchtower", site="NOWAN", ce="benchtower"))
    key = tmp / "key.pem"
    key.write_bytes(Path(arex.user_key).read_bytes())
    os.chmod(key, 0o600)
    cfg = {"central_url": grid.central.url, "state_dir": str(tmp / "tower"), "name": "benchtower",
           "arc_cert": str(arex.user_cert), "arc_key": str(key), "arc_ca_dir": str(arex.ca_dir),
           "poll_interval": 0.0, "sites": [{"site": "NOWAN", "token_file": str(tmp / "tower.token"),
                                            "arc_ces": [arex.rest_url], "install_path": "/nonexistent"}], **extra}
    (tmp / "tower.yaml").write_text(yaml.safe_dump(cfg))
    return Tower(load_settings(tmp / "tower.yaml", environ={}))


def submit_sleepers(grid: LocalGrid, arex: ArexServer, tmp: Path, n: int) -> list:
    tower = _tower(tmp / "submit", grid, arex)
    ids = [s.id for s in tower.arc(arex.rest_url).submit([SLEEP_XRSL] * n)]
    assert all(ids), ids
    # Until the info provider lists them (it runs about once a minute), action=status does not know them.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(tower.arc(arex.rest_url).states(ids)) < n:
        time.sleep(5)
    tower.close()
    return ids


def tracking(tmp: Path, grid: LocalGrid, arex: ArexServer, ids: list, rounds: int, bulk: bool) -> Dict[str, float]:
    n = len(ids)
    tower = _tower(tmp / f"track-{bulk}", grid, arex, bulk_status=bulk)
    for i, arc_id in enumerate(ids):
        job = tower.db.hold("NOWAN", {"id": 10_000 + i, "resubmission": 0, "token": "-", "jdl": "", "user": "bench"})
        tower.db.update(job, phase=phases.QUEUED, arc_url=arex.rest_url, arc_id=arc_id)
    report = CycleReport(started=time.time())
    tower._follow(report)  # warm: connections made, first answers
    for job in tower.db.jobs():  # the live state was just asked: bulk rounds trust action=status from here
        assert job.arc_state not in ("FINISHED", "FAILED", "KILLED"), job
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        tower._follow(report)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert not report.errors, report.errors
    assert all(j.phase == phases.QUEUED for j in tower.db.jobs()), [(j.phase, j.arc_state, j.message) for j in tower.db.jobs() if j.phase != phases.QUEUED][:5]
    tower.close()
    followed = n * rounds
    return {"jobs": n, "rounds": rounds, "bulk_status": bulk, "cpu_s": cpu, "wall_s": wall,
            "tracked_per_cpu_s": followed / cpu, "tracked_per_wall_s": followed / wall}


def reporting(tmp: Path, grid: LocalGrid, arex: ArexServer, m: int, batch: int) -> Dict[str, float]:
    tower = _tower(tmp / "report", grid, arex, report_batch=batch)
    for _ in range(m):
        grid.user.submit('Executable = "/bin/true";\n')
    client = tower.clients["NOWAN"]
    site_map = {"ttl": 86400, "cores": 1, "node": "benchtower"}
    for _ in range(m):
        job = client.match(site_map)
        assert job is not None
        held = tower.db.hold("NOWAN", job)
        now = time.time()
        tower.db.queue_reports(held, [{
            "job_id": held.job_id, "resubmission": held.resubmission, "state": "STARTED", "at": now,
            "trace": [{"ts": now, "category": "trace", "text": f"bench line {k}", "key": f"bench:{k}"}
                      for k in range(3)]}])
    report = CycleReport(started=time.time())
    wall0 = time.perf_counter()
    tower._send_reports(report)
    wall = time.perf_counter() - wall0
    assert not report.errors and report.reports_sent == m, report
    states = {j["state"] for j in grid.admin.list_jobs(limit=m)}
    assert states == {"STARTED"}, states
    tower.close()
    return {"reports": m, "batch": batch, "wall_s": wall, "reports_per_s": m / wall,
            "vs_act_20hz": m / wall / ACT_REPORT_HZ}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=100, help="ARC jobs followed")
    p.add_argument("--rounds", type=int, default=5, help="follow passes over them")
    p.add_argument("--reports", type=int, default=1000, help="jobs reported on")
    p.add_argument("--batch", type=int, default=500, help="reports per POST")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    why = missing_reason()
    if why:
        print(f"bench_tower: skipped: {why}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="gridpilot-bench-tower-") as d:
        tmp = Path(d)
        os.chmod(tmp, 0o755)
        arex = ArexServer(tmp / "arex")
        arex.start()
        try:
            with LocalGrid(tmp / "grid") as grid:
                ids = submit_sleepers(grid, arex, tmp, args.jobs)
                live = tracking(tmp, grid, arex, ids, args.rounds, bulk=False)
                bulk = tracking(tmp, grid, arex, ids, args.rounds, bulk=True)
                rep = reporting(tmp, grid, arex, args.reports, args.batch)
        finally:
            arex.stop()
    if args.json:
        print(orjson.dumps({"tracking_live": live, "tracking_bulk": bulk, "reporting": rep}).decode())
        return 0
    print("tower                                          value")
    for name, t in (("live, diagnose/status per job", live), ("bulk, one action=status per CE", bulk)):
        print(f"jobs tracked per CPU second ({name})  {t['tracked_per_cpu_s']:10.0f}   "
              f"({t['jobs']} ARC jobs x {t['rounds']} passes, {t['cpu_s']:.3f} s CPU; "
              f"{t['tracked_per_wall_s']:.0f} per wall second)")
    print(f"reports per second to central            {rep['reports_per_s']:10.0f}   "
          f"({rep['reports']} reports, {rep['batch']} per POST; {rep['vs_act_20hz']:.0f}x aCT's 20 Hz)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benches/simulate_grid.py at a small scale, so it cannot rot: 50 simulated pilots for 45 s against real `central
serve` processes (one on SQLite; two on the bench's own PostgreSQL cluster), with a compressed timeline (jobs of
5-15 s, heartbeats every 5 s, ZOMBIE after 12 s) so that every path of the simulation happens within the run. The
run's JSON must make sense: jobs reached DONE, failed jobs were resubmitted, a vanished pilot's job was taken back
by the sweeper, no 5xx answer. Nothing here asserts speed."""

from __future__ import annotations

import signal
import subprocess
import sys

import orjson
import pytest

from support import paths
from support.require import require_or_skip

SCRIPT = paths.ROOT / "benches" / "simulate_grid.py"

SMALL = ["--pilots", "50", "--duration", "45", "--ramp", "5", "--job-min", "5", "--job-max", "15", "--heartbeat", "5",
         "--zombie-after", "12", "--expire-after", "5", "--sweep-interval", "2", "--queue-depth", "200",
         "--batch", "100", "--pilot-lifetime", "30", "--empty-backoff", "3", "--resubmit-every", "3",
         "--fail-share", "0.15", "--vanish-share", "0.1", "--connections", "4"]


@pytest.mark.parametrize("backend,processes", [("sqlite", "1"), ("postgresql", "2")])
def test_a_small_simulated_grid_runs_every_lifecycle(tmp_path, backend, processes):
    if backend == "postgresql":
        from support import pgserver

        reason = pgserver.missing_reason()
        if reason:
            require_or_skip(reason)
    out = tmp_path / "grid.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *SMALL, "--db", backend, "--processes", processes,
                             "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the script's own cleanup stops the serve processes and PostgreSQL it started.
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
        pytest.fail(f"simulate_grid.py did not end within 900 s: {stdout[-2000:]}{stderr[-2000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    r = orjson.loads(out.read_bytes())

    jobs = r["jobs"]
    assert jobs["done"] > 0 and jobs["matched"] > jobs["done"] // 2
    assert r["jobs"]["final_states"].get("DONE", 0) >= jobs["done"]
    # Failed jobs went back to the queue through the user's resubmit path.
    assert jobs["failed"] > 0 and jobs["resubmitted"] > 0
    # Pilots vanished mid-job, and central's sweeper took back at least one of their jobs (ZOMBIE or EXPIRED, or
    # a later resubmission of it).
    assert jobs["jobs_of_vanished_pilots"] > 0
    assert jobs["vanished_check"]["taken_back"] > 0

    assert not [s for s in r["errors_by_status"] if s.startswith("5")], r["errors_by_status"]
    for name in ("POST /ce/tokens", "POST /match", "POST /jobs/{id}/status", "POST /jobs/{id}/trace",
                 "POST /heartbeats", "POST /catalogue/files", "POST /jobs/{id}/resubmit", "POST /jobs"):
        e = r["endpoints"][name]
        assert e["n"] > 0 and 0 < e["p50_ms"] <= e["p99_ms"] <= e["max_ms"], (name, e)
    assert sum(r["timeline"]["starts"]) > 0 and sum(r["timeline"]["ends"]) > 0
    # Several jobs in one heartbeat happen (multi-slot pilots), and the updates were counted.
    assert r["rates"]["heartbeat_job_updates_per_s"] > 0
    assert r["server_cpu"]["serve_s"] > 0 and r["server_cpu"]["per_lifecycle_ms"] > 0
    if backend == "postgresql":
        assert r["server_cpu"]["postgres_s"] > 0
    assert r["database"]["bytes_after"] > r["database"]["bytes_before"]
    assert r["client"]["cpu_s"] > 0
    assert r["config"]["processes"] == int(processes)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "grid.png").stat().st_size > 0

"""benches/bench_pilot_requests.py at a small scale, so that it cannot rot: two jobs, a few seconds, both modes (the
heartbeat longer than the default 3 s poll, or there is no poll)."""

from __future__ import annotations

import sys

from support import paths

sys.path.insert(0, str(paths.ROOT / "benches"))

import bench_pilot_requests  # noqa: E402

CONTROL_ONE = "GET /api/v1/jobs/{job_id}/control"


def test_the_bench_counts_each_modes_requests():
    per_job = bench_pilot_requests.run(jobs=2, window=7.0, heartbeat=6.0, bulk=False)
    bulk = bench_pilot_requests.run(jobs=2, window=7.0, heartbeat=6.0, bulk=True)
    assert per_job["requests"].get(CONTROL_ONE, 0) > 0 and "POST /api/v1/control" not in per_job["requests"]
    assert bulk["requests"].get("POST /api/v1/control", 0) > 0 and CONTROL_ONE not in bulk["requests"]
    for doc in (per_job, bulk):
        assert doc["per_job_hour_total"] > 0 and doc["per_job_hour_default_total"] > 0

"""Schema step 12's index on files (job_id, lfn) is what a job's files are read by: every statement GET
/jobs/{id}/files and a resubmission's cleanup run on the files table is planned through ix_files_job, on SQLite and
PostgreSQL, once the upgrade has built it, and none was before (the whole table was scanned). The statements are
captured as central sends them (benches/bench_job_files.py, which times the same requests with 100,000 files)."""

from __future__ import annotations

import sys

import orjson

from gridpilot.central import catalogue, schema
from gridpilot.central.db import Database
from support import paths

sys.path.insert(0, str(paths.ROOT / "benches"))

import bench_job_files  # noqa: E402

OTHERS, MINE = 5000, 7


def test_a_jobs_files_are_read_through_the_index_after_step_12(db_url):
    db = Database(db_url)
    try:
        bench_job_files.at_step_11_files(db)
        job_id = bench_job_files.fill_files(db, OTHERS, MINE)
        before = bench_job_files.query_plans(db, job_id)
        # The page of files, its replicas, and the cleanup's select, replica delete and file delete.
        assert len(before) == 5, before
        assert not any(schema.ix_files_job.name in plan for _, plan in before), before
        if not db.is_postgres:
            # SQLite reads the table whole, through the primary key for the order by LFN or row by row.
            assert sum(plan.startswith("SCAN files") for _, plan in before) >= 3, before

        bench_job_files.build_index(db)
        bench_job_files.analyze(db)
        after = bench_job_files.query_plans(db, job_id)
        assert [s for s, _ in after] == [s for s, _ in before]
        for statement, plan in after:
            assert schema.ix_files_job.name in plan, f"{statement}\n{plan}"

        answer = catalogue.job_files(db, bench_job_files.user_principal(), job_id, {})
        assert [f["lfn"] for f in answer["files"]] == [f"/bench/out/{job_id}/file{i:03d}.root" for i in range(MINE)]
        assert all(f["replicas"] and f["job_id"] == job_id for f in answer["files"])
    finally:
        db.dispose()


def test_the_benchmark_runs_end_to_end_on_a_small_catalogue(tmp_path, capsys):
    """`make bench` runs benches/bench_job_files.py; CI does not, so a small run here keeps it working: both HTTP
    phases through a real `central serve`, and the step 12 upgrade timed."""
    out = tmp_path / "bench.json"
    assert bench_job_files.main(["--others", "300", "--mine", "3", "--repeat", "3", "--backend", "sqlite",
                                 "--json", str(out)]) == 0
    (res,) = orjson.loads(out.read_bytes())["results"]
    for k in ("in_process_step_11", "in_process_step_12", "http_without_index", "http_with_index", "cleanup_step_11",
              "cleanup_step_12"):
        assert res[k]["n"] == 3 and 0 < res[k]["p50_ms"] <= res[k]["max_ms"], (k, res[k])
    assert res["upgrade_step_12_s"] >= 0
    assert all(schema.ix_files_job.name in plan for _, plan in res["plans_step_12"])
    assert "http_with_index" in capsys.readouterr().out

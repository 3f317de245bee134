"""benches/bench_scale_cost.py (`make bench-scale`) at a tiny scale, so it cannot rot: real `central serve`
processes on SQLite and PostgreSQL, 1k and 5k WAITING jobs, heartbeats through 1 and 2 processes for 2 s. What it
reports must hold together: percentiles in order, the broker's plan on the queue index at every size, every state
report counted, and the heartbeat updates it counted from the answers found again in PostgreSQL's own count."""

from __future__ import annotations

import sys

import orjson
import pytest

from support import paths, pgserver
from support.require import require_or_skip

sys.path.insert(0, str(paths.ROOT / "benches"))

import bench_scale_cost  # noqa: E402
from gridpilot.central import schema  # noqa: E402

SIZES = [1000, 5000]


def run(tmp_path, backend: str) -> dict:
    out = tmp_path / "scale.json"
    argv = ["--backend", backend, "--sizes", "1000,5000", "--sqlite-sizes", "1000,5000", "--matches", "160",
            "--report-jobs", "20", "--processes", "1,2", "--clients", "4", "--held", "800", "--hb-seconds", "2",
            "--json", str(out)]
    assert bench_scale_cost.main(argv) == 0
    (res,) = orjson.loads(out.read_bytes())["results"]
    assert res["backend"] == backend
    return res


def check_matches(res: dict) -> None:
    assert [m["waiting"] >= size for m, size in zip(res["matches"], SIZES)] == [True, True]
    for m in res["matches"]:
        # 160 matches: half as fast as answered, half paced (50/s in all)
        for run in (m, m["paced"]):
            assert run["n"] == 80 and run["agents"] == 16
            assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], run
            assert run["server_cpu_ms_per_match"] > 0 and run["matches_per_s"] > 0
            # Jobs that fit always wait (a quarter of the queue is matched at most): "no job" would be a broker bug.
            assert run["no_job_answers"] == 0, run
        assert m["paced"]["rate"] == 50 and m["rate"] is None
        # The broker's scan reads the queue in rank order through its index at every size (schema.ix_jobs_queue).
        assert m["plans"] and all(p["index"] == schema.ix_jobs_queue.name for p in m["plans"]), m["plans"]
    s = res["state_reports"]
    assert s["jobs"] == 20 and s["reports"] == 20 * len(bench_scale_cost.STATE_REPORTS)
    assert 0 < s["p50_ms"] <= s["p99_ms"]


def test_the_bench_runs_on_sqlite(tmp_path, capsys):
    res = run(tmp_path, "sqlite")
    check_matches(res)
    assert res["heartbeats"] == [] and res["lifecycle"] is None  # heartbeats are measured on PostgreSQL only
    out = capsys.readouterr().out
    assert "16 agents; as fast as answered" in out and "sqlite           5," in out


def test_the_bench_runs_on_postgresql(tmp_path, capsys):
    reason = pgserver.missing_reason()
    if reason:
        require_or_skip(reason)
    res = run(tmp_path, "postgresql")
    check_matches(res)
    for m in res["matches"]:
        p = m["plans"][0]
        # EXPLAIN ANALYZE ran the scan: it read a batch, not the queue.
        assert 0 < p["rows_read"] < 1000 and "Index Scan" in p["plan"], p
        assert m["db_cpu_ms_per_match"] > 0
    assert [h["processes"] for h in res["heartbeats"]] == [1, 2]
    for h in res["heartbeats"]:
        assert h["job_updates"] > 0 and h["requests"] * h["bulk"] == h["job_updates"], h
        # Every update counted from the answers is a row update PostgreSQL counted; the warm-up's requests may
        # be counted there too (their counts arrive late), nothing else updates jobs meanwhile.
        assert h["job_updates"] <= h["db_row_updates"] <= h["job_updates"] + h["warmup_updates"], h
        assert h["server_cpu_us_per_update"] > 0 and h["db_cpu_us_per_update"] > 0 and h["client_cpu_cores"] > 0
        assert h["request_p50_ms"] <= h["request_p99_ms"]
    life = res["lifecycle"]
    assert life["cpu_ms_per_job"] > life["match_cpu_ms"] > 0 and life["running_jobs_served"] > 0
    out = capsys.readouterr().out
    assert "target postgresql: match p99" not in out  # no size of 100k or more was measured
    assert "CPU per job lifecycle" in out and "2 processes" in out


@pytest.mark.parametrize("bad", [["--sizes", "5000,1000"], ["--sizes", "1k"], ["--held", "10"]])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(SystemExit) as e:
        bench_scale_cost.main(bad)
    assert e.value.code == 2

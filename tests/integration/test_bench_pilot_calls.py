"""benches/bench_pilot_calls.py (`make bench-scale`) at a tiny scale, so it cannot rot: a real `central serve` on
a private PostgreSQL answers each pilot call; the figures it prints must hold together (every call answered, CPU
counted on both sides, the capacity lines the arithmetic of the measured costs)."""

from __future__ import annotations

import sys

import orjson
import pytest

from support import paths, pgserver
from support.require import require_or_skip

sys.path.insert(0, str(paths.ROOT / "benches"))

import bench_pilot_calls  # noqa: E402


def test_the_bench_measures_every_call_and_its_capacity_lines_follow_from_them(tmp_path, capsys):
    reason = pgserver.missing_reason()
    if reason:
        require_or_skip(reason)
    out = tmp_path / "calls.json"
    argv = ["--clients", "2", "--jobs-per-pilot", "3", "--seconds", "0.5", "--running", "6000", "--poll", "5",
            "--heartbeat", "60", "--json", str(out)]
    assert bench_pilot_calls.main(argv) == 0
    doc = orjson.loads(out.read_bytes())
    assert [r["call"] for r in doc["results"]] == list(bench_pilot_calls.CALLS)
    for r in doc["results"]:
        assert r["requests"] > 0 and r["requests_per_s"] > 0, r
        assert r["server_cpu_ms"] > 0 and r["db_cpu_ms"] >= 0, r
    cost = {r["call"]: (r["server_cpu_ms"] + r["db_cpu_ms"]) / 1000 for r in doc["results"]}
    bulk, per_job = doc["capacity"]
    pilots = 6000 / 3
    assert bulk["cores"] == pytest.approx(pilots / 5 * cost["control, bulk"] + pilots / 60 * cost["heartbeat, bulk"])
    assert per_job["cores"] == pytest.approx(6000 / 5 * cost["control, per job"] + 6000 / 60 * cost["control, per job"])
    printed = capsys.readouterr().out
    assert "6,000 running jobs, a control poll every 5 s" in printed and "control, bulk" in printed


@pytest.mark.parametrize("argv", [["--clients", "0"], ["--jobs-per-pilot", "1001"], ["--poll", "0"],
                                  ["--seconds", "-1"]])
def test_bad_arguments_are_refused_before_anything_starts(argv, capsys):
    with pytest.raises(SystemExit) as e:
        bench_pilot_calls.main(argv)
    assert e.value.code == 2
    assert "must be" in capsys.readouterr().err

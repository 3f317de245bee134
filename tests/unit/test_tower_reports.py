"""What the tower reports for a job the node ran: the node's trace lines and states in the node's order (each
state after the lines that led to it), the ARC job id once, the node's keys kept; the tower's own lines keyed by
run, step and line, so a report sent again is stored once."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from gridpilot.tower import db as phases
from gridpilot.tower.results import parse_result
from gridpilot.tower.service import TRACE_CHUNK, Tower
from gridpilot.tower.settings import TowerSettings


def _tower(tmp: Path) -> Tower:
    token = tmp / "t.token"
    token.write_text("x")
    os.chmod(token, 0o600)
    s = TowerSettings(central_url="http://127.0.0.1:9", state_dir=str(tmp / "state"), arc_token_file=str(token),
                      sites=[{"site": "S", "token_file": str(token), "arc_ces": ["https://arc.example.org/rest"],
                              "install_path": "/gp"}])
    return Tower(s)


def _result(n_lines: int) -> bytes:
    trace = [{"ts": 100.0 + i, "category": "trace", "text": f"line {i}", "key": f"0.r.{i}"} for i in range(n_lines)]
    return orjson.dumps({
        "format": 1, "job_id": 3, "resubmission": 0, "host": "wn", "started_at": 100.0, "ended_at": 200.0,
        "states": [{"state": "STARTED", "at": 100.5}, {"state": "RUNNING", "at": 102.5},
                   {"state": "SAVING", "at": 104.5, "exit_code": 0}],
        "trace": trace, "outputs": [], "final": {"state": "SAVING", "kill_reason": None, "exit_code": 0}})


def test_states_come_after_the_lines_that_led_to_them(tmp_path: Path):
    tower = _tower(tmp_path)
    job = tower.db.hold("S", {"id": 3, "resubmission": 0, "token": "j", "jdl": "", "user": "u"})
    tower.db.update(job, phase=phases.DOWNLOADED, arc_id="ARC1")
    reps = tower._result_reports(job, parse_result(_result(6), job_id=3, resubmission=0))
    shape = [r.get("state") or [e["text"] for e in r["trace"]] for r in reps]
    assert shape == [["line 0"], "STARTED", ["line 1", "line 2"], "RUNNING", ["line 3", "line 4"], "SAVING",
                     ["line 5"]]
    assert reps[0]["arc_job_id"] == "ARC1" and sum("arc_job_id" in r for r in reps) == 1
    assert reps[5]["exit_code"] == 0 and reps[2]["trace"][0]["key"] == "0.r.1"
    tower.close()


def test_a_long_trace_is_cut_into_reports_central_takes(tmp_path: Path):
    tower = _tower(tmp_path)
    job = tower.db.hold("S", {"id": 3, "resubmission": 0, "token": "j", "jdl": "", "user": "u"})
    reps = tower._result_reports(job, parse_result(_result(1200), job_id=3, resubmission=0))
    assert max(len(r.get("trace", [])) for r in reps) <= TRACE_CHUNK
    assert sum(len(r.get("trace", [])) for r in reps) == 1200
    tower.close()


def test_the_towers_own_lines_have_keys_unique_per_run_and_step(tmp_path: Path):
    tower = _tower(tmp_path)
    job = tower.db.hold("S", {"id": 3, "resubmission": 2, "token": "j", "jdl": "", "user": "u"})
    a = tower._trace_entries(job, "stage", ["x", "y"])
    b = tower._trace_entries(job, "publish", ["x"])
    keys = [e["key"] for e in a + b]
    assert keys == ["tower:2:stage:0", "tower:2:stage:1", "tower:2:publish:0"]
    assert tower._trace_entries(job, "stage", ["x", "y"])[1]["key"] == a[1]["key"]  # the same line again: same key
    tower.close()

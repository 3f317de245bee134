"""The tower's own SQLite state: a held job survives the process (a second TowerDB on the file takes it back in
its phase), phase changes and the reports they queue are one transaction, the outbox keeps order, the file is
private (it holds job tokens), and a file of another schema is refused."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from gridpilot.errors import ConfigError
from gridpilot.tower import db as phases
from gridpilot.tower.db import TowerDB

MATCH = {"id": 42, "resubmission": 1, "token": "job-token", "jdl": 'Executable = "/bin/true";', "user": "alice",
         "output_dir": "/alice/out"}


def test_a_held_job_is_taken_back_by_the_next_process(tmp_path: Path):
    path = tmp_path / "tower.sqlite"
    first = TowerDB(path, clock=lambda: 100.0)
    job = first.hold("NOWAN", MATCH)
    first.update(job, phase=phases.SUBMITTED, arc_url="https://arc/rest", arc_id="abc",
                 reports=[{"job_id": 42, "resubmission": 1, "arc_job_id": "abc"}])
    first.close()  # as a crash would leave it: nothing else written

    second = TowerDB(path)
    (back,) = second.jobs()
    assert (back.job_id, back.resubmission, back.site, back.phase) == (42, 1, "NOWAN", phases.SUBMITTED)
    assert (back.arc_url, back.arc_id, back.token, back.output_dir) == ("https://arc/rest", "abc", "job-token",
                                                                         "/alice/out")
    assert back.matched_at == 100.0
    (queued,) = second.pending_reports(10)
    assert queued.body == {"job_id": 42, "resubmission": 1, "arc_job_id": "abc"} and queued.site == "NOWAN"
    assert second.reports_left(back) == 1
    second.sent([queued.id])
    assert second.pending_reports(10) == [] and second.reports_left(back) == 0


def test_the_file_is_private(tmp_path: Path):
    path = tmp_path / "tower.sqlite"
    TowerDB(path).close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    os.chmod(path, 0o644)
    TowerDB(path).close()
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_failed_update_queues_no_report(tmp_path: Path):
    db = TowerDB(tmp_path / "t.sqlite")
    job = db.hold("S", MATCH)
    with pytest.raises(ValueError, match="not a changeable column"):
        db.update(job, token="stolen", reports=[{"job_id": 42}])
    with pytest.raises(TypeError):
        db.update(job, phase=phases.STAGED, reports=[{"job_id": 42, "x": object()}])  # not JSON: rolled back
    assert db.get(42, 1).phase == phases.MATCHED and db.pending_reports(10) == []


def test_reports_leave_in_order_and_by_limit(tmp_path: Path):
    db = TowerDB(tmp_path / "t.sqlite")
    job = db.hold("S", MATCH)
    db.queue_reports(job, [{"n": i} for i in range(5)])
    assert [r.body["n"] for r in db.pending_reports(3)] == [0, 1, 2]
    db.sent(r.id for r in db.pending_reports(2))
    assert [r.body["n"] for r in db.pending_reports(10)] == [2, 3, 4]


def test_jobs_are_listed_by_phase_and_site_and_forgotten(tmp_path: Path):
    db = TowerDB(tmp_path / "t.sqlite")
    a = db.hold("S1", MATCH)
    b = db.hold("S2", {**MATCH, "id": 43})
    db.update(b, phase=phases.QUEUED)
    assert [j.job_id for j in db.jobs(phases=[phases.QUEUED])] == [43]
    assert [j.job_id for j in db.jobs(site="S1")] == [42]
    assert db.count("S1") == 1
    db.forget(a)
    assert [j.job_id for j in db.jobs()] == [43]


def test_a_database_of_another_schema_is_refused(tmp_path: Path):
    path = tmp_path / "t.sqlite"
    TowerDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="tower database of schema 99"):
        TowerDB(path)


def test_a_database_of_schema_1_is_brought_up_to_date(tmp_path: Path):
    """A tower of the first release left jobs in its file: the kill columns are added, the jobs kept."""
    path = tmp_path / "tower.sqlite"
    first = TowerDB(path, clock=lambda: 100.0)
    first.hold("NOWAN", MATCH)
    first.close()
    conn = sqlite3.connect(path)
    for column in ("kill_at", "kill_why", "kill_put"):
        conn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    second = TowerDB(path)
    (job,) = second.jobs()
    assert (job.job_id, job.kill_at, job.kill_put) == (42, None, None)
    second.update(job, kill_at=5.0, kill_why="kill requested")
    assert second.jobs()[0].kill_why == "kill requested"
    assert second.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(phases.SCHEMA_VERSION)
    second.close()

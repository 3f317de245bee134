"""The tower with a real central and no ARC CE that answers (none is needed for these): a job whose input no
replica provides ends ERROR_IB (INPUT_FILES) without reaching ARC; a job no ARC CE takes goes back to WAITING after
submit_deadline while the CE is backed off; a restart takes back a job the tower matched, from its database; a
tower token of another site is refused at start with one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from gridpilot.private_files import write_private
from gridpilot.testing import SE_NAME, LocalGrid

SITE = "NOWAN"
DEADLINE_S = 120.0
JDL = """\
Executable = "/bin/true";
InputFile = { "LF:/gridpilot/towertest/absent.txt" };
"""


def _dead_ce() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"https://localhost:{s.getsockname()[1]}/arex/rest/1.0"


def _config(tmp: Path, grid: LocalGrid, token_site: str = SITE, **extra: Any) -> Path:
    write_private(tmp / "tower.token", grid.admin.mint_token("tower", "tower1", site=token_site, ce="tower1"))
    write_private(tmp / "arc.token", "not-used")
    values = {"central_url": grid.central.url, "state_dir": str(tmp / "tower"), "name": "tower1",
              "arc_token_file": str(tmp / "arc.token"), "ce_backoff_base": 600.0,
              "sites": [{"site": SITE, "token_file": str(tmp / "tower.token"), "arc_ces": [_dead_ce()],
                         "install_path": "/nonexistent", "output_ses": [SE_NAME],
                         "site_map": {"ttl": 86400, "cores": 1}}]}
    values.update(extra)
    cfg = tmp / "tower.yaml"
    cfg.write_text(yaml.safe_dump(values))
    return cfg


def _tower(cfg: Path) -> Any:
    from gridpilot.tower.service import Tower
    from gridpilot.tower.settings import load_settings

    return Tower(load_settings(cfg, environ={}))


def _until(tower: Any, done: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        tower.cycle()
        if done():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: {[(j.job_id, j.phase, j.message) for j in tower.db.jobs()]}")


def test_an_input_no_replica_provides_ends_the_job_before_arc(tmp_path: Path):
    # No automatic resubmission: the job's end is the tower's, not central's next attempt.
    with LocalGrid(tmp_path / "grid", central={"max_auto_resubmits": 0}) as grid:
        job_id = grid.user.submit(JDL)
        tower = _tower(_config(tmp_path, grid))
        try:
            _until(tower, lambda: not tower.db.jobs() and tower.db.reports_total() == 0, "job reported")
            assert tower.backoff.failures(tower.sites[SITE].arc_ces[0]) == 0, "the ARC CE was asked"
        finally:
            tower.close()
        job = grid.admin.get_job(job_id)
        assert (job["state"], job["kill_reason"]) == ("ERROR_IB", "INPUT_FILES"), job
        texts = "\n".join(e["text"] for e in grid.admin.trace(job_id))
        assert "/gridpilot/towertest/absent.txt" in texts and "[FATAL]: stage-in failed" in texts, texts


def test_a_job_no_ce_takes_goes_back_to_waiting_and_a_restart_takes_jobs_back(tmp_path: Path):
    with LocalGrid(tmp_path / "grid") as grid:
        job_id = grid.user.submit('Executable = "/bin/true";\n')
        cfg = _config(tmp_path, grid, submit_deadline=3.0)
        tower = _tower(cfg)
        tower.cycle()
        (held,) = tower.db.jobs()
        assert held.job_id == job_id and held.phase == "STAGED", held
        dead = tower.sites[SITE].arc_ces[0]
        assert tower.backoff.failures(dead) == 1
        tower.close()

        # As if the tower had stopped while its submission request was out: the answer (and so the ARC job id)
        # is lost; the next tower submits the job again.
        tower = _tower(cfg)
        (back,) = tower.db.jobs()
        tower.db.update(back, phase="SUBMITTING", arc_url=dead)
        tower.close()

        tower = _tower(cfg)  # a restart: the job is taken back, not matched again
        try:
            (back,) = tower.db.jobs()
            assert (back.job_id, back.phase) == (job_id, "SUBMITTING")
            tower.cycle()
            (back,) = tower.db.jobs()
            assert back.phase == "STAGED" and back.arc_url is None and "Connection refused" in (back.message or "")
            assert tower.backoff.failures(dead) == 1, "the job was not submitted again"
            _until(tower, lambda: not tower.db.jobs(), "job given back")
            tower.cycle()  # the site's only CE is still backed off: the job is not matched again
            assert not tower.db.jobs()
        finally:
            tower.close()
        job = grid.admin.get_job(job_id)
        assert job["state"] == "WAITING", job
        texts = "\n".join(e["text"] for e in grid.admin.trace(job_id))
        assert "Tower gives the job back: no ARC CE of site NOWAN took the job within 3 s" in texts, texts


def test_a_token_of_another_site_is_refused_at_start(tmp_path: Path):
    with LocalGrid(tmp_path / "grid") as grid:
        cfg = _config(tmp_path, grid, token_site="ELSEWHERE")
        got = subprocess.run([sys.executable, "-m", "gridpilot", "tower", "--config", str(cfg), "--once"],
                             capture_output=True, text=True, timeout=120, env={**os.environ})
        assert got.returncode == 2, (got.returncode, got.stderr)
        assert got.stderr.count("\n") == 1 and "is bound to site 'ELSEWHERE', not 'NOWAN'" in got.stderr, got.stderr

"""The computing element with the local backend: pilots forked on this machine run the jobs, each trace names the local
pilot that ran it, no process of a pilot shows the agent token, and removing a pilot mid-job ends the job cleanly."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest
from ce_support import ce_grid, shell_jdl

from gridpilot.ce.backend import FAILED, FINISHED


@pytest.fixture
def grid(tmp_path):
    with ce_grid(tmp_path / "grid") as g:
        yield g


def test_local_pilots_run_the_jobs_and_each_trace_names_its_pilot(grid):
    ids = [grid.user.submit(shell_jdl(f"echo job {i}")) for i in range(3)]
    f = grid.factory("local", max_running=2)
    first = f.cycle()
    assert not first.errors, first.errors
    assert len(first.submitted) == 2, "max_running bounds the pilots in the batch system"
    jobs = grid.wait_jobs(f, ids, {"DONE"}, timeout=120)
    assert [j["state"] for j in jobs] == ["DONE"] * 3
    names = {f"local:{p.batch_id}" for r in [first] for p in r.submitted}
    for j in jobs:
        m = re.search(r"batch job (local:\S+?)[;,]", grid.trace_text(j["id"]))
        assert m, grid.trace_text(j["id"])
        assert m.group(1).startswith("local:")
    assert any(re.search(rf"batch job {re.escape(n)}[;,]", grid.trace_text(j["id"])) for j in jobs for n in names)
    grid.drive(f, lambda: not f.pilots, 60, "pilots ended")
    assert f.ended[FINISHED] >= 2 and f.ended[FAILED] == 0


def test_the_agent_token_is_in_no_argv_and_no_environment_of_the_pilot(grid):
    job_id = grid.user.submit(shell_jdl("sleep 600"))
    f = grid.factory("local")
    grid.wait_jobs(f, [job_id], {"RUNNING"}, timeout=90)
    (pilot,) = f.pilots.values()
    token_file = pilot.directory / "agent.token"
    # The file: 0600, its owner's, holding a real token.
    st = token_file.stat()
    assert st.st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    from gridpilot.client import CentralClient

    me = CentralClient(grid.central.url, token, retries=0).whoami()
    assert (me["role"], me["site"], me["ce"]) == ("agent", f.site, f.ce)
    assert me["expires"] - me["issued"] <= f.s.wall_time + f.s.token_margin + 1, "short-lived: wall time + margin"
    procs = grid.marked_processes()
    assert len(procs) >= 4, "script, runner, agent, wrapper and payload should be running"
    payloads = []
    for p in procs:
        try:
            env, argv = p.environ(), p.cmdline()
        except psutil.Error:
            continue
        assert token not in " ".join(argv), f"the token is in the argv of {p.pid} {argv}"
        assert all(token not in v for v in env.values()), f"the token is in the environment of {p.pid} {argv}"
        if env.get("ALIEN_PROC_ID") == str(job_id):
            payloads.append(p)
            assert not any(k.startswith("GRIDPILOT_TOKEN") for k in env), f"payload {p.pid} sees the token file"
    assert payloads, "the payload was not among the pilot's processes"
    f.backend.remove(pilot.batch_id)
    job = grid.wait_jobs(f, [job_id], {"ERROR_E", "WAITING"}, timeout=90)[0]
    assert job["state"] == "ERROR_E"
    assert not grid.leftovers()
    assert not token_file.exists(), "the token file outlived its pilot"


def test_a_pilot_without_work_ends_on_its_own(grid):
    f = grid.factory("local")
    # No waiting job: the CE submits nothing.
    r = f.cycle()
    assert r.waiting and sum(r.waiting.values()) == 0 and not r.submitted
    # A pilot submitted by hand finds nothing and leaves after its empty matches.
    (shape,) = f.shapes
    p = f.submit_one(shape)
    grid.drive(f, lambda: not f.pilots, 60, "the idle pilot ended")
    assert f.ended[FINISHED] == 1, Path(p.directory / "pilot.out").read_text()

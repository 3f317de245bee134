"""`gridpilot resubmit` end to end: a real central, runner, JobAgent, JobWrapper and payload (tests/support/pilot.py).
The payload fails on its first attempt (exit 1: ERROR_E) and succeeds on the next, which it tells by
ALIEN_RESUBMISSION; the user resubmits it with the CLI, in a process of its own, and the job ends DONE with the
trace of both attempts. The CLI's refusals (a DONE job, a job that does not exist) are one line each and exit 1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import List

import orjson
from support.pilot import Pilot, shell_jdl

from gridpilot import cli_codes
from gridpilot.central.settings import DEFAULT_MAX_USER_RESUBMITS


def _resubmit(pilot: Pilot, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env["GRIDPILOT_TOKEN"] = pilot.grid.user_token
    return subprocess.run([sys.executable, "-m", "gridpilot", "resubmit", *args, "--url", pilot.grid.central.url],
                          env=env, capture_output=True, text=True, timeout=60)


def _states(pilot: Pilot, job_id: int) -> List[str]:
    return [s for _, s in pilot.states(job_id)]


def test_a_failed_job_resubmitted_with_the_cli_runs_again_and_ends_done(pilot: Pilot):
    # Exit 1 on the first two attempts (ALIEN_RESUBMISSION 0 and 1), 0 on the third. Each failed attempt uploads
    # and registers its log archive (OutputErrorE's default, log_archive.zip) at the same LFN, with other contents.
    job_id = pilot.submit(shell_jdl("echo attempt $ALIEN_RESUBMISSION; test $ALIEN_RESUBMISSION -ge 2"))
    user = pilot.grid.user.whoami()["subject"]
    for attempt in (0, 1):
        pilot.start(container_runtime="none", max_empty_matches=1)
        (job,) = pilot.wait_final([job_id], timeout=120)
        assert (job["state"], job["exit_code"], job["resubmission"]) == ("ERROR_E", 1, attempt), \
            pilot.describe(job_id)
        assert pilot.wait_runner_exit() == 0, pilot.runner_log()[-4000:]
        out = _resubmit(pilot, str(job_id))
        assert out.returncode == cli_codes.OK, out.stderr
        assert out.stdout == (f"job {job_id} WAITING again (was ERROR_E; resubmission {attempt + 1}, "
                              f"{attempt + 1} of {DEFAULT_MAX_USER_RESUBMITS} by users); 1 file(s) it registered removed "
                              "from the catalogue\n")
        assert pilot.job(job_id)["state"] == "WAITING"

    pilot.start(container_runtime="none", max_empty_matches=1)
    (job,) = pilot.wait_final([job_id], timeout=120)
    assert job["state"] == "DONE" and job["resubmission"] == 2 and job["exit_code"] == 0, pilot.describe(job_id)
    assert pilot.wait_runner_exit() == 0, pilot.runner_log()[-4000:]

    # Every attempt is in the one trace, the user's resubmissions between them.
    states = _states(pilot, job_id)
    assert states[0] == "WAITING" and states[-1] == "DONE", states
    assert [s for s in states if s in ("WAITING", "RUNNING", "ERROR_E", "DONE")] == \
        ["WAITING", "RUNNING", "ERROR_E"] * 1 + ["WAITING", "RUNNING", "ERROR_E", "WAITING", "RUNNING", "DONE"], states
    texts = [e["text"] for e in pilot.trace(job_id)]
    archive = f"{job['output_dir']}/log_archive.zip"
    # Each failed attempt registered its own archive: the one before was removed from the catalogue at the
    # resubmission (JAliEn's "Resubmit: removing output file"), so no registration met a conflict.
    assert texts.count(f"Registering: {archive}. Return status: true") == 2, pilot.describe(job_id)
    assert texts.count(f"Resubmit: removing output file: {archive}") == 2, pilot.describe(job_id)
    assert not any("file_conflict" in t or "Return status: false" in t for t in texts), pilot.describe(job_id)
    for n in (1, 2):
        assert f"WAITING: resubmitted by {user} from ERROR_E ({n} of {DEFAULT_MAX_USER_RESUBMITS}; attempt {n + 1})" \
            in texts, pilot.describe(job_id)

    # A DONE job is refused, naming its state; so is a job that does not exist; the rest of the ids are still tried.
    out = _resubmit(pilot, str(job_id), "99999")
    assert out.returncode == cli_codes.FAILED and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"job {job_id}: job {job_id} is DONE: only a job that ended without success (ERROR_*, EXPIRED, KILLED, "
        "FAULTY) can be resubmitted",
        "job 99999: no job 99999"]
    out = _resubmit(pilot, str(job_id), "--json")
    assert out.returncode == cli_codes.FAILED
    (answer,) = orjson.loads(out.stdout)
    assert answer["id"] == job_id and answer["error"]["status"] == 409
    assert answer["error"]["code"] == "not_resubmittable"
    assert pilot.job(job_id)["resubmission"] == 2


def _gridpilot(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    return subprocess.run([sys.executable, "-m", "gridpilot", *args], capture_output=True, text=True, timeout=120,
                          env={**clean, **env})


def test_bad_arguments_are_one_line_and_exit_usage():
    out = _gridpilot("resubmit", "seven")
    assert out.returncode == cli_codes.USAGE and out.stdout == ""
    assert out.stderr.splitlines() == ["gridpilot resubmit: argument ID: invalid int value: 'seven' (see `gridpilot "
                                       "resubmit --help`)"]
    out = _gridpilot("resubmit")
    assert out.returncode == cli_codes.USAGE and "the following arguments are required: ID" in out.stderr
    out = _gridpilot("central", "serve", "--max-user-resubmits", "1001")
    assert out.returncode == cli_codes.USAGE
    assert out.stderr.splitlines() == ["gridpilot central serve: argument --max-user-resubmits: 1001 is not in 0-1000 "
                                       "(see `gridpilot central serve --help`)"]


def test_an_unreachable_central_leaves_every_id_unreachable_and_exits_10():
    # A bound socket that does not listen: connecting to it is refused, whatever else the host runs.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        out = _gridpilot("resubmit", "5", "6", "--json", "--url", url, GRIDPILOT_TOKEN="not-checked")
    assert out.returncode == cli_codes.UNREACHABLE
    assert [(r["id"], r["error"]["code"]) for r in orjson.loads(out.stdout)] == [(5, "unreachable"), (6, "unreachable")]
    assert out.stderr.startswith(f"gridpilot: central at {url} unreachable")

"""The pilot when central refuses it (issue 15): a run of a job that central has given up (given back to the queue
and killed meanwhile) is not left running. Its reports are refused (logged, dropped: pilot/outbox.py), and its
agent, whose heartbeat central refuses for that job, kills it instead of running it to the end beside the job's
next run. A real central, runner, agent and wrapper; a proxy in front of central holds the job in its stage-in."""

from __future__ import annotations

import time

from support.central_proxy import CentralProxy
from support.pilot import STOPPED_OR_DONE, Pilot, shell_jdl


def test_a_run_central_gave_up_is_killed_not_left_running(pilot: Pilot, tmp_path):
    grid = pilot.grid
    data = tmp_path / "in.txt"
    data.write_text("input\n")
    grid.register_local_file(data, "/gridpilot/test/refusals/in.txt")
    job_id = pilot.submit(shell_jdl("cat in.txt", InputFile=["LF:/gridpilot/test/refusals/in.txt"]))
    # Central's catalogue answers 503 to lookups: the wrapper waits in its stage-in, the job STARTED.
    proxy = CentralProxy(grid.central.url, lambda method, path: 503 if method == "GET" and
                         path.startswith("/api/v1/catalogue/files") else None)
    try:
        pilot.start(cores=1, central_url=proxy.url)
        pilot.wait_state(job_id, ["STARTED"])
        deadline = time.monotonic() + 60
        while "waits for central" not in pilot.runner_log():
            assert time.monotonic() < deadline, pilot.runner_log()[-4000:]
            time.sleep(0.1)
        # An operator gives the job back (resubmission 1, the pilot's hold on it gone) and kills it.
        grid.admin.set_status(job_id, "WAITING", 0, message="given back by the operator")
        grid.admin.kill(job_id)
        deadline = time.monotonic() + 60
        while f"agent 0: job {job_id} ended" not in pilot.runner_log():
            assert time.monotonic() < deadline, f"the stale run was not ended:\n{pilot.runner_log()[-4000:]}"
            time.sleep(0.2)
        assert pilot.stop() in STOPPED_OR_DONE
    finally:
        proxy.close()
    log = pilot.runner_log()
    assert f"job {job_id}: central gave this run of the job up (its heartbeat was refused: job_not_found)" in log, log
    assert "gave up waiting for central" in log, "the wrapper's wait for the catalogue ended with the job"
    job = grid.user.get_job(job_id)
    assert (job["state"], job["resubmission"]) == ("KILLED", 1), pilot.describe(job_id)
    # Nothing of the stale run reached the job after it was given back: central refused each report.
    trace = pilot.trace(job_id)
    given_back = max(i for i, e in enumerate(trace) if e["text"].startswith("WAITING: resubmitted"))
    assert [e["text"] for e in trace[given_back + 1:] if e["key"] is not None] == [], pilot.describe(job_id)
    assert "central refused the KILLED report: dropped" in log, log
    pilot.assert_clean()

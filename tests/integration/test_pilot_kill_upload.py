"""A kill that lands while the job uploads registers nothing (issue 19): the pilot, not told of the kill yet, uploads
its outputs; central refuses their registration (409 job_killed), the JobWrapper stops and removes its copy, and the
job ends KILLED with no file of its in the catalogue. Real runner, agent, wrapper and payload against a real central.

Deterministic: the agent polls no control endpoint (kill_poll_interval 0) and heartbeats a minute apart, so it cannot
learn the kill before the upload; the payload writes its output and exits only once the kill is in."""

from __future__ import annotations

from support.pilot import STOPPED_OR_DONE, Pilot, shell_jdl

from gridpilot.pilot.staging import KILLED_AT_REGISTRATION


def test_a_kill_landing_while_the_job_uploads_registers_nothing(pilot: Pilot, tmp_path):
    gate = tmp_path / "gate"
    job_id = pilot.submit(shell_jdl(f"while [ ! -e {gate} ]; do sleep 0.2; done; echo result > result.txt; exit 0",
                                    Output=["result.txt"]))
    pilot.start(cores=1, heartbeat_interval=60.0, kill_poll_interval=0.0)
    pilot.wait_state(job_id, ["RUNNING"])
    answer = pilot.grid.user.kill(job_id)
    assert answer["kill_requested"] is True, answer
    gate.touch()
    (job,) = pilot.wait_final([job_id], timeout=60)
    assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), pilot.describe(job_id)
    text = pilot.trace_text(job_id)
    assert "Uploading: result.txt" in text, pilot.describe(job_id)
    assert "Return status: false" in text and "409 job_killed" in text, pilot.describe(job_id)
    assert KILLED_AT_REGISTRATION in text, pilot.describe(job_id)
    assert "copy NOT removed" not in text and "(copy removed)" in text, pilot.describe(job_id)
    assert pilot.grid.user.job_files(job_id)["files"] == [], pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()

"""A user's kill takes effect within seconds, not at the next heartbeat: the JobAgent polls central between its
heartbeats (kill_poll_interval, GET /jobs/{id}/control). And a kill never ends DONE, even when it races the
payload's successful end. Real runner, agent, wrapper and payload against a real central on SQLite."""

from __future__ import annotations

import time
from typing import Any, Dict

from support.pilot import STOPPED_OR_DONE, Pilot, payload_jdl, shell_jdl

import pytest

from gridpilot.tracefmt import state_of

KILL_LEARNED = "kill requested by central (kill requested)"


def wait_traced(pilot: Pilot, job_id: int, text: str, timeout: float = 60.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for entry in pilot.trace(job_id):
            if entry["text"] == text:
                return entry
        assert time.monotonic() < deadline, f"{text!r} not traced after {timeout:.0f} s\n{pilot.describe(job_id)}"
        time.sleep(0.1)


def test_a_kill_is_learned_within_5_s_with_a_60_s_heartbeat(pilot: Pilot):
    job_id = pilot.submit(payload_jdl("sleep", 120))
    # The default kill_poll_interval (3 s); a heartbeat a minute apart, as on a real site.
    pilot.start(cores=1, heartbeat_interval=60.0)
    pilot.wait_state(job_id, ["RUNNING"])
    t0 = time.time()
    out = pilot.user_command("kill", str(job_id), timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"job {job_id} (RUNNING): kill requested" in out.stdout
    # The agent's trace line is dated by the agent, on this host's clock: when it learned the kill.
    learned = wait_traced(pilot, job_id, KILL_LEARNED)
    assert learned["ts"] - t0 < 5.0, f"kill learned {learned['ts'] - t0:.2f} s after the call\n{pilot.describe(job_id)}"
    (job,) = pilot.wait_final([job_id], timeout=30)
    assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), pilot.describe(job_id)
    assert not pilot.job_processes(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


@pytest.mark.parametrize("poll", [0.0, None], ids=["no-poll", "poll"])
def test_a_kill_racing_the_payloads_success_never_ends_done(pilot: Pilot, tmp_path, poll):
    """The payload exits 0 just as the kill is requested. Without the poll (kill_poll_interval 0, a heartbeat a
    minute apart) the agent cannot learn the kill in time and reports DONE: central takes it as KILLED. With the
    poll, whichever comes first, the agent's KILLED or its DONE, the job ends KILLED."""
    gate = tmp_path / "gate"
    job_id = pilot.submit(shell_jdl(f"while [ ! -e {gate} ]; do sleep 0.2; done; exit 0"))
    pilot.start(cores=1, heartbeat_interval=60.0, kill_poll_interval=poll)
    pilot.wait_state(job_id, ["RUNNING"])
    gate.touch()
    answer = pilot.grid.user.kill(job_id)
    assert answer["kill_requested"] is True, answer
    (job,) = pilot.wait_final([job_id], timeout=60)
    assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), pilot.describe(job_id)
    states = [state_of(e["text"]) for e in pilot.trace(job_id) if e["category"] == "state"]
    assert "DONE" not in states, pilot.describe(job_id)
    if poll == 0.0:
        # The payload did end well, and its pilot said so: the DONE was taken as KILLED.
        assert "reported DONE after it" in (job["message"] or ""), pilot.describe(job_id)
        assert job["exit_code"] == 0, pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def test_polls_back_off_through_an_outage_and_a_kill_after_it_is_still_learned_early(pilot: Pilot):
    """A poll into an outage can hold the agent's loop up to the client's timeout: the polls double their wait while
    central is away (1, 2, 4, 8 s here), not every second; once central is back, a kill is learned at the next poll,
    long before the next heartbeat."""
    job_id = pilot.submit(payload_jdl("sleep", 300))
    pilot.start(cores=1, heartbeat_interval=60.0, kill_poll_interval=1.0)
    pilot.wait_state(job_id, ["RUNNING"])
    central = pilot.grid.central
    central.stop()
    missed = f"control poll for job {job_id} not delivered"

    def wait_missed(n: int) -> float:
        deadline = time.monotonic() + 60
        while pilot.runner_log().count(missed) < n:
            assert time.monotonic() < deadline, pilot.runner_log()[-4000:]
            time.sleep(0.05)
        return time.monotonic()

    first, third = wait_missed(1), wait_missed(3)
    central.start()
    # Polled every second, the third miss would come 2 s after the first; backing off, 2 + 4 s after it.
    assert third - first > 5.0, f"3 polls missed in {third - first:.1f} s: no backoff\n{pilot.runner_log()[-4000:]}"
    assert f"{missed} (3 in a row), the next in 8 s" in pilot.runner_log()
    t0 = time.time()
    assert pilot.grid.user.kill(job_id)["kill_requested"] is True
    learned = wait_traced(pilot, job_id, KILL_LEARNED)
    # The next poll is at most 8 s after the last missed one; the heartbeat would be 60 s after the job started.
    assert learned["ts"] - t0 < 20.0, pilot.describe(job_id)
    (job,) = pilot.wait_final([job_id], timeout=30)
    assert job["state"] == "KILLED", pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()

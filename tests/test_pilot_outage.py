"""Central goes away for 30 s while a job runs and ends: no state change is lost, they arrive in order once central
is back (the agent's outbox retries with backoff), and the trace says how long central was unreachable.

The one slow test of the pilot suite: the outage is the issue's 30 s. And a runner with nothing running rides out
an outage too: central being unreachable is not an empty match."""

from __future__ import annotations

import re
import time

from gridpilot import exitcodes
from pilot_support import STOPPED_OR_DONE, Pilot, payload_jdl

OUTAGE_S = 30.0


def test_central_outage_loses_no_state_change(pilot: Pilot):
    # The payload ends 8 s into the outage, so SAVING and DONE (and the traces around them) happen while central
    # is down. No output files: stage-out needs central's catalogue, which an outage rightly fails.
    job_id = pilot.submit(payload_jdl("sleep", 8))
    pilot.start(cores=1)
    pilot.wait_state(job_id, ["RUNNING"])
    central = pilot.grid.central
    url = central.url
    down_at = time.monotonic()
    down_wall = time.time()
    # Meanwhile the payload ends and the agent keeps its reports; it must not give up on the job.
    central.restart(down_s=OUTAGE_S)
    assert central.url == url
    assert pilot.runner.poll() is None, pilot.runner_log()[-4000:]
    (job,) = pilot.wait_final([job_id], timeout=90)
    back_after = time.monotonic() - down_at
    # The runner exits once its agent has delivered everything it held: then the trace is complete.
    assert pilot.stop() in STOPPED_OR_DONE
    assert (job["state"], job["exit_code"]) == ("DONE", 0), pilot.describe(job_id)
    dated = pilot.states(job_id)
    states = [s for _, s in dated]
    assert states == ["WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"], pilot.describe(job_id)
    # Dated when they happened on the node (about 8 s into the outage), not when central got them after it.
    for ts, name in dated[-2:]:
        assert down_wall < ts < down_wall + OUTAGE_S / 2, (name, ts - down_wall, pilot.describe(job_id))
    trace = [e["text"] for e in pilot.trace(job_id)]
    outage = [t for t in trace if t.startswith("errorConnecting: central was unreachable for")]
    assert len(outage) == 1, pilot.describe(job_id)
    seconds = int(re.search(r"for (\d+) s", outage[0]).group(1))
    # Measured from the first call that failed (a heartbeat, within 1 s) to the first one central answered.
    assert OUTAGE_S - 2 <= seconds <= back_after + 1, outage[0]
    for line in ("payload exited with 0", "cleanup: no process of the job is left", "cleanup: work directory deleted"):
        assert any(t.startswith(line) for t in trace), (line, pilot.describe(job_id))
    pilot.assert_clean()


def test_an_idle_runner_rides_out_an_outage_longer_than_its_empty_matches(pilot: Pilot):
    """Central refuses connections for 20 s while the runner is matching with nothing running: far longer than its
    run of empty matches (6 tries, at most 1 s apart). Unreachable is not "no work": the runner neither stops nor
    exits; it backs off, says once that central is down and once that it is back, and runs the job submitted then."""
    pilot.start(cores=1, max_empty_matches=6)
    log = pilot.runner_log
    deadline = time.monotonic() + 60
    while "agent 0: nomatch" not in log():
        assert time.monotonic() < deadline and pilot.runner.poll() is None, log()[-4000:]
        time.sleep(0.05)
    central = pilot.grid.central
    central.restart(down_s=20.0)
    # Submitted the moment central answers again: the runner, still there, finds it at its next try.
    job_id = pilot.submit(payload_jdl("sleep", 0))
    assert pilot.runner.poll() is None, f"the runner exited with {pilot.runner.returncode}:\n{log()[-4000:]}"
    (job,) = pilot.wait_final([job_id], timeout=60)
    assert (job["state"], job["exit_code"]) == ("DONE", 0), pilot.describe(job_id)
    text = log()
    assert text.count(f"central {central.url} unreachable:") == 1, text
    assert "matching paused and retried with backoff; running jobs go on" in text, text
    back = re.findall(rf"central {re.escape(central.url)} answers again, after (\d+) s unreachable", text)
    assert len(back) == 1 and 15 <= int(back[0]) <= 40, text
    assert "agent 1: unreachable" not in text, "one line per change of central's state, not one per try"
    assert "empty matches in a row" not in text.split("answers again")[0], text
    # With the queue empty again the runner leaves on its own, as it should: ran jobs, exit OK.
    assert pilot.wait_runner_exit(60) == exitcodes.OK, text[-4000:]
    pilot.assert_clean()

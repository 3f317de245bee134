"""Central goes away for 30 s while a job runs and ends: no state change is lost, they arrive in order once central
is back (the agent's outbox retries with backoff), and the trace says how long central was unreachable.

The one slow test of the pilot suite: the outage is the issue's 30 s."""

from __future__ import annotations

import re
import time

from pilot_support import Pilot, payload_jdl

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
    assert pilot.stop() == 0
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

"""Central goes away for 30 s while a job runs and ends: no state change is lost, they arrive in order once central
is back (the agent's outbox retries with backoff), and the trace says how long central was unreachable.

The slow tests of the pilot suite: the outage is the issues' 30 s. A job whose output waits for central's catalogue
through the outage still ends DONE with its output registered once (issue 15); one killed while it waits leaves no
copy behind. And a runner with nothing running rides out an outage too: central being unreachable is not an empty
match."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import List

from support.central_proxy import CentralProxy
from support.pilot import STOPPED_OR_DONE, Pilot, payload_jdl, shell_jdl

from gridpilot import exitcodes
from gridpilot.errors import CentralError

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
    entries = pilot.trace(job_id)
    trace = [e["text"] for e in entries]
    outage = [e for e in entries if e["text"].startswith("errorConnecting: central was unreachable for")]
    assert len(outage) == 1, pilot.describe(job_id)
    seconds = int(re.search(r"for (\d+) s", outage[0]["text"]).group(1))
    # Measured from the first call that failed (a heartbeat, within 1 s) to the first one central answered.
    assert OUTAGE_S - 2 <= seconds <= back_after + 1, outage[0]
    # Dated on the node when the outage began, not when the line could be delivered after it (issue 15): the trace
    # shows the gap where it was, before the lines held back through it. (`ts` is central's time of receipt; the
    # node's time is `reported_ts`.)
    began = outage[0]["reported_ts"]
    assert down_wall <= began < down_wall + OUTAGE_S / 2, (began - down_wall, pilot.describe(job_id))
    held = [e for e in entries if e["text"].startswith("Execution completed. Time spent: ")]
    assert began < held[0]["reported_ts"], pilot.describe(job_id)
    for line in ("Execution completed. Time spent: ", "cleanup: no process of the job is left", "Deleting directory "):
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


def se_files(pilot: Pilot) -> List[Path]:
    """Every file on the grid's file:// storage element."""
    return sorted(f for f in (pilot.grid.state_dir / "se").rglob("*") if f.is_file())


def wait_logged(pilot: Pilot, text: str, timeout: float = 60.0) -> None:
    """Until the runner's log (where the agent logs every trace line it queues) holds `text`."""
    deadline = time.monotonic() + timeout
    while text not in pilot.runner_log():
        assert time.monotonic() < deadline, f"{text!r} not logged after {timeout:.0f} s:\n{pilot.runner_log()[-4000:]}"
        assert pilot.runner.poll() is None, pilot.runner_log()[-4000:]
        time.sleep(0.1)


def gated_output_jdl(gate: Path, **keys: object) -> str:
    """A job that waits for the gate file, then writes out.txt (its one output) and exits 0."""
    return shell_jdl(f"while [ ! -e {gate} ]; do sleep 0.2; done; echo the result > out.txt",
                     OutputFile=["out.txt@disk=1"], **keys)


def test_an_output_registered_through_a_30_s_outage_ends_done_with_it_registered_once(pilot: Pilot, tmp_path):
    """Issue 15: the payload ends while central is down, so the wrapper's upload goes through (the storage element
    is up) and its registration in central's catalogue meets the outage. It waits, with backoff, the copy kept on
    the storage element, and registers it when central is back: DONE, not ERROR_SV with exit code 0."""
    gate = tmp_path / "gate"
    job_id = pilot.submit(gated_output_jdl(gate))
    pilot.start(cores=1)
    pilot.wait_state(job_id, ["RUNNING"])
    central = pilot.grid.central
    central.stop()
    down_wall = time.time()
    gate.touch()
    # The payload ended and its output went up while central was down: the registration is what waits now.
    wait_logged(pilot, f"job {job_id}: Execution completed. Time spent: ")
    time.sleep(max(0.0, down_wall + OUTAGE_S - time.time()))
    central.start()
    (job,) = pilot.wait_final([job_id], timeout=120)
    assert pilot.stop() in STOPPED_OR_DONE
    assert (job["state"], job["exit_code"]) == ("DONE", 0), pilot.describe(job_id)
    trace = [e["text"] for e in pilot.trace(job_id)]
    waited = [t for t in trace if "registration of" in t and "waits for central" in t]
    assert len(waited) == 1, pilot.describe(job_id)
    entry = pilot.grid.user.lookup_file(f"{job['output_dir']}/out.txt")
    (replica,) = entry["replicas"]
    # Registered once, the copy on the storage element is the one registered, and it reads back as written.
    (copy,) = se_files(pilot)
    assert replica["pfn"] == f"file://{copy}"
    got = tmp_path / "got.txt"
    pilot.grid.se.get(replica["pfn"], got)
    assert got.read_bytes() == b"the result\n" and entry["size"] == len(b"the result\n")
    pilot.assert_clean()


def test_a_job_killed_while_its_output_waits_for_the_catalogue_ends_killed_and_leaves_no_copy(pilot: Pilot, tmp_path):
    """Central answers everything but registrations (503 from the proxy in front of it: its catalogue is down), so
    the wrapper waits with its uploaded copy; the user kills the job meanwhile. Central has given the job up: the
    wrapper stops waiting, removes the copy it could not register, and the job ends KILLED."""
    gate = tmp_path / "gate"
    job_id = pilot.submit(gated_output_jdl(gate))
    refuse = {"on": False}

    def rule(method: str, path: str):
        return 503 if refuse["on"] and method == "POST" and path.startswith("/api/v1/catalogue/files") else None

    proxy = CentralProxy(pilot.grid.central.url, rule)
    try:
        pilot.start(cores=1, central_url=proxy.url)
        pilot.wait_state(job_id, ["RUNNING"])
        refuse["on"] = True
        gate.touch()
        wait_logged(pilot, "waits for central")
        assert len(se_files(pilot)) == 1, "the uploaded copy is kept while its registration waits"
        pilot.grid.user.kill(job_id)
        (job,) = pilot.wait_final([job_id], timeout=120)
        assert pilot.stop() in STOPPED_OR_DONE
    finally:
        proxy.close()
    assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), pilot.describe(job_id)
    assert proxy.answered("POST", "/catalogue/files", 503) >= 1
    assert se_files(pilot) == [], "the copy that was never registered is removed"
    try:
        pilot.grid.user.lookup_file(f"{job['output_dir']}/out.txt")
        raise AssertionError("the output of a killed job is in the catalogue")
    except CentralError as e:
        assert e.status == 404
    text = pilot.trace_text(job_id)
    assert "(copy removed)" in text, text
    pilot.assert_clean()

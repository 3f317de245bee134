"""Heartbeat 2.0 end to end: the JobRunner's watchdog notices a JobAgent's monitoring loop that stopped turning (the
agent stopped for real with SIGSTOP, as a node swapping itself to death or a hung filesystem stops it), traces it to
the job and reports it to central, which marks the node nodeBad; a waiting job is then not matched there, the
runner stops (NODE_UNUSABLE), and `gridpilot central nodes --clear` lets the node take work again. Real runner,
agents, wrappers and payloads against a real central."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Callable, Iterator, List

import orjson
import psutil
import pytest
from support.metrics import Exposition
from support.pilot import Pilot, payload_jdl, pilot_grid

from gridpilot import exitcodes

HOST = "watchdog-test-node"
#: The watchdog's limit here: 6 intervals of 0.5 s.
WATCHDOG = dict(watchdog_interval=0.5, watchdog_stall_intervals=6, node=HOST, cores=1)


@pytest.fixture
def pilot() -> Iterator[Pilot]:
    # One counted failure makes a node bad, so one real stall shows the whole path.
    with pilot_grid(central={"node_bad_after": 1}) as p:
        yield p


def agent_process(pilot: Pilot) -> psutil.Process:
    (a,) = [p for p in pilot.marked_processes() if p.cmdline()[1:3] == ["-m", "gridpilot.pilot.agent"]]
    return a


def wait_for(what: str, found: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s:\n{describe()}")
        time.sleep(0.2)


def lines(pilot: Pilot, job_id: int, start: str) -> List[str]:
    return [e["text"] for e in pilot.trace(job_id) if e["text"].startswith(start)]


def central_nodes(pilot: Pilot, *args: str) -> subprocess.CompletedProcess:
    token = pilot.grid.state_dir / "admin.token"
    token.write_text(pilot.grid.central.admin_token)
    return subprocess.run([sys.executable, "-m", "gridpilot", "central", "nodes", *args, "--url",
                           pilot.grid.central.url, "--token-file", str(token)],
                          capture_output=True, text=True, timeout=60)


def bad_nodes_metric(pilot: Pilot) -> float:
    return Exposition(pilot.grid.admin.metrics()).value("gridpilot_nodes_bad", site=pilot.grid.site)


def test_a_stalled_monitoring_loop_is_traced_and_makes_the_node_bad_until_cleared(pilot: Pilot):
    first = pilot.submit(payload_jdl("sleep", 6))
    pilot.start(**WATCHDOG)
    pilot.wait_state(first, ["RUNNING"])
    agent = agent_process(pilot)
    stopped_at = time.monotonic()
    agent.send_signal(signal.SIGSTOP)
    try:
        wait_for("stall line in the trace", lambda: bool(lines(pilot, first, "the monitoring loop has been stalled")),
                 60, lambda: pilot.describe(first))
    finally:
        agent.send_signal(signal.SIGCONT)
    stalled = time.monotonic() - stopped_at
    (line,) = lines(pilot, first, "the monitoring loop has been stalled")
    seconds = int(line.split("stalled for ")[1].split(" s")[0])
    assert 3 <= seconds <= stalled + 1, line
    assert "(the JobRunner's watchdog allows 3 s: 6 intervals of 0.5 s)" in line
    wait_for("line saying the loop runs again",
             lambda: bool(lines(pilot, first, "the monitoring loop is running again after a stall of")), 60,
             lambda: pilot.describe(first))
    # The job itself was not harmed: the agent picked up where it stopped.
    (job,) = pilot.wait_final([first], timeout=90)
    assert job["state"] == "DONE", pilot.describe(first)

    (node,) = pilot.grid.admin.nodes(bad=True)["nodes"]
    assert node["host"] == HOST and node["site"] == pilot.grid.site and node["failures_by_kind"] == {"stall": 1}
    assert "1 failures within 3600 s (1 stall)" in node["bad_reason"]
    assert bad_nodes_metric(pilot) == 1
    # A job waiting now is not matched to the bad node: the runner is refused, says why, and stops.
    second = pilot.submit(payload_jdl("echo"))
    assert pilot.wait_runner_exit(timeout=90) == exitcodes.NODE_UNUSABLE
    log = pilot.runner_log()
    assert f"central refuses this node work: central answered 409 node_bad: node {HOST} is nodeBad at central" in log
    assert pilot.job(second)["state"] == "WAITING"

    listed = central_nodes(pilot, "--bad")
    assert listed.returncode == 0, listed.stderr
    assert HOST in listed.stdout and "nodeBad since" in listed.stdout and "1 (1 stall)" in listed.stdout
    cleared = central_nodes(pilot, "--clear", HOST)
    assert cleared.returncode == 0, cleared.stderr
    assert f"node {HOST} cleared by admin (was nodeBad: 1 failures" in cleared.stdout
    as_json = orjson.loads(central_nodes(pilot, "--json").stdout)
    assert [(n["host"], n["bad"], n["failures"]) for n in as_json["nodes"]] == [(HOST, False, 0)]
    assert bad_nodes_metric(pilot) == 0

    pilot.start(**WATCHDOG)
    (job,) = pilot.wait_final([second], timeout=90)
    assert job["state"] == "DONE", pilot.describe(second)
    assert job["node"] == HOST
    assert pilot.stop() in (exitcodes.STOPPED, exitcodes.OK)
    pilot.assert_clean()


def test_a_loop_that_keeps_turning_is_not_reported(pilot: Pilot):
    """The same watchdog over a job that runs normally (a payload that ends on SIGTERM after a kill, so the loop
    also goes through a kill's wait): no stall, nothing counted against the node."""
    job_id = pilot.submit(payload_jdl("sleep", 4))
    pilot.start(**WATCHDOG)
    (job,) = pilot.wait_final([job_id], timeout=90)
    assert job["state"] == "DONE", pilot.describe(job_id)
    assert not lines(pilot, job_id, "the monitoring loop"), pilot.describe(job_id)
    assert pilot.grid.admin.nodes(bad=True)["nodes"] == []
    assert pilot.stop() in (exitcodes.STOPPED, exitcodes.OK)


def test_an_outage_the_agent_rode_out_is_counted_against_the_node_once_central_is_back(pilot: Pilot):
    """Central refuses connections for 8 s while a job runs: the agent's errorConnecting line goes to the job's
    trace, and its runner reports the outage to central as a node failure once central answers again. Only this host
    saw it (no other host reported one at the same time), so it counts: with one failure enough, the node is bad."""
    job_id = pilot.submit(payload_jdl("sleep", 5))
    pilot.start(**WATCHDOG)
    pilot.wait_state(job_id, ["RUNNING"])
    pilot.grid.central.restart(down_s=8.0)
    (job,) = pilot.wait_final([job_id], timeout=90)
    assert job["state"] == "DONE", pilot.describe(job_id)
    (outage,) = lines(pilot, job_id, "errorConnecting: central was unreachable for")

    def counted() -> bool:
        return bool(pilot.grid.admin.nodes(bad=True)["nodes"])

    wait_for("node failure at central", counted, 60, lambda: pilot.describe(job_id))
    (node,) = pilot.grid.admin.nodes()["nodes"]
    assert node["host"] == HOST and node["failures_by_kind"] == {"error_connecting": 1}, node
    assert "central was unreachable for" in pilot.runner_log()
    # The watchdog did not take the outage for a stall: the loop kept turning while its reports waited.
    assert not lines(pilot, job_id, "the monitoring loop"), pilot.describe(job_id)
    assert pilot.wait_runner_exit(timeout=90) in (exitcodes.NODE_UNUSABLE, exitcodes.OK)


def test_a_node_made_bad_while_a_job_runs_lets_it_finish_and_takes_no_more(pilot: Pilot):
    """Failures reported directly (as a CE or an operator may) make the node bad while a job runs in a two-core
    slot: the runner's next match is refused, the running job still ends DONE, then the runner exits NODE_UNUSABLE
    and the other job waits for another node."""
    running = pilot.submit(payload_jdl("sleep", 6))
    pilot.start(**{**WATCHDOG, "cores": 2})
    pilot.wait_state(running, ["RUNNING"])
    answer = pilot.grid.admin.report_node_event("error_connecting", 30, host=HOST, detail="seen by the test")
    assert answer["counted"] is True and answer["bad"] is True, answer
    waiting = pilot.submit(payload_jdl("echo"))
    assert pilot.wait_runner_exit(timeout=90) == exitcodes.NODE_UNUSABLE
    assert pilot.job(running)["state"] == "DONE", pilot.describe(running)
    assert pilot.job(waiting)["state"] == "WAITING"
    assert "the jobs running here finish, then the runner exits" in pilot.runner_log()
    pilot.assert_clean()

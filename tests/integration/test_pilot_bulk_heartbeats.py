"""A JobRunner heartbeats and polls central once for all of its jobs (pilot/bulkbeats.py, pilot/runnerlink.py), its
agents' trace lines are coalesced, and an agent whose runner is gone or older reports on its own. Real runner,
agents, wrappers and payloads against a real central on SQLite; requests counted by central's per-route metrics."""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, List

from support.metrics import Exposition
from support.pilot import STOPPED_OR_DONE, Pilot, payload_jdl, pilot_grid

KILL_LEARNED = "kill requested by central (kill requested)"
CONTROL_ONE = "/api/v1/jobs/{job_id}/control"
TRACE_ONE = "/api/v1/jobs/{job_id}/trace"


def requests(pilot: Pilot) -> Dict[str, float]:
    """Requests central served so far, per method and route template (all statuses), and the heartbeat counters."""
    m = Exposition(pilot.grid.admin.metrics())
    out: Dict[str, float] = {}
    for labels in m.labelled("gridpilot_http_requests_total"):
        key = f"{labels['method']} {labels['route']}"
        out[key] = out.get(key, 0.0) + m.value("gridpilot_http_requests_total", **labels)
    out["heartbeat requests"] = m.get("gridpilot_heartbeat_requests_total") or 0.0
    out["heartbeats"] = m.get("gridpilot_heartbeats_total") or 0.0
    return out


def delta(after: Dict[str, float], before: Dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def wait_until(check, what: str, timeout: float = 90.0, describe=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} not seen after {timeout:.0f} s\n{describe()}"
        time.sleep(0.2)


def more(pilot: Pilot, since: Dict[str, float], key: str, n: int, what: str) -> Dict[str, float]:
    """The requests counted once `key` has grown by `n` since `since` (waited for as wait_until waits)."""
    return wait_until(lambda: (lambda r: r if delta(r, since, key) >= n else None)(requests(pilot)), what,
                      describe=pilot.runner_log)


def traced(pilot: Pilot, job_id: int, text: str):
    return next((e for e in pilot.trace(job_id) if e["text"] == text), None)


def test_one_heartbeat_and_one_poll_for_all_jobs_and_a_kill_reaches_only_its_job(pilot: Pilot):
    ids: List[int] = [pilot.submit(payload_jdl("sleep", 300)) for _ in range(4)]
    interval, poll = 4.0, 1.0
    pilot.start(cores=4, heartbeat_interval=interval, kill_poll_interval=poll)
    for job_id in ids:
        pilot.wait_state(job_id, ["RUNNING"], timeout=120)
    # Every agent has handed the runner its run: a heartbeat request carrying all four jobs.
    first = requests(pilot)
    wait_until(lambda: delta(requests(pilot), first, "heartbeat requests") >= 1, "a bulk heartbeat",
               describe=pilot.runner_log)
    before = requests(pilot)
    t0 = time.monotonic()
    after = more(pilot, before, "heartbeat requests", 3, "three more bulk heartbeats")
    elapsed = time.monotonic() - t0
    beats = delta(after, before, "heartbeat requests")
    # Each heartbeat request carries the four jobs (central counts one heartbeat per job it recorded) ...
    assert delta(after, before, "heartbeats") == 4 * beats, (after, before)
    assert delta(after, before, "POST /api/v1/heartbeats") == beats
    # ... and they come one per interval, not one per job and interval (that would be 4 times as many).
    assert beats <= elapsed / interval + 2, f"{beats} heartbeat requests in {elapsed:.1f} s"
    # One control poll per poll interval for all of them; no agent polls on its own.
    polls = delta(after, before, "POST /api/v1/control")
    assert 1 <= polls <= elapsed / poll + 2, f"{polls} control polls in {elapsed:.1f} s"
    assert delta(after, first, f"GET {CONTROL_ONE}") == 0
    # A kill of one job reaches that job only, within the bound of the per-job polls (test_pilot_kill_latency.py).
    victim, *others = ids
    t_kill = time.time()
    assert pilot.grid.user.kill(victim)["kill_requested"] is True
    learned = wait_until(lambda: traced(pilot, victim, KILL_LEARNED), "the kill",
                         describe=lambda: pilot.describe(victim))
    assert learned["ts"] - t_kill < 5.0, pilot.describe(victim)
    (job,) = pilot.wait_final([victim], timeout=60)
    assert job["state"] == "KILLED", pilot.describe(victim)
    # The others run on, untouched, and still beat: two more heartbeats carry the three of them.
    mid = requests(pilot)
    later = more(pilot, mid, "heartbeat requests", 2, "heartbeats after the kill")
    assert delta(later, mid, "heartbeats") == 3 * delta(later, mid, "heartbeat requests")
    for job_id in others:
        assert pilot.job(job_id)["state"] == "RUNNING", pilot.describe(job_id)
        assert traced(pilot, job_id, KILL_LEARNED) is None, pilot.describe(job_id)
    # Coalesced trace lines keep their order: the agent's lines of the killed job in the order it made them (their
    # keys count up), and fewer trace requests than lines.
    agent_lines = [e for e in pilot.trace(victim) if e["category"] in ("trace", "proc", "usage", "procfmt")
                   and str(e.get("key") or "").count(".") == 2]
    numbers = [int(e["key"].rsplit(".", 1)[1]) for e in agent_lines]
    assert numbers == sorted(numbers) and len(numbers) > 10, pilot.describe(victim)
    texts = [e["text"] for e in pilot.trace(victim)]
    assert texts.index("Starting JobWrapper") < texts.index("JobWrapper started") < texts.index(KILL_LEARNED)
    final = requests(pilot)
    assert delta(final, {}, f"POST {TRACE_ONE}") < len(agent_lines) * 4 / 2, "trace lines not coalesced"
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def test_an_agent_whose_runner_is_gone_reports_and_polls_on_its_own(pilot: Pilot):
    job_id = pilot.submit(payload_jdl("sleep", 300))
    # No slot cgroups: the runner that is killed here cannot remove its tree.
    runner = pilot.start(cores=1, heartbeat_interval=4.0, kill_poll_interval=1.0, cgroups="off")
    pilot.wait_state(job_id, ["RUNNING"], timeout=120)
    wait_until(lambda: "agent 0: job" in pilot.runner_log() and requests(pilot).get("heartbeat requests"),
               "the runner's first bulk heartbeat", describe=pilot.runner_log)
    os.kill(runner.pid, signal.SIGKILL)
    assert pilot.wait_runner_exit(timeout=60) == -signal.SIGKILL
    # The agent sees its link close and sends its own heartbeats and per-job polls.
    wait_until(lambda: "the runner no longer relays heartbeats (its end of the link closed)" in pilot.runner_log(),
               "the agent's fallback", describe=pilot.runner_log)
    before = requests(pilot)
    wait_until(lambda: delta(requests(pilot), before, f"GET {CONTROL_ONE}") >= 2, "the agent's own polls",
               describe=pilot.runner_log)
    t_kill = time.time()
    assert pilot.grid.user.kill(job_id)["kill_requested"] is True
    learned = wait_until(lambda: traced(pilot, job_id, KILL_LEARNED), "the kill", describe=lambda: pilot.describe(job_id))
    assert learned["ts"] - t_kill < 5.0, pilot.describe(job_id)
    (job,) = pilot.wait_final([job_id], timeout=60)
    assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), pilot.describe(job_id)
    pilot.assert_clean()


def test_a_runner_without_bulk_heartbeats_leaves_each_agent_to_its_own(pilot: Pilot):
    """bulk_heartbeats = false: the runner closes the agent's stdin after its settings, as runners before the bulk
    heartbeats did, and each agent heartbeats and polls for its job itself."""
    ids = [pilot.submit(payload_jdl("sleep", 300)) for _ in range(2)]
    pilot.start(cores=2, heartbeat_interval=4.0, kill_poll_interval=1.0, bulk_heartbeats=False)
    for job_id in ids:
        pilot.wait_state(job_id, ["RUNNING"], timeout=120)
    before = requests(pilot)
    after = wait_until(lambda: (lambda r: r if delta(r, before, f"GET {CONTROL_ONE}") >= 4
                                and delta(r, before, "heartbeat requests") >= 2 else None)(requests(pilot)),
                       "the agents' own polls and heartbeats", describe=pilot.runner_log)
    assert delta(after, before, "POST /api/v1/control") == 0
    # One job per heartbeat request.
    assert delta(after, before, "heartbeats") == delta(after, before, "heartbeat requests")
    victim = ids[0]
    t_kill = time.time()
    pilot.grid.user.kill(victim)
    learned = wait_until(lambda: traced(pilot, victim, KILL_LEARNED), "the kill", describe=lambda: pilot.describe(victim))
    assert learned["ts"] - t_kill < 5.0, pilot.describe(victim)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def test_the_runner_polls_at_centrals_pace():
    """Central paces the polls (central/pacing.py): at 0.125 polls a second for the grid, its one runner holding jobs
    is told 8 s, and polls every 8 s instead of its own 1 s; a kill still reaches its job, within that pace."""
    with pilot_grid(central={"control_poll_rate": 0.125}) as pilot:
        ids = [pilot.submit(payload_jdl("sleep", 300)) for _ in range(2)]
        pilot.start(cores=2, heartbeat_interval=60.0, kill_poll_interval=1.0)
        for job_id in ids:
            pilot.wait_state(job_id, ["RUNNING"], timeout=120)
        first = requests(pilot)
        wait_until(lambda: delta(requests(pilot), first, "POST /api/v1/control") >= 1, "a bulk control poll",
                   describe=pilot.runner_log)
        before = requests(pilot)
        t0 = time.monotonic()
        after = more(pilot, before, "POST /api/v1/control", 2, "two more control polls")
        elapsed = time.monotonic() - t0
        # Two polls 8 s apart take at least 8 s (at the runner's own 1 s they would take ~2 s), and the polls
        # counted on the way are as few as the pace makes them.
        assert elapsed >= 8.0 - 1.0, f"two polls in {elapsed:.1f} s"
        assert delta(after, before, "POST /api/v1/control") <= elapsed / 8.0 + 2
        victim = ids[0]
        t_kill = time.time()
        pilot.grid.user.kill(victim)
        learned = wait_until(lambda: traced(pilot, victim, KILL_LEARNED), "the kill",
                             describe=lambda: pilot.describe(victim))
        assert learned["ts"] - t_kill < 8.0 + 5.0, pilot.describe(victim)
        pilot.grid.user.kill(ids[1])
        pilot.wait_final(ids, timeout=60)
        assert pilot.stop() in STOPPED_OR_DONE

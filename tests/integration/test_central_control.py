"""The running job's control poll (GET /jobs/{id}/control, central/control.py) and the rule that a job whose kill
was requested never ends DONE, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import pytest
from support.central import CE, SITE, expect_error, jdl, run_through, site_map, start_world

from gridpilot.tracefmt import state_of


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def kills(answer):
    return [(c["job_id"], c["command"], c["reason"]) for c in answer["commands"]]


def test_the_poll_answers_a_kill_as_the_heartbeat_does_and_writes_nothing(world):
    alice = world.user("alice")
    jid = alice.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING")
    before = world.admin.get_job(jid)
    # A small grid's pace is none: the pilot's own interval (central/pacing.py).
    assert agent.control(jid, 0) == {"commands": [], "rejected": [], "poll_after": 0.0}
    after = world.admin.get_job(jid)
    assert (after["updated"], after["heartbeat"]) == (before["updated"], before["heartbeat"]), "a poll writes nothing"
    alice.kill(jid)
    assert kills(agent.control(jid, 0)) == [(jid, "kill", "kill requested")]
    # The CE of the job's site and CE may ask too, as it may send the job's heartbeats.
    assert kills(world.ce("ce1", SITE, CE).control(jid, 0)) == [(jid, "kill", "kill requested")]
    # Another run of the job: central gave this one up.
    answer = agent.control(jid, 1)
    assert answer["rejected"] == [{"job_id": jid, "code": "stale_resubmission"}]
    assert kills(answer) == [(jid, "kill", "stale resubmission")]
    agent.set_status(jid, "KILLED", 0)
    assert kills(agent.control(jid, 0)) == [(jid, "kill", "job is KILLED")]


def test_the_poll_tells_nothing_to_whom_it_does_not_concern(world):
    alice = world.user("alice")
    jid = alice.submit(jdl())
    agent = world.agent("agent1")
    agent.match(site_map())
    # Another agent, even of the same site and CE, does not hold the job: as absent, as for GET /jobs/{id}.
    assert world.agent("agent2").control(jid, 0) == {"commands": [], "poll_after": 0.0,
                                                     "rejected": [{"job_id": jid, "code": "job_not_found"}]}
    # The CE of another CE at the site sees the job, and may not poll for it.
    other_ce = world.ce("ce2", site=SITE, ce=CE + "-2")
    assert other_ce.control(jid, 0)["rejected"] == [{"job_id": jid, "code": "forbidden"}]
    assert agent.control(jid + 1000, 0)["rejected"] == [{"job_id": jid + 1000, "code": "job_not_found"}]
    with expect_error(403):
        alice.control(jid, 0)


@pytest.mark.parametrize("raw", ["", "x", "-1", "2147483648", "1" * 400])
def test_a_bad_resubmission_is_a_400_naming_it(world, raw):
    jid = world.user().submit(jdl())
    agent = world.agent()
    agent.match(site_map())
    with expect_error(400) as info:
        agent.request("GET", f"/api/v1/jobs/{jid}/control", query={"resubmission": raw} if raw else None)
    assert "resubmission" in info.value.message


@pytest.mark.parametrize("reported", ["DONE", "DONE_WARN"])
def test_a_done_after_the_kill_request_ends_killed(world, reported):
    """The payload ends well just as the user kills the job, before its pilot learns the kill: the pilot reports
    DONE, central takes it as KILLED (ALICE keeps the DONE)."""
    alice = world.user("alice")
    jid = alice.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING", "SAVING")
    alice.kill(jid)
    out = agent.set_status(jid, reported, 0, exit_code=0)
    assert out["state"] == "KILLED"
    got = alice.get_job(jid)
    assert (got["state"], got["kill_reason"], got["exit_code"]) == ("KILLED", "KILLED", 0)
    assert f"reported {reported} after it" in got["message"]
    states = [state_of(e["text"]) for e in alice.trace(jid) if e["category"] == "state"]
    assert states[-1] == "KILLED" and "DONE" not in states
    # A repeat of the DONE (its answer lost) is refused as for any ended job, not taken.
    with expect_error(409, "already_final"):
        agent.set_status(jid, reported, 0, exit_code=0)


def test_a_done_without_a_kill_request_stays_done(world):
    jid = world.user().submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING", "SAVING")
    assert agent.set_status(jid, "DONE", 0, exit_code=0)["state"] == "DONE"

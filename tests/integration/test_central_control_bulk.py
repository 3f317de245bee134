"""The bulk control poll (POST /api/v1/control, central/control.py control_many): one request for all of a pilot's
jobs, each run answered as the per-job poll answers it, its bounds, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import pytest
from support.central import CE, SITE, expect_error, jdl, run_through, site_map, start_world

API = "/api/v1"


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def poll(client, runs):
    return client.request("POST", f"{API}/control", body={"jobs": [{"job_id": j, "resubmission": r}
                                                                    for j, r in runs]})[1]


def test_each_run_is_answered_as_its_own_poll_answers_it(world):
    alice = world.user("alice")
    ids = [alice.submit(jdl()) for _ in range(5)]
    agent = world.agent()
    for _ in ids:
        run_through(agent, agent.match(site_map()), "STARTED", "RUNNING")
    quiet, killed, ended, stale, spied = ids
    alice.kill(killed)
    agent.set_status(ended, "SAVING", 0)
    agent.set_status(ended, "DONE", 0, exit_code=0)
    rid = alice.request("POST", f"{API}/jobs/{spied}/spy", body={"what": "stdout", "lines": 5})[1]["id"]
    before = world.admin.get_job(quiet)
    runs = [(quiet, 0), (killed, 0), (ended, 0), (stale, 1), (spied, 0), (ids[-1] + 1000, 0)]
    answer = poll(agent, runs)
    # The same answer, item by item, as the per-job GET gives (which the pilots older than the bulk poll use).
    singles = [agent.control(j, r) for j, r in runs]
    assert answer == {"commands": [c for s in singles for c in s["commands"]],
                      "rejected": [x for s in singles for x in s["rejected"]], "poll_after": 0.0}
    assert answer["rejected"] == [{"job_id": stale, "code": "stale_resubmission"},
                                  {"job_id": ids[-1] + 1000, "code": "job_not_found"}]
    assert [(c["job_id"], c["command"], c.get("reason"), c.get("request")) for c in answer["commands"]] == [
        (killed, "kill", "kill requested", None), (ended, "kill", "job is DONE", None),
        (stale, "kill", "stale resubmission", None), (spied, "spy", None, rid)]
    after = world.admin.get_job(quiet)
    assert (after["updated"], after["heartbeat"]) == (before["updated"], before["heartbeat"]), "a poll writes nothing"
    # The client's method says the same.
    assert agent.control_many([{"job_id": j, "resubmission": r} for j, r in runs]) == answer
    assert poll(agent, []) == {"commands": [], "rejected": [], "poll_after": 0.0}


def test_it_tells_nothing_to_whom_it_does_not_concern(world):
    alice = world.user("alice")
    mine, theirs = alice.submit(jdl()), alice.submit(jdl())
    agent1, agent2 = world.agent("agent1"), world.agent("agent2")
    agent1.match(site_map())
    agent2.match(site_map())
    alice.kill(theirs)
    # An agent token sees only its own jobs: the other agent's is as absent, and its kill is not told.
    assert poll(agent1, [(mine, 0), (theirs, 0)]) == {
        "commands": [], "rejected": [{"job_id": theirs, "code": "job_not_found"}], "poll_after": 0.0}
    other_ce = world.ce("ce2", site=SITE, ce=CE + "-2")
    assert poll(other_ce, [(mine, 0)])["rejected"] == [{"job_id": mine, "code": "forbidden"}]
    assert poll(world.ce("ce1", SITE, CE), [(theirs, 0)])["commands"] == [
        {"job_id": theirs, "command": "kill", "reason": "kill requested"}]
    with expect_error(403):
        poll(alice, [(mine, 0)])


@pytest.mark.parametrize("body, field", [
    ({}, "jobs"),
    ({"jobs": None}, "jobs"),
    ({"jobs": {"job_id": 1}}, "jobs"),
    ({"jobs": [{"job_id": 1, "resubmission": 0}] * 1001}, "jobs"),
    ({"jobs": [{"job_id": 1, "resubmission": 0}, 5]}, "jobs[1]"),
    ({"jobs": [{"job_id": 1, "resubmission": 0}, {"resubmission": 0}]}, "jobs[1].job_id"),
    ({"jobs": [{"job_id": "x", "resubmission": 0}]}, "jobs[0].job_id"),
    ({"jobs": [{"job_id": 0, "resubmission": 0}]}, "jobs[0].job_id"),
    ({"jobs": [{"job_id": 2 ** 63, "resubmission": 0}]}, "jobs[0].job_id"),
    ({"jobs": [{"job_id": 1.5, "resubmission": 0}]}, "jobs[0].job_id"),
    ({"jobs": [{"job_id": True, "resubmission": 0}]}, "jobs[0].job_id"),
    ({"jobs": [{"job_id": 1, "resubmission": 0}] * 3 + [{"job_id": 1}]}, "jobs[3].resubmission"),
    ({"jobs": [{"job_id": 1, "resubmission": -1}]}, "jobs[0].resubmission"),
    ({"jobs": [{"job_id": 1, "resubmission": 2 ** 31}]}, "jobs[0].resubmission"),
    ({"jobs": [{"job_id": 1, "resubmission": "1" * 400}]}, "jobs[0].resubmission"),
])
def test_a_bad_body_is_a_400_naming_the_field(world, body, field):
    agent = world.agent()
    with expect_error(400) as info:
        agent.request("POST", f"{API}/control", body=body)
    message = info.value.message
    # Exactly that field, at the head of the message: not a later item's, not the list's when an item is named.
    if field == "jobs":
        assert "jobs" in message and "jobs[" not in message, message
    else:
        assert message.startswith(field + " "), message

def test_a_thousand_runs_are_taken(world):
    agent = world.agent()
    answer = poll(agent, [(j, 0) for j in range(1, 1001)])
    assert len(answer["rejected"]) == 1000 and answer["commands"] == []

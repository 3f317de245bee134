"""`gridpilot spy` on central's side (central/spy.py): who may ask, who may answer, the bounds of both, how the
request reaches the agent (control poll and heartbeat) and that the table stays bounded; on SQLite and PostgreSQL.
The pilot's side, end to end: test_pilot_spy.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select
from support.central import CE, SITE, expect_error, jdl, run_through, site_map, start_world

from gridpilot import cli_codes
from gridpilot.central import schema, spy
from gridpilot.client import API, CentralClient


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def ask(client: CentralClient, job_id: int, **body):
    return client.request("POST", f"{API}/jobs/{job_id}/spy", body=body)[1]


def read(client: CentralClient, job_id: int, rid: int):
    return client.request("GET", f"{API}/jobs/{job_id}/spy/{rid}")[1]


def answer(client: CentralClient, job_id: int, rid: int, **body):
    return client.request("POST", f"{API}/jobs/{job_id}/spy/{rid}/answer", body=body)[1]


def spies(doc):
    return [(c["request"], c["what"]) for c in doc["commands"] if c["command"] == "spy"]


def running_job(world, user="alice", agent_name="agent1"):
    owner = world.user(user)
    owner.submit(jdl())
    agent = world.agent(agent_name)
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING")
    return owner, agent, job


def rows(world) -> int:
    with world.db.read() as conn:
        return conn.execute(select(func.count()).select_from(schema.spy_requests)).scalar_one()


def test_a_request_reaches_the_agent_and_its_answer_the_owner(world):
    alice, agent, job = running_job(world)
    jid = job["id"]
    req = ask(alice, jid, what="stdout", lines=5)
    assert (req["what"], req["lines"], req["job_state"]) == ("stdout", 5, "RUNNING")
    assert read(alice, jid, req["id"])["status"] == "pending"
    # The control poll and the heartbeat both carry it, with the bounds the answer must keep.
    (cmd,) = [c for c in agent.control(jid, 0)["commands"] if c["command"] == "spy"]
    assert (cmd["request"], cmd["lines"], cmd["max_bytes"], cmd["max_entries"]) == (req["id"], 5, spy.MAX_BYTES,
                                                                                     spy.MAX_ENTRIES)
    hb = agent.heartbeats_full([{"job_id": jid, "resubmission": 0, "sample": {}}])
    assert spies(hb) == [(req["id"], "stdout")]
    # The answer goes with the job's own token, for this run.
    job_client = world.client(job["token"])
    assert answer(job_client, jid, req["id"], resubmission=0, text="a\nb\n", start=10, end=14, size=14)["stored"]
    got = read(alice, jid, req["id"])
    assert got["status"] == "answered"
    assert got["answer"] == {"text": "a\nb\n", "start": 10, "end": 14, "size": 14}
    # Answered: no longer handed out; a repeat of the answer (its reply lost) is taken as done.
    assert spies(agent.control(jid, 0)) == []
    assert answer(job_client, jid, req["id"], resubmission=0, text="x", start=0, end=1, size=1)["already"]
    assert read(alice, jid, req["id"])["answer"]["text"] == "a\nb\n"
    # The agent's token, which holds the job, may answer too; a refusal is an answer.
    w = ask(world.admin, jid, what="workdir")
    answer(agent, jid, w["id"], resubmission=0, refused="the work directory is gone")
    assert read(world.admin, jid, w["id"])["answer"] == {"refused": "the work directory is gone"}


def test_who_may_ask_and_who_may_answer(world):
    alice, agent, job = running_job(world)
    jid = job["id"]
    # Another user's job is as absent; agents, CEs and job tokens do not ask.
    with expect_error(404, "job_not_found"):
        ask(world.user("bob"), jid)
    for other in (agent, world.ce("ce1", SITE, CE), world.client(job["token"])):
        with expect_error(403):
            ask(other, jid)
    # A user token of compute.read only may ask (it reads the job), one without it may not.
    reader = world.client(world.admin.request("POST", f"{API}/tokens", body={
        "role": "user", "subject": "alice", "scope": "compute.read"})[1]["token"])
    rid = ask(reader, jid)["id"]
    creator = world.client(world.admin.request("POST", f"{API}/tokens", body={
        "role": "user", "subject": "alice", "scope": "compute.create"})[1]["token"])
    with expect_error(403, "insufficient_scope"):
        ask(creator, jid)
    with expect_error(404, "job_not_found"):
        read(world.user("bob"), jid, rid)
    # Answers: only the token that runs this run of the job.
    for other in (world.agent("agent2"), alice):
        with expect_error(403 if other is alice else 404):
            answer(other, jid, rid, resubmission=0, text="", start=0, end=0, size=0)
    with expect_error(409, "stale_resubmission"):
        answer(agent, jid, rid, resubmission=1, text="", start=0, end=0, size=0)
    with expect_error(404, "spy_request_not_found"):
        answer(agent, jid, rid + 100, resubmission=0, text="", start=0, end=0, size=0)
    # Another agent of the site is not handed the request (its poll is refused as for a kill).
    assert world.agent("agent2").control(jid, 0)["rejected"] == [{"job_id": jid, "code": "job_not_found"}]


@pytest.mark.parametrize("states", [(), ("STARTED",), ("STARTED", "RUNNING", "SAVING", "DONE")])
def test_a_job_that_is_not_running_is_refused_and_nothing_is_stored(world, states):
    alice = world.user("alice")
    jid = alice.submit(jdl())
    if states:
        agent = world.agent()
        job = agent.match(site_map())
        run_through(agent, job, *states, **({"exit_code": 0} if states[-1] == "DONE" else {}))
    with expect_error(409, "not_running") as info:
        ask(alice, jid)
    assert (states[-1] if states else "WAITING") in info.value.message
    assert rows(world) == 0


def test_saving_may_be_spied_and_a_kill_hides_open_requests(world):
    alice, agent, job = running_job(world)
    jid = job["id"]
    agent.set_status(jid, "SAVING", 0)
    rid = ask(alice, jid)["id"]
    assert spies(agent.control(jid, 0)) == [(rid, "stdout")]
    alice.kill(jid)
    # A job being killed is not spied on any more: the agent gets the kill alone.
    assert [c["command"] for c in agent.control(jid, 0)["commands"]] == ["kill"]
    assert spies(agent.heartbeats_full([{"job_id": jid, "resubmission": 0, "sample": {}}])) == []


BAD_REQUESTS = [
    ({"what": "etc/shadow"}, "what"),
    ({"what": 3}, "what"),
    ({"lines": 0}, "lines"),
    ({"lines": spy.MAX_LINES + 1}, "lines"),
    ({"lines": "5"}, "lines"),
    ({"lines": True}, "lines"),
    ({"offset": -1}, "offset"),
    ({"offset": 1.5}, "offset"),
    ({"what": "workdir", "offset": 0}, "offset"),
]


@pytest.mark.parametrize("body,field", BAD_REQUESTS)
def test_a_bad_request_is_a_400_naming_the_field(world, body, field):
    alice, _, job = running_job(world)
    with expect_error(400) as info:
        ask(alice, job["id"], **body)
    assert info.value.message and field in info.value.message
    assert rows(world) == 0


_OK_FILE = dict(text="x\n", start=0, end=2, size=2)
BAD_ANSWERS = [
    ("stdout", {**_OK_FILE, "text": "x" * (spy.MAX_BYTES + 1)}, "text"),
    ("stdout", {**_OK_FILE, "text": "a\0b"}, "text"),
    ("stdout", {**_OK_FILE, "text": 5}, "text"),
    ("stdout", {**_OK_FILE, "start": -1}, "start"),
    ("stdout", {**_OK_FILE, "end": 3}, "end"),
    ("stdout", {"text": "", "start": 0, "end": spy.MAX_BYTES + 1, "size": spy.MAX_BYTES + 1}, "end"),
    ("stdout", {"refused": "x" * (spy.MAX_REASON + 1)}, "refused"),
    ("workdir", {"entries": "stdout"}, "entries"),
    ("workdir", {"entries": [{"name": "f", "type": "file", "size": 1, "mtime": 1.0}] * (spy.MAX_ENTRIES + 1)},
     "entries"),
    ("workdir", {"entries": [{"name": "f", "type": "fifo", "size": 1, "mtime": 1.0}]}, "entries[0].type"),
    ("workdir", {"entries": [{"name": "f" * 256, "type": "file", "size": 1, "mtime": 1.0}]}, "entries[0].name"),
    ("workdir", {"entries": [{"name": "f", "type": "file", "size": -1, "mtime": 1.0}]}, "entries[0].size"),
    ("workdir", {"entries": [], "more": "yes"}, "more"),
]


@pytest.mark.parametrize("what,body,field", BAD_ANSWERS)
def test_a_bad_answer_is_a_400_naming_the_field_and_stores_nothing(world, what, body, field):
    alice, agent, job = running_job(world)
    rid = ask(alice, job["id"], what=what)["id"]
    with expect_error(400) as info:
        answer(agent, job["id"], rid, resubmission=0, **body)
    assert field in info.value.message
    assert read(alice, job["id"], rid)["status"] == "pending"


def test_requests_are_bounded_per_job_and_per_user_and_expire(world, monkeypatch):
    alice, agent, job = running_job(world)
    jid = job["id"]
    # Unanswered ones: per job...
    waiting = [ask(alice, jid)["id"] for _ in range(spy.MAX_PENDING_PER_JOB)]
    with expect_error(429, "spy_limit") as info:
        ask(alice, jid)
    assert f"job {jid}" in info.value.message
    assert rows(world) == spy.MAX_PENDING_PER_JOB
    # ... and per user, over its jobs.
    monkeypatch.setattr(spy, "MAX_PENDING_PER_USER", spy.MAX_PENDING_PER_JOB + 1)
    _, agent2, job2 = running_job(world, "alice", "agent2")
    ask(alice, job2["id"])
    with expect_error(429, "spy_limit") as info:
        ask(alice, job2["id"])
    assert "user alice" in info.value.message
    # Answered ones make room; only the newest few of them are kept, however often one asks (spy --follow).
    for rid in waiting:
        answer(agent, jid, rid, resubmission=0, **_OK_FILE)
    for _ in range(3 * spy.KEEP_ANSWERED_PER_JOB):
        rid = ask(alice, jid)["id"]
        answer(agent, jid, rid, resubmission=0, **_OK_FILE)
        assert read(alice, jid, rid)["status"] == "answered"
    with world.db.read() as conn:
        kept = conn.execute(select(func.count()).select_from(schema.spy_requests)
                            .where(schema.spy_requests.c.job_id == jid)).scalar_one()
    assert kept == spy.KEEP_ANSWERED_PER_JOB
    # Expired requests are no longer handed out, are answered 409, and go at the next request.
    monkeypatch.setattr(spy, "EXPIRES_S", 0.2)
    short = ask(world.admin, job2["id"])["id"]
    deadline = time.monotonic() + 30
    while read(world.admin, job2["id"], short)["status"] != "expired":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert short not in [r for r, _ in spies(agent2.control(job2["id"], 0))]
    with expect_error(409, "spy_expired"):
        answer(agent2, job2["id"], short, resubmission=0, **_OK_FILE)
    with world.db.write() as conn:  # the others too, as if a minute went by
        conn.execute(schema.spy_requests.update().values(expires=0.0))
    ask(alice, jid)
    assert rows(world) == 1


def test_the_cli_says_when_the_pilot_does_not_answer_and_when_the_job_is_not_running(world, tmp_path):
    alice, _, job = running_job(world)
    token = tmp_path / "alice.token"
    token.write_text(alice.token or "")

    def spy_cli(*args):
        return subprocess.run([sys.executable, "-m", "gridpilot", "spy", *args, "--url", world.url, "--token-file",
                               str(token)], capture_output=True, text=True, timeout=120)

    # Nothing answers for this job (no pilot runs it): a clear line and TIMEOUT, not a hang.
    out = spy_cli(str(job["id"]), "--timeout", "1")
    assert out.returncode == cli_codes.TIMEOUT, out
    assert "did not answer within 1 s" in out.stderr and out.stderr.count("\n") == 1
    waiting = alice.submit(jdl())
    out = spy_cli(str(waiting))
    assert out.returncode == cli_codes.FAILED, out
    assert f"job {waiting} is WAITING" in out.stderr and out.stderr.count("\n") == 1
    for bad in (["--lines", "0"], ["--timeout", "0"], ["--follow", "workdir"]):
        out = spy_cli(str(job["id"]), *bad)
        assert out.returncode == cli_codes.USAGE, (bad, out)
        assert out.stderr.count("\n") == 1


def test_a_request_is_for_one_run_of_the_job(world):
    alice, agent, job = running_job(world)
    jid = job["id"]
    old = ask(alice, jid)["id"]
    alice.kill(jid)
    agent.set_status(jid, "KILLED", 0)
    alice.resubmit(jid)
    job2 = agent.match(site_map())
    assert job2["resubmission"] == 1
    run_through(agent, job2, "STARTED", "RUNNING")
    new = ask(alice, jid)["id"]
    # The next run's pilot is handed its own requests only, by the poll and by the heartbeat...
    assert spies(agent.control(jid, 1)) == [(new, "stdout")]
    assert spies(agent.heartbeats_full([{"job_id": jid, "resubmission": 1, "sample": {}}])) == [(new, "stdout")]
    # ... and the earlier run's request cannot be answered by it, nor by the earlier run's job token.
    with expect_error(409, "stale_resubmission"):
        answer(world.client(job2["token"]), jid, old, resubmission=1, **_OK_FILE)
    with expect_error(401):
        answer(world.client(job["token"]), jid, old, resubmission=0, **_OK_FILE)

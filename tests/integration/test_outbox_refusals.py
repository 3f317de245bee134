"""The agent's outbox (pilot/outbox.py) against a real central, on SQLite and on PostgreSQL (issue 15): a central
that answers 500 for a while loses nothing; a bad entry among good ones costs only that entry, never the rest of its
batch nor the state reports after it; a state report refused because the job was resubmitted meanwhile leaves
nothing stuck. The reports go out as the agent sends them (outbox.sender), on a client that does not retry."""

from __future__ import annotations

import time
from typing import Iterator, List

import pytest
from support.central_proxy import CentralProxy
from support.central import jdl, site_map, start_world

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.outbox import Outbox, sender
from gridpilot.tracefmt import state_of


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


@pytest.fixture
def proxies(world) -> Iterator:
    made: List[CentralProxy] = []

    def make(rule) -> CentralProxy:
        made.append(CentralProxy(world.url, rule))
        return made[-1]

    yield make
    for p in made:
        p.close()


def matched(world):
    """A job matched by an agent: (the match, the agent's token)."""
    jid = world.admin.submit(jdl())
    token = world.admin.mint_token("agent", "agent1", site=site_map()["site"], ce=site_map()["ce"])
    job = world.client(token).match(site_map())
    assert job["id"] == jid
    return job, token


def agent_box(url: str, job, token: str) -> tuple:
    """The agent's client (no retries of its own) and outbox for `job`, as JobRun makes them."""
    client = CentralClient(url, token, retries=0, timeout=30)
    box = Outbox(sender(client, job["id"], job["resubmission"]), key_prefix="0.test.", name=f"job {job['id']}",
                 backoff_s=0.01, backoff_max_s=0.05)
    return client, box


def run_like_the_agent(box: Outbox, client: CentralClient, job, timeout: float = 60.0) -> None:
    """Until the queue is empty: a heartbeat, then a flush, as the agent's loop does them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.heartbeats([{"job_id": job["id"], "resubmission": job["resubmission"], "sample": {}}])
            box.note_reachable()
        except (CentralError, CentralUnreachable):
            pass
        if box.flush(force=True):
            return
        assert time.monotonic() < deadline, f"still queued: {list(box.queue)}"
        time.sleep(0.02)


def texts(world, jid: int) -> List[str]:
    return [e["text"] for e in world.admin.trace(jid) if e["key"] is not None]


def states(world, jid: int) -> List[str]:
    return [s for e in world.admin.trace(jid) if e["category"] == "state" and (s := state_of(e["text"])) is not None]


def test_reports_through_a_central_that_answers_500_for_a_while_all_arrive_once_in_order(world, proxies):
    job, token = matched(world)
    failing = {"left": 12}

    def rule(method: str, path: str):
        # Every report fails (heartbeats too: a central failing on everything) until 12 of them were answered 500.
        if method == "POST" and failing["left"] > 0 and path.endswith(("/trace", "/status", "/heartbeats")):
            failing["left"] -= 1
            return 500
        return None

    proxy = proxies(rule)
    client, box = agent_box(proxy.url, job, token)
    box.status(state="STARTED")
    box.trace("trace", "stage-in done")
    box.status(state="RUNNING")
    box.trace("trace", "payload exited with 0")
    box.trace("proc", "00:00:01 | 1")
    box.status(state="SAVING")
    box.status(state="DONE", exit_code=0)
    run_like_the_agent(box, client, job)
    assert failing["left"] == 0 and proxy.answered("POST", "/status", 500) + proxy.answered("POST", "/trace", 500) >= 5
    assert box.rejected == [], "a 500 is not a refusal"
    assert world.admin.get_job(job["id"])["state"] == "DONE"
    assert states(world, job["id"]) == ["WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"]
    assert texts(world, job["id"]) == ["stage-in done", "payload exited with 0", "00:00:01 | 1"]


@pytest.mark.parametrize("bad", ["x" * (64 << 10) + "y", "a NUL \0 from the payload"], ids=["too-long", "nul"])
def test_a_bad_entry_among_good_ones_costs_only_that_entry(world, bad):
    """Central refuses (400, naming the entry) a line longer than it stores; a NUL is refused (400) where bounds
    are checked, stored where the database takes it, and failed on (500) by a PostgreSQL central that checks
    neither: in every case the good lines of the batch and the state reports after it arrive."""
    job, token = matched(world)
    client, box = agent_box(world.url, job, token)
    box.status(state="STARTED")
    for text in ("line 1", bad, "line 3"):
        box.trace("trace", text)
    box.status(state="RUNNING")
    box.trace("trace", "line 4")
    box.status(state="SAVING")
    box.status(state="DONE", exit_code=0)
    run_like_the_agent(box, client, job, timeout=120)
    assert world.admin.get_job(job["id"])["state"] == "DONE"
    assert states(world, job["id"]) == ["WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"]
    got = texts(world, job["id"])
    stored = bad in got
    notes = [t for t in got if t.startswith("[WARN] the pilot dropped")]
    assert [t for t in got if t not in notes] == ["line 1"] + ([bad] if stored else []) + ["line 3", "line 4"]
    if not stored:
        # Dropped, and the trace says which line (by its key) and why.
        (note,) = notes
        assert note.startswith("[WARN] the pilot dropped trace line 0.test.2 (") and "central answered" in note, note
    # Dropped whole, at most, is a report holding the bad line alone (a batch central fails on is halved down to it).
    assert [e["text"] for r, _ in box.rejected for e in r.body["entries"]] in ([], [bad])


def test_a_state_report_refused_as_stale_is_dropped_and_nothing_waits_behind_it(world):
    """The job went back to the queue (resubmission 1) while this run's reports were held: central refuses them
    (404, as if absent: the agent no longer holds the job, and a job one does not hold is not shown). Each is dropped alone and logged (the lines saying so are refused
    too, and only logged), and the queue empties; the job is left as central has it. The agent learns what
    happened from its next heartbeat, refused for the job (test_pilot_outage.py has the agent act on that)."""
    job, token = matched(world)
    client, box = agent_box(world.url, job, token)
    box.status(state="STARTED")
    assert box.flush()
    client.set_status(job["id"], "WAITING", job["resubmission"], message="given back")  # resubmission 1 now
    box.status(state="RUNNING")
    box.trace("trace", "payload exited with 0")
    box.status(state="DONE", exit_code=0)
    assert box.flush()
    dropped = [(r.kind, r.body.get("state") or r.body["entries"][0]["text"], e.split(":")[0]) for r, e in box.rejected]
    assert [(kind, what) for kind, what, _ in dropped if not what.startswith("[WARN]")] == [
        ("status", "RUNNING"), ("trace", "payload exited with 0"), ("status", "DONE")]
    assert {why for _, _, why in dropped} == {"central answered 404 job_not_found"}
    assert not box.queue
    j = world.admin.get_job(job["id"])
    assert (j["state"], j["resubmission"]) == ("WAITING", 1)
    answer = client.heartbeats_full([{"job_id": job["id"], "resubmission": job["resubmission"], "sample": {}}])
    assert [r["job_id"] for r in answer["rejected"]] == [job["id"]]

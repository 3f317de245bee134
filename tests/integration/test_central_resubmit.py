"""POST /api/v1/jobs/{id}/resubmit through gridpilot.client, on SQLite and on a real PostgreSQL: which states may be
resubmitted, by whom, and the per-job limit (docs/central-api.md, "Resubmission")."""

from __future__ import annotations

import time
from typing import Callable, Dict

import pytest
from sqlalchemy import update
from support.central import expect_error, jdl, run_through, site_map, start_world

from gridpilot.central import schema, sweeper
from gridpilot.central.settings import DEFAULT_MAX_USER_RESUBMITS
from gridpilot.states import RESUBMITTABLE_STATES, JobStatus


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def _ran(*states: str, **last) -> Callable:
    """A job of alice's, matched and reported through `states`."""
    def reach(world, alice) -> int:
        jid = alice.submit(jdl())
        job = world.agent().match(site_map())
        assert job["id"] == jid
        run_through(world.agent(), job, *states, **last)
        return jid
    return reach


def _waiting(world, alice) -> int:
    return alice.submit(jdl())


def _assigned(world, alice) -> int:
    jid = alice.submit(jdl())
    assert world.agent().match(site_map())["id"] == jid
    return jid


def _swept(sweeps: int) -> Callable:
    """A RUNNING job whose heartbeats stopped: ZOMBIE after one sweep an hour on, EXPIRED after a second."""
    def reach(world, alice) -> int:
        jid = _ran("STARTED", "RUNNING")(world, alice)
        t = time.time()
        for n in range(1, sweeps + 1):
            sweeper.sweep(world.db, now=t + n * 3601)
        return jid
    return reach


def _killed_waiting(world, alice) -> int:
    jid = alice.submit(jdl())
    alice.kill(jid)
    return jid


def _killed_running(world, alice) -> int:
    jid = _ran("STARTED", "RUNNING")(world, alice)
    alice.kill(jid)
    world.agent().set_status(jid, "KILLED", 0, kill_reason="KILLED")
    return jid


def _forced(state: JobStatus) -> Callable:
    """INCORRECT and FAULTY: no report or sweep leads there (states.TRANSITIONS), so the row is set directly."""
    def reach(world, alice) -> int:
        jid = alice.submit(jdl())
        with world.db.write() as conn:
            conn.execute(update(schema.jobs).where(schema.jobs.c.id == jid).values(state=int(state)))
        return jid
    return reach


CASES: Dict[str, Callable] = {
    "WAITING": _waiting,
    "ASSIGNED": _assigned,
    "STARTED": _ran("STARTED"),
    "RUNNING": _ran("STARTED", "RUNNING"),
    "SAVING": _ran("STARTED", "RUNNING", "SAVING"),
    "ZOMBIE": _swept(1),
    "DONE": _ran("STARTED", "RUNNING", "SAVING", "DONE"),
    "DONE_WARN": _ran("STARTED", "RUNNING", "SAVING", "DONE_WARN"),
    "INCORRECT": _forced(JobStatus.INCORRECT),
    "ERROR_E": _ran("STARTED", "RUNNING", "ERROR_E", exit_code=1),
    "ERROR_V": _ran("STARTED", "RUNNING", "ERROR_V"),
    "ERROR_VT": _ran("STARTED", "RUNNING", "ERROR_VT"),
    "ERROR_S": _ran("STARTED", "RUNNING", "SAVING", "ERROR_S"),
    "ERROR_SV": _ran("STARTED", "RUNNING", "SAVING", "ERROR_SV"),
    "EXPIRED": _swept(2),
    "KILLED": _killed_waiting,
    "KILLED after RUNNING": _killed_running,
    "FAULTY": _forced(JobStatus.FAULTY),
}


@pytest.mark.parametrize("case", list(CASES))
def test_only_a_job_that_ended_without_success_goes_back_to_waiting(world, case):
    alice = world.user("alice")
    jid = CASES[case](world, alice)
    before = alice.get_job(jid)
    state = JobStatus[before["state"]]
    assert state.name == case.split()[0], f"the case did not reach {case}: {before['state']}"
    lines = len(alice.trace(jid))
    if state not in RESUBMITTABLE_STATES:
        with expect_error(409, "not_resubmittable") as info:
            alice.resubmit(jid)
        assert f"job {jid} is {state.name}:" in info.value.message
        after = alice.get_job(jid)
        assert (after["state"], after["resubmission"]) == (before["state"], before["resubmission"])
        assert len(alice.trace(jid)) == lines, "a refused resubmission writes nothing"
        return
    out = alice.resubmit(jid)
    assert out == {"id": jid, "state": "WAITING", "previous_state": state.name, "resubmission": 1,
                   "user_resubmissions": 1, "limit": DEFAULT_MAX_USER_RESUBMITS, "removed_files": 0}
    job = alice.get_job(jid)
    assert job["state"] == "WAITING" and job["resubmission"] == 1
    assert (job["site"], job["node"], job["exit_code"], job["kill_reason"], job["kill_requested"]) == \
        (None, None, None, None, False), "nothing of the failed attempt is left on the job"
    trace = alice.trace(jid)
    assert trace[0]["text"].startswith("WAITING: submitted by alice"), "the history is kept"
    assert len(trace) == lines + 1
    # Found by its text, not as the last line: the swept cases' lines are dated on the sweeper's clock, an hour on.
    assert [(e["category"], e["text"]) for e in trace if "resubmitted" in e["text"]] == [
        ("state", f"WAITING: resubmitted by alice from {state.name} (1 of {DEFAULT_MAX_USER_RESUBMITS}; attempt 2)")]
    # The new attempt is matched like any waiting job, with its own counter and token.
    again = world.agent().match(site_map())
    assert (again["id"], again["resubmission"]) == (jid, 1)
    run_through(world.agent(), again, "STARTED", "RUNNING", "SAVING", "DONE")
    assert alice.get_job(jid)["state"] == "DONE"


def test_the_owner_or_an_admin_resubmits_and_no_one_else(world):
    alice, bob = world.user("alice"), world.user("bob")
    jid = _ran("STARTED", "RUNNING", "ERROR_E")(world, alice)
    # Another user's job is answered as if it did not exist, as kill and GET answer it.
    with expect_error(404, "job_not_found") as refused:
        bob.resubmit(jid)
    with expect_error(404, "job_not_found") as kill_refused:
        bob.kill(jid)
    assert refused.value.message == kill_refused.value.message
    # Pilots and CEs queue no work: their tokens lack the scope (compute.create), as they lack it to submit.
    with expect_error(403, "insufficient_scope"):
        world.agent().resubmit(jid)
    with expect_error(403, "insufficient_scope"):
        world.ce().resubmit(jid)
    read_only = world.client(world.admin.mint_token("user", "alice", scope="compute.read"))
    with expect_error(403, "insufficient_scope"):
        read_only.resubmit(jid)
    assert alice.get_job(jid)["state"] == "ERROR_E", "no refused call changed the job"
    assert world.admin.resubmit(jid)["state"] == "WAITING"
    assert world.admin.trace(jid)[-1]["text"].startswith("WAITING: resubmitted by admin for alice from ERROR_E")
    with expect_error(404, "job_not_found"):
        alice.resubmit(99999)


def test_the_limit_counts_user_resubmissions_only_and_refuses_beyond_it(tmp_path, db_url):
    for world in start_world(tmp_path / "state", db_url, max_user_resubmits=2):
        alice = world.user("alice")
        jid = alice.submit(jdl())
        agent = world.agent()
        # Central's own resubmission (the pilot gave the job back before RUNNING) is not the user's.
        job = agent.match(site_map())
        agent.set_status(jid, "WAITING", 0, message="cannot create sandbox")
        for attempt in (1, 2, 3):
            job = agent.match(site_map())
            assert (job["id"], job["resubmission"]) == (jid, attempt)
            run_through(agent, job, "STARTED", "RUNNING", "ERROR_E", exit_code=1)
            if attempt == 3:
                break
            out = alice.resubmit(jid)
            assert (out["resubmission"], out["user_resubmissions"], out["limit"]) == (attempt + 1, attempt, 2)
        with expect_error(409, "resubmit_limit") as info:
            alice.resubmit(jid)
        assert info.value.message == f"job {jid} was already resubmitted 2 times, the most this central allows (2)"
        with expect_error(409, "resubmit_limit"):
            world.admin.resubmit(jid)
        assert alice.get_job(jid)["state"] == "ERROR_E"


def test_a_limit_of_zero_turns_resubmission_off(tmp_path, db_url):
    for world in start_world(tmp_path / "state", db_url, max_user_resubmits=0):
        alice = world.user("alice")
        jid = _killed_waiting(world, alice)
        with expect_error(409, "resubmit_limit"):
            alice.resubmit(jid)
        assert alice.get_job(jid)["state"] == "KILLED"


def test_the_ended_attempts_files_leave_the_catalogue_and_other_jobs_files_stay(world):
    """As JAliEn's resubmit: what the job registered is removed (every replica), so the next attempt registers its
    own outputs at the same LFNs with other contents; another job's files in the same directory stay."""
    world.admin.grant_area("alice", "/alice")
    alice = world.user("alice")
    se = world.admin.storage_elements()[0]["name"]
    world.admin.add_storage_element("ALICE::CERN::EOS", "root://eos.example//eos/alice")
    jid, other = alice.submit(jdl(OutputDir="/alice/run1")), alice.submit(jdl(OutputDir="/alice/run1"))
    agent = world.agent()
    job, other_job = agent.match(site_map()), agent.match(site_map())
    jc, oc = world.client(job["token"]), world.client(other_job["token"])
    for lfn, size in (("/alice/run1/log_archive.zip", 122), ("/alice/run1/out/AO2D.root", 1234)):
        jc.register_file(lfn=lfn, size=size, adler32="0a1b2c3d", se=se, pfn=f"file:///se{lfn}", job_id=jid)
    jc.register_file(lfn="/alice/run1/out/AO2D.root", size=1234, se="ALICE::CERN::EOS",
                     pfn="root://eos.example//eos/alice/1", job_id=jid)
    oc.register_file(lfn="/alice/run1/other.root", size=5, se=se, pfn="file:///se/other", job_id=other)
    run_through(agent, job, "STARTED", "RUNNING", "ERROR_E", exit_code=1)

    assert alice.resubmit(jid)["removed_files"] == 2
    for lfn in ("/alice/run1/log_archive.zip", "/alice/run1/out/AO2D.root"):
        with expect_error(404, "file_not_found"):
            alice.lookup_file(lfn)
    assert alice.lookup_file("/alice/run1/other.root")["replicas"] == [{"se": se, "pfn": "file:///se/other"}]
    assert [e["text"] for e in alice.trace(jid) if e["text"].startswith("Resubmit:")] == [
        "Resubmit: removing output file: /alice/run1/log_archive.zip",
        "Resubmit: removing output file: /alice/run1/out/AO2D.root"]
    # The next attempt registers the same LFN with other contents: no conflict with the ended attempt's.
    again = agent.match(site_map())
    assert (again["id"], again["resubmission"]) == (jid, 1)
    f = world.client(again["token"]).register_file(lfn="/alice/run1/log_archive.zip", size=130, adler32="99999999",
                                                   se=se, pfn="file:///se/new", job_id=jid)
    assert (f["size"], f["adler32"]) == (130, "99999999")

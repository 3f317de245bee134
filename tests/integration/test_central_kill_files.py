"""Nothing registers for a job after its kill (issue 19; docs/pilot.md "After a kill"): central refuses a job token's
registration once the kill is requested (409 job_killed), and a final report after the kill request removes from
the catalogue whatever the attempt registered after the request, keeping what it registered before. On SQLite and
on a real PostgreSQL (the db_url fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.central import Raw, expect_error, jdl, run_through, site_map, start_world

from gridpilot.central import schema
from gridpilot.jdl import parse_job
from gridpilot.pilot.protocol import Handover
from gridpilot.pilot.staging import KILLED_AT_REGISTRATION, Stager
from gridpilot.states import JobStatus

OUT = "/alice/run1"


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def _held(world, *states):
    """Alice's job matched by an agent and reported through `states`: (alice, agent, job, job token's client, SE)."""
    world.admin.grant_area("alice", "/alice")
    alice = world.user("alice")
    jid = alice.submit(jdl(OutputDir=OUT))
    agent = world.agent()
    job = agent.match(site_map())
    assert job["id"] == jid
    if states:
        run_through(agent, job, *states)
    se = world.admin.storage_elements()[0]["name"]
    return alice, agent, job, world.client(job["token"]), se


def _register(client, jid, se, name, size=10):
    return client.register_file(lfn=f"{OUT}/{name}", size=size, adler32="0a1b2c3d", se=se,
                                pfn=f"file:///se{OUT}/{name}", job_id=jid)


def _kill_time(alice, jid):
    return max(e["ts"] for e in alice.trace(jid) if e["text"].startswith("kill requested by "))


def _slip_in(world, jid, name, created, se):
    """A file of the job's that central took at `created` (central's clock) without the kill check: a registration
    from before the refusal existed, or one racing the kill request (it read the job first)."""
    lfn = f"{OUT}/{name}"
    with world.db.write() as conn:
        conn.execute(schema.files.insert().values(lfn=lfn, dir=OUT, size=3, adler32=None, md5=None, job_id=jid,
                                                  owner="alice", created=created))
        conn.execute(schema.replicas.insert().values(lfn=lfn, se=se, pfn=f"file:///se{lfn}", created=created))


@pytest.mark.parametrize("states", [(), ("STARTED",), ("STARTED", "RUNNING"), ("STARTED", "RUNNING", "SAVING")])
def test_a_job_registers_until_its_kill_is_requested_and_nothing_after(world, states):
    alice, agent, job, jc, se = _held(world, *states)
    jid = job["id"]
    assert _register(jc, jid, se, "before.root")["job_id"] == jid
    alice.kill(jid)
    with expect_error(409, "job_killed") as info:
        _register(jc, jid, se, "after.root")
    assert f"job {jid}" in info.value.message and f"{OUT}/after.root" in info.value.message
    # Nor another replica of a file it registered before: nothing is uploaded after a kill.
    world.admin.add_storage_element("ALICE::CERN::EOS", "root://eos.example//eos/alice")
    with expect_error(409, "job_killed"):
        jc.register_file(lfn=f"{OUT}/before.root", size=10, se="ALICE::CERN::EOS",
                         pfn="root://eos.example//eos/alice/1", job_id=jid)
    with expect_error(404, "file_not_found"):
        alice.lookup_file(f"{OUT}/after.root")
    assert [r["se"] for r in alice.lookup_file(f"{OUT}/before.root")["replicas"]] == [se]


@pytest.mark.parametrize("reported, ends", [("DONE", "KILLED"), ("DONE_WARN", "KILLED"), ("KILLED", "KILLED"),
                                            ("ERROR_SV", "ERROR_SV")])
def test_a_final_report_after_the_kill_takes_out_what_slipped_in_after_the_request(world, reported, ends):
    """The user keeps what the attempt registered before the kill request (partial outputs); what it registered at
    or after it leaves the catalogue with its replicas, traced as JAliEn's resubmit traces its removals."""
    alice, agent, job, jc, se = _held(world, "STARTED", "RUNNING", "SAVING")
    jid = job["id"]
    _register(jc, jid, se, "before.root")
    alice.kill(jid)
    at = _kill_time(alice, jid)
    _slip_in(world, jid, "just-before.root", at - 0.001, se)
    _slip_in(world, jid, "at-the-request.root", at, se)
    _slip_in(world, jid, "after.root", at + 1.0, se)
    out = agent.set_status(jid, reported, 0, exit_code=0 if reported.startswith("DONE") else 1)
    assert out["state"] == ends
    for name in ("before.root", "just-before.root"):
        assert alice.lookup_file(f"{OUT}/{name}")["job_id"] == jid
    for name in ("at-the-request.root", "after.root"):
        with expect_error(404, "file_not_found"):
            alice.lookup_file(f"{OUT}/{name}")
    with world.db.read() as conn:
        left = {r.lfn for r in conn.execute(schema.replicas.select())}
    assert left == {f"{OUT}/before.root", f"{OUT}/just-before.root"}, "the removed files' replicas go with them"
    assert [e["text"] for e in alice.trace(jid) if e["text"].startswith("Kill:")] == [
        f"Kill: removing output file: {OUT}/after.root",
        f"Kill: removing output file: {OUT}/at-the-request.root"]


def test_without_a_kill_request_a_final_report_keeps_every_file(world):
    alice, agent, job, jc, se = _held(world, "STARTED", "RUNNING", "SAVING")
    jid = job["id"]
    _register(jc, jid, se, "out.root")
    assert agent.set_status(jid, "DONE", 0, exit_code=0)["state"] == "DONE"
    assert alice.lookup_file(f"{OUT}/out.root")["job_id"] == jid
    assert not [e for e in alice.trace(jid) if e["text"].startswith("Kill:")]


def test_a_kill_of_an_earlier_attempt_does_not_count_against_the_next(world):
    """The kill request line of an attempt that was killed and resubmitted is history: the next attempt, not killed,
    keeps its files, and its own kill counts from its own request."""
    alice, agent, job, jc, se = _held(world, "STARTED", "RUNNING")
    jid = job["id"]
    alice.kill(jid)
    agent.set_status(jid, "KILLED", 0)
    alice.resubmit(jid)
    again = agent.match(site_map())
    assert (again["id"], again["resubmission"]) == (jid, 1)
    jc2 = world.client(again["token"])
    run_through(agent, again, "STARTED", "RUNNING", "SAVING")
    _register(jc2, jid, se, "second.root")
    assert agent.set_status(jid, "DONE", 1, exit_code=0)["state"] == "DONE"
    assert alice.lookup_file(f"{OUT}/second.root")["job_id"] == jid


def test_the_wrappers_stage_out_stops_at_central_s_refusal_and_leaves_no_copy(world, tmp_path):
    """The kill reaches central while the JobWrapper, not told yet, uploads: central's 409 job_killed on the first
    registration ends the stage-out (no second copy, no other output; the refused copy removed from its storage
    element) and the stager's outcome is KILLED, not an upload failure (ERROR_SV) or a retry."""
    world.admin.grant_area("alice", "/alice")
    ses = {name: tmp_path / name for name in ("TEST::KILL::SE1", "TEST::KILL::SE2")}
    for name, root in ses.items():
        world.admin.add_storage_element(name, f"file://{root}")
    alice = world.user("alice")
    text = jdl(OutputDir=OUT, Output=Raw('{"a.txt@disk=2", "b.txt@disk=2"}'))
    jid = alice.submit(text)
    agent = world.agent()
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING", "SAVING")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("a.txt", "b.txt"):
        (work / name).write_text(f"{name}\n")
    lines = []
    stager = Stager(Handover(job_id=jid, central_url=world.url, token=job["token"], output_dir=OUT,
                             storage=[{"name": n, "url": f"file://{r}", "close": True}
                                      for n, r in ses.items()]),
                    work, lines.append)
    alice.kill(jid)
    outcome = stager.stage_out(parse_job(text), error=False)
    assert outcome is JobStatus.KILLED, lines
    assert lines[-1] == KILLED_AT_REGISTRATION
    assert any("409 job_killed" in t and t.endswith("(copy removed)") for t in lines), lines
    assert "stage-out a.txt: no other copy, the job was killed" in lines
    assert "stage-out b.txt: not uploaded, the job was killed" in lines
    assert [t for t in lines if t.startswith("Registering:")] == [f"Registering: {OUT}/a.txt. Return status: false"]
    assert [p for r in ses.values() for p in Path(r).rglob("*") if p.is_file()] == [], "the refused copy is removed"
    for name in ("a.txt", "b.txt"):
        with expect_error(404, "file_not_found"):
            alice.lookup_file(f"{OUT}/{name}")

"""Authorization by ownership and by the state machine, not only by role (issue 15): a kill is final, the states
each role may set, trace lines a token may write, OutputDir within the user's areas, a file's replicas only through
its owner's jobs, Price bounded, 404 for another user's job, what /metrics shows without a token.

A real central over HTTP; every test runs on SQLite and on a real PostgreSQL (the db_url fixture)."""

from __future__ import annotations

import re
import time

import pytest
import urllib3
from support.central import CE, SITE, Raw, expect_error, jdl, run_through, site_map, start_world
from support.metrics import Exposition

from gridpilot.central import auth, sweeper
from gridpilot.states import TRANSITIONS, JobStatus
from gridpilot.tracefmt import state_of
from support import paths

ROOT = paths.ROOT


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def running_job(world, user="alice", *states, **keys):
    """A job of `user` matched by a new agent and taken through `states`: (job id, agent client, match)."""
    jid = world.user(user).submit(jdl(**keys))
    agent = world.agent(f"agent-{jid}")
    job = agent.match(site_map())
    assert job["id"] == jid
    if states:
        run_through(agent, job, *states)
    return jid, agent, job


def trace_texts(world, jid):
    return [e["text"] for e in world.admin.trace(jid)]


# -- a kill is final --


@pytest.mark.parametrize("held", ["ASSIGNED", "STARTED"])
def test_a_pilot_giving_back_a_job_whose_kill_was_requested_ends_it_killed(world, held):
    """The hole: kill, then the holder reports WAITING; the give-back cleared kill_requested and the job ran again."""
    states = () if held == "ASSIGNED" else ("STARTED",)
    jid, agent, job = running_job(world, "alice", *states)
    alice = world.user("alice")
    assert alice.kill(jid)["kill_requested"] is True
    out = agent.set_status(jid, "WAITING", 0, message="slot ended")
    assert (out["state"], out["resubmission"]) == ("KILLED", 0)
    got = alice.get_job(jid)
    assert (got["state"], got["kill_reason"], got["resubmission"]) == ("KILLED", "KILLED", 0)
    assert got["message"] == "its kill was requested; given back by agent " \
        f"'agent-{jid}' in {held} (slot ended)"
    assert world.agent("another").match(site_map()) is None, "a killed job is never matched again"
    assert any("KILLED" in t and "its kill was requested; given back by agent" in t for t in trace_texts(world, jid))
    with expect_error(401, "token_revoked"):
        world.client(job["token"]).whoami()


def test_a_killed_job_never_leaves_killed_whatever_any_token_reports(world):
    """The second form of the hole: KILLED, then WAITING (the table lets an ended job go back to WAITING: that is
    central's resubmission, never a report)."""
    jid, agent, job = running_job(world, "alice", "STARTED")
    world.user("alice").kill(jid)
    agent.set_status(jid, "KILLED", 0, kill_reason="KILLED")
    for reporter in (agent, world.admin):
        for state in ("WAITING", "STARTED", "RUNNING", "DONE", "ERROR_IB"):
            with expect_error(409, "already_final") as info:
                reporter.set_status(jid, state, 0)
            assert "has ended (KILLED)" in info.value.message
    with expect_error(401, "token_revoked"):
        world.client(job["token"]).set_status(jid, "WAITING", 0)
    assert agent.set_status(jid, "KILLED", 0)["state"] == "KILLED", "repeating the end is still a no-op"
    got = world.admin.get_job(jid)
    assert (got["state"], got["resubmission"], got["kill_requested"]) == ("KILLED", 0, True)
    assert world.agent("another").match(site_map()) is None


def test_a_kill_requested_on_a_running_job_ends_it_in_the_pilots_first_error_state(world):
    jid, agent, _ = running_job(world, "alice", "STARTED", "RUNNING")
    world.user("alice").kill(jid)
    run_through(agent, {"id": jid, "resubmission": 0}, "ERROR_E", exit_code=1)
    assert world.admin.get_job(jid)["state"] == "ERROR_E"
    with expect_error(409, "already_final"):
        agent.set_status(jid, "KILLED", 0)


def test_a_kill_requested_on_a_running_job_never_ends_it_done(world):
    """The pilot's DONE after the kill request (the payload ended well before the pilot learned the kill) is taken
    as KILLED, and the job stays KILLED (issue 19; test_central_control.py has the details)."""
    jid, agent, _ = running_job(world, "alice", "STARTED", "RUNNING")
    world.user("alice").kill(jid)
    run_through(agent, {"id": jid, "resubmission": 0}, "SAVING", "DONE", exit_code=0)
    assert world.admin.get_job(jid)["state"] == "KILLED"
    assert agent.set_status(jid, "KILLED", 0)["state"] == "KILLED", "repeating the end is a no-op"


def test_a_job_ending_before_running_after_its_kill_was_requested_is_not_resubmitted(world):
    """ERROR_IB before RUNNING is normally retried elsewhere (up to 3 times): not once the user asked to kill it."""
    jid, agent, _ = running_job(world, "alice", "STARTED")
    world.user("alice").kill(jid)
    out = agent.set_status(jid, "ERROR_IB", 0, message="input download failed")
    assert (out["state"], out["resubmission"]) == ("ERROR_IB", 0)
    assert world.admin.get_job(jid)["state"] == "ERROR_IB"
    assert "not resubmitted: it ended ERROR_IB before reaching RUNNING, but its kill was requested" in \
        trace_texts(world, jid)[-1]
    assert world.agent("another").match(site_map()) is None


def test_a_lost_job_whose_kill_was_requested_expires_and_is_not_resubmitted(world):
    jid, agent, _ = running_job(world, "alice", "STARTED")
    world.user("alice").kill(jid)
    t = time.time()
    assert sweeper.sweep(world.db, now=t + 3601).zombies == [jid]
    r = sweeper.sweep(world.db, now=t + 7300)
    assert r.expired == [jid] and r.resubmitted == []
    assert world.admin.get_job(jid)["state"] == "EXPIRED"
    with expect_error(409, "already_final"):
        agent.set_status(jid, "WAITING", 0)


def test_a_pilot_may_still_give_back_a_job_nobody_killed(world):
    jid, agent, _ = running_job(world, "alice", "STARTED")
    assert agent.set_status(jid, "WAITING", 0)["state"] == "WAITING"
    assert world.agent("another").match(site_map())["id"] == jid


# -- the states each role may set --


@pytest.mark.parametrize("state", ["ZOMBIE", "EXPIRED", "ASSIGNED", "FAULTY", "INCORRECT"])
def test_only_central_sets_its_own_states(world, state):
    """ZOMBIE and EXPIRED are the sweeper's, ASSIGNED the broker's: no token reports them, not even an admin's."""
    jid, agent, job = running_job(world, "alice", "STARTED", "RUNNING")
    for reporter in (agent, world.client(job["token"]), world.admin):
        with expect_error(403, "forbidden") as info:
            reporter.set_status(jid, state, 0)
        assert f"may not set {state}" in info.value.message and "only central sets it" in info.value.message
    got = world.admin.get_job(jid)
    assert got["state"] == "RUNNING"
    assert not any(t.startswith(state) for t in trace_texts(world, jid) if state != "ASSIGNED")


def test_the_role_table_covers_every_state_and_stays_within_the_transition_table():
    every = set(JobStatus)
    pilot = auth.SETTABLE_STATES["agent"]
    assert auth.SETTABLE_STATES["job"] == pilot == auth.SETTABLE_STATES["admin"] == auth.SETTABLE_STATES["tower"]
    assert auth.SETTABLE_STATES["user"] == auth.SETTABLE_STATES["ce"] == frozenset()
    assert pilot | set(auth.CENTRAL_STATES) == every and not pilot & set(auth.CENTRAL_STATES)
    reachable = set().union(*TRANSITIONS.values())
    assert pilot <= reachable | {JobStatus.ERROR_I}, "a state a pilot may set is one some transition leads to"


def _doc_table(heading: str) -> list:
    text = (ROOT / "docs" / "central-api.md").read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|") and not line.startswith("|--")]


def test_the_docs_show_the_role_table_the_code_enforces():
    """docs/central-api.md's table: `status` where a role may report the state (auth.SETTABLE_STATES), `kill` where
    it reaches it through POST /jobs/{id}/kill, `resubmit` where through POST /jobs/{id}/resubmit, and in the
    central column what of central sets it."""
    rows = _doc_table("## The states each role may set")
    header, body = rows[0], rows[1:]
    roles = header[1:]
    assert roles == ["agent", "tower", "job", "admin", "user", "ce", "central"]
    seen = set()
    for row in body:
        state = JobStatus[row[0]]
        seen.add(state)
        for role, cell in zip(roles, row[1:]):
            if role == "central":
                assert (cell != "") == (state in auth.CENTRAL_STATES or state is JobStatus.WAITING), (state, cell)
                continue
            assert ("status" in cell) == (state in auth.SETTABLE_STATES[role]), (state.name, role, cell)
            assert ("kill" in cell) == (state is JobStatus.KILLED and role in ("user", "admin")), (state.name, role)
            assert ("resubmit" in cell) == (state is JobStatus.WAITING and role in ("user", "admin")), (state.name, role)
    assert seen == set(JobStatus)


# -- traces: categories and times --


def test_no_token_writes_state_lines_and_the_time_of_a_line_is_centrals(world):
    """The hole: a job token appended `state` lines dated whenever it liked, forging the job's history."""
    jid, agent, job = running_job(world, "alice", "STARTED", "RUNNING")
    assigned_at = next(e["ts"] for e in world.admin.trace(jid) if e["text"].startswith("ASSIGNED"))
    before = len(world.admin.trace(jid))
    forged = {"ts": assigned_at - 86400, "category": "state", "text": "DONE: reported by admin 'root'"}
    for writer in (world.client(job["token"]), agent, world.admin):
        with expect_error(400) as info:
            writer.append_trace(jid, [{"category": "trace", "text": "fine"}, forged])
        assert "trace entry 1: category" in info.value.message and "central's own" in info.value.message
    assert len(world.admin.trace(jid)) == before
    t0 = time.time()
    world.client(job["token"]).append_trace(jid, [{"ts": assigned_at - 86400, "category": "trace", "text": "old?"}])
    line = world.admin.trace(jid)[-1]
    assert line["text"] == "old?" and t0 <= line["ts"] <= time.time(), "dated when central took it"
    assert line["reported_ts"] == assigned_at - 86400, "the reporter's time is kept, beside"
    states = [e for e in world.admin.trace(jid) if e["category"] == "state"]
    assert [e["ts"] for e in states] == sorted(e["ts"] for e in states)
    assert all(e["reported_ts"] is None or e["reported_ts"] >= assigned_at for e in states)


def test_a_state_report_is_dated_no_earlier_than_the_assignment_and_no_later_than_now(world):
    """A state change is dated when the reporter says (held back through an outage, it arrives late), within
    bounds; its trace line is dated by central like every line, the accepted time beside it."""
    jid, agent, _ = running_job(world)
    assigned = world.admin.get_job(jid)["state_since"]
    agent.set_status(jid, "STARTED", 0, at=assigned - 86400 * 365)
    assert world.admin.get_job(jid)["state_since"] == assigned
    t0 = time.time()
    agent.set_status(jid, "RUNNING", 0, at=t0 + 86400 * 365)
    running = world.admin.get_job(jid)["state_since"]
    assert t0 <= running <= time.time()
    lines = {state_of(e["text"]): e for e in world.admin.trace(jid) if e["category"] == "state"}
    assert lines["STARTED"]["reported_ts"] == assigned and lines["RUNNING"]["reported_ts"] == running
    assert assigned <= lines["STARTED"]["ts"] <= lines["RUNNING"]["ts"] <= time.time()


# -- Price --


def test_price_is_bounded_so_no_user_jumps_the_queue_with_it(world):
    alice = world.user("alice")
    n = len(world.admin.list_jobs())
    for price in ("1e308", "101"):
        for submitter in (alice, world.admin):
            with expect_error(400, "price_too_high") as info:
                submitter.submit(jdl(Price=Raw(price)))
            assert "Price must be at most 100" in info.value.message
    assert len(world.admin.list_jobs()) == n, "nothing queued"
    cheap = alice.submit(jdl(Price=100))
    assert world.admin.get_job(cheap)["price"] == 100


# -- OutputDir within the user's areas --


@pytest.mark.parametrize("output_dir", [
    "/gridpilot/user/b/bob/job-7", "/", "/gridpilot", "/gridpilot/user/a/alice2", "/gridpilot/user/a/alicex/x",
    "/gridpilot/user/a/alice/../../b/bob", "relative/dir", "/gridpilot/user/a",
])
def test_an_output_dir_outside_the_users_areas_is_refused_at_submit(world, output_dir):
    alice = world.user("alice")
    with expect_error(400) as info:
        alice.submit(jdl(OutputDir=output_dir))
    assert "OutputDir" in info.value.message
    assert alice.list_jobs() == []


@pytest.mark.parametrize("output_dir", ["/gridpilot/user/a/alice", "/gridpilot/user/a/alice/run/1/",
                                        "/gridpilot/user/a/alice/#alien_counter_03i#"])
def test_an_output_dir_in_the_users_own_area_is_taken_normalized(world, output_dir):
    jid = world.user("alice").submit(jdl(OutputDir=output_dir))
    assert world.admin.get_job(jid)["output_dir"] == output_dir.rstrip("/")


def test_a_job_without_output_dir_writes_in_its_users_area(world):
    jid, _, job = running_job(world, "alice")
    assert job["output_dir"] == f"/gridpilot/user/a/alice/job-{jid}"
    assert world.admin.get_job(jid)["output_dir"] == job["output_dir"]
    se = world.admin.storage_elements()[0]["name"]
    f = world.client(job["token"]).register_file(lfn=f"{job['output_dir']}/out.txt", size=3, se=se, pfn="file:///o")
    assert f["owner"] == "alice"


def test_a_job_may_not_repoint_another_users_replica(world):
    """The hole: alice's job with OutputDir = "/gridpilot/user/bob/job-7" re-pointed bob's replica to its own file.
    Submit now refuses that OutputDir; and where two users may both write (an area granted to both, or an admin's
    submission), a file stays its owner's: only its owner's jobs add or change replicas."""
    se = world.admin.storage_elements()[0]["name"]
    bob_dir = "/gridpilot/user/b/bob/job-7"
    bid, _, bjob = running_job(world, "bob", OutputDir=bob_dir)
    lfn = f"{bob_dir}/AO2D.root"
    world.client(bjob["token"]).register_file(lfn=lfn, size=10, adler32="0000000a", se=se, pfn="file:///bob/1")
    with expect_error(400, "output_dir_outside_area"):
        world.user("alice").submit(jdl(OutputDir=bob_dir))
    # An admin may submit alice's job with any OutputDir; it still cannot touch bob's file.
    aid = world.admin.submit(jdl(User="alice", OutputDir=bob_dir))
    ajob = world.agent("agent-a").match(site_map())
    assert ajob["id"] == aid
    alice_job = world.client(ajob["token"])
    world.admin.add_storage_element("OTHER::SE", "file:///tmp/other-se")
    for target in (se, "OTHER::SE"):
        with expect_error(403) as info:
            alice_job.register_file(lfn=lfn, size=10, adler32="0000000a", se=target, pfn="file:///alice/evil")
        assert "belongs to bob" in info.value.message
    assert world.admin.lookup_file(lfn)["replicas"] == [{"se": se, "pfn": "file:///bob/1"}]
    # A new file there is alice's, and bob's jobs may not touch it in turn.
    mine = alice_job.register_file(lfn=f"{bob_dir}/alice.txt", size=1, se=se, pfn="file:///alice/1")
    assert mine["owner"] == "alice"
    with expect_error(403):
        world.client(bjob["token"]).register_file(lfn=f"{bob_dir}/alice.txt", size=1, se=se, pfn="file:///bob/x")
    # Another job of bob's may add a replica of bob's file: a file's owner is its user, not one job.
    b2, _, b2job = running_job(world, "bob", OutputDir=bob_dir)
    both = world.client(b2job["token"]).register_file(lfn=lfn, size=10, se="OTHER::SE", pfn="file:///bob/2")
    assert {r["pfn"] for r in both["replicas"]} == {"file:///bob/1", "file:///bob/2"}


def test_an_admin_grants_and_revokes_areas(world):
    alice, bob = world.user("alice"), world.user("bob")
    with expect_error(400, "output_dir_outside_area"):
        alice.submit(jdl(OutputDir="/alice/data/2024/run1"))
    g = world.admin.grant_area("alice", "/alice/data/")
    assert (g["user"], g["path"], g["granted_by"], g["already"]) == ("alice", "/alice/data", world.admin.whoami()["subject"], False)
    assert world.admin.grant_area("alice", "/alice/data")["already"] is True
    jid = alice.submit(jdl(OutputDir="/alice/data/2024/run1"))
    assert world.admin.get_job(jid)["output_dir"] == "/alice/data/2024/run1"
    with expect_error(400, "output_dir_outside_area"):
        bob.submit(jdl(OutputDir="/alice/data/2024/run1"))
    mine = alice.areas()
    assert [a["path"] for a in mine["areas"]] == ["/gridpilot/user/a/alice", "/alice/data"]
    assert mine["areas"][0]["granted_by"] is None and mine["user"] == "alice"
    assert [a["path"] for a in world.admin.areas()["areas"]] == ["/alice/data"]
    with expect_error(403):
        alice.areas("bob")
    with expect_error(403):
        alice.grant_area("alice", "/")
    assert world.admin.revoke_area("alice", "/alice/data")["revoked"] is True
    assert world.admin.revoke_area("alice", "/alice/data")["revoked"] is False
    with expect_error(400, "output_dir_outside_area"):
        alice.submit(jdl(OutputDir="/alice/data/2024/run2"))
    assert world.admin.get_job(jid)["output_dir"] == "/alice/data/2024/run1", "a queued job keeps its OutputDir"
    for user, path in (("", "/x"), ("a\nb", "/x"), ("x" * 256, "/x"), ("alice", "x"), ("alice", "/a/../b"),
                       ("alice", "/" + "a" * 1100), ("alice", None)):
        with expect_error(400):
            world.admin.grant_area(user, path)


def test_alices_layout_and_the_examples(tmp_path, db_url):
    """With ALICE's user area, the examples' user JDL is accepted from its user, refused from another; production
    areas (/alice/data, /alice/sim) are granted to the production user."""
    for world in start_world(tmp_path / "alice", db_url, user_area="/alice/cern.ch/user/{initial}/{user}"):
        text = (ROOT / "examples" / "output_replicas.jdl").read_text()
        jid = world.user("grigoras").submit(text)
        assert world.admin.get_job(jid)["output_dir"] == "/alice/cern.ch/user/g/grigoras/filtered/536608"
        with expect_error(400, "output_dir_outside_area"):
            world.user("alice").submit(text)
        other = world.user("alice").submit(jdl())
        assert world.admin.get_job(other)["output_dir"] == f"/alice/cern.ch/user/a/alice/job-{other}"
        reco = (ROOT / "examples" / "reco_async_multicore.jdl").read_text()
        with expect_error(400, "output_dir_outside_area"):
            world.user("aliprod").submit(reco)
        world.admin.grant_area("aliprod", "/alice/data")
        assert world.user("aliprod").submit(reco)


def test_a_user_whose_name_is_not_one_path_component_has_no_own_area(world):
    with expect_error(400) as info:
        world.user("bob/x").submit(jdl())
    assert "OutputDir" in info.value.message and "no area of its own" in info.value.message
    with expect_error(400, "output_dir_outside_area"):
        world.user("bob/x").submit(jdl(OutputDir="/gridpilot/user/b/bob/x"))
    world.admin.grant_area("bob/x", "/shared/bobx")
    assert world.user("bob/x").submit(jdl(OutputDir="/shared/bobx/1"))


def test_a_bad_user_area_setting_is_refused_at_start(tmp_path):
    from gridpilot.central import areas
    from gridpilot.errors import ConfigError

    for bad in ("gridpilot/{user}", "/gridpilot/user", "/x/{user}/{home}", "/x/{user}/../y", "/x/{user", 5):
        with pytest.raises(ConfigError):
            areas.check_template(bad)
    assert areas.check_template("/alice/cern.ch/user/{initial}/{user}")


# -- what a caller learns about jobs that are not its own --


def test_another_users_job_is_answered_as_if_it_did_not_exist(world):
    jid, agent, job = running_job(world, "alice", "STARTED")
    absent = jid + 100
    bob = world.user("bob")

    def answer(client, method, path, body=None):
        r = urllib3.request(method, world.url + path, json=body,
                            headers={"Authorization": f"Bearer {client.token}"}, retries=False)
        return r.status, r.data.decode().replace(str(absent), "N").replace(str(jid), "N")

    for method, path, body in (("GET", "/api/v1/jobs/{}", None), ("GET", "/api/v1/jobs/{}/trace", None),
                               ("POST", "/api/v1/jobs/{}/kill", {})):
        mine = answer(bob, method, path.format(jid), body)
        none = answer(bob, method, path.format(absent), body)
        assert mine == none and mine[0] == 404, (path, mine, none)
    other_agent = world.agent("other")
    for path, body in (("/api/v1/jobs/{}/status", {"state": "RUNNING", "resubmission": 0}),
                       ("/api/v1/jobs/{}/trace", {"entries": [{"category": "trace", "text": "x"}]})):
        assert answer(other_agent, "POST", path.format(jid), body) == \
            answer(other_agent, "POST", path.format(absent), body)
    # A CE of the same site sees the job (it has its own reasons to), so its refusal can say why.
    other_ce = world.ce("ce2", site=SITE, ce=CE + "-2")
    full = other_ce.heartbeats_full([{"job_id": jid, "resubmission": 0}, {"job_id": absent, "resubmission": 0}])
    assert sorted((r["job_id"], r["code"]) for r in full["rejected"]) == [(jid, "forbidden"),
                                                                          (absent, "job_not_found")]
    assert world.user("alice").get_job(jid)["state"] == "STARTED"


# -- /metrics without a token --


def test_metrics_are_open_and_name_no_user_job_or_token(world):
    """/metrics stays open to a scraper without a token (docs/central-api.md): it must then show nothing about any
    one user or job: only counts by state, route and CE."""
    secret_user = "carol-the-secret-user"
    jid = world.user(secret_user).submit(jdl(), name="secret-job-name.jdl")
    agent = world.agent("pilot-with-a-name")
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING")
    world.ce().report_pilots({"queued": 1, "running": 1}, backend="local")
    r = urllib3.request("GET", world.url + "/metrics", retries=False)
    assert r.status == 200
    text = r.data.decode()
    m = Exposition(text)
    assert m.value("gridpilot_jobs", state="RUNNING") == 1
    for secret in (secret_user, "secret-job-name", "pilot-with-a-name", job["token"], world.admin.token, "node1"):
        assert secret not in text
    labels = {k for f in m.families.values() for s in f.samples for k in s.labels}
    assert labels <= {"state", "method", "route", "status", "result", "ce", "site", "le", "generation",
                      "implementation", "major", "minor", "patchlevel", "version"}, labels
    assert not re.search(rf'"[^"]*/{jid}[^"]*"', text), "no job id in any label"

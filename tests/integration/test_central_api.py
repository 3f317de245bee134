"""The HTTP API end to end through gridpilot.client, each test on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import time

import orjson
import pytest
from support import tokens as token_support
import urllib3
from support.central import CE, Raw, SITE, count_jobs, expect_error, jdl, run_through, site_map, start_world
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.metrics import Exposition

from gridpilot.central import schema, sweeper, tokens
from gridpilot.errors import CentralError
from gridpilot.tracefmt import state_of


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def raw_post(world, path, data: bytes, token=None, headers=None):
    h = {"Authorization": f"Bearer {token or world.admin.token}", "Content-Type": "application/json"}
    h.update(headers or {})
    r = urllib3.request("POST", world.url + path, body=data, headers=h, retries=False)
    return r.status, orjson.loads(r.data) if r.data else None


# -- submit, get, list --


def test_submit_get_and_list(world):
    alice, bob = world.user("alice"), world.user("bob")
    a1 = alice.submit(jdl(TTL=600), name="a1.jdl")
    a2 = alice.submit(jdl(TTL=700))
    b1 = bob.submit(jdl())
    job = alice.get_job(a1)
    assert job["id"] == a1 and job["user"] == "alice" and job["name"] == "a1.jdl"
    assert job["state"] == "WAITING" and job["state_code"] == 5 and job["kill_reason"] is None
    assert job["kill_reason_code"] is None and job["kill_reason_text"] is None
    assert job["resubmission"] == 0 and job["site"] is None and job["exit_code"] is None
    assert job["jdl"] == jdl(TTL=600) and job["resources"] == {}
    assert job["created"] <= job["updated"] <= time.time() + 1
    assert [j["id"] for j in alice.list_jobs()] == [a2, a1], "a user lists its own jobs, newest first"
    assert [j["id"] for j in world.admin.list_jobs(user="bob")] == [b1]
    assert len(world.admin.list_jobs(state="WAITING")) == 3
    assert world.admin.list_jobs(state="RUNNING,DONE") == []
    assert [j["id"] for j in world.admin.list_jobs(limit=1, offset=1)] == [a2]
    with expect_error(403, "forbidden"):
        alice.list_jobs(user="bob")
    with expect_error(400):
        world.admin.list_jobs(state="NOPE")
    assert alice.trace(a1)[0]["text"].startswith("WAITING: submitted by alice")


def test_invalid_jdl_is_refused_with_its_position_and_nothing_is_stored(world):
    text = 'Executable = "/bin/true";\nTTL = 600;\nRequirements = other.TTL > ;\n'
    with expect_error(400, "invalid_jdl") as info:
        world.admin.submit(text, name="broken.jdl")
    assert (info.value.line, info.value.column) == (3, 28)
    with expect_error(400, "invalid_jdl") as info:
        world.admin.submit('TTL = 600;\n')
    assert "Executable" in info.value.message
    assert count_jobs(world) == 0


def test_user_may_not_submit_for_someone_else_or_set_priority(world):
    alice = world.user("alice")
    with expect_error(403):
        alice.submit(jdl(User="bob"))
    with expect_error(403):
        alice.submit(jdl(), priority=5)
    jid = world.admin.submit(jdl(User="bob"), priority=5)
    assert world.admin.get_job(jid)["user"] == "bob" and world.admin.get_job(jid)["priority"] == 5
    assert count_jobs(world) == 1


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "bad_json"),
        (b"", 400, "bad_json"),
        (b"[1, 2]", 400, "bad_json"),
        (b'{"name": "x"}', 400, "bad_request"),
        (b'{"jdl": 42}', 400, "bad_request"),
        (b'{"jdl": "Executable = \\"/bin/true\\";", "priority": "high"}', 400, "bad_request"),
    ],
)
def test_bad_submissions_get_4xx_with_a_message_and_change_nothing(world, body, status, code):
    got, answer = raw_post(world, "/api/v1/jobs", body)
    assert got == status and answer["error"]["code"] == code and answer["error"]["message"]
    assert count_jobs(world) == 0


def test_oversized_body_is_refused_before_it_is_read(tmp_path, db_url):
    for world in start_world(tmp_path / "state", db_url, max_body=4096):
        big = orjson.dumps({"jdl": jdl() + "// " + "x" * 5000 + "\n"})
        status, answer = raw_post(world, "/api/v1/jobs", big)
        assert status == 413 and answer["error"]["code"] == "body_too_large"
        # Without a Content-Length the cap holds while streaming.
        def chunks():
            for i in range(0, len(big), 1000):
                yield big[i:i + 1000]
        r = urllib3.PoolManager().request("POST", world.url + "/api/v1/jobs", body=chunks(), retries=False,
                                          headers={"Authorization": f"Bearer {world.admin.token}"})
        assert r.status == 413
        assert count_jobs(world) == 0
        assert world.admin.submit(jdl()) == 1, "a body under the cap still works"


def test_unknown_job_and_unknown_route(world):
    with expect_error(404, "job_not_found"):
        world.admin.get_job(999)
    with expect_error(404, "job_not_found"):
        world.admin.kill(999)
    with expect_error(404, "job_not_found"):
        world.admin.set_status(999, "RUNNING", 0)
    with expect_error(404, "job_not_found"):
        world.admin.trace(999)
    with expect_error(404, "not_found"):
        world.admin.request("GET", "/api/v1/nothing-here")
    with expect_error(405, "method_not_allowed"):
        world.admin.request("DELETE", "/api/v1/jobs")


# -- match --


def test_match_assigns_once_with_a_job_token(world):
    out = "/gridpilot/user/a/alice/out"
    jid = world.user("alice").submit(jdl(TTL=600, OutputDir=out))
    agent = world.agent("agent1")
    job = agent.match(site_map(close_se=["LOCAL::GRIDPILOT::FILE"]))
    assert job["id"] == jid and job["user"] == "alice" and job["resubmission"] == 0
    assert job["jdl"] == jdl(TTL=600, OutputDir=out) and job["output_dir"] == out
    assert [s["name"] for s in job["storage"] if s["close"]] == ["LOCAL::GRIDPILOT::FILE"]
    claims = world.client(job["token"]).whoami()
    assert claims["role"] == "job" and claims["job_id"] == jid and claims["resubmission"] == 0
    assert agent.match(site_map()) is None
    got = world.admin.get_job(jid)
    assert (got["state"], got["site"], got["ce"], got["node"]) == ("ASSIGNED", SITE, CE, "node1")
    assert "ASSIGNED to agent agent1" in world.admin.trace(jid)[-1]["text"]


def test_a_forgotten_assignment_is_matched_again_and_the_first_token_refused(world):
    """A database crash may forget the last assignments (matches commit without waiting for the disk): the job
    is WAITING again, is matched anew, and the pilot holding the first token is refused at its first report."""
    jid = world.admin.submit(jdl())
    first = world.agent("agent1").match(site_map())
    with world.db.write() as conn:  # what the database looks like after losing that commit
        conn.execute(schema.jobs.update().where(schema.jobs.c.id == jid).values(
            state=5, site=None, ce=None, node=None, agent=None, token_jti=None, token_exp=None, heartbeat=None))
    second = world.agent("agent2").match(site_map())
    assert second["id"] == jid and second["resubmission"] == first["resubmission"] == 0
    with expect_error(403):
        world.client(first["token"]).set_status(jid, "STARTED", 0)
    assert world.client(second["token"]).set_status(jid, "STARTED", 0)["state"] == "STARTED"


def test_match_checks_the_agent_binding_and_the_site_map(world):
    world.admin.submit(jdl())
    agent = world.agent("agent1")
    with expect_error(403):
        agent.match(site_map(site="ELSEWHERE"))
    with expect_error(400, "bad_site_map"):
        agent.match(site_map(cores="eight"))
    with expect_error(400, "bad_site_map"):
        agent.match(site_map(gpus=[{"vendor": 1}]))
    assert world.admin.list_jobs(state="WAITING"), "a refused match assigns nothing"
    job = agent.match({"ttl": 3600})  # site and CE default to the token's
    assert job is not None and world.admin.get_job(job["id"])["site"] == SITE


def test_a_gpu_of_unknown_model_takes_jobs_asking_a_count_or_a_vendor_not_a_model(world):
    """A node without pci.ids sends its GPUs without a model (null from older pilots, absent from newer ones, with
    the PCI id instead): central takes them for `GPU = 1` and `GPU = "NVIDIA"`, never for `GPU = "H100"`."""
    admin = world.admin
    by_model = admin.submit(jdl(GPU="H100", TTL=600))
    by_count = admin.submit(jdl(GPU=1, TTL=600))
    by_vendor = admin.submit(jdl(GPU="nvidia", TTL=600))
    two = admin.submit(jdl(GPU=2, TTL=600))
    agent = world.agent()
    null_model = {"vendor": "NVIDIA", "model": None, "pci_address": "0000:41:00.0"}
    no_model = {"vendor": "NVIDIA", "pci_address": "0000:81:00.0", "pci_id": "10de:2321"}
    assert world.ce().probe(site_map(gpus=[null_model, no_model]))["waiting"] == 3, "all but the one asking H100"
    got = {agent.match(site_map(gpus=[gpu]))["id"] for gpu in (null_model, no_model)}
    assert got == {by_count, by_vendor}
    assert agent.match(site_map(gpus=[null_model, no_model]))["id"] == two
    assert agent.match(site_map(gpus=[null_model, no_model])) is None
    assert {j["id"] for j in admin.list_jobs(state="WAITING")} == {by_model}
    named = {"vendor": "NVIDIA", "model": "GH100 [H100L 94GB]", "pci_address": "0000:c1:00.0"}
    assert agent.match(site_map(gpus=[no_model, named]))["id"] == by_model


@pytest.mark.parametrize("gpus, field", [
    ([{"vendor": "NVIDIA", "model": 5}], "gpus[0].model"),
    ([{"vendor": "NVIDIA", "model": "A100"}, {"vendor": "NVIDIA", "model": ["A100"]}], "gpus[1].model"),
    ([{"vendor": "NVIDIA", "model": "x" * 257}], "gpus[0].model"),
    ([{"vendor": None, "model": "A100", "pci_address": 41}], "gpus[0].pci_address"),
    ([{"vendor": "NVIDIA", "pci_address": "41:00.0"}], "gpus[0].pci_address"),
    ([{"vendor": "NVIDIA", "pci_id": "10de:23210"}], "gpus[0].pci_id"),
    ([{"vendor": "N" * 65}], "gpus[0].vendor"),
    (["NVIDIA"], "gpus[0]"),
    ([{"vendor": "NVIDIA"}] * 257, "gpus"),
])
def test_a_bad_gpu_in_the_site_map_is_a_400_naming_its_field(world, gpus, field):
    world.admin.submit(jdl(GPU=1))
    with expect_error(400, "bad_site_map") as e:
        world.agent().match(site_map(gpus=gpus))
    assert f"site map field '{field}'" in e.value.message
    with expect_error(400, "bad_site_map"):
        world.ce().probe(site_map(gpus=gpus))
    assert [j["state"] for j in world.admin.list_jobs()] == ["WAITING"], "a refused match assigns nothing"


def test_match_respects_resources_requirements_and_users(world):
    admin = world.admin
    big = admin.submit(jdl(CPUCores=8, TTL=600))
    long = admin.submit(jdl(TTL=50000))
    mem = admin.submit(jdl(MemorySize="64GB", TTL=600))
    gpu = admin.submit(jdl(GPU="MI50", TTL=600))
    part = admin.submit(jdl(TTL=600, Requirements=Raw('member(other.GridPartitions, "gpu")')))
    bob = admin.submit(jdl(TTL=600, User="bob"))
    agent = world.agent()
    small = site_map(cores=4, ttl=40000, memory_mb=16000, nousers=["bob"])
    assert agent.match(small) is None, "nothing fits a 4-core, 16 GB slot without GPU that refuses bob"
    amd = {"vendor": "AMD", "model": "Radeon Instinct MI50 32GB", "pci_address": "0000:03:00.0"}
    assert agent.match(site_map(cores=4, ttl=40000, memory_mb=16000, gpus=[amd], nousers=["bob"]))["id"] == gpu
    assert agent.match(site_map(cores=4, ttl=40000, memory_mb=16000, partition="gpu,multicore_8",
                                nousers=["bob"]))["id"] == part
    assert agent.match(site_map(cores=4, ttl=40000, users=["bob"]))["id"] == bob
    assert agent.match(site_map(cores=4, ttl=40000, memory_mb=70000))["id"] == mem
    assert agent.match(site_map(cores=8, ttl=40000))["id"] == big
    assert agent.match(site_map(ttl=60000))["id"] == long


def test_match_order_is_priority_then_price_then_age(world):
    admin = world.admin
    old_cheap = admin.submit(jdl(Price=1))
    new_dear = admin.submit(jdl(Price=2))
    urgent = admin.submit(jdl(Price=1), priority=10)
    old_dear = admin.submit(jdl(Price=2))
    agent = world.agent()
    got = [agent.match(site_map())["id"] for _ in range(4)]
    assert got == [urgent, new_dear, old_dear, old_cheap]


def test_match_skips_many_jobs_whose_requirements_fail_here(world):
    # More distinct failing Requirements texts than one batch, then one that holds: found in one match.
    for i in range(40):
        world.admin.submit(jdl(Requirements=Raw(f'other.CE == "ELSEWHERE{i}"'), TTL=600))
    for _ in range(20):
        world.admin.submit(jdl(Requirements=Raw('other.CE == "ELSEWHERE0"'), TTL=600))
    ok = world.admin.submit(jdl(Requirements=Raw(f'other.CE == "{CE}"'), TTL=600))
    assert world.agent().match(site_map())["id"] == ok
    probe = world.ce().probe(site_map())
    assert probe["waiting"] == 0 and probe["scanned"] == 60


# -- status, resubmission, kill --


def test_a_job_runs_to_done_and_its_token_is_revoked(world):
    jid = world.user().submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    jc = world.client(job["token"])
    assert jc.set_status(jid, "STARTED", 0)["state"] == "STARTED"
    assert jc.set_status(jid, "STARTED", 0)["state"] == "STARTED", "a repeated report is a no-op"
    run_through(agent, job, "RUNNING", "SAVING")
    out = agent.set_status(jid, "DONE", 0, exit_code=0, resources={"cpu_time_s": 12.5, "rss_bytes": 1 << 20})
    assert out == {"id": jid, "state": "DONE", "state_code": 15, "resubmission": 0}
    got = world.admin.get_job(jid)
    assert got["state"] == "DONE" and got["exit_code"] == 0 and got["resources"]["cpu_time_s"] == 12.5
    with expect_error(401, "token_revoked"):
        jc.get_job(jid)
    states = [state_of(e["text"]) for e in world.admin.trace(jid) if e["category"] == "state"]
    assert states == ["WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"]


def test_a_state_is_dated_when_the_reporter_says_within_bounds(world):
    """`at` dates a state change held back through an outage; a worker node's clock that is off cannot date it in
    the future nor before the state it follows, and a bad `at` changes nothing."""
    jid = world.user().submit(jdl())
    agent = world.agent()
    agent.match(site_map())
    assigned_at = world.admin.get_job(jid)["state_since"]
    with expect_error(400) as info:
        agent.set_status(jid, "STARTED", 0, at="yesterday")
    assert "'at'" in info.value.message
    assert world.admin.get_job(jid)["state"] == "ASSIGNED"
    agent.set_status(jid, "STARTED", 0, at=assigned_at - 3600)
    assert world.admin.get_job(jid)["state_since"] == assigned_at, "not before the state it follows"
    before = time.time()
    agent.set_status(jid, "RUNNING", 0, at=before + 3600)
    running_since = world.admin.get_job(jid)["state_since"]
    assert before <= running_since <= time.time(), "not in the future"
    time.sleep(0.3)
    agent.set_status(jid, "SAVING", 0, at=running_since + 0.1)
    assert world.admin.get_job(jid)["state_since"] == running_since + 0.1
    # The trace lines say so beside central's own time of each line.
    dated = {state_of(e["text"]): e["reported_ts"] for e in world.admin.trace(jid) if e["category"] == "state"}
    assert dated["STARTED"] == assigned_at and dated["SAVING"] == running_since + 0.1


def test_illegal_transition_and_stale_resubmission_are_409_and_change_nothing(world):
    jid = world.admin.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    with expect_error(409, "illegal_transition") as info:
        agent.set_status(jid, "DONE", 0)
    assert "ASSIGNED -> DONE" in info.value.message
    with expect_error(409, "stale_resubmission"):
        agent.set_status(jid, "STARTED", 1)
    with expect_error(400):
        agent.set_status(jid, "SAVED", 0)
    with expect_error(400):
        agent.set_status(jid, "STARTED", 0, kill_reason="BORED")
    assert world.admin.get_job(jid)["state"] == "ASSIGNED"
    run_through(agent, job, "STARTED", "RUNNING")
    with expect_error(409, "illegal_transition"):
        agent.set_status(jid, "WAITING", 0)


def test_job_failing_before_running_is_resubmitted_three_times(world):
    jid = world.user().submit(jdl())
    agent = world.agent()
    for n in range(3):
        job = agent.match(site_map())
        assert job["id"] == jid and job["resubmission"] == n
        out = run_through(agent, job, "STARTED", "ERROR_IB", message="input download failed")
        assert out["state"] == "WAITING" and out["resubmission"] == n + 1
        with expect_error(401, "token_revoked"):
            world.client(job["token"]).get_job(jid)
    job = agent.match(site_map())
    out = run_through(agent, job, "STARTED", "ERROR_IB")
    assert out["state"] == "ERROR_IB" and world.admin.get_job(jid)["state"] == "ERROR_IB"
    texts = [e["text"] for e in world.admin.trace(jid)]
    assert sum("WAITING: resubmitted" in t for t in texts) == 3
    assert any("WAITING: resubmitted (1 of 3) because it ended ERROR_IB before reaching RUNNING" in t for t in texts)
    assert "not resubmitted" in texts[-1]


def test_job_failing_after_running_is_not_resubmitted(world):
    jid = world.admin.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING", "ERROR_E", kill_reason="TTL", exit_code=137)
    got = world.admin.get_job(jid)
    assert (got["state"], got["kill_reason"], got["exit_code"]) == ("ERROR_E", "TTL", 137)


def test_agent_may_give_a_job_back(world):
    jid = world.admin.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    out = agent.set_status(jid, "WAITING", 0, message="cannot create sandbox")
    assert out["state"] == "WAITING" and out["resubmission"] == 1
    assert "gave it back in ASSIGNED: cannot create sandbox" in world.admin.trace(jid)[-1]["text"]
    with expect_error(401):
        world.client(job["token"]).whoami()
    assert agent.match(site_map())["resubmission"] == 1


def test_kill_waiting_at_once_and_running_through_the_heartbeat(world):
    alice = world.user("alice")
    waiting = alice.submit(jdl())
    assert alice.kill(waiting) == {"id": waiting, "state": "KILLED", "kill_requested": False}
    killed = alice.get_job(waiting)
    assert (killed["kill_reason"], killed["kill_reason_code"], killed["kill_reason_text"]) == \
        ("KILLED", 30, "Job was killed")
    with expect_error(409, "already_final"):
        alice.kill(waiting)
    running = alice.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING")
    assert agent.heartbeats([{"job_id": running, "resubmission": 0, "sample": {}}]) == []
    assert alice.kill(running)["kill_requested"] is True
    assert alice.get_job(running)["state"] == "RUNNING"
    cmds = agent.heartbeats([{"job_id": running, "resubmission": 0, "sample": {"rss_bytes": 5}}])
    assert [(c["job_id"], c["command"]) for c in cmds] == [(running, "kill")]
    agent.set_status(running, "KILLED", 0, kill_reason="KILLED")
    assert alice.get_job(running)["state"] == "KILLED"
    cmds = agent.heartbeats([{"job_id": running, "resubmission": 0}])
    assert [c["command"] for c in cmds] == ["kill"], "a job central thinks ended gets a kill"


def test_heartbeats_in_bulk(world):
    ids = [world.admin.submit(jdl()) for _ in range(5)]
    a1, a2 = world.agent("a1"), world.agent("a2")
    jobs1 = [a1.match(site_map()) for _ in range(3)]
    jobs2 = [a2.match(site_map()) for _ in range(2)]
    items = [{"job_id": j["id"], "resubmission": 0, "sample": {"rss_bytes": j["id"]}} for j in jobs1]
    items += [{"job_id": jobs2[0]["id"], "resubmission": 0}, {"job_id": 9999, "resubmission": 0},
              {"job_id": jobs1[0]["id"], "resubmission": 7}]
    full = a1.heartbeats_full(items)
    assert full["updated"] == 2, "the duplicate id's later item (stale) replaced the first"
    # Another agent's job is answered as if absent, as GET /jobs/{id} answers it (docs/central-api.md).
    assert sorted((r["job_id"], r["code"]) for r in full["rejected"]) == sorted(
        [(jobs2[0]["id"], "job_not_found"), (9999, "job_not_found"), (jobs1[0]["id"], "stale_resubmission")])
    assert world.admin.get_job(jobs1[1]["id"])["resources"] == {"rss_bytes": jobs1[1]["id"]}
    assert world.admin.get_job(jobs2[0]["id"])["resources"] == {}
    # A CE reports for every job at its site and CE.
    full = world.ce().heartbeats_full([{"job_id": i, "resubmission": 0} for i in ids])
    assert full["updated"] == 5 and full["rejected"] == []
    with expect_error(400):
        a1.heartbeats([{"job_id": "one", "resubmission": 0}])


# -- lost jobs --


def test_silent_job_turns_zombie_then_a_heartbeat_brings_it_back(world):
    jid = world.admin.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING")
    t = time.time()
    assert sweeper.sweep(world.db, now=t + 1800).zombies == []
    assert sweeper.sweep(world.db, now=t + 3700).zombies == [jid]
    assert world.admin.get_job(jid)["state"] == "ZOMBIE"
    assert "ZOMBIE: no heartbeat for" in world.admin.trace(jid)[-1]["text"]
    agent.heartbeats([{"job_id": jid, "resubmission": 0, "sample": {"x": 1}}])
    got = world.admin.get_job(jid)
    assert got["state"] == "RUNNING" and got["resources"] == {"x": 1}
    assert any("RUNNING: heartbeat again after ZOMBIE" in e["text"] for e in world.admin.trace(jid))
    # A state report also counts as a sign of life.
    sweeper.sweep(world.db, now=time.time() + 3700)
    assert agent.set_status(jid, "SAVING", 0)["state"] == "SAVING"


def test_zombie_expires_and_a_job_lost_before_running_is_resubmitted(world):
    lost_running = world.admin.submit(jdl())
    lost_started = world.admin.submit(jdl())
    agent = world.agent()
    j1, j2 = agent.match(site_map()), agent.match(site_map())
    run_through(agent, j1, "STARTED", "RUNNING")
    run_through(agent, j2, "STARTED")
    t = time.time()
    assert sorted(sweeper.sweep(world.db, now=t + 3601).zombies) == [lost_running, lost_started]
    r = sweeper.sweep(world.db, now=t + 3601 + 3601)
    assert sorted(r.expired) == [lost_running, lost_started] and r.resubmitted == [lost_started]
    assert world.admin.get_job(lost_running)["state"] == "EXPIRED"
    got = world.admin.get_job(lost_started)
    assert got["state"] == "WAITING" and got["resubmission"] == 1 and got["site"] is None
    assert "because it was lost while STARTED" in world.admin.trace(lost_started)[-1]["text"]
    with expect_error(401, "token_revoked"):
        world.client(j1["token"]).whoami()
    cmds = agent.heartbeats([{"job_id": lost_running, "resubmission": 0}])
    assert cmds[0]["command"] == "kill"


def test_sweeper_thread_runs_in_the_server(tmp_path, db_url):
    for world in start_world(tmp_path / "s", db_url, sweep_interval_s=0.05, zombie_after_s=0.2,
                             expire_after_s=60):
        jid = world.admin.submit(jdl())
        world.agent().match(site_map())
        deadline = time.time() + 10
        while world.admin.get_job(jid)["state"] != "ZOMBIE":
            assert time.time() < deadline, "the sweeper never ran"
            time.sleep(0.05)
        assert Exposition(world.admin.metrics()).value("gridpilot_sweeper_changes_total", state="ZOMBIE") == 1


# -- traces --


def test_traces_append_and_read_since(world):
    """Lines are dated when central takes them (`ts`), the reporter's own time kept beside (`reported_ts`), so
    `since` the last line read finds every later delivery, however the reporter dated it."""
    jid = world.admin.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    jc = world.client(job["token"])
    t0 = time.time()
    assert jc.append_trace(jid, [{"category": "trace", "text": "downloading inputs"},
                                 {"ts": t0 - 3600, "category": "proc", "text": "1 | 2 | 3"}]) == 2
    last_read = world.admin.trace(jid)[-1]["ts"]
    assert agent.append_trace(jid, [{"ts": t0 - 7200, "category": "procfmt", "text": "FRUNTIME | RUNTIME"}]) == 1
    entries = world.admin.trace(jid, since=last_read)
    assert [(e["category"], e["text"], e["reported_ts"]) for e in entries] == [
        ("procfmt", "FRUNTIME | RUNTIME", t0 - 7200)]
    lines = {e["text"]: e for e in world.admin.trace(jid)}
    assert t0 <= lines["1 | 2 | 3"]["ts"] <= entries[0]["ts"] <= time.time()
    assert lines["1 | 2 | 3"]["reported_ts"] == t0 - 3600 and lines["downloading inputs"]["reported_ts"] is None
    assert all(e["reported_ts"] is None for e in world.admin.trace(jid) if e["category"] == "state")
    n = len(world.admin.trace(jid))
    with expect_error(400):
        jc.append_trace(jid, [{"category": "gossip", "text": "x"}])
    with expect_error(400):
        jc.append_trace(jid, [{"category": "trace", "text": 5}])
    with expect_error(400):
        jc.append_trace(jid, [])
    assert len(world.admin.trace(jid)) == n, "a bad batch adds nothing, not even its good entries"
    with expect_error(400):
        world.admin.request("GET", f"/api/v1/jobs/{jid}/trace", query={"since": "yesterday"})


# -- catalogue and storage --


def test_catalogue_register_lookup_and_list(world):
    world.admin.grant_area("alice", "/alice")
    jid = world.user("alice").submit(jdl(OutputDir="/alice/run1"))
    job = world.agent().match(site_map())
    jc = world.client(job["token"])
    se = world.admin.storage_elements()[0]["name"]
    f = jc.register_file(lfn="/alice/run1/out/AO2D.root", size=1234, adler32="0a1b2c3d", se=se,
                         pfn="file:///se/1", job_id=jid)
    assert f["replicas"] == [{"se": se, "pfn": "file:///se/1"}] and f["owner"] == "alice"
    jc.register_file(lfn="/alice/run1/log.txt", size=10, se=se, pfn="file:///se/2", job_id=jid)
    with expect_error(403):
        jc.register_file(lfn="/alice/run2/x", size=1, se=se, pfn="file:///x", job_id=jid)
    with expect_error(403):
        jc.register_file(lfn="/alice/run1/x", size=1, se=se, pfn="file:///x", job_id=jid + 1)
    with expect_error(400, "unknown_se"):
        jc.register_file(lfn="/alice/run1/x", size=1, se="NO::SUCH::SE", pfn="file:///x", job_id=jid)
    with expect_error(400):
        jc.register_file(lfn="/alice/run1/../etc/passwd", size=1, se=se, pfn="file:///x", job_id=jid)
    with expect_error(409, "file_conflict"):
        jc.register_file(lfn="/alice/run1/out/AO2D.root", size=99, se=se, pfn="file:///y", job_id=jid)
    world.admin.add_storage_element("ALICE::CERN::EOS", "root://eos.example//eos/alice")
    both = jc.register_file(lfn="/alice/run1/out/AO2D.root", size=1234, md5="0" * 32, se="ALICE::CERN::EOS",
                            pfn="root://eos.example//eos/alice/1", job_id=jid)
    assert {r["se"] for r in both["replicas"]} == {se, "ALICE::CERN::EOS"} and both["md5"] == "0" * 32
    assert world.user("bob").lookup_file("/alice/run1/out/AO2D.root")["size"] == 1234
    with expect_error(404, "file_not_found"):
        world.admin.lookup_file("/alice/run1/missing")
    # (A file's other details, for `gridpilot ls -l`: test_central_job_files.py.)
    assert [{k: e[k] for k in ("name", "lfn", "type", "size") if k in e} for e in world.admin.list_dir("/alice/run1")] \
        == [{"name": "log.txt", "lfn": "/alice/run1/log.txt", "type": "file", "size": 10},
            {"name": "out", "lfn": "/alice/run1/out", "type": "dir"}]
    assert [e["name"] for e in world.admin.list_dir("/")] == ["alice"]
    with expect_error(404, "dir_not_found"):
        world.admin.list_dir("/nobody")


def test_storage_elements(world):
    names = [e["name"] for e in world.admin.storage_elements()]
    assert names == ["LOCAL::GRIDPILOT::FILE"]
    world.admin.add_storage_element("ALICE::CERN::CTA", "root://cta.example//tape", "tape")
    assert {"name": "ALICE::CERN::CTA", "url": "root://cta.example//tape", "kind": "tape"} in \
        world.user().storage_elements()
    with expect_error(400):
        world.admin.add_storage_element("bad name!", "root://x//y")
    with expect_error(403):
        world.user().add_storage_element("A::B::C", "root://x//y")


# -- tokens and service endpoints --


def test_tokens_expired_revoked_and_forged(world):
    key = world.embedded.central.keys
    old, _ = tokens.mint(key, "user", "alice", ttl_s=10, now=time.time() - 100)
    with expect_error(401, "token_expired"):
        world.client(old).list_jobs()
    forged = token_support.ed25519(token_support.payload(key.issuer), Ed25519PrivateKey.generate())
    with expect_error(401, "invalid_token"):
        world.client(forged).list_jobs()
    with expect_error(401, "unauthenticated"):
        world.client("").list_jobs()
    with expect_error(401, "invalid_token"):
        world.client("garbage").list_jobs()
    user = world.admin.mint_token("user", "alice", ttl_s=60)
    assert world.client(user).whoami()["subject"] == "alice"
    assert world.admin.revoke_token(user)["revoked"] is True
    with expect_error(401, "token_revoked"):
        world.client(user).whoami()
    with expect_error(400):
        world.admin.mint_token("job", "x")
    with expect_error(400):
        world.admin.mint_token("agent", "x")  # an agent token needs its site and CE
    with expect_error(400):
        world.admin.mint_token("user", "x", ttl_s=-1)


def test_metrics_and_health(world):
    world.admin.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    assert agent.match(site_map()) is None
    agent.heartbeats([{"job_id": job["id"], "resubmission": 0}])
    m = Exposition(world.admin.metrics())
    assert m.value("gridpilot_jobs", state="ASSIGNED") == 1 and m.value("gridpilot_jobs", state="WAITING") == 0
    assert m.value("gridpilot_matches_total", result="assigned") == 1
    assert m.value("gridpilot_matches_total", result="empty") == 1
    assert m.value("gridpilot_heartbeats_total") == 1
    assert m.type_of("gridpilot_http_request_duration_seconds") == "histogram"
    assert m.value("gridpilot_match_duration_seconds_count") == 2
    routes = {ls["route"] for ls in m.labelled("gridpilot_http_requests_total")}
    assert "/api/v1/jobs/{job_id}/status" not in routes
    assert m.value("gridpilot_http_requests_total", method="POST", route="/api/v1/match", status="204") == 1
    h = world.admin.health()
    assert h["status"] == "ok" and h["schema"] >= 2 and h["database"] in ("sqlite", "postgresql")


def test_central_error_is_raised_for_error_answers(world):
    with pytest.raises(CentralError) as info:
        world.user().get_job(12345)
    assert "404 job_not_found" in str(info.value)

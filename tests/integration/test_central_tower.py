"""What central gives a tower (`gridpilot tower`, jobs for nodes without network through ARC CEs): the `tower` role,
its matches, and POST /reports, many jobs' states and trace lines in one request, each applied whole or not at all.

A real central over HTTP, one per database (module scope): every test runs on SQLite and on a real PostgreSQL. Each
test submits as a user of its own and matches with a site map that takes only that user's jobs, so the tests of
one module never take each other's jobs.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Optional, Tuple

import orjson
import pytest
import urllib3
from support.central import CE, SITE, expect_error, jdl, module_world, site_map
from sqlalchemy import func, select

from gridpilot.central import bulkreports, schema, scopes
from gridpilot.client import CentralClient

API = "/api/v1"
_users = itertools.count(1)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    yield from module_world(request, tmp_path_factory, "tower")


def tower(world, name: str = "tower1", site: str = SITE, ce: str = CE) -> CentralClient:
    return world.client(world.admin.mint_token("tower", name, site=site, ce=ce))


def held_job(world, t: CentralClient, *, user: Optional[str] = None) -> Tuple[int, Dict[str, Any], str]:
    """A job of a user of this test's own, matched by tower `t`: (id, the match, the user)."""
    user = user or f"tower-user-{next(_users)}"
    jid = world.admin.submit(jdl(User=user))
    job = t.match(site_map(users=[user]))
    assert job is not None and job["id"] == jid, "the tower takes the job its site map asks for"
    return jid, job, user


def post(world, token: str, body: Any) -> Tuple[int, Any]:
    r = urllib3.request("POST", world.url + API + "/reports", body=orjson.dumps(body) if not isinstance(body, bytes)
                        else body, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                        retries=False)
    return r.status, orjson.loads(r.data)


def trace_rows(world, jid: int) -> int:
    with world.db.read() as conn:
        return conn.execute(select(func.count()).select_from(schema.traces)
                            .where(schema.traces.c.job_id == jid)).scalar_one()


def texts(world, jid: int) -> List[str]:
    return [e["text"] for e in world.admin.trace(jid)]


def line(key: str, text: str, ts: float = 1.7e9) -> Dict[str, Any]:
    return {"ts": ts, "category": "trace", "text": text, "key": key}


# -- the role --


def test_a_tower_token_is_bound_to_a_site_and_a_ce_and_holds_what_the_brief_gives_it(world):
    with expect_error(400, "bad_request") as info:
        world.admin.mint_token("tower", "tower1")
    assert "bound to a site and a CE" in info.value.message
    me = tower(world).whoami()
    assert (me["role"], me["subject"], me["site"], me["ce"]) == ("tower", "tower1", SITE, CE)
    assert set(me["scope"].split()) == {"compute.read", "compute.modify", "queue.match", "queue.probe",
                                        "catalogue.read"} == scopes.ROLE_SCOPES["tower"]
    with expect_error(400) as info:
        world.client(world.admin.token).request("POST", API + "/tokens", body={
            "role": "tower", "subject": "t", "site": SITE, "ce": CE, "scope": "catalogue.write"})
    assert "cannot have scope 'catalogue.write'" in info.value.message, "files are registered with the job's token"


def test_an_admin_mints_a_tower_token_on_the_central_machine(tmp_path, capsys):
    from gridpilot import cli_codes
    from gridpilot.central.keys import Keys
    from gridpilot.central.migrations import open_database
    from gridpilot.central.tokens import decode
    from gridpilot.cli import main

    state = ["--state-dir", str(tmp_path / "state")]
    assert main(["central", "init", *state]) == 0
    capsys.readouterr()
    out = tmp_path / "tower1.token"
    assert main(["central", "token", *state, "--role", "tower", "--subject", "tower1", "--site", "ALICE::NOWAN",
                 "--ce", "ALICE::NOWAN::ARC", "-o", str(out), "--json"]) == 0
    said = orjson.loads(capsys.readouterr().out)
    assert {k: said[k] for k in ("role", "subject", "site", "ce")} == {
        "role": "tower", "subject": "tower1", "site": "ALICE::NOWAN", "ce": "ALICE::NOWAN::ARC"}
    db = open_database(f"sqlite:///{tmp_path / 'state' / 'central.db'}")
    try:
        claims = decode(Keys(db, None), out.read_text().strip())
    finally:
        db.dispose()
    assert (claims.role, claims.site, claims.ce, claims.scopes) == ("tower", "ALICE::NOWAN", "ALICE::NOWAN::ARC",
                                                                    scopes.ROLE_SCOPES["tower"])
    assert main(["central", "token", *state, "--role", "tower", "--subject", "tower1"]) == cli_codes.USAGE
    assert "bound to a site and a CE" in capsys.readouterr().err


def test_a_tower_matches_a_job_for_its_site_and_sees_only_the_jobs_it_holds(world):
    t = tower(world)
    jid, job, user = held_job(world, t)
    assert job["token"] and job["resubmission"] == 0
    got = t.get_job(jid)
    assert (got["site"], got["ce"], got["state"]) == (SITE, CE, "ASSIGNED")
    assert [j["id"] for j in t.list_jobs()] == [j["id"] for j in t.list_jobs() if j["site"] == SITE]
    assert jid in {j["id"] for j in t.list_jobs()}
    assert t.probe(site_map(users=[user]))["waiting"] == 0
    with expect_error(403, "forbidden") as info:
        t.match(site_map(site="OTHER::SITE"))
    assert "this tower token is bound to site" in info.value.message
    for other in (tower(world, "tower2"), tower(world, "tower1", site="OTHER::SITE"), world.agent("agent-x")):
        with expect_error(404, "job_not_found"):
            other.get_job(jid)
        assert jid not in {j["id"] for j in other.list_jobs()}
    # The match line names the tower as a pilot's names its agent: the trace reads as a pilot's.
    assert any(x.startswith("ASSIGNED to agent tower1 at ") for x in texts(world, jid))


# -- POST /reports: a whole run --


def test_a_tower_reports_a_run_to_done_in_one_request_and_the_job_shows_its_arc_job_and_pilot_log(world):
    t = tower(world)
    jid, job, user = held_job(world, t)
    job_token = world.client(job["token"])
    se = world.admin.storage_elements()[0]["name"]
    # The tower registers outputs with the job's own token, before it reports the end (which revokes it).
    job_token.register_file(lfn=f"{job['output_dir']}/out.txt", size=3, adler32="024d0127", se=se,
                            pfn="file:///se/out.txt", job_id=jid)
    log_url = f"https://logs.example.org/tower1/{jid}/gridpilot-offline.log"
    results = t.reports([
        {"job_id": jid, "resubmission": 0, "arc_job_id": "kPnNDmxRbO4nKDcA0pHi0wqmABFKDmABFKDm",
         "state": "STARTED", "at": 1.0},
        {"job_id": jid, "resubmission": 0, "state": "RUNNING",
         "trace": [line("r0-1", "payload started"), {"category": "proc", "text": "[proc] 1 2 3", "key": "r0-2"}]},
        {"job_id": jid, "resubmission": 0, "state": "SAVING", "trace": [line("r0-3", "payload ended")],
         "resources": {"nprocs": 2, "read_bytes": 10}},
        {"job_id": jid, "resubmission": 0, "trace": [line("r0-4", "out.txt validated on the SE")]},
        {"job_id": jid, "resubmission": 0, "state": "DONE", "exit_code": 0, "pilot_log_url": log_url},
    ])
    assert [(r["job_id"], r["ok"], r["state"], r["resubmission"]) for r in results] == [
        (jid, True, s, 0) for s in ("STARTED", "RUNNING", "SAVING", "SAVING", "DONE")]
    got = world.admin.get_job(jid)
    assert (got["state"], got["exit_code"], got["resources"]["nprocs"]) == ("DONE", 0, 2)
    assert (got["arc_job_id"], got["pilot_log_url"]) == ("kPnNDmxRbO4nKDcA0pHi0wqmABFKDmABFKDm", log_url)
    assert world.client(world.admin.mint_token("user", user)).get_job(jid)["pilot_log_url"] == log_url
    lines = texts(world, jid)
    order = ["ARC job kPnNDmxRbO4nKDcA0pHi0wqmABFKDmABFKDm (reported by tower 'tower1')",
             "Job state transition from ASSIGNED to STARTED", "payload started", "[proc] 1 2 3",
             "Job state transition from STARTED to RUNNING", "payload ended",
             "Job state transition from RUNNING to SAVING", "out.txt validated on the SE",
             f"pilot log at {log_url} (reported by tower 'tower1')", "Job state transition from SAVING to DONE"]
    assert [x for x in lines if x in order] == order, "a report's lines come before its state change, in order"
    started = next(e for e in world.admin.trace(jid) if e["text"].endswith("ASSIGNED to STARTED"))
    assert started["reported_ts"] is not None and started["reported_ts"] >= 1.0, "`at` dates the change"
    with expect_error(401, "token_revoked"):
        job_token.whoami()
    assert t.reports([{"job_id": jid, "resubmission": 0, "state": "DONE"}])[0]["ok"], "repeating the end is a no-op"


def test_one_report_is_applied_whole_or_not_at_all_and_leaves_the_others_alone(world):
    t = tower(world)
    jid, _, _ = held_job(world, t)
    other, _, _ = held_job(world, t)
    t.reports([{"job_id": jid, "resubmission": 0, "state": "STARTED"},
               {"job_id": jid, "resubmission": 0, "state": "RUNNING"}])
    before = trace_rows(world, jid)
    results = t.reports([
        # RUNNING -> DONE skips SAVING: refused, and with it its trace line and ARC id.
        {"job_id": jid, "resubmission": 0, "state": "DONE", "trace": [line("x-1", "must not stay")],
         "arc_job_id": "lost-with-its-report", "pilot_log_url": "root://se.example.org//logs/x.log"},
        {"job_id": other, "resubmission": 0, "state": "STARTED", "trace": [line("o-1", "other started")]},
        {"job_id": jid, "resubmission": 0, "state": "SAVING"},
    ])
    assert results[0] == {"job_id": jid, "ok": False, "status": 409,
                          "error": {"code": "illegal_transition", "message": "illegal job state transition RUNNING "
                                                                             "-> DONE", "state": "RUNNING"}}
    assert results[1]["ok"] and results[2]["ok"] and results[2]["state"] == "SAVING"
    got = world.admin.get_job(jid)
    assert (got["state"], got["arc_job_id"], got["pilot_log_url"]) == ("SAVING", None, None)
    assert "must not stay" not in texts(world, jid)
    assert trace_rows(world, jid) == before + 1, "only SAVING's state line was added"
    assert "other started" in texts(world, other)


def test_reports_on_jobs_the_caller_does_not_hold_are_answered_alone_as_if_absent(world):
    t = tower(world)
    jid, _, _ = held_job(world, t)
    agent = world.agent("agent-held")
    agents_job = world.admin.submit(jdl(User="agent-only"))
    assert agent.match(site_map(users=["agent-only"]))["id"] == agents_job
    absent = agents_job + 100_000
    report = {"resubmission": 0, "state": "STARTED", "trace": [line("n-1", "not theirs")]}
    for caller in (tower(world, "tower2"), tower(world, "tower1", site="OTHER::SITE", ce="OTHER::CE"), t):
        results = caller.reports([{"job_id": j, **report} for j in (agents_job, absent)])
        for r, j in zip(results, (agents_job, absent)):
            assert r == {"job_id": j, "ok": False, "status": 404,
                         "error": {"code": "job_not_found", "message": f"no job {j}"}}
    wrong = [{"job_id": jid, "resubmission": 0, "state": "STARTED"}]
    assert tower(world, "tower2").reports(wrong)[0]["status"] == 404, "another tower's job is as absent"
    assert world.admin.get_job(jid)["state"] == "ASSIGNED"
    assert "not theirs" not in texts(world, agents_job)
    # A stale attempt, and a state only central sets: refused for that report, as POST /jobs/{id}/status would.
    stale, central_only = t.reports([{"job_id": jid, "resubmission": 1, "state": "STARTED"},
                                     {"job_id": jid, "resubmission": 0, "state": "ZOMBIE"}])
    assert (stale["status"], stale["error"]["code"], stale["error"]["resubmission"]) == (409, "stale_resubmission", 0)
    assert (central_only["status"], central_only["error"]["code"]) == (403, "forbidden")
    assert "may not set ZOMBIE" in central_only["error"]["message"]
    # The agent holding a job, and an admin, may report in bulk too.
    assert agent.reports([{"job_id": agents_job, "resubmission": 0, "state": "STARTED"}])[0]["ok"]
    assert world.admin.reports([{"job_id": agents_job, "resubmission": 0, "state": "RUNNING"}])[0]["ok"]


@pytest.mark.parametrize("role", ["user", "job", "ce"])
def test_roles_that_report_no_states_are_refused_the_whole_request(world, role):
    t = tower(world)
    jid, job, user = held_job(world, t)
    token = {"user": world.admin.mint_token("user", user), "job": job["token"],
             "ce": world.admin.mint_token("ce", "ce1", site=SITE, ce=CE)}[role]
    status, body = post(world, token, {"reports": [{"job_id": jid, "resubmission": 0, "state": "STARTED"}]})
    assert status == 403 and body["error"]["code"] == ("insufficient_scope" if role == "user" else "forbidden")
    assert world.admin.get_job(jid)["state"] == "ASSIGNED"


# -- a malformed body: one 400 naming the field, nothing written --

_GOOD = {"job_id": 1, "resubmission": 0}
_BAD_BODIES = [
    ("no list", {}, "reports"),
    ("not a list", {"reports": {"job_id": 1}}, "reports"),
    ("too many", {"reports": [_GOOD] * (bulkreports.MAX_REPORTS + 1)}, "reports"),
    ("an item not an object", {"reports": [_GOOD, 7]}, "reports[1]"),
    ("no job id", {"reports": [{"resubmission": 0}]}, "reports[0].job_id"),
    ("job id zero", {"reports": [{"job_id": 0, "resubmission": 0}]}, "reports[0].job_id"),
    ("job id past BIGINT", {"reports": [{"job_id": 1 << 63, "resubmission": 0}]}, "reports[0].job_id"),
    ("no resubmission", {"reports": [_GOOD, {"job_id": 1}]}, "reports[1].resubmission"),
    ("a state that is none", {"reports": [_GOOD, _GOOD, _GOOD, {**_GOOD, "state": "FINISHED"}]}, "reports[3].state"),
    ("a state of a bad type", {"reports": [{**_GOOD, "state": ["DONE"]}]}, "reports[0].state"),
    ("a kill reason that is none", {"reports": [{**_GOOD, "state": "KILLED", "kill_reason": "BORED"}]},
     "reports[0].kill_reason"),
    ("exit code past INT4", {"reports": [{**_GOOD, "state": "DONE", "exit_code": 1 << 40}]}, "reports[0].exit_code"),
    ("at not a number", {"reports": [{**_GOOD, "state": "DONE", "at": "now"}]}, "reports[0].at"),
    ("resources not an object", {"reports": [{**_GOOD, "state": "DONE", "resources": []}]}, "reports[0].resources"),
    ("a message with NUL", {"reports": [{**_GOOD, "state": "DONE", "message": "a\x00b"}]}, "reports[0].message"),
    ("an exit code without a state", {"reports": [{**_GOOD, "exit_code": 1}]}, "reports[0].exit_code"),
    ("a field nobody knows", {"reports": [{**_GOOD, "stat": "DONE"}]}, "reports[0].stat"),
    ("trace not a list", {"reports": [{**_GOOD, "trace": "x"}]}, "reports[0].trace"),
    ("a state line in the trace", {"reports": [{**_GOOD, "trace": [line("k", "x"),
                                                                     {"category": "state", "text": "DONE"}]}]},
     "reports[0].trace[1].category"),
    ("a trace key twice", {"reports": [{**_GOOD, "trace": [line("k", "x"), line("k", "y")]}]},
     "reports[0].trace[1].key"),
    ("too many trace lines", {"reports": [{**_GOOD, "trace": [{"category": "trace", "text": "x"}] * 1001}]},
     "reports[0].trace"),
    ("an ARC id with a space", {"reports": [{**_GOOD, "arc_job_id": "a b"}]}, "reports[0].arc_job_id"),
    ("an ARC id too long", {"reports": [{**_GOOD, "arc_job_id": "a" * 257}]}, "reports[0].arc_job_id"),
    ("an ARC id not a string", {"reports": [{**_GOOD, "arc_job_id": 12}]}, "reports[0].arc_job_id"),
    ("an empty ARC id", {"reports": [{**_GOOD, "arc_job_id": ""}]}, "reports[0].arc_job_id"),
    ("a log URL of another scheme", {"reports": [{**_GOOD, "pilot_log_url": "ftp://h/x.log"}]},
     "reports[0].pilot_log_url"),
    ("a log URL without a host", {"reports": [{**_GOOD, "pilot_log_url": "https:///x.log"}]},
     "reports[0].pilot_log_url"),
    ("a log URL with a password", {"reports": [{**_GOOD, "pilot_log_url": "https://u:secret@h/x.log"}]},
     "reports[0].pilot_log_url"),
    ("a log URL with a bad port", {"reports": [{**_GOOD, "pilot_log_url": "https://h:99999/x.log"}]},
     "reports[0].pilot_log_url"),
    ("a relative file URL", {"reports": [{**_GOOD, "pilot_log_url": "file:x.log"}]}, "reports[0].pilot_log_url"),
    ("a log URL with a newline", {"reports": [{**_GOOD, "pilot_log_url": "https://h/x\n.log"}]},
     "reports[0].pilot_log_url"),
    ("a log URL too long", {"reports": [{**_GOOD, "pilot_log_url": "https://h/" + "x" * 2040}]},
     "reports[0].pilot_log_url"),
]


@pytest.mark.parametrize("body, field", [pytest.param(b, f, id=name) for name, b, f in _BAD_BODIES])
def test_a_malformed_body_is_one_400_naming_the_field_and_writes_nothing(world, body, field):
    t = tower(world)
    jid, _, _ = held_job(world, t)
    # The good reports in a bad body are about the held job: none of them may be applied.
    body = orjson.loads(orjson.dumps(body).replace(b'"job_id":1,', f'"job_id":{jid},'.encode()))
    before = trace_rows(world, jid)
    status, answer = post(world, t.token or "", body)
    assert status == 400, answer
    assert answer["error"]["field"] == field and field in answer["error"]["message"], answer
    assert trace_rows(world, jid) == before and world.admin.get_job(jid)["state"] == "ASSIGNED"


def test_a_log_url_of_each_scheme_and_the_longest_fields_are_taken(world):
    t = tower(world)
    jid, _, _ = held_job(world, t)
    for url in ("https://h/x.log", "http://h:8080/x.log", "root://se.example.org:1094//logs/x.log",
                "root://alice@eos.example.org//logs/x.log",
                "file:///shared/logs/x.log", "https://h/" + "x" * (bulkreports.MAX_PILOT_LOG_URL - 10)):
        assert t.reports([{"job_id": jid, "resubmission": 0, "pilot_log_url": url}])[0]["ok"], url
        assert world.admin.get_job(jid)["pilot_log_url"] == url
    longest = "A" * bulkreports.MAX_ARC_JOB_ID
    assert t.reports([{"job_id": jid, "resubmission": 0, "arc_job_id": longest}])[0]["ok"]
    assert world.admin.get_job(jid)["arc_job_id"] == longest


# -- the rules of a state report hold in bulk --


def test_a_kill_reaches_the_tower_and_a_done_after_it_ends_the_job_killed(world):
    t = tower(world)
    jid, job, user = held_job(world, t)
    t.reports([{"job_id": jid, "resubmission": 0, "state": s} for s in ("STARTED", "RUNNING", "SAVING")])
    world.client(world.admin.mint_token("user", user)).kill(jid)
    assert {"job_id": jid, "command": "kill", "reason": "kill requested"} in t.heartbeats(
        [{"job_id": jid, "resubmission": 0}]), "a tower's heartbeats carry its jobs' kills"
    assert t.control(jid, 0)["commands"][0]["command"] == "kill"
    out = t.reports([{"job_id": jid, "resubmission": 0, "state": "DONE", "arc_job_id": "arc-killed"}])[0]
    assert (out["ok"], out["state"]) == (True, "KILLED"), "a kill once accepted is what the user gets"
    got = world.admin.get_job(jid)
    assert (got["state"], got["kill_reason"], got["arc_job_id"]) == ("KILLED", "KILLED", "arc-killed")


def test_an_end_before_running_sends_the_job_back_and_the_next_attempt_starts_without_arc_ids(world):
    t = tower(world)
    jid, job, user = held_job(world, t)
    out = t.reports([
        {"job_id": jid, "resubmission": 0, "state": "STARTED", "arc_job_id": "arc-lost-1",
         "pilot_log_url": "https://h/1.log"},
        {"job_id": jid, "resubmission": 0, "state": "ERROR_A", "message": "the ARC CE refused the job"},
    ])
    assert [(r["ok"], r["state"], r["resubmission"]) for r in out] == [(True, "STARTED", 0), (True, "WAITING", 1)]
    got = world.admin.get_job(jid)
    assert (got["state"], got["resubmission"], got["arc_job_id"], got["pilot_log_url"]) == ("WAITING", 1, None, None)
    assert "ARC job arc-lost-1 (reported by tower 'tower1')" in texts(world, jid), "the trace keeps each attempt's"
    late = t.reports([{"job_id": jid, "resubmission": 0, "arc_job_id": "arc-late"}])[0]
    assert (late["status"], late["error"]["code"]) == (404, "job_not_found"), "a WAITING job is held by nobody"
    again = t.match(site_map(users=[user]))
    assert (again["id"], again["resubmission"]) == (jid, 1)
    assert t.reports([{"job_id": jid, "resubmission": 1, "arc_job_id": "arc-2"}])[0]["ok"]
    assert world.admin.get_job(jid)["arc_job_id"] == "arc-2"


def test_a_new_arc_job_in_the_same_attempt_is_kept_with_the_old_one_in_the_trace(world):
    """The ARC CE lost the job (404) and the tower submitted it again: the same attempt, a second ARC id."""
    t = tower(world)
    jid, _, _ = held_job(world, t)
    for arc in ("arc-first", "arc-first", "arc-second"):
        assert t.reports([{"job_id": jid, "resubmission": 0, "arc_job_id": arc}])[0]["ok"]
    lines = [x for x in texts(world, jid) if x.startswith("ARC job ")]
    assert lines == ["ARC job arc-first (reported by tower 'tower1')", "ARC job arc-second (reported by tower "
                     "'tower1')"], "an id repeated is said once"
    assert world.admin.get_job(jid)["arc_job_id"] == "arc-second"


def test_a_request_sent_again_stores_its_keyed_lines_once(world):
    t = tower(world)
    jid, _, _ = held_job(world, t)
    request = [{"job_id": jid, "resubmission": 0, "state": "STARTED", "trace": [line("a-1", "once"),
                                                                                line("a-2", "twice?")]}]
    assert t.reports(request)[0]["ok"]
    before = trace_rows(world, jid)
    assert t.reports(request)[0]["ok"], "the state it is in: a no-op"
    assert trace_rows(world, jid) == before and texts(world, jid).count("twice?") == 1


def test_a_thousand_reports_in_one_request_each_get_their_answer_in_order(world):
    """More reports than share one transaction (bulkreports.REPORTS_PER_TRANSACTION): every one is answered, in
    the order sent, the refused ones among them."""
    t = tower(world)
    held = [held_job(world, t)[0] for _ in range(3)]
    items = []
    for i in range(bulkreports.MAX_REPORTS):
        jid = held[i % 3]
        items.append({"job_id": jid, "resubmission": 0, "state": "STARTED" if i % 7 else "ZOMBIE",
                      "trace": [line(f"bulk-{i}", f"line {i}")]})
    results = t.reports(items)
    assert [r["job_id"] for r in results] == [it["job_id"] for it in items]
    assert [r["ok"] for r in results] == [bool(i % 7) for i in range(len(items))]
    for jid in held:
        got = [x for x in texts(world, jid) if x.startswith("line ")]
        assert got == [f"line {i}" for i in range(len(items)) if items[i]["job_id"] == jid and i % 7]
        assert world.admin.get_job(jid)["state"] == "STARTED"


def test_a_towers_job_ends_never_make_the_node_its_site_map_named_bad(world):
    """An agent's node turns nodeBad after DEFAULT_NODE_BAD_AFTER OOM kills; a tower's "node" (an ARC CE's name, at
    most) is not where its jobs ran, and one nodeBad would stop all of its site's work."""
    from gridpilot.central.settings import DEFAULT_NODE_BAD_AFTER

    t = tower(world, "tower-oom")
    user = f"tower-user-{next(_users)}"
    for _ in range(DEFAULT_NODE_BAD_AFTER + 1):
        jid = world.admin.submit(jdl(User=user))
        job = t.match(site_map(users=[user], node="arc-ce.example.org"))
        assert job is not None and job["id"] == jid, "never refused node_bad"
        out = t.reports([{"job_id": jid, "resubmission": 0, "state": s} for s in ("STARTED", "RUNNING")]
                        + [{"job_id": jid, "resubmission": 0, "state": "ERROR_E", "kill_reason": "OOM_SYSTEM"}])
        assert out[-1]["state"] == "ERROR_E"
    hosts = {n["host"]: n for n in world.admin.nodes()["nodes"]}
    assert hosts["arc-ce.example.org"]["bad"] is False


# -- gridpilot trace --


def test_gridpilot_trace_shows_the_arc_job_and_the_pilot_log(world, monkeypatch, capsys):
    from gridpilot.cli import main

    t = tower(world)
    jid, _, _ = held_job(world, t)
    monkeypatch.setenv("GRIDPILOT_CENTRAL_URL", world.url)
    monkeypatch.setenv("GRIDPILOT_TOKEN", world.admin.token or "")
    monkeypatch.delenv("GRIDPILOT_TOKEN_FILE", raising=False)
    assert main(["trace", str(jid)]) == 0
    out = capsys.readouterr().out
    assert "ARC job:" not in out and "Pilot log:" not in out, "none before the tower says"
    url = "https://logs.example.org/x.log"
    t.reports([{"job_id": jid, "resubmission": 0, "arc_job_id": "arc-shown", "pilot_log_url": url}])
    assert main(["trace", str(jid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["ARC job: arc-shown", f"Pilot log: {url}"]
    assert main(["trace", str(jid), "--category", "trace"]) == 0
    assert not capsys.readouterr().out.startswith("ARC job:"), "a read of some categories is the lines alone"
    assert main(["trace", str(jid), "--json"]) == 0
    assert all("category" in e for e in orjson.loads(capsys.readouterr().out)), "--json is the records, as before"
    assert main(["job", str(jid)]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert "arc_job_id      arc-shown" in shown and f"pilot_log_url   {url}" in shown


# -- schema step 16 --


def test_step_16_gives_the_jobs_of_a_version_15_database_their_arc_columns_empty(db_url):
    from sqlalchemy import inspect

    from gridpilot.central import migrations
    from gridpilot.central.db import Database

    db = Database(db_url)
    try:
        assert migrations.upgrade(db, target=15) == list(range(1, 16))
        with db.write() as conn:
            assert "arc_job_id" not in {c["name"] for c in inspect(conn).get_columns("jobs")}
            conn.execute(schema.jobs.insert().values(
                user="old", state=1, state_since=1.0, kill_requested=False, jdl="Executable = \"/bin/true\";",
                cores=1, memory_mb=0, disk_mb=0, ttl=60, gpus=0, price=1.0, priority=0, req_hash="x",
                resubmission=0, auto_resubmits=0, reached_running=False, created=1.0, updated=1.0))
        # Step 16 and every later one (the upgrade takes a database to the newest schema).
        assert migrations.upgrade(db) == [s.version for s in migrations.STEPS if s.version >= 16]
        with db.read() as conn:
            row = conn.execute(select(schema.jobs)).one()
            columns = {c["name"] for c in inspect(conn).get_columns("jobs")}
        assert (row.user, row.arc_job_id, row.pilot_log_url) == ("old", None, None)
        # What a new database gets (test_central_db checks a new database against schema.py).
        assert columns == {c.name for c in schema.jobs.columns}
    finally:
        db.dispose()


def test_gridpilot_trace_follow_says_the_arc_job_once_as_it_is_set(world):
    import io
    import threading

    from gridpilot.console import watch

    t = tower(world)
    jid, _, _ = held_job(world, t)
    stream = io.StringIO()
    done = threading.Event()
    code: List[int] = []

    def follow() -> None:
        code.append(watch(world.admin, jid, interval=0.05, timeout=120, stream=stream))
        done.set()

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        for arc in ("arc-first", "arc-first", "arc-next"):
            t.reports([{"job_id": jid, "resubmission": 0, "arc_job_id": arc, "state": "STARTED"}])
        t.reports([{"job_id": jid, "resubmission": 0, "state": s} for s in ("RUNNING", "SAVING", "DONE")])
        assert done.wait(120), "watch ends with the job"
    finally:
        follower.join(130)
    out = stream.getvalue().splitlines()
    assert code == [0] and out[-1] == f"job {jid} ended DONE"
    assert out.count("ARC job: arc-next") == 1 and out.count("ARC job: arc-first") <= 1


def test_bulk_reports_and_bulk_heartbeats_over_the_same_jobs_never_deadlock(world):
    """Reports name their jobs in any order (here the reverse of the heartbeats'); each batch locks its jobs in id
    order first, as heartbeats do, so the two cannot wait on each other (on PostgreSQL a deadlock was a 500)."""
    import threading

    t = tower(world)
    user = f"tower-user-{next(_users)}"
    for _ in range(24):
        world.admin.submit(jdl(User=user))
    held = []
    while (job := t.match(site_map(users=[user]))) is not None:
        held.append(job["id"])
    assert len(held) == 24
    t.reports([{"job_id": j, "resubmission": 0, "state": "STARTED"} for j in held])
    failures: List[BaseException] = []

    def hammer(send: Any) -> None:
        try:
            for _ in range(25):
                send()
        except BaseException as e:  # noqa: BLE001 - reported below, with the thread's other failures
            failures.append(e)

    reports = [{"job_id": j, "resubmission": 0, "state": "STARTED", "resources": {"nprocs": 1}}
               for j in reversed(held)]
    beats = [{"job_id": j, "resubmission": 0, "sample": {"nprocs": 2}} for j in held]
    sender = world.client(t.token)
    threads = [threading.Thread(target=hammer, args=(lambda: sender.reports(reports),)),
               threading.Thread(target=hammer, args=(lambda: t.heartbeats(beats),))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not failures, failures[:3]


def test_the_client_repeats_a_failed_request_only_when_every_trace_line_has_a_key(world):
    """A 503 (central overloaded, or a proxy between) is retried for a request that is safe to repeat: states (a
    repeat is a no-op) and keyed lines (stored once). A keyless line would be stored twice: no retry, the error."""
    from support.central_proxy import CentralProxy

    from gridpilot.errors import CentralError

    t = tower(world)
    jid, _, _ = held_job(world, t)
    failures = {"left": 0}

    def rule(method: str, path: str) -> Optional[int]:
        if method == "POST" and path.endswith("/reports") and failures["left"] > 0:
            failures["left"] -= 1
            return 503
        return None

    proxy = CentralProxy(world.url, rule)
    try:
        client = CentralClient(proxy.url, t.token, retries=3, backoff=0.01, timeout=30)
        failures["left"] = 1
        keyed = [{"job_id": jid, "resubmission": 0, "state": "STARTED", "trace": [line("retry-1", "keyed")]}]
        assert client.reports(keyed)[0]["ok"]
        assert proxy.answered("POST", "/reports") == 2 and texts(world, jid).count("keyed") == 1
        failures["left"] = 1
        keyless = [{"job_id": jid, "resubmission": 0, "trace": [{"category": "trace", "text": "keyless"}]}]
        with pytest.raises(CentralError) as info:
            client.reports(keyless)
        assert info.value.status == 503 and proxy.answered("POST", "/reports") == 3
        assert "keyless" not in texts(world, jid)
    finally:
        proxy.close()

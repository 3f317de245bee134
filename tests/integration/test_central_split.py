"""Masterjobs at central (central/splitting.py) through gridpilot.client, on SQLite and on a real PostgreSQL: the split
from the catalogue (sizes, replicas' storage elements), all subjobs or none, the bounds (each a 400 naming its field),
and who may see, kill and resubmit a masterjob (docs/central-api.md, "Masterjobs")."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, Callable, Dict, List, Tuple

import orjson
import pytest
import urllib3
from sqlalchemy import func, select
from support.central import count_jobs, expect_error, run_through, site_map, start_world

from gridpilot import cli_codes
from gridpilot.central import schema

AREA = "/gridpilot/user/a/alice"


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url, max_subjobs=6)


def _files(world, n: int, size: int = 100) -> List[str]:
    world.admin.add_storage_element("SE1", "file:///tmp/se1")
    world.admin.add_storage_element("SE2", "file:///tmp/se2")
    lfns = []
    for i in range(1, n + 1):
        lfn = f"/data/run{i % 2}/f{i}.root"
        for se in (("SE1",) if i <= n // 2 else ("SE1", "SE2")):
            world.admin.register_file(lfn=lfn, size=size * i, se=se, pfn=f"file:///tmp/{se}/{i}")
        lfns.append(lfn)
    world.admin.register_file(lfn="/data/alice/g.root", size=1, se="SE1", pfn="file:///tmp/SE1/g")
    return lfns


def _split_jdl(split: str, *lines: str) -> str:
    return "\n".join(['Executable = "/bin/true";', f'Split = "{split}";', *lines]) + "\n"


def _input_data(lfns: List[str]) -> str:
    return "InputData = { " + ", ".join(f'"LF:{lfn}"' for lfn in lfns) + " };"


def _subjob_rows(world) -> int:
    with world.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(schema.subjobs)).scalar_one())


def test_a_split_by_se_groups_by_the_replicas_the_catalogue_lists_and_cuts_by_size(world):
    lfns = _files(world, 4)  # f1, f2 on SE1; f3, f4 on SE1 and SE2; sizes 100, 200, 300, 400
    alice = world.user("alice")
    master = alice.submit(_split_jdl("se", _input_data(lfns), "SplitMaxInputFileSize = 350;",
                                     f'OutputDir = "{AREA}/se/#alien_split#/#alien_counter_02i#";'))
    subs = sorted(alice.list_jobs(master=master), key=lambda j: j["id"])
    assert [j["output_dir"] for j in subs] == [f"{AREA}/se/SE1/01", f"{AREA}/se/SE1_SE2/02",
                                               f"{AREA}/se/SE1_SE2/03"]
    assert ['LF:/data/run1/f1.root' in j["jdl"] and 'LF:/data/run0/f2.root' in j["jdl"] for j in subs] == \
        [True, False, False]
    info = alice.masterjob(master, ids=True)
    assert info["states"] == {"WAITING": 3} and info["ids"] == {"WAITING": [j["id"] for j in subs]}
    assert info["split"] == "se" and alice.get_job(master)["masterjob"]["subjobs"] == 3
    # The subjobs are ordinary jobs for the broker; the masterjob never matches.
    matched = world.agent().match(site_map())
    assert matched["id"] in [j["id"] for j in subs]


def test_the_user_lists_masterjobs_not_subjobs_unless_asked(world):
    alice = world.user("alice")
    single = alice.submit('Executable = "/bin/true";\n')
    master = alice.submit(_split_jdl("production:1-3", f'OutputDir = "{AREA}/p/#alien_split#";'))
    assert [j["id"] for j in alice.list_jobs()] == [master, single]
    top = alice.list_jobs()[0]
    assert (top["state"], top["masterjob"]) == ("SPLIT", {"stored_state": "SPLIT", "subjobs": 3,
                                                          "states": {"WAITING": 3}})
    assert len(alice.list_jobs(subjobs=1)) == 5 and len(alice.list_jobs(master=master)) == 3
    # An agent's and a CE's lists are of the jobs they run: subjobs included.
    job = world.agent().match(site_map())
    assert job["id"] != master


# -- the bounds: each a 400 naming its field, and nothing queued --

BAD: List[Dict[str, Any]] = [
    dict(jdl=_split_jdl("production:1-7"), field="Split", code="too_many_subjobs"),
    dict(jdl=_split_jdl("bogus", 'InputData = "LF:/data/run1/f1.root";'), field="jdl", code="invalid_jdl"),
    dict(jdl=_split_jdl("file"), field="jdl", code="invalid_jdl"),
    dict(jdl=_split_jdl("file", 'InputData = "LF:/data/nowhere.root";'), field="InputData", code="input_not_found"),
    dict(jdl=_split_jdl("file", 'InputData = "local.root";'), field="InputData", code="bad_request"),
    dict(jdl=_split_jdl("file", 'InputDataCollection = "LF:/c.txt";'), field="InputDataCollection",
         code="collection_not_sent"),
    dict(jdl=_split_jdl("file", 'InputDataCollection = "c.txt";'), collections={"c.txt": "LF:/a\nnot-an-lfn\n"},
         field="InputDataCollection", code="invalid_collection"),
    dict(jdl='Executable = "/bin/true";\n', collections={"c.txt": "LF:/a"}, field="collections", code="bad_request"),
    dict(jdl=_split_jdl("file", 'InputDataCollection = "c.txt";'), collections=["LF:/a"], field="collections",
         code="bad_request"),
    # All or nothing: the second subjob's OutputDir (its input's directory) leaves alice's area, so not even the
    # first, whose is in it, is queued.
    dict(jdl=_split_jdl("file", 'InputData = { "LF:/data/alice/g.root", "LF:/data/run1/f1.root" };',
                        'OutputDir = "/gridpilot/user/a/#aliendir#/out";'), field="OutputDir",
         code="output_dir_outside_area"),
    dict(jdl=_split_jdl("production:1-3", f'OutputDir = "{AREA}/../../b/bob/#alien_counter#";'), field="OutputDir",
         code="bad_request"),
    dict(jdl=_split_jdl("production:1-2", 'OutputDir = "/elsewhere/#alien_counter#";'), field="OutputDir",
         code="output_dir_outside_area"),
]


def _post(world, token: str, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    """POST /jobs as it comes over the wire: the status and the error object (the client keeps no `field`)."""
    r = urllib3.request("POST", world.url + "/api/v1/jobs", body=orjson.dumps(body), retries=False, timeout=60,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return r.status, orjson.loads(r.data).get("error", {})


@pytest.mark.parametrize("case", BAD, ids=lambda c: f"{c['field']}-{c['code']}")
def test_a_bad_split_is_refused_naming_its_field_and_queues_nothing(world, case):
    _files(world, 2)
    alice = world.user("alice")
    before = count_jobs(world)
    body: Dict[str, Any] = {"jdl": case["jdl"]}
    if "collections" in case:
        body["collections"] = case["collections"]
    status, error = _post(world, alice.token, body)
    assert (status, error.get("code"), error.get("field")) == (400, case["code"], case["field"]), error
    if case["field"] != "jdl":
        assert case["field"] in error["message"], error
    assert count_jobs(world) == before and _subjob_rows(world) == 0


def test_the_subjob_bound_is_the_settings_and_the_answer_says_it(world):
    alice = world.user("alice")
    status, err = _post(world, alice.token, {"jdl": _split_jdl("production:1-7")})
    assert (status, err["subjobs"], err["limit"]) == (400, 7, 6) and "(6)" in err["message"]
    assert alice.masterjob(alice.submit(_split_jdl("production:1-6")))["subjobs"] == 6


# -- who may do what to a masterjob --


def _done_and_failed(world, alice) -> int:
    """A masterjob of three subjobs: one DONE, one ERROR_E, one WAITING."""
    master = alice.submit(_split_jdl("production:1-3"))
    agent = world.agent()
    for state in ("DONE", "ERROR_E"):
        job = agent.match(site_map())
        run_through(agent, job, "STARTED", "RUNNING", *(("SAVING", "DONE") if state == "DONE" else ("ERROR_E",)),
                    exit_code=0 if state == "DONE" else 1)
    return master


ACTIONS: Dict[str, Callable[[Any, int], Any]] = {
    "see": lambda c, m: c.get_job(m),
    "masterjob": lambda c, m: c.masterjob(m, ids=True),
    "kill": lambda c, m: c.kill(m),
    "resubmit": lambda c, m: c.resubmit(m),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("who, allowed", [("bob", False), ("agent", False), ("admin", True), ("alice", True)])
def test_who_may_see_kill_and_resubmit_a_masterjob(world, action, who, allowed):
    alice = world.user("alice")
    master = _done_and_failed(world, alice)
    client = {"bob": world.user("bob"), "agent": world.agent("agent9"), "admin": world.admin, "alice": alice}[who]
    states_before = alice.masterjob(master)["states"]
    if allowed:
        ACTIONS[action](client, master)
        return
    # Another user's masterjob is answered as if absent; an agent token may neither kill nor resubmit, and sees
    # only the jobs it runs.
    status, code = (404, "job_not_found") if who == "bob" or action in ("see", "masterjob") else (403, None)
    with expect_error(status, code):
        ACTIONS[action](client, master)
    assert alice.masterjob(master)["states"] == states_before


def test_kill_ends_the_unfinished_subjobs_and_resubmit_the_failed_ones(world):
    alice = world.user("alice")
    master = _done_and_failed(world, alice)
    assert alice.masterjob(master)["states"] == {"WAITING": 1, "DONE": 1, "ERROR_E": 1}
    res = alice.resubmit(master)
    assert (res["resubmitted"], res["refused"], res["state"]) == (1, 0, "SPLIT")
    assert res["subjobs"][0]["previous_state"] == "ERROR_E"
    killed = alice.kill(master)
    assert (killed["killed"], killed["requested"], killed["state"]) == (2, 0, "KILLED")
    assert alice.masterjob(master)["states"] == {"DONE": 1, "KILLED": 2}
    assert alice.get_job(master)["state"] == "KILLED"
    with expect_error(409, "already_final"):
        alice.kill(master)
    res = alice.resubmit(master)  # KILLED subjobs may be resubmitted, as any KILLED job
    assert res["resubmitted"] == 2
    with expect_error(409, "not_resubmittable"):
        alice.resubmit(master)
    # Each subjob's own limit holds: the answer lists the refusals, it does not stop at the first.
    trace = [e["text"] for e in alice.trace(master)]
    assert trace[0].startswith("SPLIT: submitted by alice; split by production:1-3 into 3 subjobs")
    assert any(t.startswith("kill of the masterjob by user 'alice': 2 subjob(s) KILLED") for t in trace)


def test_each_subjob_keeps_its_own_resubmit_limit(tmp_path, db_url):
    """A masterjob's resubmission goes on past a subjob at its limit: that one is refused in the answer (its code
    and message), the others go back to WAITING, all in one transaction."""
    for world in start_world(tmp_path / "limits", db_url, max_user_resubmits=1):
        alice, agent = world.user("alice"), world.agent()
        master = alice.submit(_split_jdl("production:1-2"))

        def fail_next() -> int:
            job = agent.match(site_map())
            run_through(agent, job, "STARTED", "RUNNING", "ERROR_E", exit_code=1)
            return int(job["id"])

        first = fail_next()
        assert alice.resubmit(master)["resubmitted"] == 1
        # Both subjobs fail now, in whichever order the broker hands them out.
        while alice.masterjob(master)["states"] != {"ERROR_E": 2}:
            fail_next()
        res = alice.resubmit(master)
        assert (res["resubmitted"], res["refused"]) == (1, 1), res
        (refused,) = [r for r in res["subjobs"] if "error" in r]
        assert refused["id"] == first and refused["error"]["code"] == "resubmit_limit"
        assert alice.get_job(first)["state"] == "ERROR_E"
        assert alice.masterjob(master)["states"] == {"WAITING": 1, "ERROR_E": 1}


def test_the_masterjob_endpoint_refuses_a_plain_job_and_bad_query(world):
    alice = world.user("alice")
    jid = alice.submit('Executable = "/bin/true";\n')
    with expect_error(409, "not_a_masterjob"):
        alice.masterjob(jid)
    master = alice.submit(_split_jdl("production:1-1"))
    for path in (f"/api/v1/jobs/{master}/subjobs?ids=maybe", "/api/v1/jobs?subjobs=maybe", "/api/v1/jobs?master=x"):
        r = urllib3.request("GET", world.url + path, headers={"Authorization": f"Bearer {alice.token}"},
                            retries=False, timeout=60)
        error = orjson.loads(r.data)["error"]
        assert (r.status, error["field"]) == (400, path.rsplit("?", 1)[1].split("=")[0]), error


def test_central_serve_bounds_max_subjobs():
    for bad in ("0", "100001", "many"):
        out = subprocess.run([sys.executable, "-m", "gridpilot", "central", "serve", "--max-subjobs", bad],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == cli_codes.USAGE and out.stdout == ""
        assert out.stderr.splitlines()[-1].startswith("gridpilot central serve: argument --max-subjobs: "), out.stderr

"""GET /jobs/{id}/files (what `gridpilot get` downloads) and the long listing of GET /catalogue/dirs (`gridpilot ls
-l`), on SQLite and on a real PostgreSQL: the files a job registered, with their replicas, for its owner or an admin
only; paged with bounded limit and offset; after a resubmission, only the new attempt's."""

from __future__ import annotations

import pytest
from support.central import expect_error, jdl, run_through, site_map, start_world

from gridpilot.central import catalogue


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


OUT = "/gridpilot/user/a/alice/run"


def _job_with_files(world, n: int = 3):
    """alice's job, matched and RUNNING, that registered `n` files (the second on two storage elements); another of
    her jobs registered one file in the same directory."""
    alice = world.user("alice")
    se = world.admin.storage_elements()[0]["name"]
    world.admin.add_storage_element("OTHER::SE", "root://xrd.example//data")
    jid, other = alice.submit(jdl(OutputDir=OUT)), alice.submit(jdl(OutputDir=OUT))
    agent = world.agent()
    job, other_job = agent.match(site_map()), agent.match(site_map())
    run_through(agent, job, "STARTED", "RUNNING")
    jc = world.client(job["token"])
    for i in range(n):
        jc.register_file(lfn=f"{OUT}/f{i}.txt", size=10 + i, adler32=f"{i + 1:08x}", se=se, pfn=f"file:///se/f{i}")
    jc.register_file(lfn=f"{OUT}/f1.txt", size=11, adler32="00000002", se="OTHER::SE", pfn="root://xrd.example//data/f1")
    world.client(other_job["token"]).register_file(lfn=f"{OUT}/theirs.txt", size=5, se=se, pfn="file:///se/theirs")
    return alice, agent, job, jid, other, se


def test_a_job_lists_the_files_it_registered_with_their_replicas(world):
    alice, agent, job, jid, other, se = _job_with_files(world)
    got = alice.job_files(jid)
    assert (got["id"], got["state"], got["output_dir"], got["more"], got["offset"]) == (jid, "RUNNING", OUT, False, 0)
    assert [f["lfn"] for f in got["files"]] == [f"{OUT}/f0.txt", f"{OUT}/f1.txt", f"{OUT}/f2.txt"]
    f1 = got["files"][1]
    assert (f1["size"], f1["adler32"], f1["owner"], f1["job_id"]) == (11, "00000002", "alice", jid)
    assert f1["replicas"] == [{"se": se, "pfn": "file:///se/f1"},
                              {"se": "OTHER::SE", "pfn": "root://xrd.example//data/f1"}]
    assert [f["lfn"] for f in alice.job_files(other)["files"]] == [f"{OUT}/theirs.txt"]
    # An admin sees it too.
    assert [f["lfn"] for f in world.admin.job_files(jid)["files"]] == [f["lfn"] for f in got["files"]]


def test_pages_follow_one_another(world):
    alice, *_rest = _job_with_files(world, n=5)
    jid = _rest[2]
    seen, offset = [], 0
    while True:
        page = alice.job_files(jid, offset=offset, limit=2)
        assert len(page["files"]) <= 2 and page["limit"] == 2
        seen += [f["lfn"] for f in page["files"]]
        # Each page's replicas are its own files' (the query bounds them by the page's LFNs).
        assert all(r["pfn"].endswith(f["lfn"].rsplit("/", 1)[1].split(".")[0]) for f in page["files"]
                   for r in f["replicas"])
        if not page["more"]:
            break
        offset += len(page["files"])
    assert seen == [f"{OUT}/f{i}.txt" for i in range(5)]


@pytest.mark.parametrize("who,status,code", [
    ("bob", 404, "job_not_found"),        # another user's job: as if absent, as on every job read
    ("agent", 403, None),                 # role: users and admins only
    ("job", 403, None),
    ("ce", 403, None),
    ("alice-read-only", 403, None),       # a user token without catalogue.read
])
def test_only_the_owner_or_an_admin(world, who, status, code):
    alice, agent, job, jid, other, se = _job_with_files(world)
    client = {
        "bob": lambda: world.user("bob"),
        "agent": lambda: agent,
        "job": lambda: world.client(job["token"]),
        "ce": lambda: world.ce(),
        "alice-read-only": lambda: world.client(world.admin.mint_token("user", "alice", scope="compute.read")),
    }[who]()
    with expect_error(status, code):
        client.job_files(jid)


@pytest.mark.parametrize("query,field", [
    ({"limit": "0"}, "limit"),
    ({"limit": str(catalogue.MAX_JOB_FILES + 1)}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"offset": "9" * 5000}, "offset"),
])
def test_bounds_name_the_field(world, query, field):
    alice = world.user("alice")
    jid = alice.submit(jdl())
    with expect_error(400) as e:
        alice.request("GET", f"/api/v1/jobs/{jid}/files", query=query)
    # The error body's `field` is checked by test_central_bounds.py's table; the message names it too.
    assert e.value.code == "bad_request" and f"query parameter {field} " in e.value.message


def test_unknown_job_is_404(world):
    with expect_error(404, "job_not_found"):
        world.user("alice").job_files(987654)


def test_after_a_resubmission_only_the_new_attempts_files(world):
    alice, agent, job, jid, other, se = _job_with_files(world)
    run_through(agent, job, "ERROR_E", exit_code=1)
    assert alice.job_files(jid)["state"] == "ERROR_E" and len(alice.job_files(jid)["files"]) == 3
    alice.resubmit(jid)
    assert alice.job_files(jid)["files"] == []
    again = agent.match(site_map())
    world.client(again["token"]).register_file(lfn=f"{OUT}/f0.txt", size=99, se=se, pfn="file:///se/new")
    (f,) = alice.job_files(jid)["files"]
    assert (f["lfn"], f["size"], f["replicas"]) == (f"{OUT}/f0.txt", 99, [{"se": se, "pfn": "file:///se/new"}])


def test_the_long_listing_of_a_directory(world):
    alice, agent, job, jid, other, se = _job_with_files(world)
    # The catalogue is the VO's namespace: another user reads it too (docs/central-api.md).
    entries = {e["name"]: e for e in world.user("bob").list_dir(OUT)}
    assert set(entries) == {"f0.txt", "f1.txt", "f2.txt", "theirs.txt"}
    f1 = entries["f1.txt"]
    assert (f1["type"], f1["size"], f1["adler32"], f1["owner"], f1["replicas"], f1["job_id"]) == \
        ("file", 11, "00000002", "alice", 2, jid)
    assert entries["f0.txt"]["replicas"] == 1 and f1["created"] > 0
    top = {e["name"]: e for e in alice.list_dir("/gridpilot/user/a/alice")}
    assert top == {"run": {"name": "run", "lfn": OUT, "type": "dir"}}

"""GET /api/v1/jobs/summary (what `gridpilot top` shows), through gridpilot.client on SQLite and on a real
PostgreSQL: the counts per state and per site, the newest human trace line of the held jobs, who sees what, and
one table of bad queries answered 400 naming the field (docs/central-api.md, "Job summary")."""

from __future__ import annotations

import pytest
import urllib3
from support.central import SITE, expect_error, jdl, run_through, site_map, start_world

from gridpilot.central import summary


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def _held(world, alice, n: int, *states: str):
    """`n` jobs of alice's, each matched and reported through `states`."""
    ids = []
    for _ in range(n):
        jid = alice.submit(jdl())
        job = world.agent().match(site_map())
        assert job["id"] == jid
        run_through(world.agent(), job, *states)
        ids.append(jid)
    return ids


def test_counts_per_state_and_site_and_the_newest_line_of_each_running_job(world):
    alice, bob = world.user("alice"), world.user("bob")
    running, = _held(world, alice, 1, "STARTED", "RUNNING")
    done, = _held(world, alice, 1, "STARTED", "RUNNING", "SAVING", "DONE")
    failed, = _held(world, alice, 1, "STARTED", "RUNNING", "ERROR_E")
    waiting = alice.submit(jdl(TTL=600))
    bob.submit(jdl())  # another user's: never in alice's summary
    agent = world.agent()
    agent.append_trace(running, [{"category": "trace", "text": "event 41 of 100", "key": "k1"}])
    # A resource line after it: not what the view shows as the job's newest line (LINE_CATEGORIES).
    agent.append_trace(running, [{"category": "proc", "text": "1 | 2 | 3", "key": "k2"}])

    s = alice.jobs_summary()
    assert s["user"] == "alice" and s["total"] == 4
    assert s["states"] == {"WAITING": 1, "RUNNING": 1, "DONE": 1, "ERROR_E": 1}
    by_site = {e["site"]: e for e in s["sites"]}
    assert set(by_site) == {SITE, None}, "a WAITING job has no site yet"
    assert {k: by_site[SITE][k] for k in summary.KINDS} == {"running": 1, "waiting": 0, "done": 1, "error": 1}
    assert by_site[None]["waiting"] == 1 and by_site[None]["states"] == {"WAITING": 1}
    assert s["sites"][0]["site"] == SITE, "sites with running jobs come first"
    assert s["running_total"] == 1 and s["running_limit"] == summary.DEFAULT_RUNNING
    [r] = s["running"]
    assert (r["id"], r["state"], r["site"], r["node"]) == (running, "RUNNING", SITE, "node1")
    assert r["line"]["text"] == "event 41 of 100" and r["line"]["category"] == "trace"
    assert r["line"]["truncated"] is False
    assert waiting not in (x["id"] for x in s["running"])

    # An admin sees everyone's, or one user's.
    everyone = world.admin.jobs_summary()
    assert everyone["user"] is None and everyone["total"] == 5 and everyone["states"]["WAITING"] == 2
    assert world.admin.jobs_summary(user="bob")["states"] == {"WAITING": 1}
    assert world.admin.jobs_summary(site=SITE)["states"] == {"RUNNING": 1, "DONE": 1, "ERROR_E": 1}
    assert bob.jobs_summary()["running"] == []


def test_the_running_list_is_bounded_and_says_how_many_there_were(world):
    alice = world.user("alice")
    ids = _held(world, alice, 5, "STARTED", "RUNNING")
    world.agent().append_trace(ids[0], [{"category": "trace", "text": "x" * 2000, "key": "long"}])
    s = alice.jobs_summary(running=3)
    assert s["running_total"] == 5 and s["running_limit"] == 3 and len(s["running"]) == 3
    # The most recently changed first: the last job reached RUNNING last.
    assert [r["id"] for r in s["running"]] == ids[::-1][:3]
    assert all(r["line"]["text"] == "Job state transition from STARTED to RUNNING" for r in s["running"])
    long = alice.jobs_summary(running=summary.MAX_RUNNING)["running"][-1]
    assert long["id"] == ids[0]
    assert long["line"]["text"] == "x" * summary.MAX_LINE_TEXT and long["line"]["truncated"] is True
    assert alice.jobs_summary(running=0)["running"] == []


def test_a_user_sees_only_its_own_jobs(world):
    alice = world.user("alice")
    with expect_error(403, "forbidden") as info:
        alice.jobs_summary(user="bob")
    assert "'bob'" in info.value.message
    assert alice.jobs_summary(user="alice")["user"] == "alice"


#: One table for both databases: the query, the field the 400 must name.
BAD_QUERIES = [
    ({"running": "-1"}, "running"),
    ({"running": str(summary.MAX_RUNNING + 1)}, "running"),
    ({"running": "ten"}, "running"),
    ({"running": "9" * 30}, "running"),
    ({"user": "u" * 256}, "user"),
    ({"user": "a\0b"}, "user"),
    ({"site": "s" * 256}, "site"),
    ({"site": "x\0"}, "site"),
    ({"state": "RUNNING"}, "state"),
    ({"limit": "5"}, "limit"),
]


@pytest.mark.parametrize("query, field", BAD_QUERIES, ids=[f"{next(iter(q))}-{i}" for i, (q, _) in
                                                           enumerate(BAD_QUERIES)])
def test_a_bad_query_is_a_400_naming_its_field(world, query, field):
    import orjson

    r = urllib3.request("GET", world.url + "/api/v1/jobs/summary", fields=query,
                        headers={"Authorization": f"Bearer {world.admin.token}"}, retries=False)
    assert r.status == 400, r.data[:300]
    err = orjson.loads(r.data)["error"]
    assert err["field"] == field and field in err["message"]

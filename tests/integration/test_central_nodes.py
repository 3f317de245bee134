"""Nodes and nodeBad at central (central/nodes.py), through the HTTP API, each case on SQLite and on a real
PostgreSQL: failures counted per host within the window, repeats and shared outages counted once, the broker
refusing a nodeBad host and saying why, an admin clearing it, who may report, list and clear, the bounds of a
report, and the metric."""

from __future__ import annotations

import pytest
from support.central import CE, SITE, expect_error, jdl, run_through, site_map, start_world
from support.metrics import Exposition

BAD_AFTER = 3


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url, node_bad_after=BAD_AFTER, node_bad_window_s=3600.0)


def _on(world, agent, node):
    """A job matched to `agent` on `node`."""
    jid = world.admin.submit(jdl())
    job = agent.match(site_map(node=node))
    assert job is not None and job["id"] == jid
    return job


def _node(world, host):
    found = [n for n in world.admin.nodes()["nodes"] if n["host"] == host]
    return found[0] if found else None


#: Failures that each count once, by how they reach central: a report through POST /nodes/events (the runner's
#: watchdog, an agent back from an outage) or the job's final state report (kill reason).
FAILURES = {
    "stall": lambda agent, job: agent.report_node_event("stall", 0, job_id=job["id"]),
    "error_connecting": lambda agent, job: agent.report_node_event("error_connecting", 0, job_id=job["id"]),
    "sandbox_create": lambda agent, job: run_through(agent, job, "STARTED", "ERROR_E",
                                                     kill_reason="SANDBOX_CREATE"),
    "oom_system": lambda agent, job: run_through(agent, job, "STARTED", "RUNNING", "ERROR_E",
                                                 kill_reason="OOM_SYSTEM", exit_code=137),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_each_kind_of_failure_counts_until_the_node_is_bad_and_the_broker_refuses_it(world, kind):
    agent = world.agent()
    for i in range(BAD_AFTER):
        assert _node(world, "node1") is None or not _node(world, "node1")["bad"], f"bad after {i} failures"
        FAILURES[kind](agent, _on(world, agent, "node1"))
    n = _node(world, "node1")
    assert n["bad"] and n["failures"] == BAD_AFTER and n["failures_by_kind"] == {kind: BAD_AFTER}
    assert n["site"] == SITE and n["ce"] == CE and n["bad_source"] == "failures"
    assert f"{BAD_AFTER} failures within 3600 s ({BAD_AFTER} {kind})" in n["bad_reason"]
    waiting = world.admin.submit(jdl())
    with expect_error(409, "node_bad") as info:
        agent.match(site_map(node="node1"))
    assert "node node1 is nodeBad at central" in info.value.message and "--clear node1" in info.value.message
    assert world.admin.get_job(waiting)["state"] == "WAITING", "the refused match assigned nothing"
    # Another node of the same site is matched as before.
    assert agent.match(site_map(node="node2"))["id"] == waiting


def test_failures_of_mixed_kinds_add_up_and_other_kill_reasons_do_not_count(world):
    agent = world.agent()
    run_through(agent, _on(world, agent, "node1"), "STARTED", "RUNNING", "ERROR_E", kill_reason="TTL")
    run_through(agent, _on(world, agent, "node1"), "STARTED", "RUNNING", "ERROR_E", kill_reason="MEMORY_USAGE")
    run_through(agent, _on(world, agent, "node1"), "STARTED", "RUNNING", "SAVING", "DONE")
    assert _node(world, "node1")["failures"] == 0
    FAILURES["stall"](agent, _on(world, agent, "node1"))
    FAILURES["oom_system"](agent, _on(world, agent, "node1"))
    assert not _node(world, "node1")["bad"]
    FAILURES["sandbox_create"](agent, _on(world, agent, "node1"))
    n = _node(world, "node1")
    assert n["bad"] and n["failures_by_kind"] == {"stall": 1, "sandbox_create": 1, "oom_system": 1}


def test_a_repeated_or_overlapping_report_counts_once(world):
    agent = world.agent()
    jobs = [_on(world, agent, "node1") for _ in range(3)]
    # Three jobs on one node see one outage of 60 s; each of their agents reports it, one twice.
    for job in jobs:
        assert agent.report_node_event("error_connecting", 60, job_id=job["id"])["host"] == "node1"
    again = agent.report_node_event("error_connecting", 60, job_id=jobs[0]["id"])
    assert again["counted"] is False and again["bad"] is False
    n = _node(world, "node1")
    assert n["failures"] == 1 and not n["bad"]
    # A stall is another kind: it counts beside the outage.
    assert agent.report_node_event("stall", 60, job_id=jobs[1]["id"])["counted"] is True
    assert _node(world, "node1")["failures"] == 2


def test_an_outage_other_hosts_saw_too_is_not_the_nodes_fault(world):
    agent = world.agent()
    on = {h: _on(world, agent, h) for h in ("node1", "node2", "node3")}
    assert agent.report_node_event("error_connecting", 120, job_id=on["node1"]["id"])["counted"] is True
    assert agent.report_node_event("error_connecting", 120, job_id=on["node2"]["id"])["counted"] is True
    # The third host down at the same time: central (or the network) was the problem. None of the three counts.
    assert agent.report_node_event("error_connecting", 120, job_id=on["node3"]["id"])["counted"] is False
    assert [_node(world, h)["failures"] for h in on] == [0, 0, 0]


def test_clear_matches_the_node_again_and_forgets_its_failures(world):
    agent = world.agent()
    for _ in range(BAD_AFTER):
        FAILURES["stall"](agent, _on(world, agent, "node1"))
    assert _node(world, "node1")["bad"]
    waiting = world.admin.submit(jdl())
    with expect_error(409, "node_bad"):
        agent.match(site_map(node="node1"))
    for who in (agent, world.user(), world.ce()):
        with expect_error(403):
            who.clear_node("node1")
    with expect_error(404, "node_not_found"):
        world.admin.clear_node("no-such-node")
    r = world.admin.clear_node("node1")
    assert r["was_bad"] is True and r["bad"] is False and "3 failures" in r["was_reason"]
    n = _node(world, "node1")
    assert not n["bad"] and n["failures"] == 0 and n["cleared_by"] == "admin" and n["cleared_at"] is not None
    assert agent.match(site_map(node="node1"))["id"] == waiting
    # Counting starts again from the clearing: one more failure does not make it bad at once.
    FAILURES["stall"](agent, _on(world, agent, "node1"))
    assert not _node(world, "node1")["bad"] and _node(world, "node1")["failures"] == 1


def test_listing_filters_by_site_and_badness_and_a_ce_sees_only_its_site(world):
    agent, other = world.agent(), world.agent("agent2", site="OTHER", ce="OTHER::CE")
    for _ in range(BAD_AFTER):
        FAILURES["stall"](agent, _on(world, agent, "node1"))
    world.admin.submit(jdl())
    other.match(site_map(node="far1", site="OTHER", ce="OTHER::CE"))
    agent.match(site_map(node="node2"))
    # By site, then host.
    assert [n["host"] for n in world.admin.nodes()["nodes"]] == ["node1", "node2", "far1"]
    assert [n["host"] for n in world.admin.nodes(bad=True)["nodes"]] == ["node1"]
    assert [n["host"] for n in world.admin.nodes(bad=False, site=SITE)["nodes"]] == ["node2"]
    listed = world.admin.nodes(site="OTHER")["nodes"]
    assert [n["host"] for n in listed] == ["far1"] and listed[0]["last_seen"] >= listed[0]["first_seen"]
    ce = world.ce()
    assert [n["host"] for n in ce.nodes()["nodes"]] == ["node1", "node2"]
    with expect_error(403):
        ce.nodes(site="OTHER")
    for who in (agent, world.user()):
        with expect_error(403):
            who.nodes()


def test_who_may_report_for_which_node(world):
    agent, intruder = world.agent(), world.agent("agent2")
    job = _on(world, agent, "node1")
    with expect_error(404, "job_not_found"):  # another agent's job: as if absent, like GET /jobs/{id}
        intruder.report_node_event("stall", 1, job_id=job["id"])
    with expect_error(403):
        agent.report_node_event("stall", 1, job_id=job["id"], host="node9")
    with expect_error(400, "bad_request") as info:
        agent.report_node_event("stall", 1, host="node1")
    assert "'job_id' is required" in info.value.message
    with expect_error(403):
        world.user().report_node_event("stall", 1, host="node1")
    unmatched = world.admin.submit(jdl())
    with expect_error(409, "no_node"):
        world.admin.report_node_event("stall", 1, job_id=unmatched)
    # A CE reports for hosts of its own site; not for another site's.
    assert world.ce().report_node_event("error_connecting", 5, host="node1")["host"] == "node1"
    other = world.agent("agent3", site="OTHER", ce="OTHER::CE")
    world.admin.submit(jdl())
    other.match(site_map(node="far1", site="OTHER", ce="OTHER::CE"))
    with expect_error(403):
        world.ce().report_node_event("stall", 5, host="far1")
    assert world.admin.report_node_event("stall", 5, host="far1")["counted"] is True


@pytest.mark.parametrize("body, field", [
    ({"kind": "nope", "seconds": 1}, "kind"),
    ({"kind": "sandbox_create", "seconds": 1}, "kind"),
    ({"seconds": 1}, "kind"),
    ({"kind": "stall"}, "seconds"),
    ({"kind": "stall", "seconds": -1}, "seconds"),
    ({"kind": "stall", "seconds": 1e12}, "seconds"),
    ({"kind": "stall", "seconds": "5"}, "seconds"),
    ({"kind": "stall", "seconds": 1, "job_id": 0}, "job_id"),
    ({"kind": "stall", "seconds": 1, "job_id": 1 << 63}, "job_id"),
    ({"kind": "stall", "seconds": 1, "job_id": True}, "job_id"),
    ({"kind": "stall", "seconds": 1, "host": "x" * 256}, "host"),
    ({"kind": "stall", "seconds": 1, "host": "a\0b"}, "host"),
    ({"kind": "stall", "seconds": 1, "host": "node1", "detail": 5}, "detail"),
    ({"kind": "stall", "seconds": 1}, "host"),
])
def test_a_report_out_of_its_bounds_is_a_400_naming_the_field(world, body, field):
    status, answer = _post(world, "/api/v1/nodes/events", body)
    assert status == 400, answer
    assert answer["error"]["field"] == field, answer


def test_a_long_detail_is_cut_not_refused_and_bad_queries_are_400(world):
    status, answer = _post(world, "/api/v1/nodes/events", {"kind": "stall", "seconds": 1, "host": "node1",
                                                           "detail": "x" * 5000})
    assert status == 200 and answer["counted"] is True
    for query, field in (("bad=maybe", "bad"), ("limit=0", "limit"), ("limit=abc", "limit"),
                         ("site=" + "s" * 300, "site")):
        status, answer = _get(world, "/api/v1/nodes?" + query)
        assert status == 400 and answer["error"]["field"] == field, (query, answer)
    status, answer = _post(world, "/api/v1/nodes/clear", {"host": ""})
    assert status == 400 and answer["error"]["field"] == "host"


def test_the_metric_counts_bad_nodes_by_site(world):
    agent = world.agent()
    _on(world, agent, "node2")
    m = Exposition(world.admin.metrics())
    assert m.type_of("gridpilot_nodes_bad") == "gauge"
    assert m.value("gridpilot_nodes_bad", site=SITE) == 0
    for _ in range(BAD_AFTER):
        FAILURES["oom_system"](agent, _on(world, agent, "node1"))
    assert Exposition(world.admin.metrics()).value("gridpilot_nodes_bad", site=SITE) == 1
    world.admin.clear_node("node1")
    assert Exposition(world.admin.metrics()).value("gridpilot_nodes_bad", site=SITE) == 0


def test_a_central_that_never_marks_nodes_bad(tmp_path, db_url):
    for world in start_world(tmp_path / "never", db_url, node_bad_after=0):
        agent = world.agent()
        for _ in range(5):
            FAILURES["stall"](agent, _on(world, agent, "node1"))
        n = _node(world, "node1")
        assert n["failures"] == 5 and not n["bad"]


def _post(world, path, body):
    import orjson
    import urllib3

    r = urllib3.request("POST", world.url + path, body=orjson.dumps(body), retries=False,
                        headers={"Authorization": f"Bearer {world.admin.token}", "Content-Type": "application/json"})
    return r.status, orjson.loads(r.data)


def _get(world, path):
    import orjson
    import urllib3

    r = urllib3.request("GET", world.url + path, retries=False,
                        headers={"Authorization": f"Bearer {world.admin.token}"})
    return r.status, orjson.loads(r.data)

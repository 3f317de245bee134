"""Central's side of the computing element: pilot tokens minted by a CE token, pilot counts in /metrics."""

from __future__ import annotations

import pytest
from support.central import CE, SITE, expect_error, jdl, site_map, start_world
from support.metrics import Exposition

from gridpilot.central import pilots


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path, db_url)


def test_a_ce_mints_a_short_lived_agent_token_bound_to_its_own_site_and_ce(world):
    ce = world.ce()
    token = ce.mint_pilot_token("pilot/one", ttl_s=900)
    agent = world.client(token)
    me = agent.whoami()
    assert (me["role"], me["subject"], me["site"], me["ce"]) == ("agent", "pilot/one", SITE, CE)
    assert me["expires"] - me["issued"] == pytest.approx(900, abs=1)
    # It is a working agent token: it matches a job at its site, and the job carries the binding.
    job_id = world.admin.submit(jdl())
    job = agent.match(site_map())
    assert job is not None and job["id"] == job_id
    got = world.admin.get_job(job_id)
    assert (got["site"], got["ce"]) == (SITE, CE)


def test_a_pilot_token_may_not_outlive_the_limit_nor_name_another_site(world):
    ce = world.ce()
    with expect_error(400, "bad_request") as e:
        ce.mint_pilot_token("p", ttl_s=pilots.PILOT_TOKEN_MAX_TTL_S + 1)
    assert "ttl_s" in e.value.message and "short-lived" in e.value.message
    with expect_error(400):
        ce.mint_pilot_token("p", ttl_s=0)
    with expect_error(403) as e:
        ce.request("POST", "/api/v1/ce/tokens", body={"subject": "p", "site": "ELSEWHERE"})
    assert "ELSEWHERE" in e.value.message
    # An agent token cannot mint more agent tokens.
    with expect_error(403):
        world.client(ce.mint_pilot_token("p")).mint_pilot_token("q")
    # An admin must say for which site and CE.
    with expect_error(400) as e:
        world.admin.mint_pilot_token("p")
    assert "site" in e.value.message


def test_pilot_counts_reach_metrics_per_ce(world):
    world.ce().report_pilots({"queued": 3, "running": 2, "finished": 7, "failed": 1, "held": 0}, backend="slurm")
    other = world.ce("ce2", site="OTHER", ce="OTHER::CE")
    other.report_pilots({"running": 4}, backend="local")
    world.ce().report_pilots({"queued": 1, "running": 5, "finished": 9, "failed": 1}, backend="slurm")  # replaces
    m = Exposition(world.admin.metrics())
    assert m.type_of("gridpilot_ce_pilots") == "gauge"

    def value(site: str, ce: str, state: str) -> float:
        return m.value("gridpilot_ce_pilots", ce=ce, site=site, state=state)

    assert [value(SITE, CE, s) for s in pilots.PILOT_STATES] == [1, 5, 9, 1, 0]
    assert [value("OTHER", "OTHER::CE", s) for s in pilots.PILOT_STATES] == [0, 4, 0, 0, 0]


@pytest.mark.parametrize("body, words", [
    ({"pilots": {"queued": -1}}, "pilots.queued"),
    ({"pilots": {"queued": 1.5}}, "pilots.queued"),
    ({"pilots": {"sleeping": 1}}, "unknown states"),
    ({"pilots": [1, 2]}, "field 'pilots'"),
    ({}, "field 'pilots'"),
])
def test_bad_pilot_reports_say_what_is_wrong(world, body, words):
    with expect_error(400) as e:
        world.ce().request("POST", "/api/v1/ce/pilots", body=body)
    assert words in e.value.message

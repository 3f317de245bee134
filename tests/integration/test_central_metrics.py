"""Central's /metrics as a Prometheus server reads it: every family keeps the name, type, help and labels it had
before prometheus_client rendered it; the standard process_* and python_info are there; each Central counts in
a registry of its own; OpenMetrics when the scraper asks for it. Read with prometheus_client's own parsers."""

from __future__ import annotations

import platform

import pytest
import urllib3
from support.central import CE, SITE, jdl, run_through, site_map, start_world
from support.metrics import Exposition

from gridpilot.central.serve import EmbeddedCentral

#: family: (type, help, label names of its samples) as central exposed them before prometheus_client.
FAMILIES = {
    "gridpilot_jobs": ("gauge", "Jobs in the queue by state (whole database).", {"state"}),
    "gridpilot_ce_pilots": ("gauge", "Pilots in each CE's batch system by state, as the CE last reported.",
                            {"ce", "site", "state"}),
    "gridpilot_http_requests": ("counter", "HTTP requests by route, method and status.", {"method", "route", "status"}),
    "gridpilot_http_request_duration_seconds": ("histogram", "HTTP request latency by route.", {"method", "route"}),
    "gridpilot_matches": ("counter", "Match requests by result (assigned or empty).", {"result"}),
    "gridpilot_match_duration_seconds": ("histogram", "Time to find and assign a job.", set()),
    "gridpilot_heartbeats": ("counter", "Job heartbeats recorded (one per job).", set()),
    "gridpilot_heartbeat_requests": ("counter", "Bulk heartbeat requests.", set()),
    "gridpilot_status_reports": ("counter", "State reports accepted, by new state.", {"state"}),
    "gridpilot_submissions": ("counter", "Jobs submitted.", set()),
    "gridpilot_sweeper_changes": ("counter", "Jobs the sweeper changed, by new state.", {"state"}),
}


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path, db_url)


def test_every_family_keeps_its_name_type_help_and_labels(world):
    jid = world.admin.submit(jdl())
    agent = world.agent()
    job = agent.match(site_map())
    assert job["id"] == jid
    run_through(agent, job, "STARTED", "RUNNING")
    agent.heartbeats([{"job_id": jid, "resubmission": 0}])
    world.ce().report_pilots({"queued": 2, "running": 1}, backend="local")
    m = Exposition(world.admin.metrics())
    for name, (kind, help_text, labels) in FAMILIES.items():
        assert m.type_of(name) == kind, name
        assert m.help_of(name) == help_text, name
        seen = {frozenset(k for k in ls if k != "le") for ls in m.labelled(name + ("_total" if kind == "counter" else
                                                                                  "_count" if kind == "histogram"
                                                                                  else ""))}
        if name != "gridpilot_sweeper_changes":  # no sweep ran: no series yet
            assert seen == {frozenset(labels)}, (name, seen)
    assert m.value("gridpilot_status_reports_total", state="RUNNING") == 1
    assert m.value("gridpilot_submissions_total") == 1
    assert m.value("gridpilot_ce_pilots", ce=CE, site=SITE, state="queued") == 2
    assert m.value("gridpilot_http_requests_total", method="POST", route="/api/v1/jobs/{job_id}/status",
                   status="200") == 2
    # The latency buckets are the ones central's targets are judged by (fine below 20 ms).
    les = sorted({float(ls["le"]) for ls in m.labelled("gridpilot_match_duration_seconds_bucket")})
    assert les[:5] == [0.001, 0.0025, 0.005, 0.01, 0.02] and les[-1] == float("inf")


def test_the_process_and_python_metrics_are_there(world):
    m = Exposition(world.admin.metrics())
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert m.value(name) > 0, name
    (info,) = m.labelled("python_info")
    assert info["version"] == platform.python_version() and info["implementation"] == platform.python_implementation()


def test_each_central_counts_in_its_own_registry(tmp_path):
    with EmbeddedCentral(tmp_path / "a", sweep_interval_s=0) as a, EmbeddedCentral(tmp_path / "b",
                                                                                   sweep_interval_s=0) as b:
        for _ in range(3):
            a.client().submit(jdl())
        ma, mb = Exposition(a.client().metrics()), Exposition(b.client().metrics())
    assert ma.value("gridpilot_submissions_total") == 3
    assert mb.value("gridpilot_submissions_total") == 0
    assert mb.get("gridpilot_http_requests_total", method="POST", route="/api/v1/jobs", status="201") is None


def test_openmetrics_when_the_scraper_asks_for_it(world):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    r = urllib3.request("GET", world.url + "/metrics",
                        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    text = r.data.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["gridpilot_matches"] == "counter" and families["gridpilot_jobs"] == "gauge"
    plain = urllib3.request("GET", world.url + "/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")

"""A job's resource plots on its page (/ui/jobs/{id}), on SQLite and PostgreSQL: the records posted through the API
with an agent token as a JobAgent posts them, the page read with the owner's session cookie as a browser sends it.
The charts' numbers are checked in the SVG: tooltips (a series' range and last value, a limit's value) and the
points' positions on the axes."""

from __future__ import annotations

import html
import re
import time
import xml.etree.ElementTree as ET
from typing import Dict, List

import pytest
import urllib3
from support.central import jdl, run_through, site_map, start_world
from support.proctrace import MB, procfmt_entry, sample_entries

from gridpilot.central.ui import web
from gridpilot.central.ui.charts import HEIGHT, BOTTOM, TOP

SVG = "{http://www.w3.org/2000/svg}"
JDL = jdl(CPUCores=2, MemorySize="2GB", WorkDirectorySize="5GB", TTL=3600)
PH = HEIGHT - TOP - BOTTOM


@pytest.fixture
def world(tmp_path, db_url):
    yield from start_world(tmp_path / "state", db_url)


def page(world, path: str, token: str) -> urllib3.BaseHTTPResponse:
    return urllib3.request("GET", world.url + path, headers={"Cookie": f"{web.SESSION_COOKIE}={token}"},
                           retries=False, redirect=False, timeout=60)


def charts(body: str) -> Dict[str, ET.Element]:
    """The #plots section's charts by caption, each <svg> parsed as XML."""
    section = re.search(r'<section id="plots">(.*?)</section>', body, re.S)
    assert section, body[:2000]
    out = {}
    for caption, svg in re.findall(r"<figcaption>(.*?)</figcaption>(<svg.*?</svg>)", section.group(1), re.S):
        out[html.unescape(caption)] = ET.fromstring(svg.replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
    return out


def titles(svg: ET.Element, tag: str, cls: str) -> List[str]:
    return [el.findtext(f"{SVG}title") or "" for el in svg.iter(f"{SVG}{tag}") if cls in (el.get("class") or "")]


def line_points(svg: ET.Element) -> List[List[float]]:
    return [[float(p.split(",")[1]) for p in (el.get("points") or "").split()] for el in svg.iter(f"{SVG}polyline")]


def running_job(world, user):
    jid = user.submit(JDL)
    agent = world.agent()
    job = agent.match(site_map())
    assert job["id"] == jid
    run_through(agent, job, "STARTED", "RUNNING")
    return jid, agent


def test_a_killed_jobs_plots_show_its_samples_limits_and_kill(world):
    alice_token = world.admin.mint_token("user", "alice")
    jid, agent = running_job(world, world.client(alice_token))
    t0 = time.time() - 1300  # the pilot's clock: samples 10 minutes apart, as proc_trace_interval has them
    entries = [procfmt_entry(t0),
               *sample_entries(t0, 0, 0, 100, 1000, 2, read_bytes=0, write_bytes=0, pss_swap_bytes=90 * MB,
                               disk_bytes=1 * MB),
               # Malformed records a pilot could send (within the trace's bounds): skipped, not an error.
               {"category": "proc", "text": "1 2 3"}, {"category": "usage", "text": "[1, 2]"},
               {"category": "proc", "text": "<script>alert(1)</script> " * 14},
               *sample_entries(t0 + 600, 600, 900, 300, 1500, 2, rss_max_mb=700, read_bytes=60_000_000, write_bytes=6_000_000,
                               pss_swap_bytes=280 * MB, disk_bytes=50 * MB),
               *sample_entries(t0 + 1200, 1200, 2100, 500, 1600, 2, rss_max_mb=700, read_bytes=60_000_000, write_bytes=18_000_000,
                               pss_swap_bytes=480 * MB, disk_bytes=80 * MB)]
    assert agent.append_trace(jid, entries) == len(entries)
    agent.set_status(jid, "ERROR_E", 0, kill_reason="MEMORY_USAGE", exit_code=137)

    r = page(world, f"/ui/jobs/{jid}", alice_token)
    assert r.status == 200, r.data[:500]
    body = r.data.decode()
    assert "<script>alert" not in body
    got = charts(body)
    assert list(got) == ["CPU", "Memory", "Virtual memory", "Disk (work directory)", "I/O"]
    assert body.count('<svg class="chart"') == 5

    cpu = got["CPU"]
    assert titles(cpu, "polyline", "series") == ["CPU (% of one core): 150 % to 200 %, last 200 %"]
    assert titles(cpu, "line", "limit") == ["2 cores: 200 %"]
    # The axis goes to the 2 cores' 200 %: 200 % at its top, 150 % a quarter of the way down.
    assert line_points(cpu) == [[pytest.approx(TOP + PH * 0.25, abs=0.06), pytest.approx(TOP, abs=0.06)]]

    mem = got["Memory"]
    assert titles(mem, "polyline", "series") == ["RSS: 100 MiB to 500 MiB, last 500 MiB",
                                                 "PSS+swap: 90 MiB to 480 MiB, last 480 MiB",
                                                 "RSS peak so far: 100 MiB to 700 MiB, last 700 MiB"]
    assert titles(mem, "line", "limit") == ["kill at 1.2 x MemorySize (cgroup charge, else PSS+swap): 2.4 GiB"]
    assert titles(got["Disk (work directory)"], "line", "limit") == ["WorkDirectorySize: 5 GiB"]
    assert titles(got["I/O"], "polyline", "series") == ["read: 0 B/s to 97.7 KiB/s, last 0 B/s",
                                                        "write: 9.77 KiB/s to 19.5 KiB/s, last 19.5 KiB/s"]
    # The kill on every chart, at the ERROR_E state line: after the last sample, so at the time axis' right end.
    for svg in got.values():
        (mark,) = titles(svg, "line", "mark")
        assert mark == "killed: MEMORY_USAGE"
        (x,) = [float(el.get("x1") or 0) for el in svg.iter(f"{SVG}line") if el.get("class") == "mark"]
        assert x == pytest.approx(float((svg.get("viewBox") or "").split()[2]) - 8, abs=0.06)


def test_a_job_without_samples_says_so_and_a_resubmitted_one_shows_its_latest_run(world):
    alice_token = world.admin.mint_token("user", "alice")
    alice = world.client(alice_token)
    jid, agent = running_job(world, alice)
    r = page(world, f"/ui/jobs/{jid}", alice_token)
    assert r.status == 200 and "Resource use: no samples" in r.data.decode()

    t0 = time.time() - 4000
    agent.append_trace(jid, [procfmt_entry(t0), *sample_entries(t0, 0, 0, 100, 1000, 2),
                             *sample_entries(t0 + 600, 600, 600, 900, 1000, 2)])
    agent.set_status(jid, "ERROR_E", 0, kill_reason="TTL")
    alice.resubmit(jid)
    agent2 = world.agent("agent2")
    job = agent2.match(site_map())
    assert job["id"] == jid and job["resubmission"] == 1
    run_through(agent2, job, "STARTED", "RUNNING")
    t1 = time.time() - 120
    agent2.append_trace(jid, [procfmt_entry(t1), *sample_entries(t1, 0, 0, 10, 20, 2),
                              *sample_entries(t1 + 60, 60, 30, 30, 20, 2)])
    got = charts(page(world, f"/ui/jobs/{jid}", alice_token).data.decode())
    assert list(got)[0] == "CPU (run 2 of 2)"
    assert titles(got["CPU (run 2 of 2)"], "polyline", "series") == [] and \
        titles(got["CPU (run 2 of 2)"], "circle", "dot") == ["CPU (% of one core): 50 % to 50 %, last 50 %"]
    assert titles(got["Memory (run 2 of 2)"], "polyline", "series")[0] == "RSS: 10 MiB to 30 MiB, last 30 MiB"
    # The first run's kill is not the second's: the job's kill reason was cleared by the resubmission.
    assert all(titles(svg, "line", "mark") == [] for svg in got.values())

"""The web view in a real browser: headless chromium (tests/support/browser.py) against a real `gridpilot central
serve` process whose jobs a real `gridpilot runner` ran on this machine: one done with an output and [proc] samples,
one killed at its TTL, and one of another user. A person's path through the pages: signed out to the sign-in form,
sign in with a pasted token, find a job, read its JDL, trace and plots, see a kill reason, find another user's job
not there, sign out; the strict CSP never refused anything; a phone's width; and the same without JavaScript.

On failure, each open browser's screenshot and page source go to the artefacts directory (docs/testing.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Tuple
from urllib.parse import quote, urlencode, urlsplit

import orjson
import pytest

from gridpilot.central.ui import PREFIX, joblist
from gridpilot.client import CentralClient
from gridpilot.private_files import write_private
from gridpilot.states import JobStatus

from support import browser as web
from support.pilot import FAST, shell_jdl
from support.serve_procs import ServeProcs, stop_all

SE_NAME = "LOCAL::UI::FILE"
#: Long enough for the ends of three jobs on a loaded machine (a runner start, matches, a TTL, uploads).
JOBS_DEADLINE_S = 600.0
FINAL = {s.name for s in JobStatus if s.is_final}


#: A job name that would run a script and add an element if a page did not escape it.
HOSTILE = "<script>document.title='pwned'</script><b id=injected>bold</b>"
#: The pages without a job id in their path.
PAGES = ("/", "/jobs", "/sites", "/sites?site=LOCAL")


@dataclass
class Grid:
    url: str
    tokens: Dict[str, str]
    done: int
    killed: int
    bobs: int
    live: int
    marker: str

    def ui(self, path: str = "/", **query: str) -> str:
        return self.url.rstrip("/") + PREFIX + path + (("?" + urlencode(query)) if query else "")


def _wait_state(client: CentralClient, job_id: int, *states: str) -> Dict[str, Any]:
    """The job once its state is one of `states` (any final state when none is named)."""
    want = set(states) or FINAL
    deadline = time.monotonic() + JOBS_DEADLINE_S
    while True:
        job = client.get_job(job_id)
        if job["state"] in want:
            return job
        assert job["state"] not in FINAL, f"job {job_id} ended {job['state']} waiting for {sorted(want)}"
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {JOBS_DEADLINE_S:.0f} s"
        time.sleep(0.5)


def _wait_final(client: CentralClient, job_id: int) -> Dict[str, Any]:
    return _wait_state(client, job_id)


def _kill_and_wait(client: CentralClient, job_id: int) -> None:
    if client.get_job(job_id)["state"] not in FINAL:
        client.kill(job_id)
    _wait_final(client, job_id)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    """A serve process on SQLite, its storage element, and the three jobs, run to their ends by a real runner."""
    web.require_browser()
    root = tmp_path_factory.mktemp("ui-grid")
    marker = f"ui-browser-{uuid.uuid4().hex[:8]}"
    with ServeProcs(root, f"sqlite:///{root / 'central.db'}") as serve, ExitStack() as stack:
        url = serve.urls[0]
        admin = CentralClient(url, serve.admin_token)
        se_dir = root / "se"
        se_dir.mkdir()
        admin.add_storage_element(SE_NAME, f"file://{se_dir}")
        tokens = {"admin": serve.admin_token,
                  "alice": admin.mint_token("user", "alice"), "bob": admin.mint_token("user", "bob")}
        alice, bob = CentralClient(url, tokens["alice"]), CentralClient(url, tokens["bob"])
        # A few seconds of CPU and output, so the [proc] samples (one a second) give the plots points.
        done = alice.submit(shell_jdl(
            f"echo {marker}-done; for n in 1 2 3 4 5 6; do echo step $n; head -c 8000000 /dev/urandom | md5sum; "
            "sleep 1; done > steps.txt", OutputFile=["steps.txt@disk=1"]), name=f"{marker}-done")
        # Its name is markup, which every page must show as text.
        killed = alice.submit(shell_jdl(f"echo {marker}-killed; sleep 600", TTL=8),
                              name=f"{marker}-killed {HOSTILE}")
        bobs = bob.submit(shell_jdl(f"echo {marker}-bob; echo secret-of-bob"), name=f"{marker}-bob")
        # Runs while the browsers look (its trace grows by a [proc] line a second); killed when the module ends.
        live = alice.submit(shell_jdl(f"echo {marker}-live; sleep 3000", TTL=3600), name=f"{marker}-live")

        agent = admin.mint_token("agent", "pilot@ui-browser", site="LOCAL", ce="LOCAL::CE")
        token_file = root / "agent.token"
        write_private(token_file, agent)
        conf = dict(FAST, central_url=url, token_file=str(token_file), workdir=str(root / "work"),
                    close_se=[SE_NAME], cores=4, proc_trace_interval=1.0, monitor_slow_s=1.0, max_empty_matches=3)
        (root / "pilot.yaml").write_bytes(orjson.dumps(conf))  # JSON is YAML
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
        with open(root / "runner.log", "ab") as log:
            runner = subprocess.Popen([sys.executable, "-m", "gridpilot", "runner", "--config", str(root / "pilot.yaml")],
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        stack.callback(stop_all, [runner], 60)
        # Killed before the runner is stopped, so the pilot ends it and nothing of it is left.
        stack.callback(_kill_and_wait, admin, live)
        try:
            jobs = {j: _wait_final(admin, j) for j in (done, killed, bobs)}
            _wait_state(admin, live, "RUNNING")
        except AssertionError as e:
            raise AssertionError(f"{e}\n" + (root / "runner.log").read_text(errors="replace")[-4000:]) from None
        assert jobs[done]["state"] == "DONE", jobs[done]
        assert jobs[killed]["kill_reason"] == "TTL", jobs[killed]
        assert jobs[bobs]["state"] == "DONE", jobs[bobs]
        yield Grid(url, tokens, done, killed, bobs, live, marker)


@pytest.fixture
def browsers(request: pytest.FixtureRequest) -> Iterator[Callable[..., web.Browser]]:
    """Opens browsers for one test (`browsers(size, javascript=...)`), quits them after; when the test failed,
    each one's screenshot and page source are saved first (support.browser.artefacts_dir)."""
    failed_before = request.session.testsfailed
    opened: List[web.Browser] = []
    with ExitStack() as stack:
        def open_one(size: Tuple[int, int] = web.DESKTOP, *, javascript: bool = True) -> web.Browser:
            b = stack.enter_context(web.open_browser(size, javascript=javascript))
            opened.append(b)
            return b

        yield open_one
        # The call's report is logged before teardown, so a failure of this test has been counted by now.
        if request.session.testsfailed > failed_before:
            where = web.artefacts_dir()
            for i, b in enumerate(opened):
                saved = b.save_artefacts(where, f"{request.node.name}-{i}")
                print(f"browser {i} of {request.node.name}: " + ", ".join(map(str, saved)))


def _path(b: web.Browser) -> str:
    return urlsplit(b.driver.current_url).path


def sign_in(b: web.Browser, g: Grid, who: str, page: str = "/") -> None:
    """Open `page` signed out, land on the sign-in form, paste `who`'s token, and come back signed in."""
    b.get(g.ui(page))
    b.wait_path(PREFIX + "/signin")
    b.element("#token").send_keys(g.tokens[who])
    b.element("#signin").click()
    b.wait(lambda d: not _path(b).startswith(PREFIX + "/signin"), "leaving the sign-in form")
    assert who in b.element("#who").text
    assert _path(b) == PREFIX + page, "the sign-in goes back to the page that sent the browser to it"


def job_rows(b: web.Browser, g: Grid) -> Dict[int, str]:
    """The job ids linked from #jobs on the jobs page (the name filter when the page has one), with their rows'
    text."""
    if "name" in joblist.PARAMETERS:
        b.get(g.ui("/jobs", name=g.marker))
    else:
        b.get(g.ui("/jobs"))
    return job_rows_here(b)


def job_rows_here(b: web.Browser) -> Dict[int, str]:
    """The job ids linked from the #jobs table the browser shows, with their rows' text."""
    table = b.element("#jobs")
    rows: Dict[int, str] = {}
    for link in table.find_elements("css selector", f"a[href*='{PREFIX}/jobs/']"):
        tail = urlsplit(link.get_attribute("href")).path.rsplit("/", 1)[-1]
        if tail.isdigit():
            row = link.find_element("xpath", "./ancestor::tr[1]")
            rows[int(tail)] = row.text
    return rows


def test_a_person_signs_in_finds_a_job_and_reads_its_jdl_and_trace(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice", "/jobs")

    rows = job_rows(b, grid)
    assert grid.done in rows and grid.killed in rows
    assert grid.bobs not in rows, "a user's job list shows only their own jobs"
    assert "DONE" in rows[grid.done]

    # Follow the link, as a person would.
    b.element(f"#jobs a[href$='/jobs/{grid.done}']").click()
    b.wait_path(f"{PREFIX}/jobs/{grid.done}")
    assert b.element("#job-state").text.strip() == "DONE"
    assert f"{grid.marker}-done" in b.element("#jdl").text
    # One li per trace line, its category its class.
    assert any("WAITING" in li.text for li in b.elements("#trace li.cat-state"))
    assert len(b.elements("#trace li.cat-proc")) >= 2, "the pilot's [proc] lines, one a second while the job ran"


def test_a_job_name_of_markup_shows_as_text(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice", "/jobs")
    rows = job_rows(b, grid)
    assert HOSTILE in rows[grid.killed]
    for page in ("/jobs", f"/jobs/{grid.killed}"):
        b.get(grid.ui(page))
        b.element("main")
        assert not b.elements("#injected"), page
        assert b.driver.title != "pwned", page


def test_a_done_jobs_page_plots_its_samples(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice", f"/jobs/{grid.done}")
    charts = b.elements("#plots svg.chart")
    assert charts, "the job page plots its [proc] samples"
    assert all(c.is_displayed() and c.size["width"] > 100 for c in charts)
    assert b.elements("#plots svg.chart polyline.series"), "a line through the samples"
    # The killed job's plots mark the kill.
    b.get(grid.ui(f"/jobs/{grid.killed}"))
    assert b.elements("#plots svg.chart")
    marks = b.elements("#plots svg.chart line.mark")
    assert marks, "the kill is marked on the plots"


def test_a_killed_jobs_page_shows_its_kill_reason(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice", f"/jobs/{grid.killed}")
    assert b.element("#job-state").text.strip() != "DONE"
    reason = b.element("#kill-reason").text
    assert "TTL" in reason, reason


def test_another_users_job_is_a_404_that_reveals_nothing(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice")
    b.get(grid.ui(f"/jobs/{grid.bobs}"))
    theirs = b.element("#error-message").text
    assert "404" in b.element("h1").text
    source = b.driver.page_source
    assert f"{grid.marker}-bob" not in source and "secret-of-bob" not in source and "bob" not in source
    assert not b.elements("#jdl") and not b.elements("#trace")
    # The same words as for a job that does not exist: nothing tells that it does.
    b.get(grid.ui("/jobs/987654321"))
    nobody = b.element("#error-message").text
    assert theirs.replace(str(grid.bobs), "N") == nobody.replace("987654321", "N")
    b.get(grid.ui(f"/jobs/{grid.bobs}/trace"))
    assert "secret-of-bob" not in b.driver.page_source


def test_signing_out_sends_every_page_back_to_the_sign_in_form(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice")
    b.element("form.signout button[type=submit]").click()
    b.wait_path(PREFIX + "/signin")
    for page in (*PAGES, f"/jobs/{grid.done}"):
        b.get(grid.ui(page))
        b.wait_path(PREFIX + "/signin")
        assert not b.elements("#who"), page
        assert grid.marker not in b.driver.page_source, page


def test_every_page_runs_within_its_content_security_policy(grid: Grid, browsers):
    b = browsers()
    b.get(grid.ui("/signin"))
    b.element("#token")
    sign_in(b, grid, "admin")
    for page in (*PAGES, f"/jobs/{grid.done}", f"/jobs/{grid.killed}", f"/jobs/{grid.bobs}", "/jobs/987654321"):
        b.get(grid.ui(page))
        b.element("main")
        # The script (ui.js, loaded from 'self') is allowed and ran: no console error of any kind.
    messages = b.console_messages()
    assert [m["message"] for m in messages if "Content Security Policy" in m["message"]] == []
    # The pages link their own icon, so the browser asks for no /favicon.ico (a 404 outside /ui/).
    errors = [m["message"] for m in messages if m.get("level") == "SEVERE"]
    # The one expected error: the missing job's 404 (a failed load, as the browser logs every 4xx page).
    assert all("987654321" in m and "404" in m for m in errors), errors


def test_an_admin_sees_every_users_jobs(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "admin", "/jobs")
    rows = job_rows(b, grid)
    assert {grid.done, grid.killed, grid.bobs} <= set(rows)
    b.get(grid.ui(f"/jobs/{grid.bobs}"))
    assert f"{grid.marker}-bob" in b.element("#jdl").text


def test_a_wrong_token_is_refused_on_the_form(grid: Grid, browsers):
    b = browsers()
    b.get(grid.ui("/signin"))
    b.element("#token").send_keys(grid.tokens["alice"][:-6] + "AAAAAA")
    b.element("#signin").click()
    assert b.element("#signin-error").text
    assert not b.elements("#who")


def test_every_page_fits_a_phone(grid: Grid, browsers):
    b = browsers(web.PHONE)
    width = web.PHONE[0]
    b.get(grid.ui("/signin"))
    b.element("#token")
    assert b.scroll_width() <= width, "the sign-in form"
    sign_in(b, grid, "alice")
    for page in (*PAGES, f"/jobs/{grid.done}", f"/jobs/{grid.killed}", f"/jobs/{grid.bobs}"):
        b.get(grid.ui(page))
        b.element("main")
        wide = b.scroll_width()
        assert wide <= width, f"{page} is {wide} px wide on a {width} px phone: {b.wider_than(width)}"
    assert b.csp_violations() == []


def test_without_javascript_the_pages_work(grid: Grid, browsers):
    b = browsers(javascript=False)
    sign_in(b, grid, "alice", "/jobs")
    rows = job_rows(b, grid)
    # Proof that scripting is off: the parser makes elements of what <noscript> holds (the jobs page's refresh)
    # only then; with scripting on it is text.
    assert b.elements("noscript meta[http-equiv=refresh]")
    assert grid.done in rows and grid.killed in rows
    b.element(f"#jobs a[href$='/jobs/{grid.done}']").click()
    b.wait_path(f"{PREFIX}/jobs/{grid.done}")
    assert b.elements("#trace li")
    assert f"{grid.marker}-done" in b.element("#jdl").text
    b.element("form.signout button[type=submit]").click()
    b.wait_path(PREFIX + "/signin")


def test_with_javascript_the_jobs_page_refreshes_in_place(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice", "/jobs")
    b.element("#jobs")
    every = int(b.driver.execute_script("return document.body.getAttribute('data-refresh') || '0'"))
    assert every > 0, "the jobs page asks to be refreshed"
    # A mark on this document's window, gone if the page were reloaded, and ui.js's event after it replaced <main>.
    b.driver.execute_script("window.gridpilotTestMark = 1; document.addEventListener('gridpilot:refreshed', "
                            "function () { window.gridpilotTestRefreshed = true; });")
    b.wait(lambda d: d.execute_script("return window.gridpilotTestRefreshed === true"), "ui.js's refresh in place",
           timeout=every + web.WAIT_S)
    assert b.driver.execute_script("return window.gridpilotTestMark") == 1, "refreshed in place, not reloaded"
    assert grid.done in job_rows_here(b)
    assert b.csp_violations() == []


def test_a_running_jobs_trace_grows_in_place(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice", f"/jobs/{grid.live}")
    assert b.element("#job-state").text.strip() == "RUNNING"
    before = len(b.elements("#trace li"))
    b.driver.execute_script("window.gridpilotTestMark = 1;")
    # A [proc] line a second reaches central with the heartbeats; ui.js polls the trace every data-every seconds.
    b.wait(lambda d: len(b.elements("#trace li")) > before, "new trace lines on the running job's page")
    assert b.driver.execute_script("return window.gridpilotTestMark") == 1, "appended in place, not reloaded"
    assert b.csp_violations() == []


def test_the_trace_category_filter_with_and_without_javascript(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice", f"/jobs/{grid.done}")
    assert b.elements("#trace li.cat-proc")
    b.driver.execute_script("window.gridpilotTestMark = 1;")
    b.element("#trace-filter input[name=category][value=proc]").click()
    b.wait(lambda d: not any(li.is_displayed() for li in b.elements("#trace li.cat-proc")), "[proc] lines hidden")
    assert any(li.is_displayed() for li in b.elements("#trace li.cat-state"))
    assert b.driver.execute_script("return window.gridpilotTestMark") == 1, "filtered in place, not reloaded"

    # Without JavaScript the form goes to the server, which sends only the chosen categories.
    nojs = browsers(javascript=False)
    sign_in(nojs, grid, "alice", f"/jobs/{grid.done}")
    for box in nojs.elements("#trace-filter input[name=category]"):
        if box.is_selected() != (box.get_attribute("value") == "state"):
            box.click()
    nojs.element("#trace-filter button[type=submit]").click()
    nojs.wait(lambda d: "category=" in d.current_url, "the filter's page")
    cats = {li.get_attribute("class") for li in nojs.elements("#trace li")}
    assert cats == {"cat-state"}, cats


def test_a_done_jobs_page_lists_its_output_with_replica_and_checksum(grid: Grid, browsers):
    b = browsers()
    sign_in(b, grid, "alice", f"/jobs/{grid.done}")
    files = b.element("#files").text
    assert "steps.txt" in files and SE_NAME in files, files


def _table(b: web.Browser, css: str) -> Dict[str, List[str]]:
    """A table's body rows by their first cell: {first cell: the other cells}."""
    out = {}
    for tr in b.element(css).find_elements("css selector", "tr"):
        cells = [td.text.strip() for td in tr.find_elements("css selector", "td")]
        if cells:
            out[cells[0]] = cells[1:]
    return out


@pytest.mark.parametrize(("who", "done"), [("alice", 1), ("admin", 2)])
def test_the_overview_and_sites_count_what_the_signed_in_may_see(grid: Grid, browsers, who, done):
    # alice: her done job (bob's is not hers); an admin: both. The running job is alice's.
    b = browsers()
    sign_in(b, grid, who)
    assert _table(b, "#state-counts")["DONE"] == [str(done)]
    assert _table(b, "#state-counts")["RUNNING"] == ["1"]
    b.get(grid.ui("/sites"))
    running, waiting, done_here, _error = _table(b, "#sites")["LOCAL"][:4]
    assert (running, waiting, done_here) == ("1", "0", str(done))
    # The overview's counts link to the jobs page filtered by that state.
    b.get(grid.ui("/"))
    b.element("#state-counts a[href*='state=DONE']").click()
    b.wait(lambda d: "state=DONE" in d.current_url, "the jobs page of the DONE jobs")
    rows = job_rows_here(b)
    assert grid.done in rows and grid.killed not in rows and grid.live not in rows
    assert (grid.bobs in rows) == (who == "admin")


def test_a_link_from_another_site_keeps_the_person_signed_in(grid: Grid, browsers):
    # The SameSite=Strict cookie is held back on a navigation from another site; only a real browser does that.
    b = browsers()
    sign_in(b, grid, "alice")
    target = grid.ui("/jobs")
    b.get("data:text/html;charset=utf-8," + quote(f"<a id=go href='{target}'>jobs</a>"))
    b.element("#go").click()
    b.wait_path(PREFIX + "/jobs")
    assert "alice" in b.element("#who").text, "the page reloaded itself with the cookie"
    assert grid.done in job_rows_here(b)
    b.get(grid.ui("/"))
    assert "alice" in b.element("#who").text, "and the session is still there"

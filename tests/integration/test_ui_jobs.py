"""The jobs page and a job's page of the web view (/ui/jobs, /ui/jobs/{id}, /ui/jobs/{id}/trace), against a real
central (EmbeddedCentral) on SQLite and on a real PostgreSQL, signed in through the real form: filters, pages,
counts by state, the name filter (also through the API), a job's JDL, state history, trace in ALICE's format with
its category filter and live fragment, outputs with replicas and checksums, the kill reason, escaping, another
user's job as absent, and bad query values refused naming the parameter."""

from __future__ import annotations

import html
import re
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlencode

import pytest
import urllib3
from support.central import expect_error, jdl, module_world, run_through, site_map

from gridpilot import tracefmt
from gridpilot.central.ui import jobpage

SCRIPT = "<script>alert(1)</script>"
OUT = "/gridpilot/user/a/alice/ui"


class Session:
    """One person's browser, without the browser: the cookies the web view sets, kept and sent back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=60))
        self.cookies: Dict[str, str] = {}

    def _keep(self, r: Any) -> None:
        for header in r.headers.getlist("set-cookie"):
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in header.lower() or "expires=thu, 01 jan 1970" in header.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def request(self, method: str, path: str, *, body: Optional[str] = None) -> Any:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        r = self.http.request(method, self.url + path, body=body, headers=headers, redirect=False)
        self._keep(r)
        return r

    def get(self, path: str, **query: Any) -> Tuple[int, str]:
        r = self.request("GET", path + ("?" + urlencode(query, doseq=True) if query else ""))
        return r.status, r.data.decode()

    def sign_in(self, token: str) -> None:
        form = self.request("GET", "/ui/signin")
        assert form.status == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.data.decode()).group(1)
        assert self.cookies.get("gridpilot_csrf") == csrf
        r = self.request("POST", "/ui/signin", body=urlencode({"token": token, "csrf": csrf, "next": "/ui/jobs"}))
        assert r.status == 303, r.data.decode()[:500]
        assert "gridpilot_session" in self.cookies


def rows_of(page: str, table: str) -> list:
    """The job ids the table `table` links to, in order."""
    part = page.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return [int(x) for x in re.findall(r'href="/ui/jobs/(\d+)"', part)]


def counts_of(page: str) -> Dict[str, int]:
    part = page.split('id="state-counts"', 1)[1].split("</table>", 1)[0]
    return {s: int(n) for s, n in re.findall(r'>([A-Z_]+)</a></td><td class="num"><a [^>]*>(\d+)</a>', part)}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    yield from module_world(request, tmp_path_factory, "ui-jobs")


@pytest.fixture(scope="module")
def grid(world) -> Dict[str, Any]:
    """alice's jobs: 7 named calib-N (WAITING), 3 reco-N of which one DONE and one KILLED while RUNNING, one named
    with <script>, a masterjob of 3 subjobs; bob's 2 jobs. The DONE job registered two files (one on two storage
    elements) and has a long trace; the RUNNING one a short one."""
    admin = world.admin
    alice, bob = world.user("alice"), world.user("bob")
    se = admin.storage_elements()[0]["name"]
    admin.add_storage_element("OTHER::SE", "root://xrd.example//data")
    done = alice.submit(jdl("/bin/echo", OutputDir=OUT, Comment=SCRIPT), "reco-0")
    killed = alice.submit(jdl(), "reco-1")
    running = alice.submit(jdl(), "reco-2")
    agent = world.agent()
    jobs = {j["id"]: j for j in (agent.match(site_map()) for _ in range(3))}
    assert set(jobs) == {done, killed, running}
    run_through(agent, jobs[done], "STARTED", "RUNNING")
    jc = world.client(jobs[done]["token"])
    jc.register_file(lfn=f"{OUT}/a.root", size=1234, adler32="0badcafe", md5="d41d8cd98f00b204e9800998ecf8427e",
                     se=se, pfn="file:///se/a.root")
    jc.register_file(lfn=f"{OUT}/a.root", size=1234, adler32="0badcafe", se="OTHER::SE",
                     pfn="root://xrd.example//data/a.root")
    jc.register_file(lfn=f"{OUT}/b.log", size=7, adler32="00000007", se=se, pfn="file:///se/b.log")
    entries = [{"category": "proc" if i % 3 == 0 else "trace", "text": f"line {i}"} for i in range(300)]
    entries.append({"category": "trace", "text": f"payload says {SCRIPT}"})
    agent.append_trace(done, entries)
    run_through(agent, jobs[done], "SAVING", "DONE", exit_code=0)
    run_through(agent, jobs[killed], "STARTED", "RUNNING")
    run_through(agent, jobs[killed], "ERROR_E", kill_reason="MEMORY_USAGE", exit_code=137,
                message="memory over the limit")
    run_through(agent, jobs[running], "STARTED", "RUNNING")
    calib = [alice.submit(jdl(), f"calib-{i}") for i in range(7)]
    scripted = alice.submit(jdl(), f"x{SCRIPT}")
    master = alice.submit(jdl(Split="production:1-3", TTL=60), "mc")
    theirs = [bob.submit(jdl(), "calib-bob") for _ in range(2)]
    return {"alice": alice, "bob": bob, "agent": agent, "done": done, "killed": killed, "running": running,
            "calib": calib, "scripted": scripted, "master": master, "theirs": theirs, "se": se,
            "running_job": jobs[running]}


@pytest.fixture(scope="module")
def as_alice(world, grid) -> Session:
    s = Session(world.url)
    s.sign_in(world.admin.mint_token("user", "alice"))
    return s


@pytest.fixture(scope="module")
def as_admin(world, grid) -> Session:
    s = Session(world.url)
    s.sign_in(world.admin.mint_token("admin", "ops"))
    return s


# -- the jobs page --


def test_a_user_sees_only_its_own_jobs_newest_first_without_subjobs(grid, as_alice):
    status, page = as_alice.get("/ui/jobs")
    assert status == 200
    ids = rows_of(page, "jobs")
    mine = [grid["master"], grid["scripted"], *reversed(grid["calib"]), grid["running"], grid["killed"], grid["done"]]
    assert ids == mine  # no subjob, none of bob's
    assert not set(grid["theirs"]) & set(ids)
    # The masterjob links to its subjobs with their counts.
    assert f'href="/ui/jobs?master={grid["master"]}"' in page


def test_filters_by_state_one_or_several_and_by_name_prefix(grid, as_alice):
    _, page = as_alice.get("/ui/jobs", state="RUNNING")
    assert rows_of(page, "jobs") == [grid["running"]]
    _, page = as_alice.get("/ui/jobs", state=["DONE", "ERROR_E"])  # repeated, as the multiple select sends it
    assert rows_of(page, "jobs") == [grid["killed"], grid["done"]]
    _, page = as_alice.get("/ui/jobs", state="DONE,ERROR_E")  # or comma-separated, as the API takes it
    assert rows_of(page, "jobs") == [grid["killed"], grid["done"]]
    _, page = as_alice.get("/ui/jobs", name="reco-")
    assert rows_of(page, "jobs") == [grid["running"], grid["killed"], grid["done"]]
    # A prefix, case-sensitive, its characters literal (no LIKE wildcard): the same on SQLite and PostgreSQL.
    for name in ("RECO-", "eco-", "reco_", "reco%", "%"):
        assert rows_of(as_alice.get("/ui/jobs", name=name)[1], "jobs") == [], name
    _, page = as_alice.get("/ui/jobs", name="calib", site="GRIDPILOT::TEST")
    assert rows_of(page, "jobs") == []  # the calib jobs were never matched
    _, page = as_alice.get("/ui/jobs", name="reco", site="GRIDPILOT::TEST", state="DONE")
    assert rows_of(page, "jobs") == [grid["done"]]


def test_name_filter_through_the_api(grid):
    alice = grid["alice"]
    assert [j["id"] for j in alice.list_jobs(name="reco-")] == [grid["running"], grid["killed"], grid["done"]]
    assert [j["id"] for j in alice.list_jobs(name="reco-1")] == [grid["killed"]]
    assert alice.list_jobs(name="Reco") == []
    with expect_error(400) as e:
        alice.list_jobs(name="x" * 256)
    assert "name" in e.value.message


def test_counts_by_state_for_the_same_filters_each_a_link(grid, as_alice):
    _, page = as_alice.get("/ui/jobs")
    counts = counts_of(page)
    assert counts == {"SPLIT": 1, "WAITING": 8, "RUNNING": 1, "DONE": 1, "ERROR_E": 1}
    assert 'href="/ui/jobs?state=WAITING"' in page
    _, page = as_alice.get("/ui/jobs", name="reco-", state="DONE")
    # The state filter is left out of the counts (they say what the other states hold); the others kept in links.
    assert counts_of(page) == {"RUNNING": 1, "DONE": 1, "ERROR_E": 1}
    assert 'href="/ui/jobs?name=reco-&amp;state=ERROR_E"' in page


def test_pages_follow_one_another_keeping_the_filters(grid, as_alice):
    seen, path, query = [], "/ui/jobs", {"name": "calib", "limit": "3"}
    for _ in range(5):
        status, page = as_alice.get(path, **query)
        assert status == 200
        seen += rows_of(page, "jobs")
        m = re.search(r'id="page-next" href="([^"]+)"', page)
        if not m:
            assert "more follow" not in page
            break
        assert "more follow" in page
        path, query = html.unescape(m.group(1)), {}
        assert "name=calib" in path and "limit=3" in path
    assert seen == list(reversed(grid["calib"]))
    _, page = as_alice.get("/ui/jobs", name="calib", limit="3", offset="3")
    prev = html.unescape(re.search(r'id="page-prev" href="([^"]+)"', page).group(1))
    assert rows_of(as_alice.get(prev)[1], "jobs") == list(reversed(grid["calib"]))[:3]


def test_an_admin_filters_by_user_a_user_may_not_name_another(grid, as_alice, as_admin):
    _, page = as_admin.get("/ui/jobs", user="bob")
    assert rows_of(page, "jobs") == list(reversed(grid["theirs"]))
    assert counts_of(page) == {"WAITING": 2}
    assert 'id="f-user"' in page and 'id="f-user"' not in as_alice.get("/ui/jobs")[1]
    status, page = as_alice.get("/ui/jobs", user="bob")
    assert status == 403 and 'id="jobs"' not in page and "calib-bob" not in page


def test_a_masterjobs_subjobs(grid, as_alice):
    _, page = as_alice.get("/ui/jobs", master=str(grid["master"]))
    subs = rows_of(page, "jobs")
    assert len(subs) == 3 and grid["master"] not in subs
    assert counts_of(page) == {"WAITING": 3}
    _, page = as_alice.get(f"/ui/jobs/{grid['master']}")
    part = page.split('id="subjob-counts"', 1)[1].split("</table>", 1)[0]
    assert "WAITING" in part and ">3<" in part and f"master={grid['master']}" in part


def test_a_jobs_page_refreshes(as_alice):
    _, page = as_alice.get("/ui/jobs")
    assert 'data-refresh="30"' in page and 'http-equiv="refresh"' in page


# -- a job's page --


def test_a_jobs_page_shows_its_fields_jdl_history_and_trace(grid, as_alice, world):
    status, page = as_alice.get(f"/ui/jobs/{grid['done']}")
    assert status == 200
    assert 'id="job-state">DONE<' in page
    assert 'id="kill-reason"' not in page
    jdl_part = page.split('id="jdl">', 1)[1].split("</pre>", 1)[0]
    assert 'Executable = &#34;/bin/echo&#34;;' in jdl_part or 'Executable = &quot;/bin/echo&quot;;' in jdl_part
    history = page.split('id="state-history"', 1)[1].split("</table>", 1)[0]
    states = re.findall(r'<td class="state s-[A-Z_]*">([A-Z_]+)</td>', history)
    assert states == ["WAITING", "ASSIGNED", "STARTED", "RUNNING", "SAVING", "DONE"]
    assert "agent" in history  # who reported it: central's detail line beside each state line
    # The trace in ALICE's format, as tracefmt renders it, one li per line with its category's class.
    trace = world.admin.trace(grid["done"])
    items = re.findall(r'<li class="cat-([a-z]+)">([^<]*)</li>', page.split('id="trace"', 1)[1])
    assert len(items) == len(trace)
    assert [html.unescape(text) for _, text in items] == [tracefmt.render(t, utc=True) for t in trace]
    assert [c for c, _ in items] == [t["category"] for t in trace]
    assert any(text.endswith("[proc ]: line 0") for _, text in items)


def test_the_category_filter_on_the_server(grid, as_alice):
    _, page = as_alice.get(f"/ui/jobs/{grid['done']}", category="proc")
    cats = re.findall(r'<li class="cat-([a-z]+)">', page)
    assert cats and set(cats) == {"proc"} and len(cats) == 100
    _, page = as_alice.get(f"/ui/jobs/{grid['done']}", category=["state", "proc"])
    assert set(re.findall(r'<li class="cat-([a-z]+)">', page)) == {"state", "proc"}
    assert 'value="trace"> trace' in page and 'value="proc" checked' in page


def test_the_live_fragment_returns_only_newer_lines(grid, as_alice):
    job = grid["running"]
    status, page = as_alice.get(f"/ui/jobs/{job}")
    assert status == 200 and 'data-live="1"' in page
    last = int(re.search(r'data-last="(\d+)"', page).group(1))
    _, frag = as_alice.get(f"/ui/jobs/{job}/trace", after=str(last))
    assert "<li" not in frag and f'data-last="{last}"' in frag and 'data-live="1"' in frag
    grid["agent"].append_trace(job, [{"category": "trace", "text": "first new"}, {"category": "proc", "text": "x"}])
    _, frag = as_alice.get(f"/ui/jobs/{job}/trace", after=str(last))
    assert re.findall(r'<li class="cat-([a-z]+)">[^<]*\]: ([^<]*)</li>', frag) == [("trace", "first new"),
                                                                                   ("proc", "x")]
    newer = int(re.search(r'data-last="(\d+)"', frag).group(1))
    assert newer > last
    _, frag = as_alice.get(f"/ui/jobs/{job}/trace", after=str(newer), category="proc")
    assert "<li" not in frag
    _, frag = as_alice.get(f"/ui/jobs/{job}/trace", after=str(last), category="proc")
    assert re.findall(r'<li class="cat-([a-z]+)">', frag) == ["proc"]
    # An ended job's fragment says so: the live view stops.
    _, frag = as_alice.get(f"/ui/jobs/{grid['done']}/trace", after="0")
    assert 'data-live="0"' in frag


def test_outputs_with_replicas_and_checksums(grid, as_alice):
    _, page = as_alice.get(f"/ui/jobs/{grid['done']}")
    files = page.split('id="files"', 1)[1].split("</table>", 1)[0]
    assert f"{OUT}/a.root" in files and f"{OUT}/b.log" in files
    assert "0badcafe" in files and "d41d8cd98f00b204e9800998ecf8427e" in files and "00000007" in files
    assert f"{grid['se']}: file:///se/a.root" in files and "OTHER::SE: root://xrd.example//data/a.root" in files
    assert "1.21 KiB" in files


def test_outputs_need_the_catalogue_scope_as_in_the_api(world, grid):
    s = Session(world.url)
    s.sign_in(world.admin.mint_token("user", "alice", scope="compute.read"))
    status, page = s.get(f"/ui/jobs/{grid['done']}")
    assert status == 200 and 'id="files-none"' in page and 'id="files"' not in page
    assert "0badcafe" not in page and "catalogue.read" in page


def test_a_killed_jobs_kill_reason(grid, as_alice):
    _, page = as_alice.get(f"/ui/jobs/{grid['killed']}")
    reason = page.split('id="kill-reason">', 1)[1].split("</p>", 1)[0]
    assert "MEMORY_USAGE" in reason and "80" in reason
    assert 'id="job-state">ERROR_E<' in page and "memory over the limit" in page and ">137<" in page
    assert 'data-live="0"' in page and 'http-equiv="refresh"' not in page


def test_script_in_a_jdl_a_name_or_a_trace_line_shows_as_text(grid, as_alice):
    escaped = html.escape(SCRIPT, quote=False)
    _, page = as_alice.get(f"/ui/jobs/{grid['done']}")
    assert SCRIPT not in page
    assert escaped in page.split('id="jdl">', 1)[1].split("</pre>", 1)[0]
    assert f"payload says {escaped}" in page.split('id="trace"', 1)[1]
    _, page = as_alice.get("/ui/jobs")
    assert SCRIPT not in page and f"x{escaped}" in page
    _, page = as_alice.get("/ui/jobs", name=f"x{SCRIPT}")
    assert SCRIPT not in page and rows_of(page, "jobs") == [grid["scripted"]]


def test_another_users_job_is_absent(grid, as_alice, as_admin, world):
    theirs = grid["theirs"][0]
    missing = theirs + 100_000
    for path in (f"/ui/jobs/{theirs}", f"/ui/jobs/{theirs}/trace", f"/ui/jobs/{missing}"):
        status, page = as_alice.get(path)
        assert status == 404, path
        assert "calib-bob" not in page and "bob" not in page
    # The same 404 as for a job that does not exist: nothing tells them apart but the id.
    shown = re.compile(r"Shown at [0-9: -]+")
    a = shown.sub("", as_alice.get(f"/ui/jobs/{theirs}")[1]).replace(str(theirs), "ID")
    b = shown.sub("", as_alice.get(f"/ui/jobs/{missing}")[1]).replace(str(missing), "ID")
    assert a == b
    assert as_admin.get(f"/ui/jobs/{theirs}")[0] == 200


@pytest.mark.parametrize("path,query,field", [
    ("/ui/jobs", {"state": "NOPE"}, "state"),
    ("/ui/jobs", {"state": ["DONE"] * 30}, "state"),
    ("/ui/jobs", {"limit": "0"}, "limit"),
    ("/ui/jobs", {"limit": "201"}, "limit"),
    ("/ui/jobs", {"offset": "-1"}, "offset"),
    ("/ui/jobs", {"offset": "x"}, "offset"),
    ("/ui/jobs", {"master": "abc"}, "master"),
    ("/ui/jobs", {"name": "n" * 256}, "name"),
    ("/ui/jobs", {"site": "s" * 256}, "site"),
    ("/ui/jobs", {"name": "a\x00b"}, "name"),
    ("/ui/jobs", {"colour": "red"}, "colour"),
    ("/ui/jobs/1", {"category": "bogus"}, "category"),
    ("/ui/jobs/1", {"category": ["proc"] * 6}, "category"),
    ("/ui/jobs/1/trace", {"after": "-5"}, "after"),
    ("/ui/jobs/1/trace", {"after": "1e3"}, "after"),
])
def test_bad_query_values_are_refused_naming_the_parameter(grid, as_alice, path, query, field):
    status, page = as_alice.get(path, **query)
    assert status == 400, page[:300]
    message = page.split('id="error-message">', 1)[1].split("</p>", 1)[0]
    assert field in message


def test_the_trace_is_capped_keeping_its_start_and_its_end(world, grid, as_admin):
    job = grid["running"]
    before = len(world.admin.trace(job))
    extra = jobpage.MAX_TRACE_LINES + 50 - before
    agent = grid["agent"]
    for i in range(0, extra, 1000):
        agent.append_trace(job, [{"category": "trace", "text": f"bulk {n}"} for n in range(i, min(extra, i + 1000))])
    _, page = as_admin.get(f"/ui/jobs/{job}")
    lines = re.findall(r'<li class="cat-[a-z]+">([^<]*)</li>', page.split('id="trace"', 1)[1])
    assert len(lines) == jobpage.MAX_TRACE_LINES
    gap = page.split('id="trace-gap">', 1)[1].split("</p>", 1)[0]
    assert gap.startswith("50 lines left out")
    # The first TRACE_HEAD lines, as the API gives them, and the last TRACE_TAIL (all appended here).
    whole = [html.escape(tracefmt.render(t, utc=True), quote=False) for t in world.admin.trace(job)]
    assert lines[:jobpage.TRACE_HEAD] == whole[:jobpage.TRACE_HEAD]
    tail = [line.rsplit("]: ", 1)[1] for line in lines[jobpage.TRACE_HEAD:]]
    assert tail == [f"bulk {n}" for n in range(extra - jobpage.TRACE_TAIL, extra)]
    assert lines[-1].endswith(f"bulk {extra - 1}") and "submitted by alice" in lines[0]

"""The overview (/ui/) and the sites page (/ui/sites) against a real central, on SQLite and PostgreSQL: what each
role sees (a user its own jobs' counts and sites only; an admin every site, the pilots per CE, the nodes with their
probe and nodeBad flag, and the grid's history), the numbers against the API's, names holding `<script>` shown as
text, and bad parameters answered 400 naming them."""

from __future__ import annotations

import time
from html.parser import HTMLParser
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

import pytest
import urllib3
from sqlalchemy import func, select
from support.central import CE, SITE, jdl, module_world, site_map

from gridpilot.central import history, schema
from gridpilot.config import PilotConfig
from gridpilot.pilot.nodeprobe import NodePaths, probe

EVIL = "<script>alert('site')</script>::SITE"
EVIL_CE = EVIL + "::CE<i>"
EVIL_HOST = "node-<b>1</b>"
PILOTS = {"queued": 4, "running": 3, "finished": 2, "failed": 1, "held": 5}
ENDED = {"ok": 2, "signal_SIGKILL": 1}


class Tables(HTMLParser):
    """Every element's id, and the cells (text) of every table with an id, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: List[str] = []
        self.tables: Dict[str, List[List[str]]] = {}
        self.links: List[str] = []
        self.svgs = 0
        self._table: Optional[str] = None
        self._cell: Optional[List[str]] = None

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "table" and a.get("id"):
            self._table = str(a["id"])
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        elif tag == "svg":
            self.svgs += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def get(world: Any, path: str, token: str) -> Tuple[int, str, Tables]:
    r = urllib3.request("GET", world.url + path, headers={"Cookie": f"gridpilot_session={token}"}, redirect=False,
                        retries=False, timeout=60)
    text = r.data.decode()
    t = Tables()
    t.feed(text)
    return r.status, text, t


def rows_of(t: Tables, table: str) -> Dict[str, List[str]]:
    """A table's body rows by their first cell."""
    return {r[0]: r[1:] for r in t.tables[table][1:]}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    yield from module_world(request, tmp_path_factory, "uisites", node_bad_after=1)


@pytest.fixture(scope="module")
def grid(world, tmp_path_factory) -> Dict[str, Any]:
    """alice: one job running at EVIL, one waiting; bob: one running at SITE. EVIL's CE reported pilots; a node at
    EVIL posted a probe and is nodeBad; every token a role's."""
    tokens = {"alice": world.admin.mint_token("user", "alice"), "bob": world.admin.mint_token("user", "bob"),
              "admin": world.embedded.admin_token}
    alice, bob = world.client(tokens["alice"]), world.client(tokens["bob"])
    evil_agent, agent = world.agent(site=EVIL, ce=EVIL_CE), world.agent()
    alice.submit(jdl(), "a1")
    assert evil_agent.match(site_map(site=EVIL, ce=EVIL_CE, node=EVIL_HOST)) is not None
    bob.submit(jdl(), "b1")
    assert agent.match(site_map(node="node-ok")) is not None
    alice.submit(jdl(), "a2")
    world.ce(site=EVIL, ce=EVIL_CE).report_pilots(PILOTS, backend="slurm", ended=ENDED)
    world.ce(site=SITE, ce=CE).report_pilots({"running": 1})  # a CE that does not say why pilots ended
    root = tmp_path_factory.mktemp("probe")
    p = probe(PilotConfig(workdir=str(root / "work")), NodePaths(live=False), use_cache=False).to_dict()
    evil_agent.post_node_probe(dict(p, host=EVIL_HOST, pilot_version="9.8.7"))
    world.admin.report_node_event("stall", 60, host=EVIL_HOST, detail="<script>stalled</script>")
    return {"tokens": tokens, "probe": p}


# -- the sites page --

def test_an_admin_sees_every_site_with_the_apis_numbers(world, grid):
    status, text, t = get(world, "/ui/sites", grid["tokens"]["admin"])
    assert status == 200, text
    sites = rows_of(t, "sites")
    assert sites[EVIL] == ["1", "0", "0", "0"] and sites[SITE] == ["1", "0", "0", "0"]
    assert sites["(not matched yet)"] == ["0", "1", "0", "0"]
    api = world.admin.request("GET", "/api/v1/jobs/summary")[1]
    assert {s["site"] or "(not matched yet)": [str(s[k]) for k in ("running", "waiting", "done", "error")]
            for s in api["sites"]} == sites
    assert "/ui/sites?site=%3Cscript%3Ealert%28%27site%27%29%3C%2Fscript%3E%3A%3ASITE" in t.links


def test_an_admin_sees_the_pilots_each_ce_reported(world, grid):
    _, _, t = get(world, "/ui/sites", grid["tokens"]["admin"])
    head = t.tables["pilots"][0]
    row = next(r for r in t.tables["pilots"][1:] if r[0] == EVIL)
    assert row[1] == EVIL_CE and row[2] == "slurm"
    assert {head[i]: row[i] for i in range(3, 3 + len(PILOTS))} == {k: str(v) for k, v in PILOTS.items()}
    assert row[head.index("ended by reason")] == "ok 2, signal_SIGKILL 1"
    other = next(r for r in t.tables["pilots"][1:] if r[0] == SITE)
    assert other[head.index("ended by reason")] == "not reported" and other[head.index("running")] == "1"


def test_an_admin_sees_the_nodes_with_their_probe_and_nodebad_reason(world, grid):
    _, text, t = get(world, "/ui/sites", grid["tokens"]["admin"])
    api = next(n for n in world.admin.nodes()["nodes"] if n["host"] == EVIL_HOST)
    assert api["bad"] and api["arch"]
    head = t.tables["nodes"][0]
    row = dict(zip(head, [EVIL_HOST, *rows_of(t, "nodes")[EVIL_HOST]]))
    assert row["site"] == EVIL and row["arch"] == api["arch"] and row["pilot"] == "9.8.7"
    assert row["x86-64"] == (api["x86_64_level"] or "-")
    assert row["runtimes"] == (" ".join(api["runtimes"]) or "-")
    assert row["GPUs"] == (", ".join(api["gpus"]) or "-")
    assert row["failures"] == "1"
    assert row["nodeBad"].startswith("bad since ") and api["bad_reason"] in row["nodeBad"]
    ok = rows_of(t, "nodes")["node-ok"]
    assert ok[-1] == "no"


def test_names_holding_markup_are_shown_as_text(world, grid):
    _, text, t = get(world, "/ui/sites", grid["tokens"]["admin"])
    for raw in (EVIL, EVIL_CE, EVIL_HOST):
        assert raw not in text
    assert "&lt;script&gt;alert(&#39;site&#39;)&lt;/script&gt;::SITE" in text
    assert "node-&lt;b&gt;1&lt;/b&gt;" in text and "<script>" not in text.split("</head>", 1)[1]


def test_a_user_sees_its_own_jobs_sites_and_no_pilots_or_nodes(world, grid):
    status, text, t = get(world, "/ui/sites", grid["tokens"]["bob"])
    assert status == 200, text
    assert rows_of(t, "sites") == {SITE: ["1", "0", "0", "0"]}
    assert "pilots" not in t.ids and "nodes" not in t.ids
    assert "::CE" not in text and "node-ok" not in text and EVIL_HOST not in text
    status, text, t = get(world, "/ui/sites", grid["tokens"]["alice"])
    assert rows_of(t, "sites") == {EVIL: ["1", "0", "0", "0"], "(not matched yet)": ["0", "1", "0", "0"]}
    assert "pilots" not in t.ids and "nodes" not in t.ids


def test_a_sites_own_view_shows_its_jobs_pilots_and_nodes_only(world, grid):
    path = "/ui/sites?site=" + quote(EVIL, safe="")
    status, text, t = get(world, path, grid["tokens"]["admin"])
    assert status == 200, text
    assert {k: v[0] for k, v in rows_of(t, "site-states").items()} == {"ASSIGNED": "1"}
    assert rows_of(t, "sites") == {EVIL: ["1", "0", "0", "0"]}
    assert [r[0] for r in t.tables["pilots"][1:]] == [EVIL]
    assert list(rows_of(t, "nodes")) == [EVIL_HOST]
    assert "/ui/jobs?site=" + quote(EVIL, safe="") in t.links
    assert EVIL not in text and "&lt;script&gt;alert(&#39;site&#39;)" in text
    # A user sees its own jobs there only, and neither pilots nor nodes.
    status, text, t = get(world, path, grid["tokens"]["bob"])
    assert status == 200 and rows_of(t, "site-states") == {"No jobs at this site.": []}
    assert "pilots" not in t.ids and "nodes" not in t.ids and EVIL_HOST not in text
    status, _, t = get(world, path, grid["tokens"]["alice"])
    assert {k: v[0] for k, v in rows_of(t, "site-states").items()} == {"ASSIGNED": "1"}
    # A site nobody ran at: an empty view, not an error.
    status, _, t = get(world, "/ui/sites?site=NOWHERE%3A%3AX", grid["tokens"]["admin"])
    assert status == 200 and t.tables["pilots"][1:] == [["No CE has reported pilots."]]


# -- the overview --

def test_the_overview_counts_the_callers_jobs_with_links_to_the_job_list(world, grid):
    for who, want in (("alice", {"WAITING": "1", "ASSIGNED": "1"}), ("bob", {"ASSIGNED": "1"}),
                      ("admin", {"WAITING": "1", "ASSIGNED": "2"})):
        status, text, t = get(world, "/ui/", grid["tokens"][who])
        assert status == 200, text
        assert {k: v[0] for k, v in rows_of(t, "state-counts").items()} == want, who
        for state in want:
            assert f"/ui/jobs?state={state}" in t.links
    _, _, t = get(world, "/ui/", grid["tokens"]["alice"])
    assert rows_of(t, "overview-sites") == {EVIL: ["1", "0"], "(not matched yet)": ["0", "1"]}


def test_only_an_admin_sees_the_grids_history_and_rates(world, grid):
    now = time.time()
    with world.db.write() as conn:  # two hosts' snapshots, as their sweepers would have written them
        conn.execute(schema.central_history.delete())
    for host, per_min in (("<script>hostone</script>", 120), ("central-h2", 60)):
        for i in range(3):
            history.snapshot(world.db, host, {"matches": 1000 + i * per_min, "assigned": i, "heartbeats": 7 * i},
                             now - 300 + i * 60)
    try:
        status, text, t = get(world, "/ui/?hours=2", grid["tokens"]["admin"])
        assert status == 200, text
        assert "history" in t.ids and t.svgs >= 2  # jobs waiting and held, the rates (no job ended: no samples)
        rates = rows_of(t, "rates")
        assert rates["match requests/s"] == ["3.00"]  # (120 + 60) per minute over both hosts
        assert rates["heartbeat job-updates/s"] == ["0.23"]  # 7 a minute from each
        assert "&lt;script&gt;hostone&lt;/script&gt;" in text and "<script>hostone" not in text
        for who in ("alice", "bob"):
            status, text, t = get(world, "/ui/?hours=2", grid["tokens"][who])
            assert status == 200
            assert "history" not in t.ids and "rates" not in t.ids and t.svgs == 0
            assert "central-h2" not in text and "hostone" not in text and "match requests" not in text
    finally:
        with world.db.write() as conn:
            conn.execute(schema.central_history.delete())


def test_an_admins_overview_without_history_says_so(world, grid):
    with world.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(schema.central_history)).scalar_one() == 0
    status, text, t = get(world, "/ui/", grid["tokens"]["admin"])
    assert status == 200 and "history" in t.ids
    assert rows_of(t, "rates")["match requests/s"] == ["-"]
    assert "no samples" in text


@pytest.mark.parametrize("path, field", [
    ("/ui/?hours=0", "hours"), ("/ui/?hours=169", "hours"), ("/ui/?hours=two", "hours"), ("/ui/?hours=-1", "hours"),
    ("/ui/?hours=1e3", "hours"), ("/ui/?hour=2", "hour"), ("/ui/sites?site=" + "x" * 256, "site"),
    ("/ui/sites?state=RUNNING", "state"),
])
def test_bad_parameters_are_refused_naming_them(world, grid, path, field):
    for who in ("alice", "admin"):
        status, text, t = get(world, path, grid["tokens"][who])
        assert status == 400, text
        message = text.split('id="error-message">', 1)[1].split("</p>", 1)[0]
        assert field in message, message


def test_the_pages_ask_a_signed_out_browser_to_sign_in(world, grid):
    for path in ("/ui/", "/ui/sites"):
        r = urllib3.request("GET", world.url + path, redirect=False, retries=False, timeout=60)
        assert r.status == 303 and r.headers["Location"].startswith("/ui/signin")

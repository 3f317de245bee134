"""16 agents matching at once against two `gridpilot central serve` processes sharing one database.

The broker reads candidates without locks and assigns the one it chose in a short write transaction that re-checks
it (on PostgreSQL after locking that row FOR UPDATE SKIP LOCKED; on SQLite under the write lock of BEGIN IMMEDIATE),
trying the next best when another matcher got it first. Either way: no job is assigned twice, none is lost, and
each assignment is recorded for the agent that received it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest
from support.central import CE, SITE, jdl, site_map
from sqlalchemy import select

from gridpilot.central import schema
from gridpilot.central.db import Database
from gridpilot.central.serve import init
from gridpilot.central.settings import CentralSettings
from gridpilot.client import CentralClient
from gridpilot.endpoints import URL_FILE
from gridpilot.errors import CentralUnreachable

AGENTS = 16


def spawn_server(state_dir: Path, db_url: str, key_file: Path) -> subprocess.Popen:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "serve.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "central", "serve", "--db", db_url, "--state-dir", str(state_dir),
             "--signing-key", str(key_file), "--port", "0", "--sweep-interval", "0", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )


def wait_for_server(proc: subprocess.Popen, state_dir: Path) -> str:
    url_file = state_dir / URL_FILE
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (state_dir / "serve.log").read_text()
        assert time.monotonic() < deadline, "central serve did not come up"
        if url_file.exists() and url_file.read_text().strip():
            url = url_file.read_text().strip()
            try:
                CentralClient(url, None, retries=0, timeout=2).health()
                return url
            except CentralUnreachable:
                pass
        time.sleep(0.05)


@pytest.fixture
def two_servers(tmp_path, db_url):
    settings = CentralSettings.from_args(tmp_path / "init", db_url)
    admin_token = init(settings).admin_token  # and the key file both sign their job tokens with
    procs: List[subprocess.Popen] = []
    try:
        # Started side by side: both also race to check the schema, as processes of one deployment would.
        for i in range(2):
            procs.append(spawn_server(tmp_path / f"serve{i}", db_url, settings.signing_key_path))
        urls = [wait_for_server(p, tmp_path / f"serve{i}") for i, p in enumerate(procs)]
        yield urls, admin_token, db_url
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_sixteen_agents_match_at_once(two_servers):
    urls, admin_token, db_url = two_servers
    admin = CentralClient(urls[0], admin_token)
    # Plenty of work for everyone, then fewer jobs than agents: all of them fight over the same rows.
    for jobs in (160, 5):
        match_round(urls, admin, db_url, jobs)


def match_round(urls: List[str], admin: CentralClient, db_url: str, jobs: int) -> None:
    submitted = {admin.submit(jdl(TTL=600)) for _ in range(jobs)}
    agents = [CentralClient(urls[i % 2], admin.mint_token("agent", f"agent{i}", site=SITE, ce=CE), retries=0,
                            timeout=60) for i in range(AGENTS)]
    got: Dict[int, List[int]] = {i: [] for i in range(AGENTS)}
    errors: List[BaseException] = []
    start = threading.Barrier(AGENTS)
    # Each agent takes at most its share, as a real agent takes one job per free slot: all of them then match at once
    # to the end, and every job being assigned means every share was filled (a spread that does not hang on how the
    # threads happen to be scheduled on a loaded machine).
    share = -(-jobs // AGENTS)

    def agent(i: int) -> None:
        try:
            start.wait()
            while len(got[i]) < share:
                job = agents[i].match(site_map(node=f"node{i}"))
                if job is None:
                    return
                got[i].append(job["id"])
        except BaseException as e:  # noqa: B902 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(AGENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    everything = [j for ids in got.values() for j in ids]
    twice = [j for j, n in Counter(everything).items() if n > 1]
    assert twice == [], f"assigned twice: {twice}"
    assert set(everything) == submitted, f"lost: {sorted(submitted - set(everything))}"
    db = Database(db_url)
    try:
        with db.read() as conn:
            rows = conn.execute(select(schema.jobs.c.id, schema.jobs.c.state, schema.jobs.c.agent,
                                       schema.jobs.c.node).where(schema.jobs.c.id.in_(submitted))).all()
    finally:
        db.dispose()
    owner = {j: i for i, ids in got.items() for j in ids}
    for r in rows:
        assert r.state == 6, f"job {r.id} is not ASSIGNED"
        assert (r.agent, r.node) == (f"agent{owner[r.id]}", f"node{owner[r.id]}")
    assert all(len(ids) <= share for ids in got.values()), got
    assert sum(1 for ids in got.values() if ids) == min(AGENTS, -(-jobs // share)), "the work was spread over the agents"

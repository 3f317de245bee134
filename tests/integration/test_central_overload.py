"""Admission control in real `gridpilot central serve` processes (central/admission.py), on SQLite and PostgreSQL:
a flooding token (valid or garbage) is held to its rate and the others keep getting answers; a process whose
requests in flight are at their bound answers 503 overloaded with Retry-After at once, which any client may repeat
(a match too), while health and metrics still answer; a database that stalls a request past the statement timeout
gives 503 database_unavailable, not a 500 or a request that hangs."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List

import orjson
import pytest
import urllib3
from support.central import CE, SITE, jdl, site_map
from support.serve_procs import ServeProcs

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError


def metric(client: CentralClient, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in client.metrics().splitlines():
        m = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def running_job(admin: CentralClient, url: str, agent_name: str) -> Dict[str, Any]:
    """An agent token and a job matched to it: {"client", "token", "job"}."""
    token = admin.mint_token("agent", agent_name, site=SITE, ce=CE)
    user = CentralClient(url, admin.mint_token("user", f"u{agent_name}"), retries=0, timeout=60)
    user.submit(jdl())
    agent = CentralClient(url, token, retries=0, timeout=60)
    job = agent.match(site_map(node=agent_name))
    assert job is not None
    agent.set_status(job["id"], "STARTED", job["resubmission"])
    agent.set_status(job["id"], "RUNNING", job["resubmission"])
    return {"client": agent, "token": token, "job": job}


def beat(job: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [{"job_id": job["id"], "resubmission": job["resubmission"], "sample": {"rss_kb": 1}}]


def test_a_flooding_token_is_held_to_its_rate_and_a_well_behaved_client_keeps_its_answers(tmp_path, db_url):
    rate, burst = 10, 20
    with ServeProcs(tmp_path, db_url, args=["--rate-limit", str(rate), "--rate-burst", str(burst)]) as central:
        url = central.urls[0]
        admin = CentralClient(url, central.admin_token, retries=0, timeout=60)
        flood, calm = running_job(admin, url, "flood"), running_job(admin, url, "calm")
        stop = threading.Event()
        statuses: Dict[str, List[int]] = {"valid": [], "garbage": []}
        retry_afters: List[str] = []
        pool = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(connect=10, read=60))
        body = orjson.dumps({"heartbeats": beat(flood["job"])})

        def flooder(kind: str, token: str) -> None:
            while not stop.is_set():
                r = pool.request("POST", f"{url}/api/v1/heartbeats", body=body,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                statuses[kind].append(r.status)
                if r.status == 429:
                    assert orjson.loads(r.data)["error"]["code"] == "rate_limited"
                    retry_afters.append(r.headers.get("Retry-After", ""))

        threads = [threading.Thread(target=flooder, args=(kind, token), daemon=True)
                   for kind, token in (("valid", flood["token"]), ("valid", flood["token"]),
                                       ("garbage", "not.a.token"), ("garbage", "not.a.token"))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        try:
            # The well-behaved agent: a heartbeat and a control poll every 0.2 s, on a client that never retries:
            # every one must be answered, whatever the flood does.
            for _ in range(25):
                assert calm["client"].heartbeats(beat(calm["job"])) == []
                calm["client"].control(calm["job"]["id"], calm["job"]["resubmission"])
                time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        elapsed = time.monotonic() - t0
        valid, garbage = statuses["valid"], statuses["garbage"]
        # The flooding token got its burst and its rate, no more (a second of slack for the refill while the last
        # requests were in flight); the rest was refused 429 with Retry-After.
        assert valid.count(429) > 0, f"the flood never reached the limit: {len(valid)} requests in {elapsed:.1f} s"
        assert valid.count(200) <= burst + rate * (elapsed + 1), (valid.count(200), elapsed)
        assert set(valid) <= {200, 429}
        # Garbage is limited alike (its token's hash is its bucket): 401 for what got in, then 429.
        assert set(garbage) <= {401, 429} and garbage.count(429) > 0
        assert garbage.count(401) <= burst + rate * (elapsed + 1)
        assert retry_afters and all(ra.isdigit() and int(ra) >= 1 for ra in retry_afters)
        assert metric(admin, "gridpilot_http_refused_total", reason="rate_limited",
                      route="/api/v1/heartbeats") == valid.count(429) + garbage.count(429)
        assert "500" not in " ".join(map(str, valid + garbage))


@contextmanager
def writers_blocked(db_url: str) -> Iterator[None]:
    """Every write to the jobs table waits while inside: SQLite's write lock, or PostgreSQL's table lock, held by
    this test's own connection (reads go on)."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url[len("sqlite:///"):], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import psycopg

    with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def wait_for(what: str, cond: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_over_its_bound_a_process_answers_503_overloaded_at_once_and_any_call_may_be_repeated(tmp_path, db_url):
    with ServeProcs(tmp_path, db_url, args=["--max-inflight", "3"]) as central:
        url = central.urls[0]
        admin = CentralClient(url, central.admin_token, retries=0, timeout=120)
        held = [running_job(admin, url, f"held{i}") for i in range(3)]
        matcher = CentralClient(url, admin.mint_token("agent", "late", site=SITE, ce=CE), retries=30, timeout=120)
        CentralClient(url, admin.mint_token("user", "late"), retries=0).submit(jdl())
        results: Dict[str, Any] = {}
        with writers_blocked(central.db_url):
            # Three heartbeats wait for the database: the process's bound.
            waiting = [threading.Thread(target=lambda h=h: results.setdefault(f"hb{h['job']['id']}",
                                                                              h["client"].heartbeats(beat(h["job"]))))
                       for h in held]
            for t in waiting:
                t.start()
            wait_for("3 requests in flight", lambda: metric(admin, "gridpilot_http_inflight") == 3)
            # A fourth is refused at once, before anything is read; health and metrics still answer.
            with pytest.raises(CentralError) as e:
                held[0]["client"].heartbeats(beat(held[0]["job"]))
            assert (e.value.status, e.value.code) == (503, "overloaded") and e.value.retry_after >= 1
            assert admin.health()["status"] == "ok"
            # A match (not safe to repeat after a 500 or a timeout) refused so is repeated by the client.
            matching = threading.Thread(target=lambda: results.setdefault("match", matcher.match(site_map(node="x"))))
            matching.start()
            wait_for("the match refused", lambda: metric(admin, "gridpilot_http_refused_total", reason="overloaded",
                                                         route="/api/v1/match") >= 1)
        for t in [*waiting, matching]:
            t.join(300)
        assert results["match"] is not None and results["match"]["id"] > 0
        assert all(results[f"hb{h['job']['id']}"] == [] for h in held)
        assert metric(admin, "gridpilot_http_refused_total", reason="overloaded", route="/api/v1/heartbeats") >= 1
        assert metric(admin, "gridpilot_http_requests_total", status="500") == 0


def test_a_statement_stalled_past_the_timeout_is_a_503_database_unavailable(tmp_path, postgres_url):
    with ServeProcs(tmp_path, postgres_url, args=["--db-statement-timeout", "1"]) as central:
        url = central.urls[0]
        admin = CentralClient(url, central.admin_token, retries=0, timeout=120)
        h = running_job(admin, url, "stalled")
        with writers_blocked(central.db_url):
            with pytest.raises(CentralError) as e:
                h["client"].heartbeats(beat(h["job"]))
        assert (e.value.status, e.value.code, e.value.retry_after) == (503, "database_unavailable", 2.0)
        assert h["client"].heartbeats(beat(h["job"])) == []
        assert metric(admin, "gridpilot_database_unavailable_total", route="/api/v1/heartbeats") == 1
        assert metric(admin, "gridpilot_http_requests_total", status="500") == 0
        assert "Traceback" not in central.logs()

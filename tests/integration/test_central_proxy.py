"""Several central hosts behind HAProxy on one PostgreSQL, for real: two `gridpilot central serve` processes on two
ports, HAProxy in front running deploy/haproxy/gridpilot.cfg (support.central_hosts), CentralClient as the client.
Requests spread over both; what one host writes the other reads; one host SIGKILLed under a load of submissions,
matches, state reports and heartbeats is taken out while the other carries the load, nothing acknowledged is lost and
nothing answers 500; it is taken back in when it returns; with no host up, or the database stopped, clients get 503
and Retry-After. Also: every host's sweeper at once changes each lost job once, and benches/bench_proxy.py runs at a
small scale. Debian packages: haproxy, postgresql, openssl."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Set, Tuple

import pytest
import urllib3
from sqlalchemy import select

from gridpilot.central import schema
from gridpilot.central.db import Database
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.states import JobStatus
from gridpilot.tls import ca_context
from support import paths
from support.central import CE, SITE, jdl, site_map
from support.central_hosts import ERRORS, SERVERS, ProxiedCentrals, start_proxied_centrals, wait_for
from support.require import require_or_skip
from support.tls import Pki, make_pki

#: Threads of load while a host is killed; each has at most one request in flight at the kill.
LOAD_THREADS = 3


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def centrals(tmp_path, postgres_url, pki) -> Iterator[ProxiedCentrals]:
    layout = start_proxied_centrals(tmp_path, postgres_url, pki)
    try:
        yield layout
    finally:
        layout.stop()


def _served(centrals: ProxiedCentrals) -> Dict[str, int]:
    return {s: centrals.proxy.served(s) for s in SERVERS}


def _whoami_count(metrics: str) -> int:
    m = re.search(r'gridpilot_http_requests_total\{method="GET",route="/api/v1/whoami",status="200"\} (\S+)', metrics)
    return int(float(m.group(1))) if m else 0


def test_the_error_files_are_whole_http_answers_in_centrals_error_shape():
    import orjson

    for code in (502, 503, 504):
        raw = (ERRORS / f"{code}.http").read_bytes()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith(f"HTTP/1.1 {code} ")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        assert int(headers["Content-Length"]) == len(body)
        assert orjson.loads(body)["error"]["code"]
        assert ("Retry-After" in headers) == (code == 503)


def test_requests_spread_over_both_hosts_and_each_sees_what_the_other_wrote(centrals):
    admin = centrals.client(centrals.admin_token, retries=0, timeout=30)
    before = _served(centrals)
    whoami_before = [_whoami_count(h.client(None, retries=0).metrics()) for h in centrals.hosts]
    for _ in range(40):
        assert admin.whoami()["role"] == "admin"
    after = _served(centrals)
    spread = {s: after[s] - before[s] for s in SERVERS}
    assert all(n >= 5 for n in spread.values()), f"requests per host through HAProxy: {spread}"
    # Central's own count agrees: each host answered some of the 40, and together all of them.
    whoami_after = [_whoami_count(h.client(None, retries=0).metrics()) for h in centrals.hosts]
    assert all(a > b for a, b in zip(whoami_after, whoami_before)), (whoami_before, whoami_after)
    assert sum(whoami_after) - sum(whoami_before) == 40

    # A token minted through the proxy (signed by one host, with the shared key) is good on both; a job submitted
    # through the proxy is seen by both.
    user_token = admin.mint_token("user", "alice")
    user = centrals.client(user_token, retries=0, timeout=30)
    jid = user.submit(jdl(), "through the proxy")
    for h in centrals.hosts:
        assert h.client(user_token, retries=0, timeout=30).get_job(jid)["state"] == "WAITING", h.name


@dataclass
class Load:
    """What the load threads were told: acknowledged writes, and every failure with when it happened."""

    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: int = 0
    submitted: List[int] = field(default_factory=list)
    matched: List[Tuple[int, int]] = field(default_factory=list)
    started: List[Tuple[int, int]] = field(default_factory=list)
    beaten: List[int] = field(default_factory=list)
    failures: List[Tuple[float, str, str]] = field(default_factory=list)

    def call(self, what: str, fn: Callable[[], Any]) -> Tuple[bool, Any]:
        try:
            out = fn()
        except CentralUnreachable as e:
            with self.lock:
                self.failures.append((time.monotonic(), what, f"unreachable: {e}"))
            return False, None
        except CentralError as e:
            with self.lock:
                self.failures.append((time.monotonic(), what, f"{e.status} {e.code}: {e.message}"))
            return False, None
        with self.lock:
            self.ok += 1
        return True, out


def _submitter(load: Load, user: Any) -> None:
    while not load.stop.is_set():
        done, jid = load.call("submit", lambda: user.submit(jdl(), "load"))
        if done:
            with load.lock:
                load.submitted.append(jid)


def _agent(load: Load, agent: Any, node: str) -> None:
    sm = site_map(node=node)
    while not load.stop.is_set():
        done, job = load.call("match", lambda: agent.match(sm))
        if not done or job is None:
            continue
        key = (job["id"], job["resubmission"])
        with load.lock:
            load.matched.append(key)
        done, _ = load.call("status", lambda: agent.set_status(key[0], "STARTED", key[1]))
        if not done:
            continue
        with load.lock:
            load.started.append(key)
        done, _ = load.call("heartbeat", lambda: agent.heartbeats([{"job_id": key[0], "resubmission": key[1]}]))
        if done:
            with load.lock:
                load.beaten.append(key[0])


def test_a_killed_host_is_taken_out_under_load_and_back_in_when_it_returns(centrals, postgres_url):
    admin = centrals.client(centrals.admin_token, retries=0, timeout=30)
    user = centrals.client(admin.mint_token("user", "alice"), retries=0, timeout=30)
    for _ in range(20):
        user.submit(jdl(), "queued before")
    load = Load()
    clients = [(_submitter, user, "")] + [
        (_agent, centrals.client(admin.mint_token("agent", f"agent{i}", site=SITE, ce=CE), retries=0, timeout=30), f"node{i}")
        for i in range(LOAD_THREADS - 1)]
    threads = [threading.Thread(target=fn, args=(load, c, *([node] if node else [])), daemon=True)
               for fn, c, node in clients]
    victim, survivor = centrals.hosts
    try:
        for t in threads:
            t.start()
        start = _served(centrals)
        wait_for(lambda: all(_served(centrals)[s] > start[s] + 10 for s in SERVERS) and load.ok > 60,
                 "the load to reach both hosts")

        t_kill = time.monotonic()
        victim.kill()
        centrals.wait_status(victim.name, "DOWN")
        t_down = time.monotonic()
        ok_at_down, survivor_at_down = load.ok, centrals.proxy.served(survivor.name)
        wait_for(lambda: load.ok > ok_at_down + 60, "the load to carry on through the other host")
        assert centrals.proxy.served(survivor.name) > survivor_at_down + 60

        victim.start()
        centrals.wait_status(victim.name, "UP")
        back = centrals.proxy.served(victim.name)
        wait_for(lambda: centrals.proxy.served(victim.name) > back + 10, "the returned host to be given requests")
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)
    t_end = time.monotonic()

    # Failures: only requests in flight on the killed host (502 from HAProxy, or a dropped connection), all between
    # the kill and HAProxy taking the host out; never a 500, never one while both hosts were up or after.
    print(f"kill to DOWN {t_down - t_kill:.1f} s, {load.ok} requests answered, failures: {load.failures}",
          file=sys.stderr)
    for when, what, how in load.failures:
        assert how.startswith(("502 bad_gateway", "unreachable")), f"{what}: {how}"
        assert t_kill <= when <= t_down + 5, f"{what} failed {when - t_kill:.1f} s after the kill: {how}"
    assert len(load.failures) <= 2 * LOAD_THREADS, load.failures
    assert load.submitted and load.matched and load.started and load.beaten

    # Every acknowledged write is in the database.
    db = Database(postgres_url)
    try:
        with db.read() as conn:
            rows = {r.id: r for r in conn.execute(select(schema.jobs.c.id, schema.jobs.c.state,
                                                         schema.jobs.c.resubmission, schema.jobs.c.heartbeat))}
    finally:
        db.dispose()
    missing: Set[int] = set(load.submitted) - set(rows)
    assert not missing, f"acknowledged submissions not in the database: {sorted(missing)}"
    held = {int(JobStatus.ASSIGNED), int(JobStatus.STARTED), int(JobStatus.RUNNING)}
    for jid, resub in load.matched:
        assert rows[jid].state in held and rows[jid].resubmission == resub, (jid, rows[jid])
    for jid, _ in load.started:
        assert rows[jid].state in held - {int(JobStatus.ASSIGNED)}, (jid, rows[jid])
    for jid in load.beaten:
        assert rows[jid].heartbeat is not None, jid
    assert t_end > t_down


def test_with_no_host_up_clients_get_503_and_retry_after(centrals):
    for h in centrals.hosts:
        h.kill()
    for s in SERVERS:
        centrals.wait_status(s, "DOWN")
    admin = centrals.client(centrals.admin_token, retries=0, timeout=30)
    with pytest.raises(CentralError) as e:
        admin.whoami()
    assert (e.value.status, e.value.code) == (503, "unavailable"), e.value
    pool = urllib3.PoolManager(ssl_context=ca_context(str(centrals.ca_file), None), retries=False)
    r = pool.request("GET", centrals.url + "/api/v1/health")
    assert r.status == 503
    assert int(r.headers["Retry-After"]) > 0
    pool.clear()



def test_each_hosts_sweeper_at_once_changes_each_lost_job_once(tmp_path, postgres_url):
    # Every host runs the sweeper (central serve starts it): three passes at the very same moment over the same
    # silent jobs on PostgreSQL turn each ZOMBIE once and EXPIRED once, and resubmit each once.
    from gridpilot.central.settings import DEFAULT_EXPIRE_AFTER_S, DEFAULT_ZOMBIE_AFTER_S
    from gridpilot.central.sweeper import SweepReport, sweep
    from support.central import start_world

    world_gen = start_world(tmp_path / "state", postgres_url)
    world = next(world_gen)
    try:
        user, agent = world.user(), world.agent()
        ids = [user.submit(jdl(), f"lost {i}") for i in range(40)]
        while agent.match(site_map()) is not None:
            pass
        t0 = time.time()
        dbs = [Database(postgres_url) for _ in range(3)]
        try:
            for at in (t0 + DEFAULT_ZOMBIE_AFTER_S + 1, t0 + DEFAULT_ZOMBIE_AFTER_S + DEFAULT_EXPIRE_AFTER_S + 2):
                barrier = threading.Barrier(len(dbs))
                reports: List[SweepReport] = []

                def one(db: Database, at: float = at, barrier: threading.Barrier = barrier) -> None:
                    barrier.wait(60)
                    reports.append(sweep(db, now=at))

                threads = [threading.Thread(target=one, args=(db,)) for db in dbs]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(120)
                assert len(reports) == len(dbs)
                for kind in ("zombies", "expired", "resubmitted"):
                    found = [j for r in reports for j in getattr(r, kind)]
                    assert len(found) == len(set(found)), f"a job {kind} by two passes: {found}"
        finally:
            for db in dbs:
                db.dispose()
        with world.db.read() as conn:
            lines = conn.execute(select(schema.traces.c.job_id, schema.traces.c.text).where(
                schema.traces.c.category == "state", schema.traces.c.job_id.in_(ids))).all()
            jobs = {r.id: r for r in conn.execute(select(schema.jobs.c.id, schema.jobs.c.state,
                                                         schema.jobs.c.resubmission))}
        for jid in ids:
            texts = [text for j, text in lines if j == jid]
            assert sum(t.endswith("to ZOMBIE") for t in texts) == 1, texts
            assert sum(t.endswith("to EXPIRED") for t in texts) == 1, texts
            assert (jobs[jid].state, jobs[jid].resubmission) == (int(JobStatus.WAITING), 1), jobs[jid]
    finally:
        world_gen.close()


def test_the_proxy_bench_runs_at_a_small_scale(tmp_path):
    # benches/bench_proxy.py, at a few requests, so that it cannot rot: every case answered without an error.
    import orjson

    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(paths.ROOT / "benches" / "bench_proxy.py"), "--requests", "12",
                          "--threads", "2", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    results = orjson.loads(out.read_bytes())["results"]
    for case in ("whoami direct", "whoami proxy", "match direct", "match proxy"):
        assert results[case]["errors"] == 0 and results[case]["n"] == 12, (case, results[case])
    assert results["match ratio proxy/direct"]["per_s"] > 0


def test_a_stopped_database_takes_every_host_out_and_clients_get_503(tmp_path, pki):
    # Health reads the database: with PostgreSQL stopped (SIGSTOP, every process of a server of this test's own), the
    # checks time out on every host, HAProxy answers 503 with Retry-After, and all come back after SIGCONT.
    import psutil
    from support import pgserver

    reason = pgserver.missing_reason()
    if reason is not None:
        require_or_skip(reason)
    pg = pgserver.PostgresServer()
    layout = None
    stopped: List[psutil.Process] = []
    try:
        layout = start_proxied_centrals(tmp_path, pg.create_database(), pki)
        admin = layout.client(layout.admin_token, retries=0, timeout=60)
        assert admin.whoami()["role"] == "admin"
        postmaster = psutil.Process(int((pg.datadir / "postmaster.pid").read_text().split()[0]))
        stopped = [postmaster, *postmaster.children(recursive=True)]
        for p in stopped:
            p.suspend()
        for s in SERVERS:
            layout.wait_status(s, "DOWN")
        with pytest.raises(CentralError) as e:
            admin.whoami()
        assert (e.value.status, e.value.code) == (503, "unavailable"), e.value
        for p in stopped:
            p.resume()
        stopped = []
        for s in SERVERS:
            layout.wait_status(s, "UP")
        assert admin.whoami()["role"] == "admin"
    finally:
        for p in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.resume()
        if layout is not None:
            layout.stop()
        pg.stop()

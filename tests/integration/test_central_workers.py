"""`gridpilot central serve --workers N`, run for real: N uvicorn worker processes on one port.

What is asserted: answers come from more than one process (X-Gridpilot-Worker); /metrics sums every worker's
counters; a worker killed with SIGKILL under a steady load of submissions is replaced by the supervisor, the other
carries on, every failed request fails as a connection error (never a wrong answer) and every acknowledged job is in
the database; the sweeper runs in exactly one worker and moves to another when that one dies; SIGTERM to the parent
stops them all (exit 0); SIGKILL to the parent takes the workers with it; bad counts are refused naming --workers.
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import orjson
import psutil
import pytest
import urllib3
from support.central import jdl
from sqlalchemy import select

from gridpilot.central import schema
from gridpilot.central.db import Database
from gridpilot.central.serve import init
from gridpilot.central.settings import CentralSettings
from gridpilot.central.workers import WORKER_HEADER
from gridpilot.endpoints import URL_FILE

DEADLINE_S = 120.0


class Server:
    """`central serve --workers N` in a process of its own, its output in serve.log."""

    def __init__(self, state_dir: Path, db_url: str, workers: int, *extra: str) -> None:
        self.state_dir = state_dir
        self.settings = CentralSettings.from_args(state_dir, db_url)
        self.admin_token = init(self.settings).admin_token
        self.log_path = state_dir / "serve.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gridpilot", "central", "serve", "--db", db_url, "--state-dir", str(state_dir),
                 "--port", "0", "--workers", str(workers), *extra],
                stdout=log, stderr=subprocess.STDOUT)
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10, read=60))
        self.url = self._wait_for_url()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_url(self) -> str:
        url_file = self.state_dir / URL_FILE
        deadline = time.monotonic() + DEADLINE_S
        while True:
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "central serve did not come up:\n" + self.log()
            if url_file.exists() and url_file.read_text().strip():
                url = url_file.read_text().strip()
                try:
                    if self.http.request("GET", url + "/api/v1/health").status == 200:
                        return url
                except urllib3.exceptions.HTTPError:
                    pass
            time.sleep(0.05)

    def get(self, path: str, *, close: bool = True) -> urllib3.BaseHTTPResponse:
        # A connection per request (close): the kernel hands each new connection to whichever worker accepts.
        return self.http.request("GET", self.url + path, headers={"Connection": "close"} if close else {})

    def workers(self) -> Set[int]:
        """The live worker processes: the parent's children that serve (multiprocessing may add a helper)."""
        out = set()
        for child in psutil.Process(self.proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                    out.add(child.pid)
            except psutil.Error:
                continue
        return out

    def answering(self, want: int, timeout: float = DEADLINE_S) -> Set[int]:
        """The pids named by X-Gridpilot-Worker, asking from 8 threads until `want` different ones answered."""
        seen: Set[int] = set()
        deadline = time.monotonic() + timeout

        def ask() -> None:
            while len(seen) < want and time.monotonic() < deadline:
                try:
                    r = self.get("/api/v1/health")
                except urllib3.exceptions.HTTPError:
                    continue
                assert r.status == 200, r.data
                seen.add(int(r.headers[WORKER_HEADER]))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return seen

    def stop(self) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def serve_workers(tmp_path, db_url) -> Iterator:
    made: List[Server] = []
    pids: Set[int] = set()

    def start(workers: int, *extra: str, name: str = "state") -> Server:
        s = Server(tmp_path / name, db_url, workers, *extra)
        made.append(s)
        return s

    try:
        yield start
    finally:
        for s in made:
            pids |= s.workers() if s.proc.poll() is None else set()
            s.stop()
        _wait_gone(pids)
        for s in made:
            s.http.clear()


def _wait_gone(pids: Set[int], timeout: float = DEADLINE_S) -> Set[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _counter(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of counter `name` whose labels include `labels`, from a text exposition."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(?:_total)?\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_two_workers_answer_and_metrics_sum_both(serve_workers):
    server = serve_workers(2)
    assert "with 2 worker processes" in server.log()
    workers = server.workers()
    assert len(workers) == 2, server.log()
    answered = server.answering(2)
    assert answered == workers  # both served, and only they did
    before = _counter(server.get("/metrics").data.decode(), "gridpilot_http_requests", route="/api/v1/health")
    for _ in range(40):
        assert server.get("/api/v1/health").status == 200
    # Whichever worker answers the scrape, it counts every worker's requests: exactly the 40 more.
    for _ in range(4):
        text = server.get("/metrics").data.decode()
        assert _counter(text, "gridpilot_http_requests", route="/api/v1/health") == before + 40
        assert "process_cpu_seconds_total" not in text  # one worker's figure, left out in this mode
    assert list(server.state_dir.glob("metrics-*")), "the metrics directory is in the state directory"
    assert server.stop() == 0
    assert not list(server.state_dir.glob("metrics-*")), "removed when the server stops"


def test_a_killed_worker_is_replaced_and_nothing_acknowledged_is_lost(serve_workers):
    server = serve_workers(2)
    user = orjson.loads(server.http.request(
        "POST", server.url + "/api/v1/tokens", body=orjson.dumps({"role": "user", "subject": "alice"}),
        headers={"Authorization": f"Bearer {server.admin_token}", "Content-Type": "application/json"}).data)["token"]
    acknowledged: List[int] = []
    failures: List[str] = []
    wrong: List[str] = []
    served_by: Dict[int, int] = {}
    stop = threading.Event()

    def submit(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = server.http.request(
                    "POST", server.url + "/api/v1/jobs", body=orjson.dumps({"jdl": jdl(), "name": f"t{i}-{n}"}),
                    headers={"Authorization": f"Bearer {user}", "Content-Type": "application/json",
                             "Connection": "close"})
            except urllib3.exceptions.HTTPError as e:  # the killed worker's connections: reset or refused
                failures.append(type(e).__name__)
                continue
            if r.status != 201:
                wrong.append(f"{r.status} {r.data[:200]!r}")
                continue
            acknowledged.append(int(orjson.loads(r.data)["id"]))
            pid = int(r.headers[WORKER_HEADER])
            served_by[pid] = served_by.get(pid, 0) + 1

    old = server.workers()
    assert len(old) == 2 and server.answering(2) == old
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        _wait_for(lambda: len(served_by) == 2 and min(served_by.values()) >= 5, "both workers took submissions")
        victim = min(old)
        survivor = max(old)
        os.kill(victim, signal.SIGKILL)
        at_kill = len(acknowledged)
        by_survivor = served_by[survivor]
        _wait_for(lambda: len(server.workers() - old) == 1, "the supervisor started a replacement")
        replacement = (server.workers() - old).pop()
        _wait_for(lambda: served_by.get(replacement, 0) >= 5, "the replacement took submissions")
        assert served_by[survivor] > by_survivor, "the other worker carried on"
        assert len(acknowledged) > at_kill
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert wrong == [], wrong[:5]
    assert server.workers() == {survivor, replacement}
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    db = Database(server.settings.db_url)
    try:
        with db.read() as conn:
            stored = set(conn.execute(select(schema.jobs.c.id)).scalars())
    finally:
        db.dispose()
    assert set(acknowledged) <= stored, f"acknowledged but missing: {sorted(set(acknowledged) - stored)[:10]}"
    assert len(set(acknowledged)) == len(acknowledged)
    assert server.stop() == 0


def _wait_for(condition, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.05)


_SWEEPS = re.compile(r"sweeper: this worker \(pid (\d+)\) sweeps")


def test_the_sweeper_runs_in_one_worker_and_moves_when_it_dies(serve_workers):
    server = serve_workers(3, "--sweep-interval", "1", "--zombie-after", "1", "--expire-after", "3600")
    _wait_for(lambda: _SWEEPS.search(server.log()), "a worker took the sweeper")
    workers = server.workers()
    assert len(workers) == 3
    # The others try the lock every second: give them several chances to (wrongly) take it too.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert len(_SWEEPS.findall(server.log())) == 1, server.log()
        time.sleep(0.2)
    sweeper = int(_SWEEPS.search(server.log()).group(1))  # type: ignore[union-attr]
    assert sweeper in workers
    os.kill(sweeper, signal.SIGKILL)
    _wait_for(lambda: len(_SWEEPS.findall(server.log())) == 2, "another worker took the sweeper")
    second = int(_SWEEPS.findall(server.log())[1])
    assert second != sweeper and second in server.workers()
    time.sleep(3)  # several more retry rounds of the others
    assert len(_SWEEPS.findall(server.log())) == 2, server.log()
    # It sweeps for real: a matched job without heartbeats turns ZOMBIE.
    headers = {"Authorization": f"Bearer {server.admin_token}", "Content-Type": "application/json"}
    job = orjson.loads(server.http.request("POST", server.url + "/api/v1/jobs", body=orjson.dumps({"jdl": jdl()}),
                                           headers=headers).data)["id"]
    db = Database(server.settings.db_url)
    try:
        with db.write() as conn:  # as a match would leave it, held and silent since long ago
            conn.execute(schema.jobs.update().where(schema.jobs.c.id == job).values(
                state=6, state_since=time.time() - 100, heartbeat=None))

        def zombie() -> bool:
            with db.read() as conn:
                return conn.execute(select(schema.jobs.c.state).where(schema.jobs.c.id == job)).scalar() == -15
        _wait_for(zombie, "the sweeper turned the silent job ZOMBIE")
    finally:
        db.dispose()
    assert server.stop() == 0


def test_sigterm_stops_every_worker_and_sigkill_of_the_parent_takes_them_along(serve_workers):
    first = serve_workers(3, name="first")
    workers = first.workers()
    assert len(workers) == 3
    assert first.stop() == 0
    assert _wait_gone(workers) == set()
    assert "Traceback" not in first.log(), first.log()

    second = serve_workers(2, name="second")
    workers = second.workers()
    assert len(workers) == 2
    second.proc.kill()
    second.proc.wait()
    assert _wait_gone(workers) == set(), "workers outlived their supervisor"


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5", ""])
def test_bad_worker_counts_are_refused_naming_the_flag(tmp_path, value):
    r = subprocess.run([sys.executable, "-m", "gridpilot", "central", "serve", "--state-dir", str(tmp_path / "s"),
                        "--port", "0", "--workers", value], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "--workers" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists(), "nothing is made for a server that cannot start"

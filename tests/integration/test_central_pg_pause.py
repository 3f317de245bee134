"""A slow database under load (issue 22): two `gridpilot central serve` processes on a PostgreSQL of the test's own,
AGENTS agents reporting through the pilot's own outbox and heartbeats (pilot/outbox.py, pilot/heartbeat.py, on
clients that do not retry by themselves, as the JobAgent's), and every process of that PostgreSQL stopped
(SIGSTOP) for PAUSE_S seconds, then continued.

Asserted: no lost update (every trace line an agent saw acknowledged is in the database, and every agent has its
whole backlog and then its final state acknowledged after the pause); no retry storm (the requests the agents send
during the pause stay under STORM_BOUND per agent per second: central's busy answers carry Retry-After, and the
outbox waits it out, jittered); no HTTP 500. Measured and printed (not asserted: wall-clock depends on the
machine's load): the requests per second during the pause, the recovery time (SIGCONT to every agent's backlog
acknowledged) and the latency of the acknowledged requests before and after.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from support.central import CE, SITE, jdl, site_map
from support.require import require_or_skip
from support.serve_procs import ServeProcs

from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable
from gridpilot.pilot.heartbeat import Heartbeats
from gridpilot.pilot.outbox import Outbox, Report, sender

AGENTS = 24
PAUSE_S = 20.0
#: A trace line per agent this often, and a heartbeat (compressed from the pilot's 60 s).
LINE_EVERY_S = 0.5
HEARTBEAT_S = 2.0
#: Requests per agent per second during the pause, at most. Without pause an agent sends ~2.5/s (lines and
#: heartbeats); a client retrying every 0.2 s without Retry-After would send 5.
STORM_BOUND = 1.5
MAX_INFLIGHT = 8


def cluster_pids(datadir: Path) -> List[int]:
    """The postmaster (from its pid file) and every process it started."""
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(entry))
    return pids


#: (when it went, how long it took, the status or None for no answer, the error code or "")
Attempt = Tuple[float, float, Optional[int], str]


class CountingClient(CentralClient):
    """A CentralClient that notes when each request went and how it ended."""

    def __init__(self, *a: Any, log: List[Attempt], **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.log = log

    def request(self, method: str, path: str, **kw: Any) -> Tuple[int, Any]:
        t0 = time.monotonic()
        status: Optional[int] = None
        code = ""
        try:
            out = super().request(method, path, **kw)
            status = out[0]
            return out
        except CentralError as e:
            status, code = e.status, e.code
            raise
        except CentralUnreachable:
            code = "no answer"
            raise
        finally:
            self.log.append((t0, time.monotonic() - t0, status, code))


class Agent:
    """One JobAgent's reporting: trace lines into its outbox, heartbeats, flushes; what central acknowledged."""

    def __init__(self, url: str, token: str, job: Dict[str, Any], log: List[Attempt]):
        self.job = job
        # As the JobAgent's: 5 s timeout, no retries (the outbox retries).
        self.client = CountingClient(url, token, timeout=5.0, retries=0, log=log)
        send = sender(self.client, job["id"], job["resubmission"])
        self.acked: List[str] = []
        self.final_acked = False

        def send_and_note(report: Report) -> None:
            send(report)
            if report.kind == "trace":
                self.acked.extend(e["key"] for e in report.body["entries"])
            elif report.body.get("state") == "DONE":
                self.final_acked = True

        #: Outages the outbox reported (the runner counts each against the node: errorConnecting).
        self.outages: List[float] = []
        self.outbox = Outbox(send_and_note, key_prefix=f"{job['id']}.", name=f"job {job['id']}",
                             on_outage=self.outages.append)
        self.heartbeats = Heartbeats(self.client, job["id"], job["resubmission"], self.outbox, HEARTBEAT_S)
        self.made = 0
        self.next_line = 0.0

    def turn(self, now: float, generate: bool) -> None:
        if generate and now >= self.next_line:
            self.made += 1
            self.outbox.trace("trace", f"line {self.made}")
            self.next_line = now + LINE_EVERY_S
        self.heartbeats.beat(now, lambda: {"rss_kb": self.made})
        self.outbox.flush()

    def backlog(self) -> int:
        return sum(len(r.body["entries"]) if r.kind == "trace" else 1 for r in self.outbox.queue)


def test_postgresql_stopped_for_20_s_under_load(tmp_path):
    from support import pgserver

    reason = pgserver.missing_reason()
    if reason is not None:
        require_or_skip(reason)
    pg = pgserver.PostgresServer()
    stopped: List[int] = []
    try:
        db_url = pg.create_database("pause")
        # Fewer requests in flight per process than agents per process: admission control takes part.
        with ServeProcs(tmp_path, db_url, count=2, args=["--max-inflight", str(MAX_INFLIGHT)]) as central:
            admin = CentralClient(central.urls[0], central.admin_token, retries=3, timeout=60)
            log: List[Attempt] = []
            agents: List[Agent] = []
            for i in range(AGENTS):
                url = central.urls[i % 2]
                token = admin.mint_token("agent", f"pilot{i}", site=SITE, ce=CE)
                CentralClient(url, admin.mint_token("user", f"user{i}"), retries=3).submit(jdl())
                c = CentralClient(url, token, retries=3, timeout=60)
                job = c.match(site_map(node=f"node{i}"))
                assert job is not None
                for s in ("STARTED", "RUNNING"):
                    c.set_status(job["id"], s, job["resubmission"])
                agents.append(Agent(url, token, job, log))

            generate = threading.Event()
            generate.set()
            stop = threading.Event()

            def run(agent: Agent) -> None:
                while not stop.is_set():
                    agent.turn(time.monotonic(), generate.is_set())
                    wake = min(agent.next_line if generate.is_set() else float("inf"), agent.heartbeats.due,
                               agent.outbox.next_try or float("inf"))
                    time.sleep(min(0.2, max(0.01, wake - time.monotonic())))

            threads = [threading.Thread(target=run, args=(a,), daemon=True) for a in agents]
            for t in threads:
                t.start()
            try:
                wait_for("every agent's first lines acknowledged", lambda: all(len(a.acked) >= 5 for a in agents))
                before = time.monotonic()
                stopped = cluster_pids(pg.datadir)
                t_stop = time.monotonic()
                for pid in stopped:
                    os.kill(pid, signal.SIGSTOP)
                time.sleep(PAUSE_S)  # the fault itself: the database stays stopped this long
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
                t_cont = time.monotonic()
                stopped = []
                made_at_cont = [a.made for a in agents]
                wait_for("every agent's backlog acknowledged", lambda: all(
                    len(a.acked) >= made for a, made in zip(agents, made_at_cont)), timeout=600)
                t_recovered = time.monotonic()
                # A few more seconds of normal load, for the latency after.
                made_at_recovery = [a.made for a in agents]
                wait_for("more lines after the recovery", lambda: all(
                    len(a.acked) >= made + 4 for a, made in zip(agents, made_at_recovery)), timeout=600)
                after = time.monotonic()
            finally:
                generate.clear()
                stop.set()
                for t in threads:
                    t.join(60)
            # Each job ends: its final states through its outbox, drained as the agent drains it.
            for a in agents:
                a.outbox.status(state="SAVING")
                a.outbox.status(state="DONE")
                assert a.outbox.drain(timeout_s=300), f"job {a.job['id']}: {a.backlog()} reports not delivered"
                assert a.final_acked

            # No lost update: every acknowledged line is stored, once; every job is DONE.
            import psycopg

            with psycopg.connect(db_url) as conn:
                stored: Dict[int, set] = {}
                for job_id, key in conn.execute("SELECT job_id, entry_key FROM traces WHERE entry_key IS NOT NULL"):
                    stored.setdefault(job_id, set()).add(key)
                states = dict(conn.execute("SELECT id, state FROM jobs").fetchall())
            for a in agents:
                missing = set(a.acked) - stored.get(a.job["id"], set())
                assert not missing, f"job {a.job['id']}: acknowledged but not stored: {sorted(missing)[:5]}"
                assert len(a.acked) >= a.made
                assert states[a.job["id"]] == 15, f"job {a.job['id']} is in state {states[a.job['id']]}"  # DONE

            # No HTTP 500, on the agents' side or in either process's metrics.
            statuses = [s for _, _, s, _ in log]
            assert 500 not in statuses
            for url in central.urls:
                text = CentralClient(url, None, retries=3).metrics()
                assert 'status="500"' not in text

            # No retry storm: what the agents sent while the database was stopped.
            during = [(t, f"{s} {c}".strip()) for t, _, s, c in log if t_stop <= t < t_cont]
            rate = len(during) / (t_cont - t_stop)
            assert rate <= STORM_BOUND * AGENTS, f"{rate:.1f} requests/s during the pause from {AGENTS} agents"
            normal = [d for t, d, s, _ in log if before - 5 <= t < before and s == 200]
            later = [d for t, d, s, _ in log if t_recovered <= t < after and s == 200]
            result = {
                "agents": AGENTS, "processes": 2, "pause_s": round(t_cont - t_stop, 1),
                "requests_per_s_before": round(len([1 for t, _, _, _ in log if before - 5 <= t < before]) / 5, 1),
                "requests_per_s_during_pause": round(rate, 1),
                "answers_during_pause": dict(sorted(_count(s for _, s in during).items())),
                "recovery_s": round(t_recovered - t_cont, 1),
                "latency_p50_ms_before": _ms(statistics.median(normal)) if normal else None,
                "latency_p50_ms_after": _ms(statistics.median(later)) if later else None,
                "agents_reporting_an_outage": sum(1 for a in agents if a.outages), "max_inflight": MAX_INFLIGHT, "load": round(os.getloadavg()[0], 1),
            }
            print("pg pause:", json.dumps(result))
            assert central.procs[0].poll() is None and central.procs[1].poll() is None
    finally:
        for pid in stopped:  # never leave the cluster stopped
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        pg.stop()


def _count(items: Any) -> Dict[Any, int]:
    out: Dict[Any, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _ms(s: float) -> float:
    return round(s * 1000, 1)


def wait_for(what: str, cond: Any, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)

"""The simulated grid of benches/simulate_grid.py: pilots, a producer and a resubmitting user, all asyncio tasks of one
process speaking central's real HTTP API through one aiohttp session.

A pilot does what a real one does (pilot/runner.py, pilot/agent.py, pilot/wrapper.py), with the payload replaced by
a sleep: its CE mints its agent token (POST /ce/tokens), each of its slots matches a job with a site map (POST
/match), reports STARTED, RUNNING, SAVING and the final state (POST /jobs/{id}/status, with `at` as the agent
sends it) and trace lines with keys (POST /jobs/{id}/trace), registers its output with the job token in SAVING (POST
/catalogue/files, as the wrapper's stager does), and one heartbeat loop per pilot sends every held job in one bulk
request every interval, first at a random point of it (POST /heartbeats). A share of jobs fail (ERROR_E); a share of
pilots vanish mid-job and are never heard from again (the sweeper must take their jobs back); a pilot ends after its
lifetime and its CE sends a new one.

The user side: a producer keeps the WAITING queue at a target depth with production masterjobs (Split =
"production:1-N", ALICE's bulk submission), reading the depth from GET /jobs/summary; a resubmitting user lists its
ERROR_E and EXPIRED jobs (GET /jobs) and resubmits them (POST /jobs/{id}/resubmit), the path `gridpilot resubmit`
takes.

Connections: one shared aiohttp connector with a bounded number of keep-alive connections per server. A real grid
opens one connection per pilot (tens of thousands) to a proxy, which multiplexes them onto a bounded pool towards
the serve processes; the bounded connector plays that pool. What it does not play: the proxy's own TLS and
accept() cost for tens of thousands of client connections.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import aiohttp
import orjson

API = "/api/v1"
SITE, CE = "SIM::SITE", "SIM::SITE::CE"
USER = "simuser"
#: The statuses after which a request is sent again, honouring Retry-After (H2's admission control), as the real
#: client does; a connection error is retried too.
RETRY_STATUSES = (429, 502, 503, 504)
FINAL_OK = ("DONE",)


@dataclass
class SimConfig:
    pilots: int
    duration_s: float
    job_min_s: float
    job_max_s: float
    heartbeat_s: float
    slots: int
    multi_share: float
    fail_share: float
    vanish_share: float
    pilot_lifetime_s: float
    ramp_s: float
    queue_depth: int
    batch: int
    empty_backoff_s: float
    resubmit_every_s: float
    output_dir: str
    se: str
    timeout_s: float = 60.0
    seed: int = 1


@dataclass
class EndpointStats:
    latencies: List[float] = field(default_factory=list)
    statuses: Dict[str, int] = field(default_factory=dict)


@dataclass
class Stats:
    t0: float
    endpoints: Dict[str, EndpointStats] = field(default_factory=dict)
    starts: Dict[int, int] = field(default_factory=dict)
    ends: Dict[int, int] = field(default_factory=dict)
    fails: int = 0
    done: int = 0
    hb_job_updates: int = 0
    hb_requests_jobs: List[int] = field(default_factory=list)
    matched: int = 0
    empty_matches: int = 0
    submitted: int = 0
    resubmitted: int = 0
    resubmit_refused: int = 0
    pilots_started: int = 0
    pilots_vanished: int = 0
    #: job id -> (resubmission, state it was in) when its pilot vanished
    vanished: Dict[int, Tuple[int, str]] = field(default_factory=dict)
    held: int = 0
    held_series: List[Tuple[float, int]] = field(default_factory=list)
    loop_lag: List[float] = field(default_factory=list)
    #: Seconds requests waited for a free connection of the bounded pool (only those that had to wait).
    pool_wait: List[float] = field(default_factory=list)

    def second(self) -> int:
        return int(time.monotonic() - self.t0)

    def note(self, name: str, status: int, elapsed: float) -> None:
        e = self.endpoints.setdefault(name, EndpointStats())
        e.latencies.append(elapsed)
        e.statuses[str(status)] = e.statuses.get(str(status), 0) + 1


class Vanish(Exception):
    """The pilot disappears: no more requests, nothing reported."""


class Api:
    """One aiohttp session over the serve processes' URLs; each pilot keeps to one URL (as DNS or a proxy would)."""

    def __init__(self, urls: List[str], connections: int, stats: Stats, timeout_s: float) -> None:
        self.urls = urls
        self.stats = stats
        # limit: the whole pool; limit_per_host keeps it spread when there are several processes on several ports.
        self.connector = aiohttp.TCPConnector(limit=connections * len(urls), limit_per_host=connections,
                                              keepalive_timeout=60)
        # The wait for a free connection is not timed out: it plays the queue in front of central (a proxy's, or
        # the listen backlog), which real pilots wait in too. Once sent, a request has timeout_s to be answered.
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=10, sock_read=timeout_s)
        trace = aiohttp.TraceConfig()
        trace.on_connection_queued_start.append(self._queued)
        trace.on_connection_queued_end.append(self._dequeued)
        self.session = aiohttp.ClientSession(connector=self.connector, timeout=timeout, trace_configs=[trace],
                                             json_serialize=lambda o: orjson.dumps(o).decode())

    async def _queued(self, session: Any, ctx: Any, params: Any) -> None:
        ctx.queued_at = time.perf_counter()

    async def _dequeued(self, session: Any, ctx: Any, params: Any) -> None:
        self.stats.pool_wait.append(time.perf_counter() - ctx.queued_at)

    async def close(self) -> None:
        await self.session.close()

    async def call(self, name: str, method: str, path: str, token: str, body: Any = None, *, url: Optional[str] = None,
                   query: Optional[Dict[str, str]] = None, retries: int = 5,
                   idempotent: bool = True) -> Tuple[int, Any]:
        """(status, parsed body or None). 429/503 are retried after Retry-After with jitter; each attempt counts. A
        request that got no answer (status 0) is sent again only when it is idempotent, as CentralClient does."""
        base = url or self.urls[0]
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            t0 = time.perf_counter()
            retry_after: Optional[float] = None
            try:
                async with self.session.request(method, base + API + path, data=data, headers=headers,
                                                params=query) as resp:
                    raw = await resp.read()
                    status = resp.status
                    if status in RETRY_STATUSES:
                        try:
                            retry_after = float(resp.headers.get("Retry-After", "1"))
                        except ValueError:
                            retry_after = 1.0
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status, raw = 0, b""
                retry_after = 1.0 if idempotent else None
            self.stats.note(name, status, time.perf_counter() - t0)
            if retry_after is None or attempt >= retries:
                parsed = orjson.loads(raw) if raw and status < 600 and raw[:1] in (b"{", b"[") else None
                return status, parsed
            attempt += 1
            # Full jitter over [0.5, 1.5] x Retry-After: pilots told to come back do not come back together.
            await asyncio.sleep(retry_after * (0.5 + random.random()))


def site_map(node: str, cores: int) -> Dict[str, Any]:
    """A site map as pilot/sitemap.build_site_map makes it for one slot of a node."""
    return {"ttl": 86400, "cores": cores, "memory_mb": 2000 * cores, "disk_mb": 10000 * cores,
            "platform": "Linux-x86_64", "arch": "x86_64", "avx": True, "gpus": [], "ce": CE, "site": SITE,
            "partition": "", "users": [], "nousers": [], "close_se": [], "cvmfs_revision": 1, "node": node}


class Grid:
    """Everything simulated in one run: pilots, producer, resubmitter, and a sampler of held jobs and loop lag."""

    def __init__(self, api: Api, cfg: SimConfig, ce_token: str, user_token: str) -> None:
        self.api = api
        self.cfg = cfg
        self.ce_token = ce_token
        self.user_token = user_token
        self.stats = api.stats
        self.rng = random.Random(cfg.seed)
        self.stopping = False
        self.tasks: set = set()
        self.pilot_seq = 0
        self.prod_seq = 0
        self.stopped_at: Optional[float] = None

    # -- pilots --------------------------------------------------------------------------------------------------
    def spawn_pilot(self, delay: float) -> None:
        self.pilot_seq += 1
        t = asyncio.ensure_future(self.pilot(self.pilot_seq, delay))
        self.tasks.add(t)
        t.add_done_callback(self._pilot_ended)

    def _pilot_ended(self, t: asyncio.Future) -> None:
        self.tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            print(f"simulate_grid: a pilot failed: {t.exception()!r}")
        if not self.stopping:
            # Its CE sends a new pilot soon after (the CE's cycle); the grid keeps its size.
            self.spawn_pilot(self.rng.uniform(1.0, 10.0))

    async def pilot(self, n: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.stopping:
            return
        url = self.api.urls[n % len(self.api.urls)]
        status, data = await self.api.call("POST /ce/tokens", "POST", "/ce/tokens", self.ce_token,
                                           {"subject": f"simpilot{n}"}, url=url)
        if status != 201:
            return
        token = data["token"]
        self.stats.pilots_started += 1
        slots = self.cfg.slots if self.rng.random() < self.cfg.multi_share else 1
        node = f"simnode{n % 50000:05d}.sim"
        held: Dict[int, int] = {}
        end_at = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.cfg.pilot_lifetime_s
        slot_tasks = [asyncio.ensure_future(self.slot(url, token, node, held, end_at))
                      for _ in range(slots)]
        hb = asyncio.ensure_future(self.heartbeats(url, token, held))
        try:
            await asyncio.gather(*slot_tasks)
        except Vanish:
            self.stats.pilots_vanished += 1
        finally:
            # Gone (vanished, or the run ends): nothing more is sent for any of its slots.
            for t in slot_tasks:
                t.cancel()
            hb.cancel()

    async def heartbeats(self, url: str, token: str, held: Dict[int, int]) -> None:
        """One bulk heartbeat for every job the pilot holds, every interval, starting at a random point of it."""
        await asyncio.sleep(self.rng.uniform(0, self.cfg.heartbeat_s))
        while True:
            if held:
                items = [{"job_id": j, "resubmission": r, "sample": {"cpu_time_s": 100.0, "rss_bytes": 1 << 30,
                                                                     "nprocs": 4, "wall_s": 60.0}}
                         for j, r in list(held.items())]
                status, data = await self.api.call("POST /heartbeats", "POST", "/heartbeats", token,
                                                   {"heartbeats": items}, url=url)
                if status == 200 and data:
                    self.stats.hb_job_updates += int(data.get("updated", 0))
                    self.stats.hb_requests_jobs.append(len(items))
            await asyncio.sleep(self.cfg.heartbeat_s * self.rng.uniform(0.9, 1.1))

    async def slot(self, url: str, token: str, node: str, held: Dict[int, int], end_at: float) -> None:
        while not self.stopping and time.monotonic() < end_at:
            status, data = await self.api.call("POST /match", "POST", "/match", token, site_map(node, 1), url=url,
                                               idempotent=False)
            if status != 200 or not data:
                self.stats.empty_matches += 1
                await asyncio.sleep(self.cfg.empty_backoff_s * self.rng.uniform(0.5, 1.5))
                continue
            self.stats.matched += 1
            job = data["job"]
            await self.run_job(url, token, job, held)

    async def report(self, url: str, token: str, job_id: int, resub: int, state: str, **fields: Any) -> int:
        body = {"state": state, "resubmission": resub, "at": time.time(), **fields}
        status, _ = await self.api.call("POST /jobs/{id}/status", "POST", f"/jobs/{job_id}/status", token, body,
                                        url=url)
        return status

    async def trace(self, url: str, token: str, job_id: int, prefix: str, seq: List[int], *texts: str) -> None:
        entries = []
        for text in texts:
            seq[0] += 1
            entries.append({"ts": time.time(), "category": "trace", "text": text, "key": f"{prefix}{seq[0]}"})
        await self.api.call("POST /jobs/{id}/trace", "POST", f"/jobs/{job_id}/trace", token, {"entries": entries},
                            url=url)

    async def run_job(self, url: str, token: str, job: Dict[str, Any], held: Dict[int, int]) -> None:
        cfg, rng = self.cfg, self.rng
        jid, resub, job_token = int(job["id"]), int(job.get("resubmission", 0)), job["token"]
        held[jid] = resub
        self.stats.held += 1
        prefix, seq = f"{resub}.{uuid.uuid4().hex[:12]}.", [0]
        vanish_at = rng.choice(("STARTED", "RUNNING", "RUNNING", "SAVING")) if rng.random() < cfg.vanish_share \
            else None
        try:
            await self.trace(url, token, jid, prefix, seq, "Job received by the JobAgent", "OS detected: sim")
            if await self.report(url, token, jid, resub, "STARTED") == 200:
                self.stats.starts[self.stats.second()] = self.stats.starts.get(self.stats.second(), 0) + 1
            await self._maybe_vanish(vanish_at, "STARTED", jid, resub)
            await asyncio.sleep(rng.uniform(0.5, 3.0))  # stage-in
            await self.report(url, token, jid, resub, "RUNNING")
            await self.trace(url, token, jid, prefix, seq, "Starting execution",
                             "proc: 1.0 0.9 1024 900 0 4 16 (simulated)")
            await self._maybe_vanish(vanish_at, "RUNNING", jid, resub,
                                     rng.uniform(cfg.job_min_s, cfg.job_max_s) * rng.random())
            await asyncio.sleep(rng.uniform(cfg.job_min_s, cfg.job_max_s))
            if rng.random() < cfg.fail_share:
                await self.trace(url, token, jid, prefix, seq, "payload exited with 1")
                final = "ERROR_E"
                status = await self.report(url, token, jid, resub, final, exit_code=1)
            else:
                await self.report(url, token, jid, resub, "SAVING")
                await self._maybe_vanish(vanish_at, "SAVING", jid, resub)
                lfn = f"{job_output_dir(job)}/root_archive.zip"
                await self.api.call("POST /catalogue/files", "POST", "/catalogue/files", job_token,
                                    {"lfn": lfn, "size": 123456, "adler32": "0badcafe", "se": cfg.se,
                                     "pfn": f"file:///sim{lfn}", "job_id": jid}, url=url)
                await self.trace(url, token, jid, prefix, seq, "Registered 1 output file", "Job finished")
                final = "DONE"
                status = await self.report(url, token, jid, resub, final, exit_code=0)
            if status == 200:
                self.stats.ends[self.stats.second()] = self.stats.ends.get(self.stats.second(), 0) + 1
                if final == "DONE":
                    self.stats.done += 1
                else:
                    self.stats.fails += 1
        finally:
            if held.pop(jid, None) is not None:
                self.stats.held -= 1

    async def _maybe_vanish(self, vanish_at: Optional[str], here: str, jid: int, resub: int,
                            after: float = 0.0) -> None:
        if vanish_at != here:
            return
        await asyncio.sleep(after)
        self.stats.vanished[jid] = (resub, here)
        raise Vanish()

    # -- the user side -------------------------------------------------------------------------------------------
    async def waiting(self) -> Optional[int]:
        status, data = await self.api.call("GET /jobs/summary", "GET", "/jobs/summary", self.user_token,
                                           query={"running": "0"})
        if status != 200 or not data:
            return None
        return int(data["states"].get("WAITING", 0))

    async def submit_production(self, n: int) -> None:
        """One masterjob of n subjobs, each with its own OutputDir in the user's area."""
        self.prod_seq += 1
        jdl = (f'Executable = "/bin/sim"; TTL = 3600; Split = "production:1-{n}";\n'
               f'OutputDir = "{self.cfg.output_dir}/p{self.prod_seq:06d}/#alien_counter_06i#";\n')
        status, data = await self.api.call("POST /jobs", "POST", "/jobs", self.user_token, {"jdl": jdl},
                                           retries=10, idempotent=False)
        if status == 201 and data:
            self.stats.submitted += int(data.get("subjobs", 1))

    async def fill(self, target: int) -> None:
        while self.stats.submitted < target:
            await self.submit_production(min(self.cfg.batch, target - self.stats.submitted))

    async def producer(self) -> None:
        """Keeps WAITING near cfg.queue_depth, checking every 5 s (a production manager's loop)."""
        while not self.stopping:
            waiting = await self.waiting()
            if waiting is not None and waiting < self.cfg.queue_depth:
                missing = self.cfg.queue_depth - waiting
                while missing > 0 and not self.stopping:
                    n = min(self.cfg.batch, missing)
                    await self.submit_production(n)
                    missing -= n
            await asyncio.sleep(5.0)

    async def resubmitter(self) -> None:
        """Lists the user's failed and expired jobs and resubmits each (`gridpilot resubmit`)."""
        refused: set = set()
        while not self.stopping:
            await asyncio.sleep(self.cfg.resubmit_every_s)
            status, data = await self.api.call("GET /jobs", "GET", "/jobs", self.user_token,
                                               query={"user": USER, "state": "ERROR_E,EXPIRED", "subjobs": "1",
                                                      "limit": "500"})
            if status != 200 or not data:
                continue
            for j in data["jobs"]:
                if j["id"] in refused or self.stopping:
                    continue
                s, _ = await self.api.call("POST /jobs/{id}/resubmit", "POST", f"/jobs/{j['id']}/resubmit",
                                           self.user_token, {}, retries=0, idempotent=False)
                if s == 200:
                    self.stats.resubmitted += 1
                else:
                    refused.add(j["id"])
                    self.stats.resubmit_refused += 1

    async def sampler(self) -> None:
        """Held jobs over time, and the event loop's lag: a late wake-up means the simulator itself is saturated."""
        while not self.stopping:
            t = time.monotonic()
            await asyncio.sleep(0.5)
            self.stats.loop_lag.append(time.monotonic() - t - 0.5)
            self.stats.held_series.append((time.monotonic() - self.stats.t0, self.stats.held))

    async def run(self) -> None:
        cfg = self.cfg
        side = [asyncio.ensure_future(self.producer()), asyncio.ensure_future(self.resubmitter()),
                asyncio.ensure_future(self.sampler())]
        for _ in range(cfg.pilots):
            self.spawn_pilot(self.rng.uniform(0, cfg.ramp_s))
        await asyncio.sleep(cfg.duration_s)
        self.stopping = True
        # The run's length ends here: cancelling 100,000 pilots takes tens of seconds of its own.
        self.stopped_at = time.monotonic()
        for t in list(self.tasks) + side:
            t.cancel()
        await asyncio.gather(*self.tasks, *side, return_exceptions=True)

    async def taken_back(self, admin_token: str, limit: int = 200) -> Dict[str, int]:
        """Of the jobs whose pilot vanished, how many central took back: ZOMBIE or EXPIRED (the sweeper), or a later
        resubmission (EXPIRED and resubmitted, or sent back to WAITING before it ran)."""
        out = {"checked": 0, "taken_back": 0, "still_held": 0}
        for jid, (resub, _) in list(self.stats.vanished.items())[:limit]:
            status, data = await self.api.call("GET /jobs/{id}", "GET", f"/jobs/{jid}", admin_token)
            if status != 200 or not data:
                continue
            out["checked"] += 1
            if data["state"] in ("ZOMBIE", "EXPIRED") or int(data.get("resubmission", 0)) > resub:
                out["taken_back"] += 1
            else:
                out["still_held"] += 1
        return out


def job_output_dir(job: Dict[str, Any]) -> str:
    """The OutputDir of a matched job, read from its JDL text (the wrapper's stager reads it the same way)."""
    for line in str(job.get("jdl", "")).splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "outputdir":
            return value.strip().rstrip(";").strip().strip('"')
    return f"/gridpilot/user/s/{USER}/orphans/{job['id']}"

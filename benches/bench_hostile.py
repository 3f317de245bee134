"""Central's latency with and without a hostile Requirements user in the queue (issue 15).

For each database (SQLite and PostgreSQL), two `gridpilot central serve` processes, each on its own database:

  quiet     the bench user's queue (bench_central.TEMPLATES: a fifth of the Requirements never hold here)
  hostile   the same, plus a user "mallory" who submitted, before it, jobs whose Requirements never hold:
            the probe's ten 850 KB expressions, then --hostile-jobs jobs with distinct expressions as large as
            central accepts: each an `||` of comparisons that are all false, three in four of them `other.TTL ==`
            one of the TTLs the agents' slots pass through during the run, so that what such an expression reads
            of a site map changes every second and no verdict can be reused for long

While agents match continuously (--matchers threads, each site map with its own, shrinking slot TTL), others send
bulk heartbeats at a steady pace (--heartbeaters threads, --bulk jobs each, one request every --pace-ms): the
heartbeat latency is what the issue measured. The hostile jobs are older than the bench user's, so they rank first.
The two modes are measured in alternating windows (the other server idle meanwhile), so that the machine's load,
which changes during a run, falls on both alike.

Prints heartbeat p50/p99/max per mode, and the ratio hostile/quiet of the p99 (the issue asks for at most 2).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import orjson

from bench_central import SAMPLE, SITE, SITE_MAP, CE, fill_queue, percentiles, start_server
from gridpilot.central import broker, schema
from gridpilot.central.db import Database
from gridpilot.central.migrations import open_database
from gridpilot.central.serve import init
from gridpilot.central.settings import CentralSettings
from gridpilot.client import CentralClient
from gridpilot.errors import CentralError

#: The probe's hostile expression: 850 KB of comparisons that never hold.
PROBE_CHARS = 850_000
PROBE_JOBS = 10


def never_true(tag: str, chars: Optional[int] = None, nodes: Optional[int] = None) -> str:
    """An `||` of comparisons that are all false on the bench's site maps (so every one is evaluated), distinct per
    `tag`, with at most `chars` characters or `nodes` expression nodes. Three terms in four are `other.TTL == T`
    with T among the TTLs the bench's slots pass during the run: they never hold (each T is half a second off a
    whole number, the agents' TTLs are whole), and each second a slot's TTL moves past one of them."""
    terms: List[str] = []
    size, count = 0, 1  # the Or node
    k = 0
    while True:
        term = f'other.CE == "NOWHERE::{tag}::{k}"' if k % 4 == 0 else f"other.TTL == {86400 - k}.5"
        if chars is not None and size + len(term) + 4 > chars:
            break
        if nodes is not None and count + 3 > nodes:
            break
        terms.append(term)
        size += len(term) + 4
        count += 3  # Compare, Attribute, literal
        k += 1
    return " || ".join(terms)


def hostile_jdl(text: str) -> str:
    return f'Executable = "/bin/true";\nTTL = 3600;\nRequirements = {text};\n'


def submit_hostile(url: str, admin: CentralClient, n_bounded: int) -> Dict[str, Any]:
    """mallory's submissions: the probe's ten, then n_bounded at central's bounds. What central took and refused."""
    mallory = CentralClient(url, admin.mint_token("user", "mallory"), retries=0, timeout=600)
    out: Dict[str, Any] = {"probe_accepted": 0, "probe_refused": 0, "bounded_accepted": 0, "bounded_refused": 0,
                           "refusal": None}
    for i in range(PROBE_JOBS):
        try:
            mallory.submit(hostile_jdl(never_true(f"probe{i}", chars=PROBE_CHARS)))
            out["probe_accepted"] += 1
        except CentralError as e:
            out["probe_refused"] += 1
            out["refusal"] = f"{e.status} {e.code}: {e.message}"
    # As large as central accepts: its bounds when it has them (the probe found none before issue 15).
    chars = getattr(broker, "MAX_REQUIREMENTS_CHARS", None)
    nodes = getattr(broker, "MAX_REQUIREMENTS_NODES", None) or 1000
    errors: List[str] = []

    def run(part: range) -> None:
        for i in part:
            try:
                mallory.submit(hostile_jdl(never_true(f"m{i}", chars=chars, nodes=nodes)))
                out["bounded_accepted"] += 1
            except CentralError as e:
                out["bounded_refused"] += 1
                errors.append(f"{e.status} {e.code}: {e.message}")

    threads = [threading.Thread(target=run, args=(range(k, n_bounded, 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        out["bounded_refusal"] = errors[0]
    out["bounded_nodes"] = nodes
    out["bounded_chars"] = len(never_true("m0", chars=chars, nodes=nodes))
    return out


def hold_jobs(db: Database, n_agents: int, per_agent: int) -> List[List[int]]:
    """The first bench-user jobs made RUNNING under heartbeat agents hb-agent<i>, as pilots would hold them."""
    jobs = schema.jobs
    held: List[List[int]] = []
    with db.write() as conn:
        ids = [r.id for r in conn.execute(jobs.select().with_only_columns(jobs.c.id).where(
            jobs.c.state == 5, jobs.c.user == "bench").order_by(jobs.c.id).limit(n_agents * per_agent))]
        for i in range(n_agents):
            mine = ids[i * per_agent:(i + 1) * per_agent]
            conn.execute(jobs.update().where(jobs.c.id.in_(mine)).values(
                state=10, agent=f"hb-agent{i}", site=SITE, ce=CE, heartbeat=time.time(), reached_running=True))
            held.append(mine)
    return held


class Central:
    """One mode's central: its server process, its database, and the agents that load it."""

    def __init__(self, name: str, mode: str, db_url: str, state: Path, args: argparse.Namespace) -> None:
        print(f"\n== {name}, {mode}: setting up", flush=True)
        self.name, self.mode = name, mode
        settings = CentralSettings.from_args(state, db_url)
        admin_token = init(settings).admin_token
        self.proc, url = start_server(state, db_url)
        self.db = open_database(db_url)
        self.result: Dict[str, Any] = {"backend": name, "mode": mode}
        admin = CentralClient(url, admin_token, retries=0, timeout=600)
        if mode == "hostile":
            t0 = time.perf_counter()
            self.result["hostile"] = submit_hostile(url, admin, args.hostile_jobs)
            print(f"   mallory's submissions ({time.perf_counter() - t0:.1f} s): {self.result['hostile']}", flush=True)
        # The bench user's queue comes after mallory's: younger, so ranked behind it.
        fill_queue(self.db, args.jobs)
        held = hold_jobs(self.db, args.heartbeaters, args.bulk)
        self.matchers = [CentralClient(url, admin.mint_token("agent", f"m-agent{i}", site=SITE, ce=CE), retries=0,
                                       timeout=120) for i in range(args.matchers)]
        self.beaters = [CentralClient(url, admin.mint_token("agent", f"hb-agent{i}", site=SITE, ce=CE), retries=0,
                                      timeout=120) for i in range(len(held))]
        self.batches = [[{"job_id": j, "resubmission": 0, "sample": SAMPLE} for j in h] for h in held]
        self.t_start = time.time()
        self.hb: List[float] = []
        self.mt: List[float] = []
        self.counts: Dict[str, Any] = {"assigned": 0, "empty": 0, "seconds": 0.0}
        self.errors: List[str] = []

    def site_map(self, i: int) -> Dict[str, Any]:
        # Each slot has its own time left, and it shrinks: as real agents' site maps do.
        return dict(SITE_MAP, ttl=86400 - int(time.time() - self.t_start) - 7 * i, node=f"bench-node{i}")

    def window(self, seconds: float, pace_ms: float) -> None:
        """Matchers and heartbeaters at once for `seconds`; their latencies added to this central's."""
        for i, c in enumerate(self.matchers):  # warm-up: connections, caches, plans
            c.match(self.site_map(i))
        for c, b in zip(self.beaters, self.batches):
            c.heartbeats_full(b)
        stop_at = time.perf_counter() + seconds
        lock = threading.Lock()

        def matcher(i: int) -> None:
            try:
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    job = self.matchers[i].match(self.site_map(i))
                    with lock:
                        self.mt.append(time.perf_counter() - t0)
                        self.counts["assigned" if job else "empty"] += 1
                    if job is None:
                        time.sleep(0.05)  # as an agent that found nothing waits before asking again
            except Exception as e:  # noqa: BLE001 - reported in the results
                self.errors.append(f"matcher {i}: {e}")

        def beater(i: int) -> None:
            try:
                while time.perf_counter() < stop_at:
                    t0 = time.perf_counter()
                    self.beaters[i].heartbeats_full(self.batches[i])
                    dt = time.perf_counter() - t0
                    with lock:
                        self.hb.append(dt)
                    time.sleep(max(0.0, pace_ms / 1000 - dt))
            except Exception as e:  # noqa: BLE001 - reported in the results
                self.errors.append(f"heartbeater {i}: {e}")

        threads = [threading.Thread(target=matcher, args=(i,)) for i in range(len(self.matchers))]
        threads += [threading.Thread(target=beater, args=(i,)) for i in range(len(self.beaters))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.counts["seconds"] += time.perf_counter() - t0

    def finish(self) -> Dict[str, Any]:
        self.proc.terminate()
        self.proc.wait(30)
        self.db.dispose()
        c = self.counts
        self.result["load"] = {**c, "errors": self.errors, "matches_per_s": c["assigned"] / max(c["seconds"], 1e-9),
                               "heartbeat": percentiles(self.hb) if self.hb else {},
                               "match": percentiles(self.mt) if self.mt else {}}
        h, m = self.result["load"]["heartbeat"], self.result["load"]["match"]
        if h and m:
            print(f"   {self.name} {self.mode}: heartbeat p50 {h['p50_ms']:.1f} ms  p99 {h['p99_ms']:.1f} ms  max "
                  f"{h['max_ms']:.1f} ms ({h['n']} requests); match p50 {m['p50_ms']:.1f} ms p99 {m['p99_ms']:.1f} "
                  f"ms, {c['assigned']} assigned, {c['empty']} empty; errors {self.errors}", flush=True)
        return self.result


def measure(name: str, url_for: Any, tmp: Path, args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Both modes set up side by side, then measured in alternating windows (the other one idle), so that a change
    of the machine's load during the run falls on both alike."""
    centrals: List[Central] = []
    try:
        for mode in ("quiet", "hostile"):
            state = tmp / f"{name}-{mode}"
            state.mkdir()
            centrals.append(Central(name, mode, url_for(mode), state, args))
        for k in range(args.windows):
            for c in (centrals if k % 2 == 0 else centrals[::-1]):
                c.window(args.seconds / args.windows, args.pace_ms)
            print(f"   window {k + 1} of {args.windows} done (load average {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        results = [c.finish() for c in centrals]
    return results


def backends(args: argparse.Namespace, tmp: Path) -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []
    if args.backend in ("sqlite", "both"):
        out.append(("sqlite", lambda mode: f"sqlite:///{tmp / ('sqlite-' + mode) / 'central.db'}"))
    if args.backend in ("postgresql", "both"):
        from support import pgserver

        reason = pgserver.missing_reason()
        if reason:
            print(f"\nPostgreSQL skipped: {reason}")
        else:
            server = pgserver.PostgresServer(durable=True)
            args._pg = server
            out.append(("postgresql", lambda mode: server.create_database(f"bench_{mode}")))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20_000, help="the bench user's WAITING jobs (default 20000)")
    ap.add_argument("--hostile-jobs", type=int, default=1000,
                    help="mallory's jobs at central's Requirements bounds, each never holding (default 1000)")
    ap.add_argument("--seconds", type=float, default=40.0,
                    help="length of each mode's measurement, in --windows alternating windows (default 40)")
    ap.add_argument("--windows", type=int, default=8, help="alternating windows per mode (default 8)")
    ap.add_argument("--matchers", type=int, default=4, help="agents matching at once (default 4)")
    ap.add_argument("--heartbeaters", type=int, default=2, help="agents sending heartbeats (default 2)")
    ap.add_argument("--bulk", type=int, default=20, help="jobs per heartbeat request (default 20)")
    ap.add_argument("--pace-ms", type=float, default=50.0, help="one heartbeat request per agent every (default 50)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    started = datetime.datetime.now().astimezone()
    load0 = os.getloadavg()
    results: List[Dict[str, Any]] = []
    args._pg = None
    try:
        with tempfile.TemporaryDirectory(prefix="gridpilot-bench-hostile-") as tmp:
            for name, url_for in backends(args, Path(tmp)):
                results += measure(name, url_for, Path(tmp), args)
    finally:
        if args._pg is not None:
            args._pg.stop()
    load1 = os.getloadavg()
    given = argv if argv is not None else sys.argv[1:]
    cmd = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + given)
    print(f"\n{started:%Y-%m-%d %H:%M %Z}; {os.cpu_count()} CPUs, load average {load0[0]:.2f} at the start, "
          f"{load1[0]:.2f} at the end; command: {cmd}")
    print(f"{args.matchers} agents matching continuously, {args.heartbeaters} sending heartbeats of {args.bulk} jobs "
          f"every {args.pace_ms:.0f} ms; {args.jobs:,} bench jobs; mallory: {PROBE_JOBS} x {PROBE_CHARS:,}-character "
          f"Requirements, then {args.hostile_jobs:,} at central's bounds")
    print("\nbackend      run       heartbeat p50 / p99 / max ms      match p50 / p99 ms   assigned/s  "
          "mallory's jobs taken")
    by: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for r in results:
        by[(r["backend"], r["mode"])] = r
        h, m, ld = r["load"]["heartbeat"], r["load"]["match"], r["load"]
        taken = ""
        if "hostile" in r:
            x = r["hostile"]
            taken = (f"probe's {x['probe_accepted']}/{PROBE_JOBS}, bounded {x['bounded_accepted']}/"
                     f"{x['bounded_accepted'] + x['bounded_refused']}")
        print(f"{r['backend']:<12} {r['mode']:<8}  {h['p50_ms']:8.1f} / {h['p99_ms']:7.1f} / {h['max_ms']:7.1f}"
              f"      {m['p50_ms']:7.1f} / {m['p99_ms']:7.1f}   {ld['matches_per_s']:8.1f}   {taken}")
    for name in dict.fromkeys(r["backend"] for r in results):
        q, x = by.get((name, "quiet")), by.get((name, "hostile"))
        if q and x:
            ratio = x["load"]["heartbeat"]["p99_ms"] / q["load"]["heartbeat"]["p99_ms"]
            p50 = x["load"]["heartbeat"]["p50_ms"] / q["load"]["heartbeat"]["p50_ms"]
            print(f"ratio {name}: heartbeat p99 hostile/quiet {ratio:.2f} (p50 {p50:.2f}) "
                  f"{'<=' if ratio <= 2 else '>'} 2")
    for r in results:
        if "hostile" in r and r["hostile"].get("refusal"):
            print(f"refused ({r['backend']}): {r['hostile']['refusal'][:200]}")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({"started": started.isoformat(), "cpus": os.cpu_count(),
                                                  "load": [load0, load1], "command": cmd, "results": results},
                                                 option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What HAProxy in front of two central hosts costs (docs/scaling.md, "Behind a proxy, several hosts").

Two `gridpilot central serve` processes on one PostgreSQL (its durable defaults), HAProxy running
deploy/haproxy/gridpilot.cfg in front (tests/support/central_hosts.py: TLS from the client to HAProxy and from HAProxy
to each central), and this process's threads as clients, each with its own CentralClient (kept-alive connections):

  whoami   GET /api/v1/whoami, the simplest authenticated request (the token checked, one small read)
  match    POST /api/v1/match over a queue of WAITING jobs (bench_central's mix), each assigning one job

each sent `--requests` times from `--threads` threads, directly (the threads spread over the two hosts' own https
URLs, as clients would without a proxy) and through HAProxy, the two taking turns in `--rounds` slices. Prints requests/s, p50 and p99 per case, the ratios
proxy/direct, and the load average; `--json FILE` writes them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))

from bench_central import CE, SITE, SITE_MAP, fill_queue, percentiles  # noqa: E402
from gridpilot.central.db import Database  # noqa: E402
from gridpilot.client import CentralClient  # noqa: E402
from support.central_hosts import ProxiedCentrals, start_proxied_centrals  # noqa: E402
from support.pgserver import PostgresServer  # noqa: E402
from support.tls import make_pki  # noqa: E402


def run_round(clients: List[CentralClient], op: Callable[[CentralClient], Any], n: int,
              samples: List[float], errors: List[str]) -> float:
    """n calls of op spread over one thread per client; their latencies appended to samples; the wall time."""
    per = [n // len(clients) + (1 if i < n % len(clients) else 0) for i in range(len(clients))]
    start = threading.Barrier(len(clients) + 1)
    lock = threading.Lock()

    def worker(i: int) -> None:
        mine: List[float] = []
        start.wait()
        for _ in range(per[i]):
            t0 = time.perf_counter()
            try:
                op(clients[i])
            except Exception as e:  # counted and shown: a bench that hides failures measures nothing
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def summary(samples: List[float], errors: List[str], wall: float, threads: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {"threads": threads, "wall_s": wall, "per_s": len(samples) / wall if wall else 0.0,
                           "errors": len(errors)}
    out.update(percentiles(samples) if samples else {"n": 0})
    if errors:
        out["first_error"] = errors[0]
    return out


def bench(layout: ProxiedCentrals, db_url: str, args: argparse.Namespace) -> Dict[str, Any]:
    admin = layout.client(layout.admin_token, retries=0, timeout=60)
    tokens = [admin.mint_token("agent", f"bench{i}", site=SITE, ce=CE) for i in range(args.threads)]
    # Every match of both match cases (and their warm-up calls) assigns a job: the queue holds them all, and more.
    db = Database(db_url)
    try:
        fill_queue(db, 4 * (args.requests + args.threads) + 1000)
    finally:
        db.dispose()

    def direct(i: int) -> CentralClient:
        return layout.hosts[i % len(layout.hosts)].client(tokens[i], retries=0, timeout=60)

    def proxied(i: int) -> CentralClient:
        return layout.client(tokens[i], retries=0, timeout=60)

    def match(c: CentralClient) -> Any:
        if c.match(SITE_MAP) is None:
            raise RuntimeError("the queue ran dry")

    results: Dict[str, Any] = {}
    paths = {"direct": direct, "proxy": proxied}
    for name, op in (("whoami", lambda c: c.whoami()), ("match", match)):
        clients = {path: [make(i) for i in range(args.threads)] for path, make in paths.items()}
        for cs in clients.values():
            for c in cs:
                op(c)  # untimed: connections and TLS handshakes made
        samples: Dict[str, List[float]] = {p: [] for p in paths}
        errors: Dict[str, List[str]] = {p: [] for p in paths}
        wall = dict.fromkeys(paths, 0.0)
        # Direct and proxy take turns, a slice of the requests each, so that a change in the machine's load
        # (other work shares it) falls on both alike.
        for r in range(args.rounds):
            n = args.requests // args.rounds + (1 if r < args.requests % args.rounds else 0)
            for path in paths:
                wall[path] += run_round(clients[path], op, n, samples[path], errors[path])
        for path in paths:
            for c in clients[path]:
                c.close()
            results[f"{name} {path}"] = s = summary(samples[path], errors[path], wall[path], args.threads)
            print(f"{name:7} {path:7} {s['per_s']:8.1f} req/s  p50 {s.get('p50_ms', 0):6.1f} ms  "
                  f"p99 {s.get('p99_ms', 0):6.1f} ms  errors {s['errors']}", flush=True)
        d, p = results[f"{name} direct"], results[f"{name} proxy"]
        results[f"{name} ratio proxy/direct"] = ratio = {
            k: (p[k] / d[k] if d.get(k) else None) for k in ("per_s", "p50_ms", "p99_ms")}
        print(f"{name:7} proxy/direct: req/s x{ratio['per_s'] or 0:.2f}, p50 x{ratio['p50_ms'] or 0:.2f}, "
              f"p99 x{ratio['p99_ms'] or 0:.2f}", flush=True)
    return results


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per case (default 2000)")
    ap.add_argument("--threads", type=int, default=4, help="client threads, each its own connections (default 4)")
    ap.add_argument("--rounds", type=int, default=10,
                    help="direct and proxy take turns this many times, requests/rounds each (default 10)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.threads < 1 or not 1 <= args.rounds <= args.requests:
        ap.error("--requests, --threads and --rounds must be at least 1, --rounds at most --requests")
    pg = PostgresServer(durable=True)
    try:
        with tempfile.TemporaryDirectory(prefix="gridpilot-bench-proxy-") as tmp:
            root = Path(tmp)
            db_url = pg.create_database()
            layout = start_proxied_centrals(root, db_url, make_pki(root / "pki"))
            try:
                results = bench(layout, db_url, args)
            finally:
                layout.stop()
    finally:
        pg.stop()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cpus", flush=True)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(
            {"date": time.strftime("%Y-%m-%d", time.gmtime()), "cpus": os.cpu_count(), "load": load,
             "requests": args.requests, "threads": args.threads, "rounds": args.rounds, "results": results}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

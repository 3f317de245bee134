"""What HAProxy in front of two central hosts costs (docs/scaling.md, "Behind a proxy, several hosts").

Two `gridpilot central serve` processes on one PostgreSQL (its durable defaults), HAProxy running
deploy/haproxy/gridpilot.cfg in front (tests/support/central_hosts.py: TLS from the client to HAProxy and from HAProxy
to each central), and this process's threads as clients, each with its own CentralClient (kept-alive connections):

  whoami   GET /api/v1/whoami, the simplest authenticated request (the token checked, one small read)
  match    POST /api/v1/match over a queue of WAITING jobs (bench_central's mix), each assigning one job

each sent `--requests` times from `--threads` threads, directly (the threads spread over the two hosts' own https
URLs, as clients would without a proxy) and through HAProxy. Prints requests/s, p50 and p99 per case, the ratios
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


def run_case(clients: List[CentralClient], op: Callable[[CentralClient], Any], n: int) -> Dict[str, Any]:
    """n calls of op spread over one thread per client, after one untimed call per client (connection, TLS)."""
    for c in clients:
        op(c)
    per = [n // len(clients) + (1 if i < n % len(clients) else 0) for i in range(len(clients))]
    samples: List[List[float]] = [[] for _ in clients]
    errors: List[str] = []
    start = threading.Barrier(len(clients) + 1)

    def worker(i: int) -> None:
        start.wait()
        for _ in range(per[i]):
            t0 = time.perf_counter()
            try:
                op(clients[i])
            except Exception as e:  # counted and shown: a bench that hides failures measures nothing
                errors.append(f"{type(e).__name__}: {e}")
                continue
            samples[i].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [s for part in samples for s in part]
    out: Dict[str, Any] = {"requests": n, "threads": len(clients), "wall_s": wall,
                           "per_s": len(flat) / wall if wall else 0.0, "errors": len(errors)}
    out.update(percentiles(flat) if flat else {})
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
    for name, op in (("whoami", lambda c: c.whoami()), ("match", match)):
        for path, make in (("direct", direct), ("proxy", proxied)):
            clients = [make(i) for i in range(args.threads)]
            results[f"{name} {path}"] = r = run_case(clients, op, args.requests)
            for c in clients:
                c.close()
            print(f"{name:7} {path:7} {r['per_s']:8.1f} req/s  p50 {r.get('p50_ms', 0):6.1f} ms  "
                  f"p99 {r.get('p99_ms', 0):6.1f} ms  errors {r['errors']}", flush=True)
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
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.threads < 1:
        ap.error("--requests and --threads must be at least 1")
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
             "requests": args.requests, "threads": args.threads, "results": results}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What users' requests cost central (`make bench`): the three figures of docs/central-api.md measured by this
command, on SQLite and PostgreSQL (a server started in a temp directory, durable defaults), each through
`gridpilot central serve` over HTTP as gridpilot.client sends them:

  summary      GET /jobs/summary (what `gridpilot top` asks each refresh) for a user with `--mine` jobs among
               twice as many, `--running` of them RUNNING with `--lines` trace lines each; listing 20 and 100
               running jobs. Also the same call in process (summary.summary), the database part alone.
  spy share    the control poll (GET /jobs/{id}/control, every running job's, every kill_poll_interval) of a
               RUNNING job, without and with an open spy request, over HTTP and in process (control.control);
               the poll's job read alone (its read transaction and one row: the poll before spy) and the spy read
               alone (spy.pending inside an open read transaction, as control.control adds it): the share of a
               poll the spy read costs.
  masterjobs   a `production:1-N` masterjob (OutputDir with #alien_counter_05i#) of each size in `--subjobs`:
               POST /jobs (the split and its N subjobs in one transaction), GET /jobs/{id}/subjobs?ids=1, the kill
               of all its WAITING subjobs, the resubmission of all of them KILLED.

The summary and spy parts run first on the same database (the held jobs are reused); the masterjobs last, so the
summary's counts do not include them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from sqlalchemy import select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))

import bench_central  # noqa: E402
from gridpilot.central import control, schema, spy, summary, tokens  # noqa: E402
from gridpilot.central.auth import Principal  # noqa: E402
from gridpilot.central.db import Database  # noqa: E402
from gridpilot.central.migrations import open_database  # noqa: E402
from gridpilot.central.serve import init  # noqa: E402
from gridpilot.central.settings import CentralSettings  # noqa: E402
from gridpilot.client import CentralClient  # noqa: E402
from gridpilot.states import JobStatus  # noqa: E402

USER, OTHER = "alice", "bob"
AGENT = "bench-agent"
SITES = ("BENCH::SITE", "BENCH::OTHER", "BENCH::THIRD")
#: Long enough for the biggest masterjob's resubmission (8 s at 10,000 on PostgreSQL when last measured).
TIMEOUT_S = 300.0


def principal(role: str, subject: str, **kw: Any) -> Principal:
    return Principal(tokens.Claims(role, subject, "bench", 0.0, 0.0, **kw))




def hold_jobs(db: Database, n: int, lines: int) -> List[int]:
    """`n` of USER's WAITING jobs made RUNNING at the sites in turn (as AGENT holds them), each with `lines` trace
    lines, one in ten of them a `proc` resource line the summary must skip. The held jobs' ids."""
    now = time.time()
    with db.write() as conn:
        ids = [r.id for r in conn.execute(select(schema.jobs.c.id).where(schema.jobs.c.user == USER)
                                          .order_by(schema.jobs.c.id).limit(n))]
        for k, job_id in enumerate(ids):
            site = SITES[k % len(SITES)]
            conn.execute(schema.jobs.update().where(schema.jobs.c.id == job_id).values(
                state=int(JobStatus.RUNNING), state_since=now - k, agent=AGENT, site=site, ce=f"{site}::CE",
                node=f"node{k % 50:02d}", heartbeat=now, reached_running=True))
    rows = [{"job_id": job_id, "ts": now - lines + i, "category": "proc" if i % 10 == 9 else "trace",
             "text": f"event {i} of {lines}: reading /data/run{i % 7}/f{i}.root", "entry_key": f"0:{i}",
             "reported_ts": now - lines + i}
            for job_id in ids for i in range(lines)]
    for k in range(0, len(rows), 5000):
        with db.write() as conn:
            conn.execute(schema.traces.insert(), rows[k:k + 5000])
    return ids




def bench_summary(db: Database, user: CentralClient, args: argparse.Namespace) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    me = principal("user", USER)
    for running in (20, 100):
        answer = user.jobs_summary(running=running)
        assert answer["total"] == args.mine and len(answer["running"]) == min(running, args.running), answer["total"]
        assert all(r["line"] and r["line"]["category"] == "trace" for r in answer["running"])
        res[f"http_{running}"] = bench_central.measure(lambda: user.jobs_summary(running=running), args.repeat)
        q = {"running": str(running)}
        res[f"in_process_{running}"] = bench_central.measure(lambda: summary.summary(db, me, q, time.time()), args.repeat)
    return res


def bench_spy(db: Database, url: str, admin: CentralClient, job_id: int, args: argparse.Namespace) -> Dict[str, Any]:
    """The control poll of one RUNNING job, without and then with an open spy request; the spy read alone."""
    agent = CentralClient(url, admin.mint_token("agent", AGENT, site=SITES[0], ce=f"{SITES[0]}::CE"),
                          timeout=TIMEOUT_S)
    me = principal("agent", AGENT, site=SITES[0], ce=f"{SITES[0]}::CE")
    q = {"resubmission": "0"}

    def job_read() -> Any:
        # What the poll read before spy existed: its one row, in its own read transaction.
        with db.read() as conn:
            return conn.execute(control._SELECT, {"job_id": job_id}).first()

    def spy_reads(n: int) -> Dict[str, float]:
        # The spy read alone, as the poll adds it: inside a read transaction already open (measure() warms up too).
        with db.read() as conn:
            return bench_central.measure(lambda: spy.pending(conn, job_id, 0, time.time()), n)

    res: Dict[str, Any] = {}
    for label in ("without", "with"):
        if label == "with":
            # Made just before its polls: a request lives spy.EXPIRES_S, longer than a run of polls.
            spy.request(db, principal("user", USER), job_id, {"what": "stdout"}, time.time())
        expect = 1 if label == "with" else 0
        assert len(agent.control(job_id, 0)["commands"]) == expect
        assert len(control.control(db, me, job_id, q)["commands"]) == expect
        res[f"http_{label}"] = bench_central.measure(lambda: agent.control(job_id, 0), args.polls)
        res[f"in_process_{label}"] = bench_central.measure(lambda: control.control(db, me, job_id, q), args.polls)
        res[f"job_read_{label}"] = bench_central.measure(job_read, args.polls)
        res[f"spy_read_{label}"] = spy_reads(args.polls)
        assert len(control.control(db, me, job_id, q)["commands"]) == expect, \
            "the spy request expired during the run: fewer --polls"
    return res


def bench_masterjobs(user: CentralClient, args: argparse.Namespace) -> Dict[str, Any]:
    area = f"/gridpilot/user/{USER[0]}/{USER}"
    res: Dict[str, Any] = {}
    for n in args.subjobs:
        jdl = (f'Executable = "/bin/true";\nSplit = "production:1-{n}";\n'
               f'OutputDir = "{area}/split{n}/#alien_counter_05i#";\n')
        t0 = time.perf_counter()
        answer = user.submit_job(jdl)
        submit_s = time.perf_counter() - t0
        master = int(answer["id"])
        assert answer["subjobs"] == n, answer
        listing = bench_central.measure(lambda: user.masterjob(master, ids=True), args.repeat // 10 or 1)
        assert len(user.masterjob(master, ids=True)["ids"]["WAITING"]) == n
        t0 = time.perf_counter()
        killed = user.kill(master)
        kill_s = time.perf_counter() - t0
        assert killed["killed"] == n, {k: v for k, v in killed.items() if k != "subjobs"}
        t0 = time.perf_counter()
        again = user.resubmit(master)
        resubmit_s = time.perf_counter() - t0
        assert again["resubmitted"] == n, {k: v for k, v in again.items() if k != "subjobs"}
        res[str(n)] = {"submit_s": submit_s, "subjobs_ids_ms": listing, "kill_s": kill_s,
                       "resubmit_s": resubmit_s}
        print(f"   {n:,} subjobs: submit {submit_s:.2f} s, kill {kill_s:.2f} s, resubmit {resubmit_s:.2f} s",
              flush=True)
    return res


def bench_backend(name: str, db_url: str, state: Path, args: argparse.Namespace) -> Dict[str, Any]:
    print(f"\n== {name}: {args.mine:,} jobs of {USER}'s, {args.mine:,} of {OTHER}'s, {args.running} running with "
          f"{args.lines} trace lines each ...", flush=True)
    res: Dict[str, Any] = {"backend": name, "mine": args.mine, "running": args.running, "lines": args.lines,
                           "polls": args.polls, "repeat": args.repeat}
    admin_token = init(CentralSettings.from_args(state, db_url)).admin_token
    db = open_database(db_url)
    try:
        t0 = time.perf_counter()
        bench_central.fill_queue(db, args.mine, user=USER)
        bench_central.fill_queue(db, args.mine, user=OTHER)
        held = hold_jobs(db, args.running, args.lines)
        bench_central.analyze(db, "jobs", "traces")
        print(f"   filled in {time.perf_counter() - t0:.1f} s", flush=True)
        proc, url = bench_central.start_server(state, db_url)
        try:
            admin = CentralClient(url, admin_token, timeout=TIMEOUT_S)
            user = CentralClient(url, admin.mint_token("user", USER), timeout=TIMEOUT_S)
            res["summary"] = bench_summary(db, user, args)
            res["spy"] = bench_spy(db, url, admin, held[0], args)
            res["masterjobs"] = bench_masterjobs(user, args)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        db.dispose()
    return res


def report(results: List[Dict[str, Any]], load: Tuple[float, float, float]) -> None:
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for r in results:
        b = r["backend"]
        print(f"\n{b}: GET /jobs/summary, {r['mine']:,} jobs of the user's ({2 * r['mine']:,} in all), "
              f"{r['running']} running with {r['lines']} trace lines each ({r['repeat']} requests each)")
        print("  measurement              p50 ms    p99 ms    max ms")
        for k in ("http_20", "http_100", "in_process_20", "in_process_100"):
            m = r["summary"][k]
            print(f"  {k:<22} {m['p50_ms']:8.2f}  {m['p99_ms']:8.2f}  {m['max_ms']:8.2f}")
        s = r["spy"]
        print(f"\n{b}: control poll of a RUNNING job, without and with an open spy request ({r['polls']} polls each)")
        print("  measurement              p50 ms    p99 ms    max ms")
        for k in ("http_without", "http_with", "in_process_without", "in_process_with", "job_read_without",
                  "spy_read_without", "spy_read_with"):
            m = s[k]
            print(f"  {k:<22} {m['p50_ms']:8.3f}  {m['p99_ms']:8.3f}  {m['max_ms']:8.3f}")
        for label in ("without", "with"):
            read, poll = s[f"spy_read_{label}"]["p50_ms"], s[f"http_{label}"]["p50_ms"]
            print(f"  spy read {label} a request: {read:.3f} ms of a {poll:.2f} ms poll over HTTP "
                  f"({100 * read / poll:.1f} %); in process the poll is {s[f'in_process_{label}']['p50_ms']:.3f} ms, "
                  f"its job read alone {s[f'job_read_{label}']['p50_ms']:.3f} ms")
        print(f"\n{b}: masterjobs (production:1-N), through HTTP")
        print("  subjobs    submit s   subjobs?ids=1 p50 ms   kill s   resubmit s")
        for n, m in r["masterjobs"].items():
            print(f"  {int(n):>7,}   {m['submit_s']:8.2f}   {m['subjobs_ids_ms']['p50_ms']:18.1f}   "
                  f"{m['kill_s']:6.2f}   {m['resubmit_s']:10.2f}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mine", type=int, default=10_000, help="jobs of the user's, and as many of another's "
                                                             "(default 10000)")
    ap.add_argument("--running", type=int, default=200, help="of the user's jobs RUNNING (default 200)")
    ap.add_argument("--lines", type=int, default=300, help="trace lines of each running job (default 300)")
    ap.add_argument("--repeat", type=int, default=200, help="summary requests timed per measurement (default 200)")
    ap.add_argument("--polls", type=int, default=1000, help="control polls timed per measurement (default 1000)")
    ap.add_argument("--subjobs", type=int, nargs="+", default=[1000, 10_000],
                    help="masterjob sizes (default 1000 10000; at most central's max_subjobs, 10000)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.running > args.mine:
        ap.error("--running must be at most --mine")
    return bench_central.run_on_backends(args, bench_backend, report)


if __name__ == "__main__":
    sys.exit(main())

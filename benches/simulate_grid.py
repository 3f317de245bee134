"""A simulated grid against real central processes (`make bench-scale`): thousands of asyncio pilots (benches/
grid_pilots.py) speaking the HTTP API to `gridpilot central serve` on a private PostgreSQL, with job lengths
compressed so that minutes show many lifecycles.

This script starts everything and measures: a PostgreSQL cluster in a temp directory with its durable defaults (or
SQLite with --db sqlite), `central init`, then the serve processes: one process with `--workers N` when the serve
command has that flag and --separate-ports is not given, else N processes on N ports sharing one signing key (the
multi-host layout) with the pilots spread over them. The sweeper runs on a compressed timeline (--zombie-after,
--expire-after, --sweep-interval) so that vanished pilots' jobs are taken back within the run.

Output (benches/grid_report.py): a JSON of the run (per-endpoint counts and latency p50/p99/max, statuses, job starts
and ends per second over time, server CPU-seconds per job lifecycle from /proc/<pid>/stat of the serve and
PostgreSQL process trees, the database's size before and after and per million jobs, the simulator's own CPU and
event-loop lag), a plot beside it, and a printed summary compared with ALICE's rates and aCT's 20 Hz.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grid_report  # noqa: E402
from grid_pilots import CE, SITE, USER, Api, Grid, SimConfig, Stats  # noqa: E402

from gridpilot.central.catalogue import INIT_SE_NAME  # noqa: E402
from support import serve_procs  # noqa: E402
from gridpilot.client import CentralClient  # noqa: E402
from gridpilot.errors import CentralError, CentralUnreachable  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> Tuple[float, float]:
    """(own, reaped children's) CPU seconds of a process from /proc/<pid>/stat; (0, 0) when it is gone. The fields
    are counted after the command name's last ')' (the name may hold spaces and parentheses)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    f = text[text.rindex(")") + 2:].split()
    # f[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
    return (int(f[11]) + int(f[12])) / CLK_TCK, (int(f[13]) + int(f[14])) / CLK_TCK


def children_of() -> Dict[int, List[int]]:
    kids: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            text = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_cpu(root: int, kids: Dict[int, List[int]]) -> float:
    """CPU seconds of a process tree: each live process's own and reaped children's. A child that ends between two
    readings moves from the live sum to its parent's reaped sum, so the total only grows."""
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        own, reaped = proc_cpu(pid)
        total += own + reaped
        stack += kids.get(pid, [])
    return total


def free_port() -> int:
    from support.pgserver import free_port as fp

    return fp()


def serve_has_workers() -> bool:
    out = subprocess.run([sys.executable, "-m", "gridpilot", "central", "serve", "--help"], capture_output=True,
                         text=True)
    return "--workers" in out.stdout


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"central serve exited: {log.read_text()[-2000:]}")
        try:
            CentralClient(url, None, retries=0, timeout=2).health()
            return
        except (CentralUnreachable, CentralError):
            time.sleep(0.1)
    raise RuntimeError(f"central serve at {url} did not answer within {deadline_s:.0f} s")


class Central:
    """The serve processes of one run on one database."""

    def __init__(self, db_url: str, tmp: Path, args: argparse.Namespace) -> None:
        self.db_url = db_url
        self.procs: List[subprocess.Popen] = []
        self.urls: List[str] = []
        state0 = tmp / "state0"
        out = subprocess.run([sys.executable, "-m", "gridpilot", "central", "init", "--db", db_url, "--state-dir",
                              str(state0)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"central init failed: {out.stderr}")
        self.admin_token = (state0 / "admin.token").read_text().strip()
        key = state0 / "signing.key"
        common = ["--db", db_url, "--signing-key", str(key), "--zombie-after", str(args.zombie_after),
                  "--expire-after", str(args.expire_after), "--sweep-interval", str(args.sweep_interval),
                  "--max-user-resubmits", "100", "--log-level", "warning"]
        self.workers = args.processes > 1 and not args.separate_ports and serve_has_workers()
        layout = [(args.processes, state0)] if self.workers or args.processes == 1 else \
            [(1, tmp / f"state{i}") for i in range(args.processes)]
        self.layout = "workers" if self.workers else f"{len(layout)} port(s)"
        for n, state in layout:
            state.mkdir(exist_ok=True)
            port = free_port()
            log = state / "serve.log"
            argv = [sys.executable, "-m", "gridpilot", "central", "serve", "--state-dir", str(state),
                    "--port", str(port), *common]
            if self.workers:
                argv += ["--workers", str(n)]
            self.procs.append(subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT))
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, self.procs[-1], log)
            self.urls.append(url)

    def stop(self) -> None:
        serve_procs.stop_all(self.procs, 30)


class Database:
    """The run's database: a private PostgreSQL cluster (durable defaults), a SQLite file, or a URL given."""

    def __init__(self, spec: str, tmp: Path) -> None:
        self.server: Any = None
        self.sqlite: Optional[Path] = None
        if spec == "postgresql":
            from support import pgserver

            reason = pgserver.missing_reason()
            if reason:
                raise SystemExit(f"PostgreSQL is needed for --db postgresql: {reason}")
            self.server = pgserver.PostgresServer(durable=True, extra=["-c max_connections=400"])
            self.url = self.server.create_database("simgrid")
        elif spec == "sqlite":
            self.sqlite = tmp / "central.db"
            self.url = f"sqlite:///{self.sqlite}"
        else:
            self.url = spec
            if spec.startswith("sqlite:///"):
                self.sqlite = Path(spec[len("sqlite:///"):])

    @property
    def pids(self) -> List[int]:
        if self.server is None:
            return []
        return [int((self.server.datadir / "postmaster.pid").read_text().split()[0])]

    def size(self) -> Optional[int]:
        if self.sqlite is not None:
            return sum(p.stat().st_size for p in self.sqlite.parent.glob(self.sqlite.name + "*"))
        if self.url.startswith("postgresql"):
            import psycopg

            with psycopg.connect(self.url) as conn:
                row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
                return int(row[0]) if row else None
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def cpu_snapshot(central: Central, db: Database) -> Dict[str, float]:
    kids = children_of()
    return {"serve_s": sum(tree_cpu(p.pid, kids) for p in central.procs),
            "postgres_s": sum(tree_cpu(p, kids) for p in db.pids)}


async def sample_cpu(central: Central, db: Database, t0: float, out: List[Dict[str, float]]) -> None:
    """Both sides' CPU every 5 s, for the plot's cores-busy lines."""
    while True:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out.append({"t": time.monotonic() - t0, **cpu_snapshot(central, db), "client_s": ru.ru_utime + ru.ru_stime})
        await asyncio.sleep(5.0)


async def simulate(central: Central, cfg: SimConfig, args: argparse.Namespace,
                   before: Dict[str, float]) -> Tuple[Stats, Dict[str, Any]]:
    admin = CentralClient(central.urls[0], central.admin_token)
    ce_token = admin.mint_token("ce", "simce", site=SITE, ce=CE)
    user_token = admin.mint_token("user", USER)
    stats = Stats(t0=time.monotonic())
    api = Api(central.urls, args.connections, stats, cfg.timeout_s)
    grid = Grid(api, cfg, ce_token, user_token)
    extra: Dict[str, Any] = {}
    try:
        t = time.monotonic()
        await grid.fill(cfg.queue_depth)
        extra["fill"] = {"jobs": stats.submitted, "seconds": time.monotonic() - t}
        # The queue's own rows are in this size: what the run adds beyond it is the lifecycles' (the producer keeps
        # the queue's depth).
        extra["size_after_fill"] = args._db.size()
        print(f"queue filled with {stats.submitted:,} WAITING jobs in {extra['fill']['seconds']:.1f} s; "
              f"{cfg.pilots:,} pilots start over {cfg.ramp_s:.0f} s, run {cfg.duration_s:.0f} s", flush=True)
        # The measured window starts here: counters, CPU of both sides.
        stats.endpoints.clear()
        stats.submitted = 0
        stats.t0 = time.monotonic()
        before.update(cpu_snapshot(central, args._db))
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_series: List[Dict[str, float]] = []
        sampler = asyncio.ensure_future(sample_cpu(central, args._db, stats.t0, cpu_series))
        await grid.run()
        sampler.cancel()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        extra["cpu_series"] = cpu_series
        extra["wall_s"] = (grid.stopped_at or time.monotonic()) - stats.t0
        extra["teardown_s"] = time.monotonic() - (grid.stopped_at or time.monotonic())
        extra["client_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        extra["after_cpu"] = cpu_snapshot(central, args._db)
        extra["vanished_check"] = await grid.taken_back(central.admin_token)
        status, summary = await api.call("GET /jobs/summary", "GET", "/jobs/summary", central.admin_token,
                                         query={"running": "0"})
        extra["final_states"] = summary.get("states", {}) if status == 200 and summary else {}
    finally:
        await api.close()
    return stats, extra


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pilots", type=int, default=10_000, help="simulated pilots (default 10000)")
    ap.add_argument("--duration", type=float, default=480.0, help="seconds the grid runs, ramp included (default 480)")
    ap.add_argument("--ramp", type=float, default=60.0, help="seconds over which the pilots start (default 60)")
    ap.add_argument("--job-min", type=float, default=30.0, help="shortest simulated payload, s (default 30)")
    ap.add_argument("--job-max", type=float, default=120.0, help="longest simulated payload, s (default 120)")
    ap.add_argument("--heartbeat", type=float, default=60.0, help="heartbeat interval, s (default 60, the agent's)")
    ap.add_argument("--slots", type=int, default=4, help="jobs a multi-slot pilot holds at once (default 4)")
    ap.add_argument("--multi-share", type=float, default=0.25, help="share of pilots with --slots slots (default "
                                                                       "0.25; the others hold one job)")
    ap.add_argument("--fail-share", type=float, default=0.05, help="share of jobs ending in ERROR_E (default 0.05)")
    ap.add_argument("--vanish-share", type=float, default=0.01, help="share of jobs whose pilot vanishes mid-job "
                                                                        "(default 0.01)")
    ap.add_argument("--pilot-lifetime", type=float, default=300.0, help="mean pilot lifetime, s (default 300)")
    ap.add_argument("--queue-depth", type=int, default=20_000, help="WAITING jobs kept in the queue (default 20000)")
    ap.add_argument("--batch", type=int, default=1000, help="subjobs per production masterjob (default 1000)")
    ap.add_argument("--empty-backoff", type=float, default=30.0, help="mean wait after an empty match, s (default 30)")
    ap.add_argument("--resubmit-every", type=float, default=10.0, help="the user's resubmission round, s (default 10)")
    ap.add_argument("--processes", type=int, default=2, help="serve processes (default 2)")
    ap.add_argument("--separate-ports", action="store_true",
                    help="N processes on N ports even when `central serve` has --workers")
    ap.add_argument("--connections", type=int, default=16,
                    help="keep-alive connections to each serve URL, shared by all pilots (default 16)")
    ap.add_argument("--timeout", type=float, default=60.0, help="a request's timeout, s (default 60)")
    ap.add_argument("--db", default="postgresql", help="postgresql (a private cluster), sqlite, or a database URL")
    ap.add_argument("--zombie-after", type=float, default=150.0, help="central's zombie_after_s (default 150)")
    ap.add_argument("--expire-after", type=float, default=60.0, help="central's expire_after_s (default 60)")
    ap.add_argument("--sweep-interval", type=float, default=15.0, help="central's sweep interval, s (default 15)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the run here (default: print only)")
    ap.add_argument("--plot", help="write the plot here (default: beside --json, .png)")
    args = ap.parse_args(argv)
    if args.heartbeat >= args.zombie_after:
        ap.error("--heartbeat must be shorter than --zombie-after, or every pilot's jobs turn ZOMBIE")
    cfg = SimConfig(
        pilots=args.pilots, duration_s=args.duration, job_min_s=args.job_min, job_max_s=args.job_max,
        heartbeat_s=args.heartbeat, slots=args.slots, multi_share=args.multi_share, fail_share=args.fail_share,
        vanish_share=args.vanish_share, pilot_lifetime_s=args.pilot_lifetime, ramp_s=args.ramp,
        queue_depth=args.queue_depth, batch=args.batch, empty_backoff_s=args.empty_backoff,
        resubmit_every_s=args.resubmit_every, output_dir=f"/gridpilot/user/{USER[0]}/{USER}/sim", se=INIT_SE_NAME,
        timeout_s=args.timeout, seed=args.seed)
    # SIGTERM, and SIGINT even when a shell started this in the background with SIGINT ignored, end the run
    # through the cleanup below: the serve processes and PostgreSQL this script started are stopped.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="gridpilot-simgrid-") as tmp_s:
        tmp = Path(tmp_s)
        db = Database(args.db, tmp)
        args._db = db
        central: Optional[Central] = None
        try:
            central = Central(db.url, tmp, args)
            size0 = db.size()
            before: Dict[str, float] = {}
            stats, extra = asyncio.run(simulate(central, cfg, args, before))
            layout = central.layout
            # Measured once the serve processes are gone: SQLite's last connection checkpoints its WAL into the file.
            central.stop()
            size1 = db.size()
        finally:
            if central is not None:
                central.stop()
            db.stop()
    result = grid_report.build(stats, extra, cfg, args, before, (size0, extra.get("size_after_fill"), size1), layout, os.getloadavg())
    grid_report.show(result)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        plot = args.plot or str(Path(args.json).with_suffix(".png"))
        why = grid_report.plot(result, plot, args.json)
        print(f"\nwrote {args.json}" + (f" and {plot}" if why is None else f" (no plot: {why})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the commands of cli.py do: `gridpilot submit|jobs|job|trace|kill|area` (HTTP clients of central) and
`gridpilot central init|serve|token|keys` (which import the service from gridpilot.central when they run).

The user commands talk to central only through gridpilot.client, so they work against a remote central with
nothing but the pilot's dependencies; rich, when installed (the `central` extra), draws the tables and the live
view of `submit --wait`, and plain text is printed otherwise or when the output is not a terminal.

Where central is: --url, else GRIDPILOT_CENTRAL_URL, else the URL `central serve` wrote in the state directory,
else http://127.0.0.1:8765. Which token: --token-file, else GRIDPILOT_TOKEN, else GRIDPILOT_TOKEN_FILE, else
user.token or admin.token in the state directory. Which CA an https central is verified with: --ca-file, else
GRIDPILOT_CA_FILE, else the system's CA certificates.

Every error a user can meet ends the command with one line on stderr and an exit code of gridpilot.cli_codes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

import orjson

from gridpilot import cli_codes, tracefmt
from gridpilot.central.settings import ADMIN_TOKEN_FILE, CentralSettings
from gridpilot.endpoints import (CENTRAL_URL_ENV, DEFAULT_CENTRAL_URL, URL_FILE, check_central_url, default_state_dir,
                                 url_from_state_dir)
from gridpilot.client import CentralClient
from gridpilot.errors import CentralError, CentralUnreachable, CentralUntrusted, ConfigError
from gridpilot.states import KillReason
from gridpilot.tls import CA_FILE_ENV
from gridpilot.tracefollow import TraceCursor

URL_ENV = CENTRAL_URL_ENV
TOKEN_ENV = "GRIDPILOT_TOKEN"
TOKEN_FILE_ENV = "GRIDPILOT_TOKEN_FILE"
DEFAULT_URL = DEFAULT_CENTRAL_URL
USER_TOKEN_FILE = "user.token"

FINAL_OK = ("DONE", "DONE_WARN")


class UsageError(Exception):
    """Something the user must fix before the command can run (no token, unreadable file, malformed URL)."""


class Failed(Exception):
    """The command ran and failed for a reason the message gives (exit FAILED)."""


class DatabaseUnreachable(Exception):
    """`central init|serve|token|keys` could not connect to their database server (exit UNREACHABLE)."""


# -- where and who --


def _state_dir(args: argparse.Namespace) -> Path:
    sd = getattr(args, "state_dir", None)
    return Path(sd).expanduser() if sd else default_state_dir()


def resolve_url(args: argparse.Namespace) -> str:
    """Central's URL (see the module's docstring); UsageError naming where a malformed one came from."""
    if getattr(args, "url", None):
        return check_url(str(args.url), "--url")
    env = os.environ.get(URL_ENV)
    if env:
        return check_url(env, f"${URL_ENV}")
    sd = _state_dir(args)
    written = url_from_state_dir(sd)
    return check_url(written, str(sd / URL_FILE)) if written else DEFAULT_URL


def check_url(url: str, source: str) -> str:
    """`url` when it is an http(s) URL with a host (and a port in range), else UsageError saying so and where it
    came from (`source`: a flag, a variable or a file)."""
    try:
        return check_central_url(url)
    except ValueError as e:
        raise UsageError(f"{source}: {e}") from None


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise UsageError(f"cannot read token file {path}: {e.strerror or e}") from None


def resolve_token(args: argparse.Namespace) -> str:
    tf = getattr(args, "token_file", None)
    if tf:
        return _read_token(Path(tf).expanduser())
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    if os.environ.get(TOKEN_FILE_ENV):
        return _read_token(Path(os.environ[TOKEN_FILE_ENV]).expanduser())
    sd = _state_dir(args)
    for name in (USER_TOKEN_FILE, ADMIN_TOKEN_FILE):
        if (sd / name).exists():
            return _read_token(sd / name)
    raise UsageError(f"no token: use --token-file, set {TOKEN_ENV}, or run `gridpilot central init` "
                     f"(which writes {sd / ADMIN_TOKEN_FILE})")


def resolve_ca_file(args: argparse.Namespace) -> Optional[str]:
    ca = getattr(args, "ca_file", None) or os.environ.get(CA_FILE_ENV)
    return str(Path(ca).expanduser()) if ca else None


def client_for(args: argparse.Namespace) -> CentralClient:
    try:
        return CentralClient(resolve_url(args), resolve_token(args), retries=getattr(args, "retries", 2),
                             ca_file=resolve_ca_file(args))
    except ConfigError as e:
        raise UsageError(str(e)) from None


def add_connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--url", help=f"central's URL (default: ${URL_ENV}, the state directory's {URL_FILE}, "
                                 f"or {DEFAULT_URL})")
    g.add_argument("--token-file", help=f"file holding the token (default: ${TOKEN_ENV}, ${TOKEN_FILE_ENV}, "
                                        f"or {USER_TOKEN_FILE}/{ADMIN_TOKEN_FILE} in the state directory)")
    g.add_argument("--state-dir", help="state directory (default: $GRIDPILOT_STATE_DIR or ~/.local/state/gridpilot)")
    g.add_argument("--ca-file", metavar="PEM", help=f"CA bundle to verify an https central with (default: "
                                                    f"${CA_FILE_ENV}, else the system's CA certificates)")


def run_user_command(fn: Any, args: argparse.Namespace) -> int:
    """Run a command, turning the errors a user can meet into one line on stderr and an exit code (cli_codes)."""
    try:
        return int(fn(args))
    except UsageError as e:
        print(f"gridpilot: {e}", file=sys.stderr)
        return cli_codes.USAGE
    except CentralError as e:
        where = f" at line {e.line}, column {e.column}" if e.line is not None else ""
        print(f"gridpilot: central refused ({e.status} {e.code}){where}: {e.message}", file=sys.stderr)
        return cli_codes.FAILED
    except CentralUntrusted as e:
        # Not an outage to wait out: the CA given (or the lack of one) does not fit central's certificate.
        print(f"gridpilot: {e}", file=sys.stderr)
        return cli_codes.USAGE
    except (CentralUnreachable, DatabaseUnreachable) as e:
        print(f"gridpilot: {e}", file=sys.stderr)
        return cli_codes.UNREACHABLE
    except Failed as e:
        print(f"gridpilot: {e}", file=sys.stderr)
        return cli_codes.FAILED
    except BrokenPipeError:
        raise  # the reader went away: cli.main ends quietly
    except OSError as e:
        print(f"gridpilot: {e.filename}: {e.strerror}" if e.filename else f"gridpilot: {e}", file=sys.stderr)
        return cli_codes.FAILED


# -- output helpers --


def _rich_console(stream: TextIO) -> Any:
    """A rich Console when rich is installed and `stream` is a terminal, else None (plain text)."""
    if not stream.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream)


def _when(ts: Optional[float]) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _ago(ts: Optional[float], now: float) -> str:
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    if s < 172800:
        return f"{s / 3600:.0f}h ago"
    return f"{s / 86400:.0f}d ago"


_STYLE = {"DONE": "green", "DONE_WARN": "yellow", "RUNNING": "cyan", "SAVING": "cyan", "STARTED": "cyan",
          "ASSIGNED": "blue", "WAITING": "white", "ZOMBIE": "magenta", "KILLED": "red", "EXPIRED": "red"}


def _style(state: str) -> str:
    return _STYLE.get(state, "red" if state.startswith("ERROR") else "white")


def _print_json(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


def attempt_lines(job: Dict[str, Any]) -> List[str]:
    """The header lines of a job's trace for an attempt a tower ran through an ARC CE: its ARC job id and where its
    pilot log was published (docs/traces.md); none for a job a pilot ran."""
    out = []
    if job.get("arc_job_id"):
        out.append(f"ARC job: {job['arc_job_id']}")
    if job.get("pilot_log_url"):
        out.append(f"Pilot log: {job['pilot_log_url']}")
    return out


def _trace_line(e: Dict[str, Any], utc: bool = False) -> str:
    """A trace record as JAliEn prints it (gridpilot/tracefmt.py, docs/traces.md)."""
    return tracefmt.render(e, utc=utc)


# -- submit (the command itself is sandbox.cmd_submit: arguments, local files) --


def _final(state: str) -> bool:
    from gridpilot.states import JobStatus

    return JobStatus[state].is_final


def _exit_for(job: Dict[str, Any]) -> int:
    return cli_codes.OK if job["state"] in FINAL_OK else cli_codes.FAILED


def watch(client: CentralClient, job_id: int, *, interval: float = 1.0, timeout: Optional[float] = None,
          stream: Optional[TextIO] = None, categories: Optional[Sequence[str]] = None, utc: bool = False) -> int:
    """Follow a job until it reaches a final state: a live panel on a terminal, new trace lines otherwise (only
    those of `categories` when given; times in UTC when `utc`).

    Returns OK for DONE/DONE_WARN, FAILED for any other final state, TIMEOUT when `timeout` passed first,
    INTERRUPTED on Ctrl-C (cli_codes).
    """
    stream = sys.stdout if stream is None else stream
    console = _rich_console(stream)
    t0 = time.monotonic()
    cursor = TraceCursor(client, job_id)
    lines: List[Dict[str, Any]] = []
    job = client.get_job(job_id)

    def poll() -> Dict[str, Any]:
        # The job before its trace: every line written before the state read is then in the trace read after it, so
        # the last poll, which sees the final state, also prints the lines that came just before it.
        got = client.get_job(job_id)
        lines.extend(e for e in cursor.read() if not categories or e["category"] in categories)
        return got

    try:
        if console is None:
            shown = 0
            said: List[str] = []
            while True:
                job = poll()
                if not categories:
                    # A tower's attempt gets its ARC id and its pilot log's URL while it runs: each said once.
                    for line in attempt_lines(job):
                        if line not in said:
                            said.append(line)
                            stream.write(line + "\n")
                for e in lines[shown:]:
                    stream.write(_trace_line(e, utc) + "\n")
                shown = len(lines)
                stream.flush()
                if _final(job["state"]):
                    break
                if timeout is not None and time.monotonic() - t0 > timeout:
                    stream.write(f"job {job_id} still {job['state']} after {timeout:.0f} s\n")
                    return cli_codes.TIMEOUT
                time.sleep(interval)
            stream.write(f"job {job_id} ended {job['state']}" + _end_details(job) + "\n")
            return _exit_for(job)

        from rich.live import Live

        with Live(_panel(job, lines, t0, utc), console=console, refresh_per_second=4, transient=False) as live:
            while True:
                job = poll()
                live.update(_panel(job, lines, t0, utc))
                if _final(job["state"]):
                    break
                if timeout is not None and time.monotonic() - t0 > timeout:
                    console.print(f"job {job_id} still {job['state']} after {timeout:.0f} s")
                    return cli_codes.TIMEOUT
                time.sleep(interval)
        console.print(f"job {job_id} ended [{_style(job['state'])}]{job['state']}[/]" + _end_details(job))
        return _exit_for(job)
    except KeyboardInterrupt:
        stream.write(f"\nstopped watching; job {job_id} is {job['state']} (`gridpilot trace {job_id}` to follow)\n")
        return cli_codes.INTERRUPTED


def wait_json(client: CentralClient, job_id: int, *, interval: float = 1.0, timeout: Optional[float] = None) -> int:
    """`submit --wait --json`: nothing while the job runs, then the job as `gridpilot job ID --json` prints it (the
    state it was in when --timeout ran out, exit TIMEOUT; on Ctrl-C, INTERRUPTED and nothing printed)."""
    t0 = time.monotonic()
    while True:
        job = client.get_job(job_id)
        if _final(job["state"]):
            _print_json(job)
            return _exit_for(job)
        if timeout is not None and time.monotonic() - t0 > timeout:
            _print_json(job)
            return cli_codes.TIMEOUT
        time.sleep(interval)


def follow_json(client: CentralClient, job_id: int, *, interval: float = 1.0,
                categories: Optional[Sequence[str]] = None) -> int:
    """`trace --follow --json`: each trace record as one JSON line (JSON Lines, compact) as it comes, until the job
    ends; the exit code as with --follow (OK only for DONE/DONE_WARN)."""
    cursor = TraceCursor(client, job_id)
    while True:
        # The job before its trace, as watch() reads them: the lines written before the final state are all seen.
        job = client.get_job(job_id)
        for e in cursor.read():
            if not categories or e["category"] in categories:
                sys.stdout.write(orjson.dumps(e).decode() + "\n")
        sys.stdout.flush()
        if _final(job["state"]):
            return _exit_for(job)
        time.sleep(interval)


def _end_details(job: Dict[str, Any]) -> str:
    parts = []
    if job.get("exit_code") is not None:
        parts.append(f"exit code {job['exit_code']}")
    if job.get("kill_reason") not in (None, "OK"):
        parts.append(f"kill reason {job['kill_reason']}")
    if job.get("resubmission"):
        parts.append(f"after {job['resubmission']} resubmission(s)")
    return (" (" + ", ".join(parts) + ")") if parts else ""


def _resources_text(res: Dict[str, Any]) -> str:
    keys: List[str] = [k for k in ("cpu_time_s", "rss_bytes", "pss_bytes", "nprocs", "workdir_bytes") if k in res]
    if not keys:
        keys = sorted(res)[:5]
    out = []
    for k in keys:
        v = res[k]
        if k.endswith("_bytes") and isinstance(v, (int, float)):
            out.append(f"{k[:-6]}={v / (1 << 20):.0f} MiB")
        else:
            out.append(f"{k}={v}")
    return "  ".join(out)


def _mib(v: Any) -> str:
    return f"{v / (1 << 20):.0f} MiB" if isinstance(v, (int, float)) else "?"


def _usage_rows(res: Dict[str, Any]) -> List[Tuple[str, str]]:
    """The I/O, threads, network and GPU part of a job's last sample (docs/monitoring.md), as panel rows."""
    rows = []
    io = []
    if "nthreads" in res:
        io.append(f"processes={res.get('nprocs', '?')}  threads={res['nthreads']}")
    if "read_bytes" in res or "write_bytes" in res:
        where = f" ({res['io_source']})" if res.get("io_source") else ""
        io.append(f"read={_mib(res.get('read_bytes'))}  write={_mib(res.get('write_bytes'))}{where}")
    if "net_rx_bytes" in res:
        io.append(f"net rx={_mib(res['net_rx_bytes'])} tx={_mib(res.get('net_tx_bytes'))}")
    if io:
        rows.append(("io", "  ".join(io)))
    gpus = res.get("gpus")
    if isinstance(gpus, list) and gpus:
        parts = []
        for g in gpus:
            if not isinstance(g, dict):
                continue
            if "util_percent" in g:
                parts.append(f"{g.get('pci_address')} {g['util_percent']:.0f}% {_mib(g.get('memory_used_bytes'))}")
            else:
                parts.append(f"{g.get('pci_address')} unread")
        rows.append(("gpus", "  ".join(parts)))
    return rows


def _panel(job: Dict[str, Any], lines: Sequence[Dict[str, Any]], t0: float, utc: bool = False) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    state = job["state"]
    head.add_row("state", Text(state, style=f"bold {_style(state)}"))
    where = " / ".join(x for x in (job.get("site"), job.get("ce"), job.get("node")) if x) or "-"
    head.add_row("where", where)
    head.add_row("resubmission", str(job.get("resubmission", 0)))
    if job.get("arc_job_id"):
        head.add_row("ARC job", Text(job["arc_job_id"]))
    if job.get("pilot_log_url"):
        head.add_row("pilot log", Text(job["pilot_log_url"]))
    head.add_row("watching", f"{time.monotonic() - t0:.0f} s")
    if job.get("resources"):
        head.add_row("resources", _resources_text(job["resources"]))
        for name, row in _usage_rows(job["resources"]):
            head.add_row(name, row)
    if job.get("kill_requested") and not _final(state):
        head.add_row("kill", Text("requested; the pilot is told at its next control poll", style="red"))
    trace = Table(show_header=False, box=None, padding=(0, 1))
    trace.add_column(style="dim", no_wrap=True)
    trace.add_column(style="bold", no_wrap=True)
    trace.add_column(overflow="fold")
    for e in list(lines)[-12:]:
        # Text, not markup: "[state ]" would be read as a style tag, and a trace's text is not rich's to interpret.
        trace.add_row(Text(tracefmt.timestamp(e["ts"], utc=utc)[7:]), Text(f"[{e['category']} ]:"), Text(e["text"]))
    title = f"job {job['id']}" + (f"  {job['name']}" if job.get("name") else "")
    return Panel(Group(head, Text(""), trace), title=title, border_style=_style(state))


# -- jobs, job, trace, kill --


def cmd_jobs(args: argparse.Namespace) -> int:
    client = client_for(args)
    rows = client.list_jobs(user=args.user, state=args.state, site=args.site, limit=args.limit)
    if args.json:
        _print_json([{k: v for k, v in r.items() if k != "jdl"} for r in rows])
        return 0
    now = time.time()
    cols = ("ID", "USER", "NAME", "STATE", "SITE", "NODE", "RESUB", "UPDATED")
    # A masterjob stands for its subjobs (listed with `gridpilot masterjob ID -v`): its state, and their counts.
    data = [(str(r["id"]), r["user"], r.get("name") or "-", r["state"] + _subjob_counts(r), r.get("site") or "-",
             r.get("node") or "-", str(r["resubmission"]), _ago(r["updated"], now)) for r in rows]
    console = _rich_console(sys.stdout)
    if console is not None:
        from rich.table import Table

        t = Table(*cols, box=None, header_style="bold")
        for row in data:
            t.add_row(*row[:3], f"[{_style(row[3].split()[0])}]{row[3]}[/]", *row[4:])
        console.print(t)
    else:
        widths = [max(len(c), *(len(r[i]) for r in data)) if data else len(c) for i, c in enumerate(cols)]
        for row in [cols, *data]:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    if not rows:
        print("no jobs", file=sys.stderr)
    return 0


def _subjob_counts(r: Dict[str, Any]) -> str:
    m = r.get("masterjob")
    return "" if not m else " (" + " ".join(f"{n} {k}" for k, n in m["states"].items()) + ")"


def _kill_reason_text(job: Dict[str, Any]) -> str:
    """'SANDBOX_CREATE (201): <ALICE's text>': from the job's JSON, or from states.py for a central that predates
    kill_reason_text; a reason this client does not know stays as central named it."""
    name = job["kill_reason"]
    if job.get("kill_reason_text") and job.get("kill_reason_code") is not None:
        return f"{name} ({job['kill_reason_code']}): {job['kill_reason_text']}"
    try:
        return KillReason[name].describe()
    except KeyError:
        return str(name)


def cmd_job(args: argparse.Namespace) -> int:
    job = client_for(args).get_job(args.id)
    if args.json:
        _print_json(job)
        return 0
    order = ("id", "name", "user", "state", "state_code", "kill_reason", "kill_requested", "site", "ce", "node",
             "resubmission", "exit_code", "message", "priority", "price", "cores", "ttl", "output_dir", "arc_job_id",
             "pilot_log_url")
    for k in order:
        v = job.get(k)
        if k == "kill_reason" and v is not None:
            v = _kill_reason_text(job)
        if v is not None:
            print(f"{k:<15} {v}")
    for k in ("created", "updated", "heartbeat"):
        if job.get(k) is not None:
            print(f"{k:<15} {_when(job[k])}")
    if job.get("resources"):
        print(f"{'resources':<15} {orjson.dumps(job['resources']).decode()}")
    if args.jdl:
        print("\n" + job["jdl"].rstrip())
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    client = client_for(args)
    if args.follow and args.json:
        return follow_json(client, args.id, interval=args.interval, categories=args.category)
    if args.follow:
        return watch(client, args.id, interval=args.interval, categories=args.category, utc=args.utc)
    entries = [e for e in client.trace(args.id, since=args.since)
               if not args.category or e["category"] in args.category]
    if args.json:
        # The records as central keeps them: the same text as the lines below, the time as a unix time.
        _print_json(entries)
        return 0
    if not args.category:
        # A read of the lines of some categories is for a program: the lines alone, as they were.
        for line in attempt_lines(client.get_job(args.id)):
            print(line)
    for e in entries:
        print(_trace_line(e, args.utc))
    return 0


class _PerJob:
    """`kill ID...` and `resubmit ID...`: one request per job in turn, the results kept for --json. A refusal is the
    job's error (said on stderr without --json) and the exit is FAILED; a central that stops answering half-way leaves
    the rest as errors of code "unreachable" (status null) and exits UNREACHABLE (without --json: raised, one line)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = bool(args.json)
        self.ids = list(args.ids)
        self.status = cli_codes.OK
        self.results: List[Dict[str, Any]] = []

    def answers(self, call: Any) -> Iterator[Tuple[int, Dict[str, Any]]]:
        """(id, central's answer) for each job that central answered."""
        for n, job_id in enumerate(self.ids):
            try:
                r = call(job_id)
            except CentralError as e:
                self.results.append({"id": job_id, "error": {"status": e.status, "code": e.code,
                                                             "message": e.message}})
                if not self.json:
                    print(f"job {job_id}: {e.message}", file=sys.stderr)
                self.status = cli_codes.FAILED
                continue
            except CentralUnreachable as e:
                if not self.json:
                    raise
                self.results.extend({"id": i, "error": {"status": None, "code": "unreachable", "message": str(e)}}
                                    for i in self.ids[n:])
                print(f"gridpilot: {e}", file=sys.stderr)
                self.status = cli_codes.UNREACHABLE
                return
            yield job_id, r

    def finish(self) -> int:
        if self.json:
            _print_json(self.results)
        return self.status


def cmd_kill(args: argparse.Namespace) -> int:
    """Kill each job in turn (_PerJob). With --json, one document at the end: a list with, per job in the order
    given, {"id", "state", "kill_requested"} or {"id", "error": {"status", "code", "message"}}."""
    client = client_for(args)
    each = _PerJob(args)
    for job_id, r in each.answers(client.kill):
        each.results.append({"id": job_id, "state": r["state"], "kill_requested": bool(r.get("kill_requested"))})
        if r.get("masterjob"):  # its subjobs' kills, each with its own result (masterjobs.py)
            from gridpilot import masterjobs

            each.results[-1].update({k: r[k] for k in ("masterjob", "killed", "requested", "subjobs")})
            if not args.json:
                print(masterjobs.kill_line(r))
                masterjobs.print_kill_refusals(r)
            continue
        if args.json:
            continue
        if r["state"] == "KILLED":
            print(f"job {job_id} KILLED")
        else:
            print(f"job {job_id} ({r['state']}): kill requested; the pilot stops it within seconds")
    return each.finish()


def cmd_resubmit(args: argparse.Namespace) -> int:
    """Resubmit each job in turn (_PerJob). With --json, one document at the end: a list with, per job in the order
    given, central's answer {"id", "state", "previous_state", "resubmission", "user_resubmissions", "limit"} or
    {"id", "error": {"status", "code", "message"}}. Any refusal exits FAILED."""
    client = client_for(args)
    each = _PerJob(args)
    for job_id, r in each.answers(client.resubmit):
        each.results.append(r)
        if r.get("masterjob"):  # its failed subjobs' resubmissions, each with its own result (masterjobs.py)
            from gridpilot import masterjobs

            each.status = cli_codes.FAILED if r["refused"] else each.status
            if not args.json:
                print(masterjobs.resubmit_line(r))
            continue
        if not args.json:
            removed = int(r.get("removed_files") or 0)
            print(f"job {job_id} {r['state']} again (was {r['previous_state']}; resubmission {r['resubmission']}, "
                  f"{r['user_resubmissions']} of {r['limit']} by users)"
                  + (f"; {removed} file(s) it registered removed from the catalogue" if removed else ""))
    return each.finish()


def cmd_why(args: argparse.Namespace) -> int:
    """One line per offer central kept, newest first: where, when, and the first clause that fails there."""
    res = client_for(args).why(args.id)
    if args.json:
        _print_json(res)
        return cli_codes.OK
    offers = res["offers"]
    if not offers:
        print(f"job {res['id']} WAITING: no pilot asked for work in the last {res['window_s']:.0f} s, so nothing can "
              "be said yet")
        return cli_codes.OK
    now = time.time()
    for o in offers:
        where = "/".join(x for x in (o["site"], o["ce"]) if x) or "-"
        node = f" ({o['node']})" if o.get("node") else ""
        verdict = "would match" if o["clause"] == "would match" else f"{o['clause']}: {o['reason']}"
        print(f"{where}{node}, seen {_ago(o['seen'], now)}: {verdict}")
    return cli_codes.OK


def cmd_area_list(args: argparse.Namespace) -> int:
    res = client_for(args).areas(args.user)
    if args.json:
        _print_json(res)
        return cli_codes.OK
    for a in res["areas"]:
        how = "own area" if a["granted_by"] is None else f"granted by {a['granted_by']} {_when(a['granted'])}"
        print(f"{a['user']}\t{a['path']}\t{how}")
    return cli_codes.OK


def cmd_area_grant(args: argparse.Namespace) -> int:
    r = client_for(args).grant_area(args.user, args.path)
    if getattr(args, "json", False):
        _print_json(r)
        return cli_codes.OK
    print(f"{r['user']} may write in {r['path']}" + (" (granted before)" if r.get("already") else ""))
    return cli_codes.OK


def cmd_area_revoke(args: argparse.Namespace) -> int:
    r = client_for(args).revoke_area(args.user, args.path)
    if getattr(args, "json", False):
        _print_json(r)
        return cli_codes.OK
    print(f"{r['user']}: grant of {r['path']} " + ("revoked" if r["revoked"] else "was not there"))
    return cli_codes.OK


def cmd_central_nodes(args: argparse.Namespace) -> int:
    client = client_for(args)
    if args.clear:
        r = client.clear_node(args.clear)
        if args.json:
            _print_json(r)
        else:
            was = f"was nodeBad: {r['was_reason']}" if r["was_bad"] else "was not nodeBad; its failures are reset"
            print(f"node {r['host']} cleared by {r['cleared_by']} ({was}); it is matched again")
        return cli_codes.OK
    if args.history:
        return _node_history(client.node_probes(args.history), args.json)
    res = client.nodes(site=args.site, bad=True if args.bad else None, arch=args.arch, gpu=args.gpu)
    if args.json:
        _print_json(res)
        return cli_codes.OK
    now = time.time()
    print(f"HOST\tSITE\tARCH\tLEVEL\tRUNTIMES\tGPUS\tSTATE\tLAST SEEN\tFAILURES (in {res['window_s']:.0f} s; "
          f"nodeBad at {res['bad_after']})")
    for n in res["nodes"]:
        kinds = ", ".join(f"{v} {k}" for k, v in n["failures_by_kind"].items())
        state = f"nodeBad since {_when(n['bad_since'])}: {n['bad_reason']}" if n["bad"] else "ok"
        if not n["bad"] and n["cleared_at"] is not None:
            state += f" (cleared by {n['cleared_by']} {_when(n['cleared_at'])})"
        print(f"{n['host']}\t{n['site'] or '-'}\t{n.get('arch') or '-'}\t{n.get('x86_64_level') or '-'}\t"
              f"{_listed(n.get('runtimes'))}\t{_gpus_listed(n.get('gpus'))}\t{state}\t{_ago(n['last_seen'], now)}\t"
              f"{n['failures']}{f' ({kinds})' if kinds else ''}")
    return cli_codes.OK


def _listed(names: Optional[List[str]]) -> str:
    """A node's runtimes: '-' when it posted no probe, 'none' when none starts a container."""
    return "-" if names is None else ",".join(names) or "none"


def _gpus_listed(models: Optional[List[str]]) -> str:
    """A node's GPUs as counts by model ('2x A100, 1x T4'), '-' without a probe, 'none' without GPUs."""
    if models is None:
        return "-"
    counted = Counter(models)
    return ", ".join(f"{n}x {m}" for m, n in sorted(counted.items())) or "none"


def _node_history(res: Dict[str, Any], as_json: bool) -> int:
    if as_json:
        _print_json(res)
        return cli_codes.OK
    latest = res["latest"]
    if latest is None:
        print(f"node {res['host']} ({res['site'] or 'no site'}): central has no probe of it")
        return cli_codes.OK
    print(f"node {res['host']} ({res['site'] or 'no site'}): probe last posted {_when(latest['posted'])} by "
          f"{latest['posted_by']}, last changed {_when(latest['changed'])}")
    print("CHANGED\tDIGEST\tPOSTED BY\tARCH\tRUNTIMES\tGPUS\tPILOT")
    for e in res["history"]:
        p = e["probe"]
        starts = [k for k, r in (p.get("runtimes", {}).get("found") or {}).items() if r.get("starts")]
        models = [g.get("model") or "unknown" for g in p.get("gpus", {}).get("gpus") or []]
        print(f"{_when(e['ts'])}\t{e['digest'][:12]}\t{e['posted_by']}\t{p.get('cpu', {}).get('arch') or '-'}\t"
              f"{_listed(starts)}\t{_gpus_listed(models)}\t{p.get('pilot_version') or '-'}")
    return cli_codes.OK


# -- central init / serve / token --


def _settings(args: argparse.Namespace, **kw: Any) -> CentralSettings:
    return CentralSettings.from_args(getattr(args, "state_dir", None), getattr(args, "db", None),
                                     getattr(args, "signing_key", None), **kw)


def _parse_se(spec: str) -> Dict[str, str]:
    name, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise UsageError(f"--se takes NAME=URL[,KIND], got {spec!r}")
    url, _, kind = rest.partition(",")
    return {"name": name, "url": url, "kind": kind or "disk"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextmanager
def _service_errors(settings: CentralSettings, *, state_dir: bool = True) -> Iterator[None]:
    """What `central init|serve|token|keys` meet, as one line each: a database URL that is not one, a state
    directory that cannot be made (`state_dir`: make it, 0700, first), a database server that cannot be reached, a
    database this gridpilot cannot use, a signing key file that is missing or unusable."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from gridpilot.central.db import backend_of, redact
    from gridpilot.central.keys import KeyFileError
    from gridpilot.central.migrations import SchemaError
    from gridpilot.private_files import make_private_dir

    db = redact(settings.db_url)
    try:
        backend = backend_of(settings.db_url)
    except ValueError as e:
        raise UsageError(f"--db: {e}") from None
    if state_dir:
        try:
            make_private_dir(settings.state_dir)
        except OSError as e:
            raise UsageError(f"cannot use the state directory {settings.state_dir}: {e.strerror or e}") from None
    try:
        yield
    except KeyFileError as e:
        raise UsageError(e.message) from None
    except SchemaError as e:
        raise UsageError(f"database {db}: {e}") from None
    except OperationalError as e:
        if backend == "sqlite":
            raise Failed(f"cannot use the database {db}: {_first_line(e.orig or e)}") from None
        raise DatabaseUnreachable(f"cannot reach the database {db}: {_first_line(e.orig or e)}") from None
    except DBAPIError as e:
        raise Failed(f"database {db}: {_first_line(e.orig or e)}") from None


def cmd_central_init(args: argparse.Namespace) -> int:
    from gridpilot.central.catalogue import check_storage_element
    from gridpilot.central.db import redact
    from gridpilot.central.problems import ApiError
    from gridpilot.central.serve import init

    if args.no_token_file:
        args.print_token = True  # a token neither written nor printed would be lost
    settings = _settings(args)
    storage = []
    for spec in args.se or ():
        try:
            storage.append(check_storage_element(_parse_se(spec)))
        except ApiError as e:
            raise UsageError(f"--se {spec}: {e.message}") from None
    with _service_errors(settings):
        try:
            res = init(settings, storage=storage, write_token=not args.no_token_file, issuer=args.issuer)
        except ValueError as e:
            raise UsageError(f"--issuer: {e}") from None
    if getattr(args, "json", False):
        out = {"database": redact(res.db_url), "applied": res.applied, "kid": res.kid, "key_file": str(res.key_file),
               "key_made": res.key_made, "old_issuer": res.old_issuer, "storage_elements": list(res.storage_elements),
               "token_file": None if res.token_file is None else str(res.token_file)}
        if args.print_token:
            out["admin_token"] = res.admin_token
        _print_json(out)
        return cli_codes.OK
    print(f"database: {redact(res.db_url)} (schema steps applied now: {res.applied or 'none'})", file=sys.stderr)
    print(f"signing key: {res.kid} in {res.key_file} ({'made now, ' if res.key_made else ''}mode 0600)",
          file=sys.stderr)
    if res.old_issuer is not None:
        print(f"token issuer: {args.issuer} (was {res.old_issuer}: tokens issued as that are refused from now on)",
              file=sys.stderr)
    print(f"storage elements: {', '.join(res.storage_elements)}", file=sys.stderr)
    if res.token_file is not None:
        shown = "" if args.print_token else "; not printed (--print-token prints it)"
        print(f"admin token written to {res.token_file} (mode 0600){shown}", file=sys.stderr)
    if args.print_token:
        print(res.admin_token, flush=True)
    return cli_codes.OK


def cmd_central_serve(args: argparse.Namespace) -> int:
    import logging

    from gridpilot.central.serve import serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gridpilot.central.areas import check_template

    try:
        check_template(args.user_area)
    except ConfigError as e:
        raise UsageError(f"--user-area: {e}") from None
    settings = _settings(args, zombie_after_s=args.zombie_after, expire_after_s=args.expire_after,
                         sweep_interval_s=args.sweep_interval, user_area=args.user_area,
                         verify_only=args.verify_only, node_bad_after=args.node_bad_after,
                         node_bad_window_s=args.node_bad_window, max_user_resubmits=args.max_user_resubmits,
                         max_subjobs=args.max_subjobs, default_se=args.default_se,
                         production_users=args.production_users,
                         production_requires_avx=args.production_requires_avx, min_x86_level=args.min_x86_level,
                         min_pilot_version=args.min_pilot_version, require_container=args.require_container,
                         max_inflight=args.max_inflight, rate_limit=args.rate_limit, rate_burst=args.rate_burst,
                         db_statement_timeout_s=args.db_statement_timeout, control_poll_rate=args.control_poll_rate,
                         history_interval_s=args.history_interval, history_keep_s=args.history_keep)
    with _service_errors(settings):
        try:
            return serve(settings, host=args.host, port=args.port, log_level=args.log_level, certfile=args.certfile,
                         keyfile=args.keyfile, workers=args.workers)
        except ConfigError as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            if isinstance(e, BrokenPipeError) or e.filename is not None:
                raise
            # bind(): the address is in use, not this machine's, or the name does not resolve
            raise UsageError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None


def cmd_central_token(args: argparse.Namespace) -> int:
    from gridpilot.central.serve import mint_local, write_secret

    settings = _settings(args)
    with _service_errors(settings, state_dir=False):
        try:
            token = mint_local(settings, args.role, args.subject, site=args.site, ce=args.ce, ttl_s=args.ttl,
                               scope=args.scope)
        except ValueError as e:  # the role, subject, binding, lifetime or scope
            raise UsageError(str(e)) from None
    if args.output:
        try:
            write_secret(Path(args.output), token + "\n")
        except OSError as e:
            raise UsageError(f"cannot write {args.output}: {e.strerror or e}") from None
        if not getattr(args, "json", False):
            print(f"token written to {args.output} (mode 0600)", file=sys.stderr)
    if getattr(args, "json", False):
        what = {"file": args.output} if args.output else {"token": token}
        _print_json({**what, "role": args.role, "subject": args.subject, "site": args.site, "ce": args.ce})
    elif not args.output:
        print(token)
    return cli_codes.OK


def _utc(t: Optional[float]) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_central_keys(args: argparse.Namespace) -> int:
    """`central keys list|rotate|retire`: the token signing keys, on the central machine (the database directly)."""
    from gridpilot.central import keys
    from gridpilot.central.migrations import open_database

    settings = _settings(args)
    with _service_errors(settings, state_dir=args.keys_command == "rotate"):
        db = open_database(settings.db_url, upgrade=False)
        try:
            now = time.time()
            if args.keys_command == "rotate":
                r = keys.rotate(db, settings.signing_key_path, args.retire_after, now)
                if args.json:
                    _print_json({"kid": r.kid, "key_file": str(settings.signing_key_path),
                                 "retiring": [{"kid": old.kid, "retire_at": r.retire_at} for old in r.retiring]})
                    return cli_codes.OK
                print(f"new signing key {r.kid} in {settings.signing_key_path} (mode 0600): it signs from now on "
                      f"(processes signing with another copy of the file need this one)", file=sys.stderr)
                for old in r.retiring:
                    print(f"key {old.kid} is accepted until {_utc(r.retire_at)}, then refused", file=sys.stderr)
                print(r.kid)
                return cli_codes.OK
            if args.keys_command == "retire":
                return _retire_key(db, settings, args.kid, now + args.after, now, as_json=args.json)
            with db.read() as conn:
                ks = keys.read_key_set(conn)
        finally:
            db.dispose()
    here = _kid_of_file(settings.signing_key_path)
    rows = sorted(ks.keys.values(), key=lambda k: k.created)
    if args.json:
        out = [{**k.describe(), "accepted": k.accepted(now), "signs_here": k.kid == here} for k in rows]
        sys.stdout.write(orjson.dumps({"issuer": ks.issuer, "keys": out}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return cli_codes.OK
    print(f"issuer: {ks.issuer}")
    print(f"{'KID':44} {'ALG':6} {'CREATED':20} {'RETIRES':20} STATE")
    for k in rows:
        state = ("signs here" if k.kid == here else "accepted") if k.accepted(now) else "retired"
        print(f"{k.kid:44} {k.alg:6} {_utc(k.created):20} {_utc(k.retire_at):20} {state}")
    return cli_codes.OK


def _kid_of_file(path: Path) -> Optional[str]:
    """The kid of the key in this host's key file, None when there is none usable."""
    from gridpilot.central import keys

    try:
        return keys.thumbprint(keys.load_key_file(path).public_key())
    except keys.KeyFileError:
        return None


def _retire_key(db: Any, settings: CentralSettings, kid: str, at: float, now: float, as_json: bool = False) -> int:
    from gridpilot.central import keys

    if at <= now and kid == _kid_of_file(settings.signing_key_path):
        raise UsageError(f"{kid} is the key {settings.signing_key_path} signs with: `gridpilot central keys rotate "
                         f"--retire-after 0` replaces it and retires it at once")
    with db.write() as conn:
        before = keys.retire(conn, kid, at)
    if before is None:
        raise UsageError(f"no key {kid!r} in central's key set (`gridpilot central keys list` shows them)")
    if as_json:
        _print_json({"kid": kid, "retire_at": at, "refresh_s": keys.REFRESH_S})
        return cli_codes.OK
    when = "now" if at <= now else f"at {_utc(at)}"
    print(f"key {kid} retires {when}: every central process refuses its tokens from then on (within "
          f"{keys.REFRESH_S:.0f} s)", file=sys.stderr)
    return cli_codes.OK

"""`gridpilot top`: a user's jobs at a glance, refreshed every few seconds (docs/users.md, "Watching everything: top").

Each refresh is one request, GET /api/v1/jobs/summary (central/summary.py): counts per state, per site, and the
newest trace line of at most `--running` jobs a pilot holds, whatever the number of jobs.

How it shows them:
- on a terminal (stdout a TTY, TERM neither `dumb` nor `unknown`, rich installed): a rich Live view redrawn in
  place, with no alternate screen and no mouse, so it works over SSH and leaves its last frame on the screen;
  rich honours NO_COLOR;
- otherwise (a pipe, a file, TERM=dumb): one plain snapshot per interval, one line per state, site and job, no
  escape codes, a blank line between snapshots;
- `--once` prints one plain snapshot and exits, `--json` central's answer.

`q` quits (exit 0) when stdin is a terminal: it is put in cbreak mode (keys arrive one by one, unechoed; Ctrl-C
still interrupts) and restored on every way out, Ctrl-C, SIGTERM, SIGHUP and exceptions included. When central
goes away the status line says so, and the view keeps its last snapshot and tries again every interval; a refusal
(4xx: a bad --user, a revoked token) ends the command with central's line. Text from a job's trace is shown with
its control characters replaced, so a payload cannot send escape sequences to the user's terminal.
"""

from __future__ import annotations

import argparse
import datetime
import os
import select
import signal
import sys
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, TextIO, Tuple

from gridpilot import cli_codes, tracefmt
from gridpilot.client import CentralClient
from gridpilot.console import UsageError, _print_json, _style, resolve_ca_file, resolve_token, resolve_url
from gridpilot.errors import CentralError, CentralUnreachable, ConfigError

#: Seconds between refreshes: the default, and the bounds (below half a second a view is not read; above an hour it
#: is not live).
DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 0.5
MAX_INTERVAL = 3600.0
#: Running jobs shown with their newest trace line by default, and at most (central's bound, summary.MAX_RUNNING).
DEFAULT_RUNNING = 20
MAX_RUNNING = 100
#: Central's summary in fewer seconds than this, or the refresh counts as failed (and is tried again).
MAX_REQUEST_S = 10.0
#: The terminal types rich cannot redraw in place on: the plain lines are printed instead.
DUMB_TERMS = ("dumb", "unknown")
KINDS = ("running", "waiting", "done", "error")
QUIT_KEYS = (b"q", b"Q")


class Quit(Exception):
    """The user pressed q."""


def check_args(args: argparse.Namespace) -> None:
    if not MIN_INTERVAL <= args.interval <= MAX_INTERVAL:
        raise UsageError(f"--interval must be from {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds, got {args.interval:g}")
    if not 0 <= args.running <= MAX_RUNNING:
        raise UsageError(f"--running must be from 0 to {MAX_RUNNING}, got {args.running}")


def _client(args: argparse.Namespace) -> CentralClient:
    # No retries inside a refresh: the view's own loop is the retry, and its status line says how it goes.
    try:
        return CentralClient(resolve_url(args), resolve_token(args), retries=0,
                             timeout=min(MAX_REQUEST_S, max(2.0, args.interval * 2)), ca_file=resolve_ca_file(args))
    except ConfigError as e:
        raise UsageError(str(e)) from None


# -- what one refresh shows --


def clean(text: str) -> str:
    """`text` on one line, its control characters (escape sequences, carriage returns, newlines) made visible and
    harmless: it comes from a job's trace, which its payload may write."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch in "\n\r":
            out.append(" ⏎ ")
        elif o < 0x20 or 0x7F <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _age(since: Optional[float], now: float) -> str:
    if since is None:
        return "-"
    s = max(0, int(now - since))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _clock(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _who(snap: Dict[str, Any]) -> str:
    who = f"user {snap['user']}" if snap.get("user") else "all users"
    return who + (f", site {snap['site']}" if snap.get("site") else "")


def job_line(r: Dict[str, Any], now: float) -> str:
    where = (r.get("site") or "-") + (f" ({r['node']})" if r.get("node") else "")
    line = r.get("line")
    last = newest_line(line)
    return f"job {r['id']} {r['state']} at {clean(where)}, {_age(r.get('state_since'), now)}: {last}"


def newest_line(line: Optional[Dict[str, Any]]) -> str:
    """A job's newest trace line as `gridpilot trace` prints it, on one line and cleaned (see clean)."""
    if not line:
        return "(no trace line yet)"
    return tracefmt.render({**line, "text": clean(str(line["text"]))}) + (" [cut]" if line.get("truncated") else "")


def shown_note(snap: Dict[str, Any]) -> Optional[str]:
    """Which running jobs the view lists, when not all of them."""
    total, shown = snap["running_total"], len(snap["running"])
    if total <= shown:
        return None
    return (f"showing {shown} of {total} running jobs: the most recently changed (--running sets how many, at most "
            f"{MAX_RUNNING})")


def site_line(e: Dict[str, Any]) -> str:
    counts = ", ".join(f"{e[k]} {k}" for k in KINDS)
    return f"site {clean(e['site'] or '-')}: {counts}"


def plain_lines(snap: Dict[str, Any], url: str) -> List[str]:
    """One snapshot as plain lines: a header, one line per state, per site, per running job shown."""
    now = float(snap["now"])
    lines = [f"top: {_who(snap)} at {url}, {_clock(now)}: {_jobs(snap['total'])}, {snap['running_total']} running"]
    lines += [f"state {name} {n}" for name, n in snap["states"].items()]
    lines += [site_line(e) for e in snap["sites"]]
    if snap["sites_total"] > len(snap["sites"]):
        lines.append(f"showing {len(snap['sites'])} of {snap['sites_total']} sites: those with most running jobs")
    lines += [job_line(r, now) for r in snap["running"]]
    note = shown_note(snap)
    if note:
        lines.append(note)
    return lines


class Feed:
    """The view's data: the last snapshot central gave, and how the last tries went (for the status line)."""

    def __init__(self, client: CentralClient, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        self.snap: Optional[Dict[str, Any]] = None
        self.got_at: Optional[float] = None
        self.failing_since: Optional[float] = None
        self.failures = 0
        self.error: Optional[str] = None

    def refresh(self) -> None:
        """Ask central once. Unreachable, or a 5xx: noted for the status line (the next refresh tries again). A 4xx
        (a refusal that asking again will not change) is raised."""
        try:
            snap = self.client.jobs_summary(user=self.args.user, site=self.args.site, running=self.args.running)
        except CentralUnreachable as e:
            self._failed(str(e))
            return
        except CentralError as e:
            if e.status < 500:
                raise
            self._failed(f"central answered {e.status} {e.code}: {e.message}")
            return
        self.snap, self.got_at = snap, time.time()
        self.failing_since, self.failures, self.error = None, 0, None

    def _failed(self, why: str) -> None:
        if self.failing_since is None:
            self.failing_since = time.time()
        self.failures += 1
        self.error = why

    def status(self) -> str:
        every = f"every {self.args.interval:g} s"
        if self.error is None:
            return f"{every}; q quits"
        assert self.failing_since is not None
        kept = f"; showing the snapshot of {_clock(self.got_at)}" if self.got_at is not None else ""
        return (f"central unreachable since {_clock(self.failing_since)} ({self.failures} tries: {clean(self.error)});"
                f" retrying {every}{kept}; q quits")


# -- the keyboard --


class Keys:
    """q from a terminal on stdin, read in cbreak mode; the terminal's modes are put back on leaving, whatever the
    way out. Without a terminal on stdin, waiting is sleeping (Ctrl-C or the end of a pipe stops the command)."""

    def __init__(self, stream: TextIO) -> None:
        self.fd: Optional[int] = None
        try:
            if stream.isatty():
                self.fd = stream.fileno()
        except (AttributeError, ValueError, OSError):
            self.fd = None
        # The terminal whose modes are put back on leaving, and those modes (`fd` stops being read at its end).
        self._restore: Optional[Tuple[int, Any]] = None

    def __enter__(self) -> Keys:
        if self.fd is not None:
            import termios
            import tty

            self._restore = (self.fd, termios.tcgetattr(self.fd))
            tty.setcbreak(self.fd)  # keeps ISIG: Ctrl-C still interrupts
        return self

    def __exit__(self, *exc: object) -> None:
        if self._restore is not None:
            import termios

            fd, modes = self._restore
            self._restore = None
            try:
                termios.tcsetattr(fd, termios.TCSADRAIN, modes)
            except (termios.error, OSError):
                pass  # the terminal hung up (an SSH session gone): there is nothing left to restore

    def wait(self, seconds: float) -> None:
        """Wait `seconds` for q; Quit when it comes."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.fd is None:
                time.sleep(left)
                return
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return
            try:
                data = os.read(self.fd, 64)
            except OSError:  # EIO: the terminal hung up
                data = b""
            if not data:  # the terminal went away: keep refreshing until a signal ends the command
                self.fd = None
                continue
            if any(k in data for k in QUIT_KEYS):
                raise Quit


def _to_devnull() -> None:
    """Point stdout and stderr at /dev/null: after a hang-up, writing to the terminal fails (EIO)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError, AttributeError):
                pass  # not a file (a test's capture)
    finally:
        os.close(devnull)


@contextmanager
def _signals_end_the_view() -> Iterator[None]:
    """SIGTERM and SIGHUP (an SSH session closed) leave through the same `finally` blocks as Ctrl-C, so the
    terminal is restored; the exit code is 128 + the signal's number, as the shell shows a signal's death."""
    def end(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            _to_devnull()  # nobody reads the terminal any more: the last frame must not fail on the way out
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, end) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the command --


def _live_console(stream: TextIO) -> Any:
    """A rich Console to redraw on, or None for plain lines."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    if os.environ.get("TERM", "") in DUMB_TERMS:
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream)


def _rich_view(feed: Feed, url: str) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    snap = feed.snap
    title = Text(f"gridpilot top: {_who(snap) if snap else 'waiting for central'} at {url}", style="bold")
    status = Text(feed.status(), style="red" if feed.error else "dim")
    if snap is None:
        return Group(title, status)
    now = float(snap["now"])
    states = Table(title=_jobs(snap["total"]), title_justify="left", box=None, show_edge=False)
    states.add_column("STATE")
    states.add_column("JOBS", justify="right")
    for name, n in snap["states"].items():
        states.add_row(Text(name, style=_style(name)), str(n))
    sites = Table(box=None, show_edge=False)
    sites.add_column("SITE")
    for k in KINDS:
        sites.add_column(k.upper(), justify="right")
    for e in snap["sites"]:
        sites.add_row(Text(clean(e["site"] or "-")), *(str(e[k]) for k in KINDS))
    jobs = Table(title=f"{snap['running_total']} running", title_justify="left", box=None, show_edge=False,
                 expand=True)
    for col in ("ID", "STATE", "SITE", "NODE", "FOR"):
        jobs.add_column(col, no_wrap=True)
    jobs.add_column("NEWEST TRACE LINE", overflow="ellipsis", no_wrap=True, ratio=1)
    for r in snap["running"]:
        # Text, never markup: trace text is the payload's to write.
        jobs.add_row(str(r["id"]), Text(r["state"], style=_style(r["state"])), Text(clean(r.get("site") or "-")),
                     Text(clean(r.get("node") or "-")), _age(r.get("state_since"), now),
                     Text(newest_line(r.get("line"))))
    parts: List[Any] = [title, status, states, sites, jobs]
    note = shown_note(snap)
    if note:
        parts.append(Text(note, style="dim"))
    return Group(*parts)


def cmd_top(args: argparse.Namespace) -> int:
    check_args(args)
    client = _client(args)
    url = client.url
    if args.json or args.once:
        snap = client.jobs_summary(user=args.user, site=args.site, running=args.running)
        if args.json:
            _print_json(snap)
        else:
            sys.stdout.write("\n".join(plain_lines(snap, url)) + "\n")
        return cli_codes.OK
    feed = Feed(client, args)
    console = _live_console(sys.stdout)
    try:
        with _signals_end_the_view(), Keys(sys.stdin) as keys:
            if console is None:
                _plain_loop(feed, keys, url, sys.stdout)
            else:
                _live_loop(feed, keys, url, console)
    except Quit:
        return cli_codes.OK
    finally:
        client.close()
    return cli_codes.OK  # pragma: no cover (the loops end only by Quit or an exception)


def _plain_loop(feed: Feed, keys: Keys, url: str, out: TextIO) -> None:
    first = True
    while True:
        feed.refresh()
        if not first:
            out.write("\n")
        first = False
        if feed.error is not None:
            out.write(f"top: {feed.status()}\n")
        else:
            assert feed.snap is not None
            out.write("\n".join(plain_lines(feed.snap, url)) + "\n")
        out.flush()
        keys.wait(feed.args.interval)


def _live_loop(feed: Feed, keys: Keys, url: str, console: Any) -> None:
    from rich.live import Live

    feed.refresh()
    # auto_refresh off: the view is redrawn when there is something new, by this thread alone.
    with Live(_rich_view(feed, url), console=console, auto_refresh=False, transient=False,
              redirect_stdout=False, redirect_stderr=False) as live:
        while True:
            keys.wait(feed.args.interval)
            feed.refresh()
            live.update(_rich_view(feed, url), refresh=True)


__all__ = ["DEFAULT_INTERVAL", "DEFAULT_RUNNING", "MAX_INTERVAL", "MAX_RUNNING", "MIN_INTERVAL", "clean", "cmd_top",
           "plain_lines"]

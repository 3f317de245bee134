"""`gridpilot spy ID [stdout|stderr|workdir] [--follow]`: the end of a running job's output, or its work directory,
fetched through its pilot (central/spy.py, pilot/spyanswer.py; docs/users.md, "Peeking at a running job: spy").

The command asks central, which hands the request to the job's JobAgent at its next control poll (every few
seconds), and waits for the agent's answer up to --timeout. `--follow` asks again and again, each time for what the
file holds after what was shown, until the job ends or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from typing import Any, Dict, Optional

import orjson

from gridpilot import cli_codes
from gridpilot.client import API, CentralClient
from gridpilot.console import Failed, UsageError, _print_json, client_for
from gridpilot.errors import CentralError

WHATS = ("stdout", "stderr", "workdir")
DEFAULT_LINES = 50
#: central/spy.py's bound; checked here too, so that a bad --lines is a usage error, not a refusal.
MAX_LINES = 10_000
DEFAULT_TIMEOUT_S = 30.0
#: How often the command asks central whether the answer came.
POLL_S = 0.3
#: Between two requests of --follow.
FOLLOW_INTERVAL_S = 2.0


class NotRunning(Exception):
    """The job is not (or no longer) RUNNING or SAVING; the message says its state."""


def ask(client: CentralClient, job_id: int, what: str, lines: int, timeout: float,
        offset: Optional[int] = None) -> Dict[str, Any]:
    """One spy request and its answer (central's GET document, `status` answered). NotRunning when the job is not
    running (or ended before its pilot answered); TimeoutError when no answer came within `timeout`."""
    body: Dict[str, Any] = {"what": what, "lines": lines}
    if offset is not None:
        body["offset"] = offset
    try:
        _, req = client.request("POST", f"{API}/jobs/{job_id}/spy", body=body)
    except CentralError as e:
        if e.code == "not_running":
            raise NotRunning(e.message) from None
        raise
    deadline = time.monotonic() + timeout
    while True:
        _, doc = client.request("GET", f"{API}/jobs/{job_id}/spy/{req['id']}", idempotent=True)
        if doc["status"] == "answered":
            return dict(doc)
        if doc["job_state"] not in ("RUNNING", "SAVING"):
            raise NotRunning(f"job {job_id} is {doc['job_state']}: it ended before its pilot answered")
        if doc["status"] == "expired" or time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id}: its pilot did not answer within {timeout:g} s (a pilot learns of a "
                               "spy request at its next control poll, every few seconds); try again, or a longer "
                               "--timeout")
        time.sleep(POLL_S)


def _print_answer(job_id: int, what: str, answer: Dict[str, Any], *, whole_lines: bool) -> None:
    if "refused" in answer:
        raise Failed(f"job {job_id}: {what} not shown: {answer['refused']}")
    if what == "workdir":
        for e in answer["entries"]:
            mark = {"dir": "/", "link": "@"}.get(e["type"], "")
            when = datetime.datetime.fromtimestamp(e["mtime"]).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{e['size']:>12}  {when}  {e['name']}{mark}")
        if answer.get("more"):
            print(f"(only the first {len(answer['entries'])} entries)")
        return
    # As `tail` does, nothing says that lines before were left out (--json has the byte positions).
    text = answer["text"]
    sys.stdout.write(text)
    if text and not text.endswith("\n") and not whole_lines:
        sys.stdout.write("\n")
    sys.stdout.flush()


def cmd_spy(args: argparse.Namespace) -> int:
    what = args.what
    if not 1 <= args.lines <= MAX_LINES:
        raise UsageError(f"--lines must be from 1 to {MAX_LINES}, got {args.lines}")
    if not 0 < args.timeout <= 3600:
        raise UsageError(f"--timeout must be more than 0 and at most 3600 seconds, got {args.timeout:g}")
    if args.follow and what == "workdir":
        raise UsageError("--follow follows stdout or stderr, not the workdir listing")
    client = client_for(args)
    try:
        if not args.follow:
            doc = ask(client, args.id, what, args.lines, args.timeout)
            if args.json:
                _print_json(doc)
                return cli_codes.OK if "refused" not in doc["answer"] else cli_codes.FAILED
            _print_answer(args.id, what, doc["answer"], whole_lines=False)
            return cli_codes.OK
        return _follow(client, args)
    except NotRunning as e:
        if args.follow and getattr(args, "_followed", False):
            print(f"gridpilot: job {args.id} is {client.get_job(args.id)['state']}: no more output to follow",
                  file=sys.stderr)
            return cli_codes.OK
        print(f"gridpilot: {e}", file=sys.stderr)
        return cli_codes.FAILED
    except TimeoutError as e:
        print(f"gridpilot: {e}", file=sys.stderr)
        return cli_codes.TIMEOUT


def _follow(client: CentralClient, args: argparse.Namespace) -> int:
    """Like `tail -f`: the last --lines lines, then every new whole line, until the job ends or Ctrl-C (exit 130)."""
    # From byte 0 at first too: the pilot then sends whole lines only (the last --lines of them), so a line still
    # being written is never printed in two pieces.
    offset, lines = 0, args.lines
    while True:
        doc = ask(client, args.id, args.what, lines, args.timeout, offset)
        lines = MAX_LINES
        args._followed = True
        answer = doc["answer"]
        if args.json:
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
            sys.stdout.flush()
        else:
            _print_answer(args.id, args.what, answer, whole_lines=True)
        if "refused" in answer:
            return cli_codes.FAILED
        # A file that shrank (truncated, replaced) is read from its end again.
        offset = answer["end"]
        time.sleep(args.interval)


def add_spy_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `spy` command's arguments (cli.py wires it)."""
    from gridpilot.console import add_connection_args

    p = sub.add_parser("spy", help="the last lines of a running job's stdout or stderr, or its work directory, "
                                   "fetched through its pilot")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("what", nargs="?", choices=WHATS, default="stdout",
                   help="what to show: stdout (default), stderr, or workdir (names, sizes, times)")
    p.add_argument("--lines", "-n", type=int, default=DEFAULT_LINES,
                   help=f"how many of the last lines (default {DEFAULT_LINES}, at most {MAX_LINES}; at most "
                        "64 KiB of the file's end in any case)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep showing new lines until the job ends (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=FOLLOW_INTERVAL_S,
                   help=f"seconds between two requests of --follow (default {FOLLOW_INTERVAL_S:g})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds to wait for the pilot's answer (default {DEFAULT_TIMEOUT_S:g}); exit "
                        f"{cli_codes.TIMEOUT} when it does not come")
    p.add_argument("--json", action="store_true",
                   help="print central's document (with --follow: one JSON document per line, per answer)")
    add_connection_args(p)
    return p


__all__ = ["NotRunning", "add_spy_parser", "ask", "cmd_spy"]

"""`gridpilot top` as a user runs it, a real process each time: the plain snapshot against a LocalGrid with a running
and a waiting job, one snapshot per interval into a pipe, the live view in a real pseudo-terminal (q quits, Ctrl-C
and a refusal end it, and the terminal's modes are restored every time), TERM=dumb and NO_COLOR, central going
away, and bad arguments (docs/users.md, "Watching everything: top")."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Dict, Iterator, List

import orjson
import pytest
from support.central import SITE, jdl, run_through, site_map, start_world
from support.pilot import Pilot, STOPPED_OR_DONE, shell_jdl

from gridpilot import cli_codes

DEADLINE_S = 60.0
#: An SGR sequence that sets a colour (30-38, 40-48, 90-97, 100-107): what NO_COLOR must leave out.
COLOUR = re.compile(r"\x1b\[(?:[0-9]*;)*(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9]*)*m")


def _env(url: str, token_file: Path, state: Path, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_") and k != "NO_COLOR"}
    env.update(GRIDPILOT_CENTRAL_URL=url, GRIDPILOT_TOKEN_FILE=str(token_file), GRIDPILOT_STATE_DIR=str(state))
    env.update(extra)
    return env


def top(env: Dict[str, str], *args: str, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridpilot", "top", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- end to end on a LocalGrid: a real runner, agent and payload --


def _newest_marked(pilot: Pilot, job_id: int, text: str) -> bool:
    human = [e for e in pilot.trace(job_id) if e["category"] in ("state", "trace")]
    return bool(human) and human[-1]["text"] == text


def test_the_plain_snapshot_shows_both_states_the_site_and_the_running_jobs_newest_line(pilot: Pilot, tmp_path):
    grid = pilot.grid
    running = pilot.submit(shell_jdl("sleep 100", TTL=300))
    waiting = pilot.submit(shell_jdl("true", CPUCores=64))  # more cores than the runner's slot has: never matched
    pilot.start(cores=1)
    pilot.wait_state(running, ["RUNNING"])
    token = tmp_path / "user.token"
    token.write_text(grid.user_token)
    env = _env(grid.central.url, token, tmp_path / "state")
    # A line of our own, so the test knows what the newest one is: the agent may still write after RUNNING, so the
    # line is written again until it is the newest when top reads it.
    deadline = time.monotonic() + DEADLINE_S
    for n in range(1000):
        marker = f"top test: event {n} of 1000"
        grid.admin.append_trace(running, [{"category": "trace", "text": marker, "key": f"top-{n}"}])
        out = top(env, "--once")
        if _newest_marked(pilot, running, marker) or time.monotonic() > deadline:
            break
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "\x1b" not in out.stdout, "plain lines carry no escape codes"
    assert lines[0].startswith(f"top: user {os.environ.get('USER') or 'demo'} at {grid.central.url}, ")
    assert lines[0].endswith(": 2 jobs, 1 running")
    assert "state RUNNING 1" in lines and "state WAITING 1" in lines
    assert f"site {grid.site}: 1 running, 0 waiting, 0 done, 0 error" in lines
    assert "site -: 0 running, 1 waiting, 0 done, 0 error" in lines
    [job] = [ln for ln in lines if ln.startswith("job ")]
    assert job.startswith(f"job {running} RUNNING at {grid.site} (")
    assert job.endswith(f"[trace ]: {marker}"), job
    assert f"job {waiting}" not in out.stdout

    snap = orjson.loads(top(env, "--json").stdout)
    assert snap["states"] == {"WAITING": 1, "RUNNING": 1} and snap["running"][0]["id"] == running

    grid.user.kill(running)
    pilot.wait_final([running], timeout=DEADLINE_S)
    assert pilot.stop() in STOPPED_OR_DONE


# -- against a central alone (jobs driven through its API) --


@pytest.fixture
def world(tmp_path) -> Iterator:
    gen = start_world(tmp_path / "central", None)
    w = next(gen)
    w.stop = lambda: gen.close()  # central goes away, for the outage test
    try:
        yield w
    finally:
        gen.close()


@pytest.fixture
def alice(world, tmp_path):
    """alice's token file and environment, with one RUNNING job (its newest line known) and one WAITING."""
    client = world.user("alice")
    jid = client.submit(jdl())
    job = world.agent().match(site_map())
    run_through(world.agent(), job, "STARTED", "RUNNING")
    world.agent().append_trace(jid, [{"category": "trace", "text": "processing event 7", "key": "k7"}])
    client.submit(jdl())
    token = tmp_path / "alice.token"
    token.write_text(client.token)
    return {"client": client, "token": token, "job": jid, "env": _env(world.url, token, tmp_path / "state")}


def _read_until(proc: subprocess.Popen, want: str, timeout: float = DEADLINE_S) -> str:
    """Read a piped stdout until `want` appears (the process must still be running)."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while want not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{want!r} not printed within {timeout:.0f} s; got:\n{seen[-3000:]}"
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"top ended (code {proc.wait()}) before printing {want!r}:\n{seen[-3000:]}"
            seen += chunk.decode(errors="replace")
    return seen


def test_into_a_pipe_one_plain_snapshot_per_interval(alice):
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "top", "--interval", "0.5"], env=alice["env"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        text = _read_until(proc, "\n\ntop: ")  # a second snapshot began: the first is whole
        first = text.split("\n\n")[0].splitlines()
        assert "state RUNNING 1" in first and "state WAITING 1" in first
        assert f"site {SITE}: 1 running, 0 waiting, 0 done, 0 error" in first
        assert any(ln.startswith(f"job {alice['job']} RUNNING") and ln.endswith("processing event 7") for ln in first)
        assert "\x1b" not in text
    finally:
        proc.terminate()
        code = proc.wait(DEADLINE_S)
    assert code == 128 + signal.SIGTERM, "SIGTERM ends it through its own handler (the terminal restored)"
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()


def test_when_central_goes_away_the_view_says_so_and_keeps_trying(world, alice):
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "top", "--interval", "0.5"], env=alice["env"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_until(proc, "processing event 7")
        world.stop()
        text = _read_until(proc, "central unreachable since")
        text += _read_until(proc, "(2 tries:")
        assert proc.poll() is None, "it keeps trying"
        assert "retrying every 0.5 s; showing the snapshot of" in text
    finally:
        proc.terminate()
        proc.wait(DEADLINE_S)
    assert proc.stderr is not None and proc.stderr.read() == b"", "no traceback, nothing on stderr"
    once = top(alice["env"], "--once")
    assert once.returncode == cli_codes.UNREACHABLE and once.stdout == ""
    assert once.stderr.startswith("gridpilot: ") and len(once.stderr.splitlines()) == 1, once.stderr


# -- in a real pseudo-terminal --


class Terminal:
    """`gridpilot top` on a pseudo-terminal that is its controlling terminal, as in an SSH session."""

    def __init__(self, env: Dict[str, str], *args: str, term: str = "xterm-256color") -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.modes = termios.tcgetattr(self.slave)
        self.screen = ""

        def controlling() -> None:  # after setsid: the pty becomes the new session's terminal
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "top", *args],
                                     env={**env, "TERM": term}, stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, start_new_session=True, preexec_fn=controlling)

    def read_until(self, want: str, timeout: float = DEADLINE_S) -> str:
        deadline = time.monotonic() + timeout
        while want not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{want!r} not on the screen within {timeout:.0f} s; got:\n{self.screen[-3000:]!r}"
            self._drain(min(left, 0.5))
            assert want in self.screen or self.proc.poll() is None, \
                f"top ended ({self.proc.returncode}) before showing {want!r}:\n{self.screen[-3000:]!r}"
        return self.screen

    def _drain(self, wait: float) -> None:
        ready, _, _ = select.select([self.master], [], [], wait)
        if ready:
            try:
                self.screen += os.read(self.master, 65536).decode(errors="replace")
            except OSError:  # EIO: no process has the terminal open any more
                time.sleep(wait)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = DEADLINE_S) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"top still running after {timeout:.0f} s:\n{self.screen[-3000:]!r}"
            self._drain(0.2)  # keep reading, so a full terminal never blocks it
        self._drain(0.0)
        return int(self.proc.returncode)

    def current_modes(self) -> List:
        return termios.tcgetattr(self.slave)

    def hang_up(self) -> None:
        """What an SSH session's end does: the terminal's master side closes, the kernel sends SIGHUP."""
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.master >= 0:
            os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator:
    made: List[Terminal] = []

    def make(env: Dict[str, str], *args: str, term: str = "xterm-256color") -> Terminal:
        t = Terminal(env, *args, term=term)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def _cbreak(modes: List) -> bool:
    lflag = modes[3]
    return not lflag & termios.ICANON and not lflag & termios.ECHO


def test_q_quits_and_the_terminal_is_restored(alice, terminal):
    t = terminal(alice["env"], "--interval", "0.5")
    assert not _cbreak(t.modes)
    t.read_until("processing event 7")
    assert _cbreak(t.current_modes()), "keys are read one by one while the view runs"
    screen = t.read_until("q quits")
    assert "RUNNING" in screen and "WAITING" in screen and SITE in screen
    assert "\x1b[?1049h" not in screen, "no alternate screen: the last frame stays, over SSH too"
    assert COLOUR.search(screen), "states are coloured on a terminal"
    t.send(b"q")
    assert t.wait() == cli_codes.OK
    assert t.current_modes() == t.modes, "the terminal's modes are restored"


def test_ctrl_c_ends_it_and_the_terminal_is_restored(alice, terminal):
    t = terminal(alice["env"], "--interval", "0.5")
    t.read_until("processing event 7")
    assert _cbreak(t.current_modes())
    t.send(b"\x03")
    assert t.wait() == cli_codes.INTERRUPTED
    assert t.current_modes() == t.modes
    assert "Traceback" not in t.screen


def test_a_hang_up_ends_it_quietly(alice, terminal, tmp_path):
    t = terminal(alice["env"], "--interval", "0.5")
    t.read_until("processing event 7")
    t.hang_up()
    assert t.proc.wait(DEADLINE_S) == 128 + signal.SIGHUP


def test_a_refusal_mid_view_ends_it_with_one_line_and_the_terminal_restored(world, alice, terminal):
    t = terminal(alice["env"], "--interval", "0.5")
    t.read_until("processing event 7")
    world.admin.revoke_token(alice["client"].token)
    assert t.wait() == cli_codes.FAILED
    assert t.current_modes() == t.modes
    assert "gridpilot: central refused (401 token_revoked)" in t.screen and "Traceback" not in t.screen


def test_term_dumb_gets_plain_lines_and_no_color_gets_no_colours(alice, terminal):
    dumb = terminal(alice["env"], "--interval", "0.5", term="dumb")
    dumb.read_until(f"site {SITE}: 1 running")
    dumb.send(b"q")
    assert dumb.wait() == cli_codes.OK
    assert "\x1b" not in dumb.screen and dumb.current_modes() == dumb.modes
    plain = terminal({**alice["env"], "NO_COLOR": "1"}, "--interval", "0.5")
    screen = plain.read_until("processing event 7")
    plain.send(b"q")
    assert plain.wait() == cli_codes.OK
    assert not COLOUR.search(screen), "NO_COLOR: no colour codes"


def test_central_down_on_a_terminal_shows_in_the_status_line(tmp_path, terminal):
    token = tmp_path / "t"
    token.write_text("x.y.z")
    # A port nothing listens on: this test's own socket, bound and closed.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = terminal(_env(f"http://127.0.0.1:{port}", token, tmp_path / "state"), "--interval", "0.5")
    t.read_until("central unreachable since")
    t.read_until("(2 tries:")
    t.send(b"q")
    assert t.wait() == cli_codes.OK and t.current_modes() == t.modes


# -- bad input --


@pytest.mark.parametrize("args, code, says", [
    (["--interval", "0.1"], cli_codes.USAGE, "--interval must be from 0.5 to 3600 seconds, got 0.1"),
    (["--interval", "4000"], cli_codes.USAGE, "--interval must be from 0.5 to 3600 seconds, got 4000"),
    (["--interval", "nan"], cli_codes.USAGE, "--interval must be from 0.5 to 3600 seconds, got nan"),
    (["--interval", "soon"], cli_codes.USAGE, "argument --interval: invalid float value: 'soon'"),
    (["--running", "101"], cli_codes.USAGE, "--running must be from 0 to 100, got 101"),
    (["--user", "bob", "--once"], cli_codes.FAILED, "central refused (403 forbidden): a user token sees only its own "
                                                    "jobs, not 'bob''s"),
    (["--site", "s" * 300, "--json"], cli_codes.FAILED, "central refused (400 bad_request): query parameter site"),
    (["--bogus"], cli_codes.USAGE, "unrecognized arguments: --bogus"),
])
def test_bad_arguments_are_one_line_and_a_documented_code(alice, args, code, says):
    out = top(alice["env"], *args)
    assert (out.returncode, out.stdout) == (code, ""), out.stderr
    assert len(out.stderr.splitlines()) == 1 and says in out.stderr, out.stderr


def test_no_token_is_a_usage_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env["GRIDPILOT_STATE_DIR"] = str(tmp_path / "empty")
    out = top(env, "--once")
    assert out.returncode == cli_codes.USAGE and out.stderr.startswith("gridpilot: no token"), out.stderr


# -- what a refresh costs central --


def _requests(world) -> Dict[str, float]:
    """Requests central served so far, per route template (all methods and statuses)."""
    from support.metrics import Exposition

    m = Exposition(world.admin.metrics())
    out: Dict[str, float] = {}
    for labels in m.labelled("gridpilot_http_requests_total"):
        out[labels["route"]] = out.get(labels["route"], 0.0) + m.value("gridpilot_http_requests_total", **labels)
    return out


def test_each_refresh_is_one_request_whatever_the_number_of_jobs(world, alice):
    agent = world.agent()
    for _ in range(30):
        alice["client"].submit(jdl())
        job = agent.match(site_map())  # the oldest WAITING job: alice's second, then each one submitted before
        run_through(agent, job, "STARTED", "RUNNING")
        agent.append_trace(job["id"], [{"category": "trace", "text": f"job {job['id']} at work", "key": "w"}])
    before = _requests(world)
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "top", "--interval", "0.5", "--running", "25"],
                            env=alice["env"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        text = _read_until(proc, "\n\ntop: ")
    finally:
        proc.terminate()
        proc.wait(DEADLINE_S)
    assert proc.stdout is not None
    text += proc.stdout.read().decode()  # every snapshot it printed
    after = _requests(world)
    snapshots = 1 + text.count("\n\ntop: ")
    served = {route: after[route] - before.get(route, 0.0) for route in after}
    summary = served.pop("/api/v1/jobs/summary")
    assert snapshots <= summary <= snapshots + 1, "one request per snapshot (the last may not be printed yet)"
    others = {r: n for r, n in served.items() if n and r != "/metrics"}
    assert others == {}, f"a refresh asks nothing else: {others}"
    first = text.split("\n\n")[0].splitlines()
    assert sum(ln.startswith("job ") for ln in first) == 25
    assert "showing 25 of 31 running jobs: the most recently changed (--running sets how many, at most 100)" in first

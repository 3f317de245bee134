"""`gridpilot runner` from its start to its exit code, against a real central (tests/support/pilot.py): where it
finds central, its site and CE from the agent token, the close storage element it requires, and the exit codes of
gridpilot/exitcodes.py for a central that never answers, a refused token, an unusable node, a stop signal and a
crash. Every runner here is a real subprocess; every failure must be one log line, not a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import orjson

import gridpilot
from gridpilot import exitcodes
from gridpilot.endpoints import URL_FILE
from support.pilot import FAST, MARK_VAR, Pilot, payload_jdl

#: The start-up failures are one ERROR line of the runner's log, with this prefix.
CANNOT_START = "ERROR JobRunner cannot start"


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port the kernel just gave out and took back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def start_failure(pilot: Pilot, code: int, timeout: float = 60.0) -> str:
    """The runner exits `code` with one line saying why (and no traceback); that line."""
    rc = pilot.wait_runner_exit(timeout)
    log = pilot.runner_log()
    assert rc == code, f"exit {rc} ({exitcodes.reason(rc)}), expected {code}:\n{log[-4000:]}"
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if CANNOT_START in line]
    assert len(lines) == 1, log
    assert f"(exit {code}, {exitcodes.reason(code)})" in lines[0], lines[0]
    return lines[0]


def token_file(pilot: Pilot, name: str, token: str) -> str:
    path = pilot.grid.state_dir / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)


# -- where central is, who the pilot is, where outputs go ---------------------------------------------------------


def test_central_from_the_state_directory_site_and_ce_from_the_token(pilot: Pilot):
    """No central_url, site or CE configured: central's URL comes from the central.url `central serve` writes in
    the state directory, site and CE from the agent token (LocalGrid's: LOCAL, LOCAL::CE), and the job's outputs
    reach the close storage element."""
    state = pilot.grid.state_dir / "state"
    state.mkdir()
    (state / URL_FILE).write_text(pilot.grid.central.url + "\n")
    job_id = pilot.submit(payload_jdl("sleep", 0, OutputFile=["stdout@disk=1"]))
    pilot.start(central_url=None, site=None, ce=None, env={"GRIDPILOT_STATE_DIR": str(state)})
    (job,) = pilot.wait_final([job_id])
    assert job["state"] == "DONE", pilot.describe(job_id)
    # The site and CE the token gave: in central's lines about the match, and the node in the agent's.
    assert "Job ASSIGNED to: LOCAL\n" in pilot.trace_text(job_id) + "\n"
    assert f" at LOCAL/LOCAL::CE/{os.uname().nodename}" in pilot.trace_text(job_id)
    assert f"Running gridpilot JobAgent/{gridpilot.__version__} on {os.uname().nodename}" in pilot.trace_text(job_id)
    assert f"for LOCAL / LOCAL::CE, central {pilot.grid.central.url}" in pilot.runner_log()
    assert pilot.wait_runner_exit(60) == exitcodes.OK


def test_a_site_other_than_the_tokens_is_a_config_error(pilot: Pilot):
    job_id = pilot.submit(payload_jdl("sleep", 0))
    pilot.start(site="ELSEWHERE")
    line = start_failure(pilot, exitcodes.CONFIG)
    assert "site is set to 'ELSEWHERE' but the agent token is bound to site 'LOCAL'" in line, line
    assert pilot.job(job_id)["state"] == "WAITING"


def test_a_ce_other_than_the_tokens_is_a_config_error(pilot: Pilot):
    pilot.start(ce="LOCAL::OTHER")
    line = start_failure(pilot, exitcodes.CONFIG)
    assert "ce is set to 'LOCAL::OTHER' but the agent token is bound to ce 'LOCAL::CE'" in line, line


def test_no_close_storage_element_is_a_config_error_not_a_failed_job(pilot: Pilot):
    job_id = pilot.submit(payload_jdl("sleep", 0, OutputFile=["stdout@disk=1"]))
    pilot.start(close_se=[])
    line = start_failure(pilot, exitcodes.CONFIG)
    assert "no close storage element" in line, line
    assert "set close_se in the configuration, GRIDPILOT_CLOSE_SE, or --close-se" in line, line
    assert pilot.job(job_id)["state"] == "WAITING", "no job was taken to fail ERROR_SV"


def test_a_close_storage_element_central_does_not_know_is_a_config_error(pilot: Pilot):
    job_id = pilot.submit(payload_jdl("sleep", 0))
    pilot.start(close_se=["LOCAL::DEMO::FILE", "NO::SUCH::SE"])
    line = start_failure(pilot, exitcodes.CONFIG)
    assert "close storage element 'NO::SUCH::SE' is not one central knows (LOCAL::DEMO::FILE, LOCAL::GRIDPILOT::FILE)" in line, line
    assert pilot.job(job_id)["state"] == "WAITING"


# -- central unreachable, token refused ------------------------------------------------------------------------------


def test_central_silent_for_the_whole_startup_window(pilot: Pilot):
    url = refused_url()
    t0 = time.monotonic()
    pilot.start(central_url=url, startup_window=4)
    line = start_failure(pilot, exitcodes.CENTRAL_UNREACHABLE)
    assert time.monotonic() - t0 >= 4
    assert f"central {url} did not answer within the start-up window of 4 s" in line, line
    log = pilot.runner_log()
    # Tried several times (backoff 0.3 s doubling to 1 s), said once.
    assert log.count(f"central {url} unreachable:") == 1, log


def test_central_coming_up_within_the_startup_window(pilot: Pilot):
    central = pilot.grid.central
    central.stop()
    pilot.start(startup_window=120)
    wait_for("the runner saying central is unreachable", lambda: f"central {central.url} unreachable" in
             pilot.runner_log())
    central.start()
    job_id = pilot.submit(payload_jdl("sleep", 0))
    (job,) = pilot.wait_final([job_id])
    assert job["state"] == "DONE", pilot.describe(job_id)
    log = pilot.runner_log()
    assert log.count(f"central {central.url} unreachable") == 1, log
    assert log.count(f"central {central.url} answers again, after") == 1, log
    assert pilot.wait_runner_exit(60) == exitcodes.OK


def test_sigterm_while_waiting_for_central_at_startup_is_stopped(pilot: Pilot):
    url = refused_url()
    pilot.start(central_url=url, startup_window=600)
    wait_for("the runner saying central is unreachable", lambda: f"central {url} unreachable" in pilot.runner_log())
    t0 = time.monotonic()
    pilot.runner.send_signal(signal.SIGTERM)
    assert pilot.wait_runner_exit(30) == exitcodes.STOPPED, pilot.runner_log()
    assert time.monotonic() - t0 < 15, "the start-up wait ends at the signal, not at the window's end"
    assert "JobRunner stopped by SIGTERM during start-up" in pilot.runner_log()


def test_a_revoked_agent_token_is_refused(pilot: Pilot):
    token = pilot.grid.admin.mint_token("agent", "pilot-revoked", site="LOCAL", ce="LOCAL::CE")
    pilot.grid.admin.revoke_token(token)
    pilot.start(token_file=token_file(pilot, "revoked.token", token))
    line = start_failure(pilot, exitcodes.TOKEN_REFUSED)
    assert "refuses the agent token (401 token_revoked)" in line, line


def test_an_expired_agent_token_is_refused(pilot: Pilot):
    token = pilot.grid.admin.mint_token("agent", "pilot-expired", site="LOCAL", ce="LOCAL::CE", ttl_s=1)
    path = token_file(pilot, "expired.token", token)
    wait_for("the token to expire", lambda: time.time() > _exp(token) + 0.5, timeout=10)
    pilot.start(token_file=path)
    line = start_failure(pilot, exitcodes.TOKEN_REFUSED)
    assert "refuses the agent token (401 token_expired)" in line, line


def _exp(token: str) -> float:
    from gridpilot.client import token_expires

    exp = token_expires(token)
    assert exp is not None
    return exp


def test_a_user_token_is_refused(pilot: Pilot):
    """A user's token given to a pilot (the wrong role): central knows it, but it is no agent's."""
    job_id = pilot.submit(payload_jdl("sleep", 0))
    pilot.start(token_file=token_file(pilot, "user.token", pilot.grid.user_token))
    line = start_failure(pilot, exitcodes.TOKEN_REFUSED)
    assert "the token's role is 'user'" in line and "not 'agent'" in line, line
    assert pilot.job(job_id)["state"] == "WAITING"


def test_a_token_revoked_while_the_runner_matches(pilot: Pilot):
    """Revoked mid-slot, the agent token is refused at the next match: the runner stops, TOKEN_REFUSED, instead of
    counting refusals as empty matches and exiting 0."""
    token = pilot.grid.admin.mint_token("agent", "pilot-later-revoked", site="LOCAL", ce="LOCAL::CE")
    pilot.start(token_file=token_file(pilot, "later.token", token), max_empty_matches=1000)
    wait_for("a first empty match", lambda: "agent 0: nomatch" in pilot.runner_log())
    pilot.grid.admin.revoke_token(token)
    assert pilot.wait_runner_exit(60) == exitcodes.TOKEN_REFUSED, pilot.runner_log()[-4000:]
    assert "stopping: central refuses the agent token" in pilot.runner_log()


# -- the node, signals, crashes ----------------------------------------------------------------------------------------


def test_a_work_directory_that_cannot_be_made_is_node_unusable(pilot: Pilot):
    blocker = pilot.grid.state_dir / "a-file"
    blocker.write_text("not a directory\n")
    pilot.start(workdir=str(blocker / "work"))
    line = start_failure(pilot, exitcodes.NODE_UNUSABLE)
    assert f"work directory {blocker / 'work'} is not usable: Not a directory" in line, line


def test_sigterm_to_an_idle_runner_is_stopped(pilot: Pilot):
    pilot.start(max_empty_matches=1000)
    wait_for("a first empty match", lambda: "agent 0: nomatch" in pilot.runner_log())
    assert pilot.stop() == exitcodes.STOPPED, pilot.runner_log()[-4000:]
    assert "exit 13 (stopped)" in pilot.runner_log()


def test_an_uncaught_exception_is_crashed_with_the_traceback_in_the_log(pilot: Pilot):
    """A bug in the loop (injected here): exit CRASHED, the traceback logged, nothing of the slot left."""
    conf = pilot.grid.state_dir / "crash.yaml"
    cfg = pilot.grid.pilot_config(**FAST)
    conf.write_bytes(orjson.dumps({k: v for k, v in cfg.__dict__.items() if v is not None}))
    inject = ("import sys, gridpilot.pilot.runner as r\n"
              "def step(self): raise RuntimeError('injected bug')\n"
              "r.JobRunner.step = step\n"
              "from gridpilot.cli import main\n"
              "sys.exit(main(['runner', '--config', sys.argv[1]]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env[MARK_VAR] = pilot.mark
    log_path = pilot.grid.state_dir / "runner.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", inject, str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    pilot.grid.runner = proc
    pilot.runner_pids.append(proc.pid)
    assert pilot.wait_runner_exit(60) == exitcodes.CRASHED
    log = Path(log_path).read_text()
    assert "ERROR JobRunner crashed: exit 1 (crashed)" in log, log
    assert "Traceback (most recent call last)" in log and "RuntimeError: injected bug" in log, log

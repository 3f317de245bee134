"""Every `gridpilot` command, run as a user runs it (a subprocess), given a bad argument and, where it talks to
central, with central down: one clear line on stderr, the documented exit code (gridpilot.cli_codes), never a
traceback. Also: a reader that goes away (`| head`), a wheel installed without the `central` extra, `kill --json`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import orjson
import pytest
from support.central import World, jdl, site_map, start_world

from gridpilot import cli_codes
from support import paths

#: Runs the CLI as if the `central` extra were not installed: its modules cannot be imported.
WITHOUT_CENTRAL_EXTRA = """
import sys
for name in ("starlette", "uvicorn", "sqlalchemy", "psycopg", "jwt", "rich"):
    sys.modules[name] = None
from gridpilot.cli import main
raise SystemExit(main())
"""


def closed_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path) -> Dict[str, str]:
    """An environment with its own empty state directory and no central, token or database from the host."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    e["GRIDPILOT_STATE_DIR"] = str(tmp_path / "state")
    return e


def gridpilot(args: Sequence[str], env: Dict[str, str], *, code: Optional[str] = None, stdout: object = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "gridpilot", *args]
    if stdout is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return subprocess.run(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout)


def one_line(r: subprocess.CompletedProcess, exit_code: int, *expected: str) -> str:
    """The single line `r` wrote on stderr, after checking its exit code, that it holds each of `expected`, and that
    no traceback went anywhere."""
    everything = (r.stdout or "") + r.stderr
    assert "Traceback" not in everything and "Exception ignored" not in everything, everything
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert r.returncode == exit_code, (r.returncode, r.stderr)
    return lines[0]


# -- bad arguments: one line each, nothing needs central --

BAD_ARGUMENTS = [
    (["node", "--proc", "/nonexistent"], cli_codes.USAGE, "--proc /nonexistent: not a directory"),
    (["node", "--pci-ids", "/nonexistent/pci.ids"], cli_codes.USAGE, "--pci-ids /nonexistent/pci.ids: no such file"),
    (["node", "--frobnicate"], cli_codes.USAGE, "unrecognized arguments: --frobnicate"),
    (["node", "--proc", "/etc/ssl"], cli_codes.FAILED, "/etc/ssl/cpuinfo"),
    (["demo", "--timeout", "soon"], cli_codes.USAGE, "argument --timeout: invalid float value: 'soon'"),
    (["demo", "/nonexistent.jdl"], cli_codes.USAGE, "/nonexistent.jdl: cannot read: No such file or directory"),
    (["jdl"], cli_codes.USAGE, "the following arguments are required: ACTION"),
    (["jdl", "check", "/nonexistent.jdl"], cli_codes.FAILED, "1 of 1 JDL file invalid"),
    (["jdl", "show", "/nonexistent.jdl"], cli_codes.FAILED, "/nonexistent.jdl: cannot read"),
    (["central"], cli_codes.USAGE, "the following arguments are required: ACTION"),
    (["central", "init", "--se", "nonsense"], cli_codes.USAGE, "--se takes NAME=URL[,KIND], got 'nonsense'"),
    (["central", "init", "--se", "A::B::C=nowhere"], cli_codes.USAGE, "--se A::B::C=nowhere: url must be a URL"),
    (["central", "init", "--db", "mysql://db/gridpilot"], cli_codes.USAGE, "--db: unsupported database"),
    (["central", "init", "--state-dir", "/proc/nonexistent/state"], cli_codes.USAGE,
     "cannot use the state directory /proc/nonexistent/state"),
    (["central", "serve", "--port", "99999"], cli_codes.USAGE, "argument --port: port 99999 is not in 0-65535"),
    (["central", "serve", "--db", "nonsense"], cli_codes.USAGE, "--db: unsupported database 'nonsense'"),
    (["central", "token", "--role", "wizard", "--subject", "x"], cli_codes.USAGE, "argument --role: invalid choice"),
    (["central", "token", "--role", "user", "--subject", "x"], cli_codes.USAGE,
     "older than this gridpilot's", "run `gridpilot central init`"),
    (["submit", "/nonexistent.jdl"], cli_codes.USAGE, "/nonexistent.jdl: cannot read"),
    (["submit"], cli_codes.USAGE, "the following arguments are required: FILE.jdl"),
    (["jobs", "--limit", "many"], cli_codes.USAGE, "argument --limit: invalid int value: 'many'"),
    (["jobs", "--url", "127.0.0.1:8799"], cli_codes.USAGE,
     "--url: '127.0.0.1:8799' is not a URL of central", "did you mean http://127.0.0.1:8799?"),
    (["jobs", "--url", "http://127.0.0.1:99999"], cli_codes.USAGE, "--url: 'http://127.0.0.1:99999': Port out of"),
    (["jobs", "--url", "http://127.0.0.1:1"], cli_codes.USAGE, "no token: use --token-file"),
    (["job", "first"], cli_codes.USAGE, "argument ID: invalid int value: 'first'"),
    (["job", "1", "--url", "localhost:8799"], cli_codes.USAGE, "did you mean http://localhost:8799?"),
    (["trace", "1", "--category", "gossip"], cli_codes.USAGE, "argument --category: invalid choice: 'gossip'"),
    (["trace", "1", "--url", "ftp://central"], cli_codes.USAGE, "--url: 'ftp://central' is not a URL of central"),
    (["kill"], cli_codes.USAGE, "the following arguments are required: ID"),
    (["why"], cli_codes.USAGE, "the following arguments are required: ID"),
    (["why", "first"], cli_codes.USAGE, "argument ID: invalid int value: 'first'"),
    (["kill", "7", "--token-file", "/nonexistent.token"], cli_codes.USAGE,
     "cannot read token file /nonexistent.token"),
    # The runner and the CE have exit codes of their own (exitcodes.py, ce/command.py): 2 is CONFIG in both.
    (["runner", "--cores", "many"], cli_codes.USAGE, "argument --cores: invalid int value: 'many'"),
    (["runner", "--config", "/nonexistent.yaml"], cli_codes.USAGE, "gridpilot runner:", "/nonexistent.yaml"),
    (["ce", "--backend", "pbs"], cli_codes.USAGE, "argument --backend: invalid choice: 'pbs'"),
    (["ce", "--config", "/nonexistent.yaml"], cli_codes.USAGE, "gridpilot ce:", "/nonexistent.yaml"),
]


@pytest.mark.parametrize("args,exit_code,expected", [(a, c, e) for a, c, *e in BAD_ARGUMENTS],
                         ids=[" ".join(a) for a, *_ in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_line(env, args, exit_code, expected):
    one_line(gridpilot(args, env), exit_code, *expected)


def test_a_malformed_url_is_said_with_where_it_came_from(env, tmp_path):
    env["GRIDPILOT_TOKEN"] = "t"
    one_line(gridpilot(["jobs"], dict(env, GRIDPILOT_CENTRAL_URL="127.0.0.1:8799")), cli_codes.USAGE,
             "$GRIDPILOT_CENTRAL_URL: '127.0.0.1:8799' is not a URL of central")
    state = Path(env["GRIDPILOT_STATE_DIR"])
    state.mkdir()
    (state / "central.url").write_text("central:8765\n")
    one_line(gridpilot(["jobs"], env), cli_codes.USAGE, f"{state / 'central.url'}: 'central:8765' is not a URL")


def test_a_port_in_use_is_one_line(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = gridpilot(["central", "serve", "--port", str(port)], env)
    one_line(r, cli_codes.USAGE, f"cannot listen on 127.0.0.1:{port}: Address already in use")


# -- central down: every command that talks to it --

@pytest.fixture
def down(env, tmp_path) -> Iterator[Dict[str, str]]:
    """`env` pointing at a central nobody serves, with a token; and a JDL file to submit."""
    env["GRIDPILOT_CENTRAL_URL"] = f"http://127.0.0.1:{closed_port()}"
    env["GRIDPILOT_TOKEN"] = "t"
    (tmp_path / "job.jdl").write_text(jdl(TTL=600))
    yield env


@pytest.mark.parametrize("args", [["submit", "{jdl}"], ["submit", "{jdl}", "--wait", "--timeout", "5"], ["jobs"],
                                  ["jobs", "--json"], ["job", "1"], ["trace", "1"], ["trace", "1", "--follow"],
                                  ["kill", "1", "2"], ["why", "1"], ["why", "1", "--json"], ["top", "--once"],
                                  ["top", "--json"]],
                         ids=lambda a: " ".join(a))
def test_central_down_is_one_line(down, tmp_path, args):
    args = [a.replace("{jdl}", str(tmp_path / "job.jdl")) for a in args]
    url = down["GRIDPILOT_CENTRAL_URL"]
    one_line(gridpilot(args, down), cli_codes.UNREACHABLE, f"central at {url} unreachable", "Connection refused")


def test_central_down_with_kill_json_still_gives_one_document(down):
    r = gridpilot(["kill", "--json", "3", "4"], down)
    one_line(r, cli_codes.UNREACHABLE, "unreachable")
    doc = orjson.loads(r.stdout)
    assert [(d["id"], d["error"]["code"]) for d in doc] == [(3, "unreachable"), (4, "unreachable")]


@pytest.mark.parametrize("action", [["init"], ["serve", "--port", "0"],
                                    ["token", "--role", "user", "--subject", "u"]], ids=lambda a: a[0])
def test_the_database_server_down_is_one_line(env, action):
    """For `central init|serve|token`, "central down" is their database: a PostgreSQL nobody serves."""
    db = f"postgresql://gridpilot@127.0.0.1:{closed_port()}/gridpilot"
    r = gridpilot(["central", action[0], "--db", db, *action[1:]], env)
    one_line(r, cli_codes.UNREACHABLE, f"cannot reach the database {db}", "Connection refused")


# -- against a running central --

@pytest.fixture
def central(tmp_path) -> Iterator[World]:
    """A running central with one WAITING job, "one.jdl"."""
    for w in start_world(tmp_path / "central", None):
        w.clients["job"] = w.admin.submit(jdl(TTL=600), name="one.jdl")
        yield w


@pytest.fixture
def world(central, env) -> Dict[str, str]:
    """`env` pointing at `central` with its admin token; "_JOB" is the id of its job."""
    env["GRIDPILOT_CENTRAL_URL"] = central.url
    env["GRIDPILOT_TOKEN"] = central.embedded.admin_token
    env["_JOB"] = str(central.clients["job"])
    return env


def test_central_refusing_is_one_line(world):
    one_line(gridpilot(["jobs", "--state", "SLEEPING"], world), cli_codes.FAILED, "central refused (400")
    one_line(gridpilot(["job", "99"], world), cli_codes.FAILED, "central refused (404 job_not_found): no job 99")


def test_wait_that_runs_out_exits_timeout_and_the_job_goes_on(world, tmp_path, central):
    (tmp_path / "wait.jdl").write_text(jdl(TTL=600))
    r = gridpilot(["submit", str(tmp_path / "wait.jdl"), "--wait", "--interval", "0.1", "--timeout", "0.5"], world)
    assert r.returncode == cli_codes.TIMEOUT, r.stdout + r.stderr
    assert "still WAITING after" in r.stdout and "Traceback" not in r.stdout + r.stderr
    job = int(r.stdout.split()[2])
    assert central.admin.get_job(job)["state"] == "WAITING"


def test_kill_json_is_one_document_of_every_jobs_result(world, central):
    job = int(world["_JOB"])
    r = gridpilot(["kill", "--json", str(job), "99"], world)
    assert r.returncode == cli_codes.FAILED, r.stderr
    assert r.stderr == "" and "Traceback" not in r.stdout
    assert orjson.loads(r.stdout) == [
        {"id": job, "state": "KILLED", "kill_requested": False},
        {"id": 99, "error": {"status": 404, "code": "job_not_found", "message": "no job 99"}},
    ]
    running = central.admin.submit(jdl(TTL=600))
    agent = central.agent()
    assert agent.match(site_map())["id"] == running
    agent.set_status(running, "STARTED", 0)
    r = gridpilot(["kill", "--json", str(running)], world)
    assert r.returncode == cli_codes.OK, r.stderr
    assert orjson.loads(r.stdout) == [{"id": running, "state": "STARTED", "kill_requested": True}]


@pytest.mark.parametrize("args", [["trace", "{job}"], ["jobs"], ["job", "{job}"], ["jobs", "--json"],
                                  ["kill", "{job}"]], ids=lambda a: " ".join(a))
def test_a_reader_that_went_away_ends_the_command_quietly(world, args):
    """stdout is a pipe whose reading end is already closed: every write fails with EPIPE, deterministically."""
    args = [a.replace("{job}", world["_JOB"]) for a in args]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = gridpilot(args, world, stdout=write_end)
    finally:
        os.close(write_end)
    assert r.returncode == cli_codes.BROKEN_PIPE, r.stderr
    assert r.stderr == "", r.stderr  # no traceback, no "Exception ignored ... BrokenPipeError" at exit


def test_trace_into_head_as_a_shell_runs_it(world, central):
    """`gridpilot trace N | head -2` with a trace far longer than the pipe holds: head's two lines, then quiet."""
    agent = central.agent()
    job = agent.match(site_map())
    assert job is not None
    for _ in range(10):
        agent.append_trace(job["id"], [{"category": "trace", "text": "x" * 200} for _ in range(100)])
    r = subprocess.run(["/bin/bash", "-c", f'set -o pipefail; "{sys.executable}" -m gridpilot trace {job["id"]} '
                                           '| head -2'], env=world, capture_output=True, text=True, timeout=120)
    assert len(r.stdout.splitlines()) == 2, r.stdout
    assert r.stderr == "", r.stderr
    assert r.returncode == cli_codes.BROKEN_PIPE


# -- installed without the central extra --

@pytest.mark.parametrize("args", [["demo"], ["central", "init"], ["central", "serve"],
                                  ["central", "token", "--role", "user", "--subject", "u"]],
                         ids=lambda a: " ".join(a[:2]))
def test_without_the_central_extra_the_line_says_what_to_install(env, args):
    r = gridpilot(args, env, code=WITHOUT_CENTRAL_EXTRA)
    line = one_line(r, cli_codes.USAGE, "needs the central extra, which is not installed",
                    "pip install 'gridpilot[central]'")
    assert line.startswith("gridpilot " + " ".join(args[:2]) if args[0] == "central" else "gridpilot demo")


def test_without_the_central_extra_the_user_commands_still_work(world, env):
    """They talk to central through gridpilot.client only: no central extra needed (plain text without rich)."""
    r = gridpilot(["jobs"], world, code=WITHOUT_CENTRAL_EXTRA)
    assert r.returncode == cli_codes.OK, r.stderr
    assert "one.jdl" in r.stdout and "WAITING" in r.stdout
    down = dict(world, GRIDPILOT_CENTRAL_URL=f"http://127.0.0.1:{closed_port()}")
    one_line(gridpilot(["trace", "1"], down, code=WITHOUT_CENTRAL_EXTRA), cli_codes.UNREACHABLE, "unreachable")
    r = gridpilot(["jdl", "check", str(paths.ROOT / "examples" / "local_demo.jdl")], env,
                  code=WITHOUT_CENTRAL_EXTRA)
    assert r.returncode == cli_codes.OK, r.stderr


@pytest.mark.skipif(sys.version_info < (3, 10), reason="importlib.metadata.packages_distributions is 3.10+")
def test_the_modules_named_as_the_central_extra_are_that_extras():
    """cli.CENTRAL_EXTRA_MODULES (what the missing-extra line recognises) against pyproject.toml's `central`."""
    import re
    from importlib.metadata import packages_distributions

    from gridpilot.cli import CENTRAL_EXTRA_MODULES

    text = (paths.ROOT / "pyproject.toml").read_text()
    block = re.search(r"^central = \[(.*?)^\]", text, re.S | re.M)
    assert block is not None
    extra = {re.match(r"[A-Za-z0-9_.-]+", item.strip().strip('"')).group(0).lower()
             for item in block.group(1).split(",") if item.strip().startswith('"')}
    dists = packages_distributions()
    provided = {d.lower() for m in CENTRAL_EXTRA_MODULES for d in dists.get(m, [])}
    assert provided == extra


def test_help_lists_the_exit_codes(env):
    r = gridpilot(["--help"], env)
    assert r.returncode == 0
    text = r.stdout
    for code, meaning in ((1, "ran but failed"), (2, "bad argument or configuration"), (3, "--wait/--timeout ran out"),
                          (10, "unreachable"), (141, "reader of the output went away")):
        assert any(ln.split()[:1] == [str(code)] and meaning in ln for ln in text.splitlines()), (code, text)

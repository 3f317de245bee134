"""The packages environment's command and shell for real (pilot/packages.py environment()): what alienv-like
commands print, in every shell form they print it, comes out exactly as a shell reads it; a failing, silent,
hostile, flooding or hanging command ends in a PackagesError that says why, in bounded time, leaving no process.
Real jobs through the pilot in each runtime: test_packages_pilot.py."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Dict

import psutil
import pytest

from gridpilot.pilot import packages
from gridpilot.pilot.packages import PackagesError, PackagesSettings

PK = ["VO_ALICE@O2PDPSuite::v1"]


def _command(tmp_path: Path, body: str) -> PackagesSettings:
    """A packages command: a shell script with `body`, given the packages as its arguments."""
    script = tmp_path / f"printenv-{uuid.uuid4().hex[:8]}"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return PackagesSettings((str(script),), "separate", 20.0)


@pytest.fixture
def base(tmp_path) -> Dict[str, str]:
    """The payload's environment before its packages, with a marker every process the command starts inherits."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
            "ALIEN_PROC_ID": "7", "LANG": "C", "GONE_SOON": "1", "PACKAGES_TEST_MARK": uuid.uuid4().hex}


def _left(base: Dict[str, str], wait_s: float = 15.0) -> list:
    """The processes the command left alive, once those killed have had `wait_s` to die (a SIGKILL is delivered
    asynchronously, and a killed orphan is a zombie until its new parent reaps it)."""
    mark = base["PACKAGES_TEST_MARK"]
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for p in psutil.process_iter():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("PACKAGES_TEST_MARK") == mark:
                    left.append(p)
            except (psutil.Error, OSError):
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _env(settings: PackagesSettings, base: Dict[str, str], tmp_path: Path, **kw) -> packages.PackagesEnvironment:
    return packages.environment(settings, PK, base, protected={"HOME", "TMPDIR", "ALIEN_PROC_ID"}, cwd=str(tmp_path),
                                **kw)


def test_every_shell_form_alienv_and_modulecmd_print_is_read_exactly(tmp_path, base):
    # What `alienv printenv` (X=...; export X;), `modulecmd sh` (backslash escapes) and hand-written setups print.
    cmd = _command(tmp_path, r"""
[ "$1" = O2PDPSuite/v1 ] || { echo "ERROR: no module $1" >&2; exit 1; }
cat <<'EOF'
O2_ROOT=/cvmfs/alice.cern.ch/el9-x86_64/Packages/O2/v1 ;export O2_ROOT;
PATH=/o2/bin:$PATH ;export PATH;
SPACED=/opt/o2\ with\ space\;and\"quote\'; export SPACED;
export SINGLE='it'"'"'s $HOME, not expanded';
export DOUBLE="tab	and \"escaped\" and \$dollar and ${HOME}";
MULTI='line1
line2'; export MULTI;
EQUALS=a=b=c; export EQUALS;
unset GONE_SOON;
LOCAL_ONLY=not-exported;
echo this goes to the evaluating shell stderr, not into the environment;
echo nor this >&3;
test 0;
EOF
""")
    got = _env(cmd, base, tmp_path)
    env = got.env
    assert env["O2_ROOT"] == "/cvmfs/alice.cern.ch/el9-x86_64/Packages/O2/v1"
    assert env["PATH"] == "/o2/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["SPACED"] == "/opt/o2 with space;and\"quote'"
    assert env["SINGLE"] == "it's $HOME, not expanded"
    assert env["DOUBLE"] == f"tab\tand \"escaped\" and $dollar and {tmp_path}"
    assert env["MULTI"] == "line1\nline2"
    assert env["EQUALS"] == "a=b=c"
    assert "GONE_SOON" not in env and "LOCAL_ONLY" not in env
    assert env["HOME"] == str(tmp_path) and env["LANG"] == "C"
    assert set(got.set) == {"O2_ROOT", "PATH", "SPACED", "SINGLE", "DOUBLE", "MULTI", "EQUALS"}
    assert got.unset == ["GONE_SOON"] and got.kept == []
    assert not any(k.startswith("gridpilot_") for k in env)  # the evaluating shell's own variables stay its own
    assert not _left(base)


def test_the_command_runs_in_the_work_directory_with_the_payloads_base_environment(tmp_path, base):
    cmd = _command(tmp_path, 'echo "SEEN_CWD=$(pwd); export SEEN_CWD; SEEN_HOME=$HOME; export SEEN_HOME; '
                             'SEEN_ARGS=\'$*\'; export SEEN_ARGS;"')
    env = _env(cmd, base, tmp_path).env
    assert (env["SEEN_CWD"], env["SEEN_HOME"], env["SEEN_ARGS"]) == (str(tmp_path), str(tmp_path), "O2PDPSuite/v1")


def test_job_variables_keep_their_values_and_the_trace_says_so(tmp_path, base):
    cmd = _command(tmp_path, "echo 'HOME=/root; export HOME; unset TMPDIR; ALIEN_PROC_ID=1; O2=1; export O2;'")
    got = _env(cmd, base, tmp_path)
    assert (got.env["HOME"], got.env["TMPDIR"], got.env["ALIEN_PROC_ID"], got.env["O2"]) == \
        (str(tmp_path), str(tmp_path), "7", "1")
    assert got.kept == ["ALIEN_PROC_ID", "HOME", "TMPDIR"]
    assert "kept gridpilot's own ALIEN_PROC_ID, HOME, TMPDIR" in packages.success_text(PK, got, cmd)


@pytest.mark.parametrize("body, why", [
    # alienv for a package it does not have: a message and a non-zero exit.
    ('echo "ERROR: Unable to locate a modulefile for \'$1\'" >&2; exit 3',
     "exited with 3: ERROR: Unable to locate a modulefile for 'O2PDPSuite/v1'"),
    # Environment Modules: exit status 0, the failure in the code it prints.
    ('echo "ERROR: Unable to locate a modulefile for \'$1\'" >&2; echo "test 0 = 1;"',
     "printed evaluates to a failure (exit status 1): ERROR: Unable to locate a modulefile for 'O2PDPSuite/v1'"),
    ("echo \"O2='unterminated; export O2;\"", "evaluates to a failure (exit status 2)"),
    ("echo 'false;'", "evaluates to a failure (exit status 1)"),
    # Code that leaves the shell before the environment is read: no environment, not an empty one.
    ("echo 'O2=1; export O2; exit 0;'", "the evaluating shell printed no environment"),
    ("kill -KILL $$", "was killed by SIGKILL"),
    ("head -c 3000000 /dev/zero | tr '\\0' x", "printed more than 2097152 bytes"),
    ("printf 'HUGE=%s; export HUGE;' $(head -c 140000 /dev/zero | tr '\\0' x)",
     "evaluates to a failure (exit status 126)"),  # the kernel refuses `env` such a variable
])
def test_failures_say_why(tmp_path, base, body, why):
    with pytest.raises(PackagesError) as e:
        _env(_command(tmp_path, body), base, tmp_path)
    assert why in str(e.value), str(e.value)
    assert not _left(base)


def test_a_missing_command_says_so(tmp_path, base):
    settings = PackagesSettings(("/cvmfs/alice.cern.ch/bin/alienv", "printenv"), "joined", 20.0)
    if os.path.exists(settings.command[0]):
        pytest.skip("this node has ALICE's CVMFS")
    with pytest.raises(PackagesError, match="/cvmfs/alice.cern.ch/bin/alienv cannot be run: No such file or directory"):
        _env(settings, base, tmp_path)


def test_a_hanging_command_and_what_it_left_are_ended_at_the_timeout(tmp_path, base):
    """CVMFS that hangs: the command and a child holding its output are killed at packages_timeout."""
    cmd = PackagesSettings(_command(tmp_path, "sleep 300 & sleep 300").command, "separate", 1.5)
    t0 = time.monotonic()
    with pytest.raises(PackagesError, match=r"did not finish within 1.5 s \(packages_timeout\)"):
        _env(cmd, base, tmp_path)
    assert time.monotonic() - t0 < 30
    assert not _left(base)


def test_what_the_command_leaves_running_is_ended_once_it_exited(tmp_path, base):
    cmd = _command(tmp_path, "sleep 300 >/dev/null 2>&1 & echo 'O2=1; export O2;'")
    assert _env(cmd, base, tmp_path).env["O2"] == "1"
    assert not _left(base)


def test_output_held_open_by_an_escaped_process_is_not_waited_for_past_the_drain(tmp_path, base):
    """A process that left the command's session (setsid) but holds its stdout: not waited for forever."""
    ready = tmp_path / "ready"
    body = (f"setsid sh -c 'touch {ready}; exec sleep 300' & while [ ! -e {ready} ]; do sleep 0.05; done; "
            "echo 'O2=1; export O2;'")
    cmd = PackagesSettings(_command(tmp_path, body).command, "separate", 60.0)
    t0 = time.monotonic()
    with pytest.raises(PackagesError, match="still held open 5 s after it exited"):
        _env(cmd, base, tmp_path)
    assert time.monotonic() - t0 < 30
    for p in _left(base, wait_s=0):
        p.kill()


def test_the_jobs_end_stops_the_setup(tmp_path, base):
    cmd = _command(tmp_path, "sleep 300")
    t0 = time.monotonic()
    with pytest.raises(PackagesError, match="the job is being ended"):
        _env(cmd, base, tmp_path, stopping=lambda: time.monotonic() - t0 > 0.5)
    assert time.monotonic() - t0 < 30
    assert not _left(base)

"""The pilot's start-up script and token file: rendered text, file modes, and the script run for real with bash
against stand-in installations (one missing, one whose `bin/gridpilot` records what it was given)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from gridpilot import exitcodes
from gridpilot.ce.backend import Resources
from gridpilot.ce.script import (EXIT_NAME, PilotScript, pilot_environment, read_exit_file, render_script,
                                 write_pilot_files, write_token)

TOKEN = "eyJ0eXAiOiJKV1QifQ.secret-agent-token.signature"


def spec(tmp_path: Path, install: Path, **over) -> PilotScript:
    values = dict(name="ce1-1", central_url="http://127.0.0.1:9", site="S", ce="S::CE", backend="local",
                  resources=Resources(4, 8000, 7200), install_path=str(install),
                  token_file=tmp_path / "pilot" / "agent.token", workdir=str(tmp_path / "pilot" / "work"),
                  environment={"SITE_SETUP": "a b'c", "GRIDPILOT_SITE": "EVIL"})
    values.update(over)
    return PilotScript(**values)


def test_the_script_sets_the_runner_up_and_never_holds_the_token(tmp_path):
    s = spec(tmp_path, Path("/cvmfs/gridpilot/v1"))
    text = render_script(s, created=0)
    assert text.startswith("#!/bin/bash\n")
    assert TOKEN not in text
    assert "export GRIDPILOT_CORES=4\n" in text and "export GRIDPILOT_MEMORY_MB=8000\n" in text
    assert "export GRIDPILOT_SLOT_TTL=7080\n" in text  # the wall time less the wind-down margin
    assert f"export GRIDPILOT_TOKEN_FILE={s.token_file}\n" in text
    assert "runner=/cvmfs/gridpilot/v1/bin/gridpilot\n" in text
    assert "export SITE_SETUP='a b'\"'\"'c'\n" in text  # shell-quoted
    env = pilot_environment(s)
    assert env["GRIDPILOT_SITE"] == "S", "the site's environment may not rebind the pilot"


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "$(id)"])
def test_bad_environment_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="not a valid shell name"):
        render_script(spec(tmp_path, tmp_path, environment={name: "x"}))


def test_the_token_file_is_0600_from_the_start_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        write_token(tmp_path / "t", TOKEN)
    finally:
        os.umask(old)
    st = (tmp_path / "t").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert (tmp_path / "t").read_text().strip() == TOKEN
    with pytest.raises(FileExistsError):  # never overwrites (nor follows a planted link)
        write_token(tmp_path / "t", TOKEN)


def test_a_missing_installation_is_said_and_the_token_is_gone(tmp_path):
    s = spec(tmp_path, tmp_path / "nowhere")
    script = write_pilot_files(tmp_path / "pilot", s, TOKEN)
    assert stat.S_IMODE((tmp_path / "pilot").stat().st_mode) == 0o700
    r = subprocess.run(["/bin/bash", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 3
    assert f"no gridpilot installation at {tmp_path / 'nowhere'}" in r.stderr
    assert not s.token_file.exists()


STAND_IN = """#!/bin/bash
# A stand-in `gridpilot`: records its argv and environment, then waits for SIGTERM as a runner would.
printf '%s\\n' "$@" > "$GRIDPILOT_WORKDIR/../argv"
env > "$GRIDPILOT_WORKDIR/../env"
cat "$GRIDPILOT_TOKEN_FILE" > "$GRIDPILOT_WORKDIR/../token-read"
trap 'echo TERM > "$GRIDPILOT_WORKDIR/../got-term"; exit 0' TERM
while :; do sleep 0.1; done
"""


def test_the_runner_reads_the_token_from_the_file_and_sigterm_reaches_it(tmp_path):
    install = tmp_path / "install"
    (install / "bin").mkdir(parents=True)
    (install / "bin" / "gridpilot").write_text(STAND_IN)
    (install / "bin" / "gridpilot").chmod(0o755)
    s = spec(tmp_path, install)
    script = write_pilot_files(tmp_path / "pilot", s, TOKEN)
    proc = subprocess.Popen(["/bin/bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    pilot = tmp_path / "pilot"
    deadline = time.monotonic() + 20
    while not (pilot / "token-read").exists() or not (pilot / "token-read").read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    assert (pilot / "token-read").read_text().strip() == TOKEN
    assert (pilot / "argv").read_text().split() == ["runner", "--log-level", "INFO"]
    env = (pilot / "env").read_text()
    assert TOKEN not in env and f"GRIDPILOT_TOKEN_FILE={s.token_file}" in env and "GRIDPILOT_SITE=S\n" in env
    os.kill(proc.pid, signal.SIGTERM)  # as the batch system ends the slot
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert (pilot / "got-term").exists(), "SIGTERM did not reach the runner"
    assert "runner exited with 0" in out
    assert not s.token_file.exists()


def test_the_pilot_directory_is_new(tmp_path):
    s = spec(tmp_path, tmp_path)
    write_pilot_files(tmp_path / "pilot", s, TOKEN)
    with pytest.raises(FileExistsError):
        write_pilot_files(tmp_path / "pilot", s, TOKEN)


@pytest.mark.parametrize("body, code", [("exit 12", 12), ("exit 0", 0), ("kill -9 $$", 137)])
def test_the_script_records_the_runners_exit_code_for_the_ce(tmp_path, body, code):
    install = tmp_path / "install"
    (install / "bin").mkdir(parents=True)
    (install / "bin" / "gridpilot").write_text(f"#!/bin/sh\n{body}\n")
    (install / "bin" / "gridpilot").chmod(0o755)
    s = spec(tmp_path, install)
    script = write_pilot_files(tmp_path / "pilot", s, TOKEN)
    r = subprocess.run(["/bin/bash", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == code, r.stdout + r.stderr
    exit_file = tmp_path / "pilot" / EXIT_NAME
    assert exit_file.read_text() == f"{code}\n"
    assert stat.S_IMODE(exit_file.stat().st_mode) == 0o600
    assert read_exit_file(exit_file) == code
    assert [p.name for p in (tmp_path / "pilot").iterdir() if p.name.endswith(".tmp")] == []


def test_a_missing_installation_is_recorded_as_such(tmp_path):
    s = spec(tmp_path, tmp_path / "nowhere")
    script = write_pilot_files(tmp_path / "pilot", s, TOKEN)
    subprocess.run(["/bin/bash", str(script)], capture_output=True, timeout=30)
    assert read_exit_file(tmp_path / "pilot" / EXIT_NAME) == exitcodes.NO_INSTALL


@pytest.mark.parametrize("content", [b"", b"ok\n", b"12 13\n", b"99999\n", b"-200\n", b"\xff\n", b"1" * 100])
def test_an_exit_file_that_is_not_one_believable_number_is_ignored(tmp_path, content):
    (tmp_path / EXIT_NAME).write_bytes(content)
    assert read_exit_file(tmp_path / EXIT_NAME) is None


def test_the_exit_file_is_never_read_through_a_link_or_from_a_fifo(tmp_path):
    (tmp_path / "elsewhere").write_text("7\n")
    (tmp_path / EXIT_NAME).symlink_to(tmp_path / "elsewhere")
    assert read_exit_file(tmp_path / EXIT_NAME) is None
    os.mkfifo(tmp_path / "fifo")
    assert read_exit_file(tmp_path / "fifo") is None, "a FIFO planted by the pilot's user must not block the CE"
    assert read_exit_file(tmp_path / "missing") is None
    (tmp_path / "good").write_text("-9\n")
    assert read_exit_file(tmp_path / "good") == -9

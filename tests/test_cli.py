"""The `gridpilot` command as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import gridpilot


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridpilot", *args], capture_output=True, text=True, timeout=timeout)


def test_version():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"gridpilot {gridpilot.__version__}"
    assert gridpilot.__version__ != "0.0.0+unknown"


def test_no_command_prints_help_and_fails():
    out = run()
    assert out.returncode == 2
    assert "usage: gridpilot" in out.stdout


def test_unknown_command_is_an_error():
    out = run("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_demo_runs_every_example_to_its_expected_state():
    out = run("demo", "--json", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = [json.loads(line) for line in out.stdout.splitlines()]
    by_name = {j["name"]: j for j in jobs}
    assert by_name["hello"]["state"] == "DONE"
    assert by_name["multicore"]["state"] == "DONE"
    assert by_name["analysis"]["state"] == "DONE"
    assert by_name["validation_fails"]["state"] == "ERROR_V"
    assert (by_name["ttl_exceeded"]["state"], by_name["ttl_exceeded"]["kill_reason"]) == ("ERROR_E", "TTL")
    assert "every job ended as expected" in out.stderr
    # The demo never leaves a process behind.
    # Only this checkout's interpreter: other checkouts on the machine may be running pilots of their own.
    pattern = "^" + re.escape(sys.executable) + " -m gridpilot.pilot.(agent|wrapper)"
    leftovers = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


def test_demo_runs_a_given_jdl_with_a_local_executable(tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho ran with $ALIEN_PROC_ID > out.txt\n")
    script.chmod(0o755)
    jdl = tmp_path / "mine.jdl"
    jdl.write_text('Executable = "job.sh";\nTTL = 60;\nOutputFile = { "out.txt@disk=1" };\n')
    out = run("demo", "--json", str(jdl), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (job,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert job["state"] == "DONE" and job["exit_code"] == 0

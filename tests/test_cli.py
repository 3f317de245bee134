"""The `gridpilot` command as a user runs it."""

from __future__ import annotations

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


def test_demo_runs_payload_to_done():
    out = run("demo", "--seconds", "1.5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "job state: DONE" in out.stdout
    assert "outputs: worker0.out, worker1.out" in out.stdout
    assert "procs=3" in out.stdout

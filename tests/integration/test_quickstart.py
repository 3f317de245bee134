"""docs/central.md's quick start, command by command, as separate processes from a fresh state
directory: init, serve, an agent token, a runner given nothing but that token and the close storage element, and
`submit examples/local_demo.jdl --wait`, which must end DONE. The one difference: `serve --port 0` (a free port on a
shared machine), which the runner finds through the central.url serve writes, as it would the default port's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from gridpilot import exitcodes
from gridpilot.central.serve import DEFAULT_SE_NAME
from gridpilot.client import CentralClient
from gridpilot.endpoints import URL_FILE
from gridpilot.errors import CentralError, CentralUnreachable
from support import paths

ROOT = paths.ROOT
GRIDPILOT = [sys.executable, "-m", "gridpilot"]
PAGE = ROOT / "docs" / "central.md"
#: The page's quick-start block, command by command (its `&` aside), as test_readme_central_quickstart runs it.
PAGE_COMMANDS = [
    "gridpilot central init",
    "gridpilot central serve",
    "gridpilot central token --role agent --subject pilot-1 --site MYSITE --ce MYSITE::CE1 -o agent.token",
    f"gridpilot runner --token-file agent.token --close-se {DEFAULT_SE_NAME}",
    "gridpilot submit examples/local_demo.jdl --wait",
]


def test_the_page_gives_the_commands_this_test_runs():
    """The block under "Quick start" is the first ```sh block of docs/central.md; a change there must be made here
    too, so that what the page tells a reader to type is what the test below ran."""
    block = re.search(r"^```sh\n(.*?)^```", PAGE.read_text(), re.M | re.S)
    assert block, "docs/central.md lost its ```sh quick start"
    commands = [line.strip().rstrip("&").strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == PAGE_COMMANDS


def test_readme_central_quickstart(tmp_path):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env["GRIDPILOT_STATE_DIR"] = str(state)
    # The runner's work directory (default $TMPDIR/gridpilot-work) inside the test's.
    env["TMPDIR"] = str(tmp_path)

    def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*GRIDPILOT, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    assert run("central", "init").returncode == 0
    serve = subprocess.Popen([*GRIDPILOT, "central", "serve", "--port", "0"], cwd=ROOT, env=env,
                             stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT)
    runner = None
    try:
        token = run("central", "token", "--role", "agent", "--subject", "pilot-1", "--site", "MYSITE",
                    "--ce", "MYSITE::CE1", "-o", str(tmp_path / "agent.token"))
        assert token.returncode == 0, token.stderr
        # Started at once, as the page's `&` does: serve may not listen yet, which the start-up window covers.
        runner = subprocess.Popen([*GRIDPILOT, "runner", "--token-file", str(tmp_path / "agent.token"),
                                   "--close-se", DEFAULT_SE_NAME], cwd=ROOT, env=env,
                                  stdout=open(tmp_path / "runner.log", "w"), stderr=subprocess.STDOUT)
        url = _served_url(state, serve)
        submit = run("submit", "examples/local_demo.jdl", "--wait", "--timeout", "120", timeout=180)
        log = (tmp_path / "runner.log").read_text()
        assert submit.returncode == 0, f"{submit.stdout}\n{submit.stderr}\n--- runner:\n{log}"
        assert "job 1 ended DONE (exit code 0)" in submit.stdout, submit.stdout
        assert f"for MYSITE / MYSITE::CE1, central {url}" in log, log
        assert "stage-out: complete (DONE)" in run("trace", "1").stdout
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(60) == exitcodes.STOPPED, (tmp_path / "runner.log").read_text()
    finally:
        for p in (runner, serve):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(30)


def _served_url(state: Path, serve: subprocess.Popen, timeout: float = 60) -> str:
    """The URL `central serve` wrote, once it answers there."""
    deadline = time.monotonic() + timeout
    while True:
        assert serve.poll() is None, f"central serve exited with {serve.returncode}"
        assert time.monotonic() < deadline, "central serve did not answer"
        try:
            url = (state / URL_FILE).read_text().strip()
            CentralClient(url, None, retries=0).health()
            return url
        except (OSError, CentralError, CentralUnreachable):
            time.sleep(0.2)

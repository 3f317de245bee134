"""Central's access log: one INFO line per request (method, path, role, subject, status, ms), uvicorn's own access
log off, and never a token's text anywhere in what central logs, whatever the request carried."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import urllib3

from gridpilot.central.serve import EmbeddedCentral
from gridpilot.client import CentralClient

LINE = re.compile(r"^(\S+) (\S+|\"[^\"]*\") (\S+) (\S+|\"[^\"]*\") (\d{3}) (\d+\.\d) ms$")


def access_lines(caplog: pytest.LogCaptureFixture):
    return [LINE.match(r.getMessage()) for r in caplog.records if r.name == "gridpilot.central.access"]


def wait_lines(caplog, n: int):
    # The line is written when the answer has gone: the client may have it a moment before.
    deadline = time.monotonic() + 20
    while len(access_lines(caplog)) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return access_lines(caplog)


def test_one_line_per_request_and_no_token_anywhere(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with EmbeddedCentral(tmp_path / "c", sweep_interval_s=0) as central:
        admin = central.client(retries=0)
        token = admin.mint_token("user", "alice smith")
        other = admin.mint_token("user", "bob")
        # The two mints' lines are written after their answers: wait for them, or one may land after the clear.
        wait_lines(caplog, 2)
        caplog.clear()
        alice = CentralClient(central.url, token, retries=0)
        alice.whoami()
        with pytest.raises(Exception):  # noqa: B017 (which error it is does not matter here)
            alice.get_job(424242)
        # A token in the query string (no client of ours sends one there) and in a header central refuses.
        r = urllib3.request("GET", f"{central.url}/api/v1/jobs?token={other}&limit=1",
                            headers={"Authorization": f"Bearer {token}"})
        assert r.status == 200
        r = urllib3.request("GET", f"{central.url}/api/v1/whoami", headers={"Authorization": f"Bearer {other}x"})
        assert r.status == 401
        r = urllib3.request("GET", f"{central.url}/no/such/route", headers={"Authorization": f"Bearer {other}"})
        assert r.status == 404
        central.client().metrics()
        lines = wait_lines(caplog, 6)
    assert all(lines), [r.getMessage() for r in caplog.records if r.name == "gridpilot.central.access"]
    got = [(m.group(1), m.group(2), m.group(3), m.group(4), m.group(5)) for m in lines]
    assert got == [
        ("GET", "/api/v1/whoami", "user", '"alice smith"', "200"),
        ("GET", "/api/v1/jobs/424242", "user", '"alice smith"', "404"),
        ("GET", "/api/v1/jobs", "user", '"alice smith"', "200"),
        ("GET", "/api/v1/whoami", "-", "-", "401"),
        ("GET", "/no/such/route", "-", "-", "404"),
        ("GET", "/metrics", "-", "-", "200"),
    ]
    for r in caplog.records:
        assert r.levelno == logging.INFO or r.name != "gridpilot.central.access"
    # Everything logged in this process but the test's own HTTP client (urllib3 logs the URLs it asks for).
    server = [r for r in caplog.records if not r.name.startswith("urllib3")]
    assert server, "nothing logged"
    everything = "\n".join(f"{r.getMessage()} {r.args} {r.exc_text or ''}" for r in server)
    for secret in (token, other):
        for part in secret.split("."):
            assert part not in everything, "a token's text reached the log"


def test_central_serve_logs_requests_and_uvicorn_does_not(tmp_path):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    gp = [sys.executable, "-m", "gridpilot"]
    r = subprocess.run(gp + ["central", "init", "--state-dir", str(state)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    token = (state / "admin.token").read_text().strip()
    err = tmp_path / "serve.err"
    with open(err, "w") as e:
        serve = subprocess.Popen(gp + ["central", "serve", "--state-dir", str(state), "--port", "0",
                                       "--log-level", "info"], stdout=subprocess.PIPE, stderr=e, text=True, env=env)
    try:
        line = serve.stdout.readline()
        url = re.search(r"(http://\S+)", line).group(1)
        client = CentralClient(url, token)
        assert client.whoami()["role"] == "admin"
        deadline = time.monotonic() + 30
        while "GET /api/v1/whoami admin" not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
    finally:
        serve.terminate()
        serve.wait(30)
    text = Path(err).read_text()
    assert re.search(r"INFO gridpilot\.central\.access: GET /api/v1/whoami admin admin 200 \d+\.\d ms", text), text
    assert "HTTP/1.1" not in text, "uvicorn's own access log is on"
    for part in token.split("."):
        assert part not in text

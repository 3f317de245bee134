"""The private A-REX of tests/support/arex.py works: one trivial xRSL job, submitted through REST 1.0 with the test
user's certificate, reaches FINISHED with its output in the session directory, and is cleaned afterwards. The
service listens on loopback only."""

from __future__ import annotations

import json
import socket
import time

import pytest
from support.arex import REST_PATH, ArexServer

_FINISH_TIMEOUT_S = 120.0
_CLEAN_TIMEOUT_S = 60.0

XRSL = """&(executable="/bin/sh")
 (arguments="-c" "echo hello from arex")
 (stdout="out.txt")
 (outputfiles=("out.txt" ""))
 (jobname="gridpilot-arex-smoke")"""


def _json(response) -> dict:
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    return json.loads(response.data)


def _live_state(pool, job_id: str) -> str:
    """The state A-REX itself holds now (diagnose/status), not the info provider's lagging one."""
    r = pool.request("GET", f"{REST_PATH}/jobs/{job_id}/diagnose/status")
    assert r.status == 200, (r.status, r.data[:300])
    return r.data.decode().strip().split()[0]


def test_one_xrsl_job_reaches_finished_and_is_cleaned(arex_server: ArexServer):
    pool = arex_server.http()
    t0 = time.monotonic()
    r = pool.request("POST", f"{REST_PATH}/jobs?action=new", body=XRSL.encode(),
                     headers={"Content-Type": "application/rsl", "Accept": "application/json"})
    assert r.status == 201, (r.status, r.data[:500])
    job = _json(r)["job"]
    assert isinstance(job, dict), job  # one job: an object, not a list
    assert job["status-code"] == "201", job
    job_id = job["id"]

    states = []
    deadline = t0 + _FINISH_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _live_state(pool, job_id)
        if not states or states[-1] != state:
            states.append(state)
        if state in ("FINISHED", "FAILED", "KILLED", "DELETED"):
            break
        time.sleep(0.5)
    finished_s = time.monotonic() - t0
    assert states[-1] == "FINISHED", (states, arex_server.log_tail())
    print(f"submit -> FINISHED in {finished_s:.1f} s through states {states}")

    r = pool.request("GET", f"{REST_PATH}/jobs/{job_id}/session/out.txt")
    assert r.status == 200, (r.status, r.data[:300])
    assert r.data == b"hello from arex\n"

    r = pool.request("POST", f"{REST_PATH}/jobs?action=clean", body=json.dumps({"job": [{"id": job_id}]}).encode(),
                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    assert r.status == 201, (r.status, r.data[:500])
    cleaned = _json(r)["job"]
    assert cleaned["id"] == job_id and cleaned["status-code"] == "202", cleaned

    # Cleaning is asynchronous: the job is gone from the service (404) once A-REX has processed the request.
    deadline = time.monotonic() + _CLEAN_TIMEOUT_S
    status = 200
    while time.monotonic() < deadline:
        status = pool.request("GET", f"{REST_PATH}/jobs/{job_id}/diagnose/status").status
        if status == 404:
            break
        time.sleep(0.5)
    assert status == 404, f"job {job_id} still known {_CLEAN_TIMEOUT_S:.0f} s after clean"
    assert not (arex_server.base / "session" / job_id).exists()
    pool.close()


def test_the_service_listens_on_loopback_only(arex_server: ArexServer):
    with socket.create_connection(("127.0.0.1", arex_server.port), timeout=5):
        pass
    outside = [a for a in _own_addresses() if not a.startswith("127.")]
    if not outside:
        pytest.skip("this machine has no non-loopback IPv4 address to probe")
    for address in outside:
        with pytest.raises(OSError):
            socket.create_connection((address, arex_server.port), timeout=2).close()


def _own_addresses() -> list:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})

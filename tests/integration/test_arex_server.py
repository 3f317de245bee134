"""The private A-REX of tests/support/arex.py works: one trivial xRSL job, submitted through REST 1.0 with the test
user's certificate, reaches FINISHED with its output in the session directory, and is cleaned afterwards. The
service listens on loopback only."""

from __future__ import annotations

import json
import socket
import time

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
    print(f"first REST answer {arex_server.ready_s:.1f} s after start; submit -> FINISHED in {finished_s:.1f} s "
          f"through states {states}")

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
    listeners = _listeners(arex_server.port)
    assert listeners, f"nothing listens on port {arex_server.port}"
    assert listeners == {"127.0.0.1"}, listeners


def _listeners(port: int) -> set:
    """The local addresses of the sockets listening on `port`, from the kernel's tables (IPv4 and IPv6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            if width == 8:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
            else:  # four host-order 32-bit words
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8))
                found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found

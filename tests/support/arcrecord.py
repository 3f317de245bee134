"""Recording what a real A-REX answers on its REST 1.0 interface, for the unit tests of gridpilot.arc.rest
(tests/unit/test_arc_rest_answers.py replays tests/fixtures/arc/*.json) and for checking that those recordings
still say what A-REX says (tests/integration/test_arc_rest_recorded.py records afresh and compares their shapes).

Each recording is one exchange: `{"name", "method", "path" (below the REST root, job ids as placed by the
scenario), "request_body"?, "status", "content_type", "body"}`. Job ids are replaced by `{JOB0}`, `{JOB1}`...
in path and body so the files do not change with every recording; the replay puts ids back.

To refresh them (root, ARC installed): `GRIDPILOT_ARC_RECORD=1 .venv/bin/python -m pytest -q -p no:cacheprovider
tests/integration/test_arc_rest_recorded.py` writes the new recordings over the old ones.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

from support.arex import REST_PATH, ArexServer
from support.paths import FIXTURES

#: Where the recordings live.
ARC_FIXTURES = FIXTURES / "arc"


RECORD_ENV = "GRIDPILOT_ARC_RECORD"
_FINAL_TIMEOUT_S = 180.0

_OK = '&(executable="/bin/sh")(arguments="-c" "echo recorded")(stdout="out.txt")(outputfiles=("out.txt" ""))' \
      '(jobname="gp-record-ok")'
_FAILS = '&(executable="/bin/sh")(arguments="-c" "exit 3")(jobname="gp-record-fails")'
_SLEEPS = '&(executable="/bin/sh")(arguments="-c" "sleep 600")(jobname="gp-record-sleeps")'
_BROKEN = '&(executable="/bin/sh")(arguments="-c" "true"'
#: A job id no A-REX has made (A-REX ids are 54 letters and digits).
UNKNOWN_ID = "0" * 54


class _Recorder:
    def __init__(self, server: ArexServer) -> None:
        self.pool = server.http(timeout=60.0)
        self.ids: List[str] = []
        self.out: Dict[str, Dict[str, Any]] = {}

    def _placeholders(self, text: str) -> str:
        for i, job_id in enumerate(self.ids):
            text = text.replace(job_id, "{JOB%d}" % i)
        return text

    def call(self, name: Optional[str], method: str, path: str, body: Optional[bytes] = None,
             content_type: Optional[str] = None) -> Any:
        headers = {"Accept": "application/json, text/plain, application/octet-stream"}
        if content_type:
            headers["Content-Type"] = content_type
        r = self.pool.request(method, REST_PATH + path, body=body, headers=headers)
        if name is not None:
            entry: Dict[str, Any] = {"name": name, "method": method, "path": self._placeholders(path),
                                     "status": r.status, "content_type": r.headers.get("Content-Type", ""),
                                     "body": self._placeholders(r.data.decode("utf-8"))}
            if body is not None:
                entry["request_body"] = self._placeholders(body.decode("utf-8"))
                entry["request_content_type"] = content_type
            self.out[name] = entry
        return r

    def new(self, name: str, descriptions: List[str]) -> List[str]:
        body = descriptions[0] if len(descriptions) == 1 else "+" + "".join(f"({d})" for d in descriptions)
        r = self.pool.request("POST", REST_PATH + "/jobs?action=new", body=body.encode(),
                              headers={"Content-Type": "application/rsl", "Accept": "application/json"})
        new_ids: List[str] = []
        if r.status == 201:
            job = json.loads(r.data)["job"]
            new_ids = [j["id"] for j in (job if isinstance(job, list) else [job]) if "id" in j]
        self.ids.extend(new_ids)
        self.out[name] = {"name": name, "method": "POST", "path": "/jobs?action=new", "request_body": body,
                          "request_content_type": "application/rsl", "status": r.status,
                          "content_type": r.headers.get("Content-Type", ""),
                          "body": self._placeholders(r.data.decode("utf-8"))}
        return new_ids

    def state(self, job_id: str) -> str:
        return self.pool.request("GET", f"{REST_PATH}/jobs/{job_id}/diagnose/status").data.decode().strip()

    def wait(self, job_id: str, want: str) -> None:
        deadline = time.monotonic() + _FINAL_TIMEOUT_S
        while self.state(job_id) != want:
            if time.monotonic() > deadline:
                raise AssertionError(f"{job_id} not {want} in {_FINAL_TIMEOUT_S:.0f} s")
            time.sleep(0.5)


def record(server: ArexServer) -> Dict[str, Dict[str, Any]]:
    """Every exchange the unit tests replay, from `server`, by name. Leaves no job behind."""
    rec = _Recorder(server)
    try:
        (ok,) = rec.new("new_one", [_OK])
        fails, sleeps = rec.new("new_bulk", [_FAILS, _SLEEPS])
        rec.new("new_one_refused", [_BROKEN])
        rec.new("new_bulk_one_broken", [_OK, _BROKEN])
        rec.call("session_list_empty", "GET", f"/jobs/{sleeps}/session/")
        rec.call("session_put", "PUT", f"/jobs/{sleeps}/session/in/data.txt", b"recorded input\n",
                 "application/octet-stream")
        rec.call(None, "PUT", f"/jobs/{sleeps}/session/top.txt", b"x", "application/octet-stream")
        rec.call("session_list_file_and_dir", "GET", f"/jobs/{sleeps}/session/")
        rec.call(None, "PUT", f"/jobs/{sleeps}/session/in/more.txt", b"y", "application/octet-stream")
        rec.call("session_list_two_files", "GET", f"/jobs/{sleeps}/session/in")
        rec.call("session_get", "GET", f"/jobs/{sleeps}/session/in/data.txt")
        rec.call("session_get_missing", "GET", f"/jobs/{sleeps}/session/never.txt")
        rec.call("session_get_gone", "GET", f"/jobs/{UNKNOWN_ID}/session/out.txt")
        rec.wait(sleeps, "INLRMS")
        rec.call("diagnose_status_inlrms", "GET", f"/jobs/{sleeps}/diagnose/status")
        rec.call("diagnose_status_gone", "GET", f"/jobs/{UNKNOWN_ID}/diagnose/status")
        status_body = json.dumps({"job": [{"id": ok}, {"id": sleeps}, {"id": UNKNOWN_ID}]}).encode()
        rec.call("status_mixed", "POST", "/jobs?action=status", status_body, "application/json")
        rec.call("status_one", "POST", "/jobs?action=status", json.dumps({"job": [{"id": ok}]}).encode(),
                 "application/json")
        kill_body = json.dumps({"job": [{"id": sleeps}, {"id": UNKNOWN_ID}]}).encode()
        rec.call("kill_mixed", "POST", "/jobs?action=kill", kill_body, "application/json")
        for job_id in (ok, fails, sleeps):
            rec.wait(job_id, "FINISHED")
        rec.call("diagnose_status_finished", "GET", f"/jobs/{ok}/diagnose/status")
        rec.call("diagnose_failed_none", "GET", f"/jobs/{ok}/diagnose/failed")
        rec.call("diagnose_failed_exit", "GET", f"/jobs/{fails}/diagnose/failed")
        rec.call("diagnose_failed_killed", "GET", f"/jobs/{sleeps}/diagnose/failed")
        rec.call("diagnose_errors_killed", "GET", f"/jobs/{sleeps}/diagnose/errors")
        rec.call("diagnose_errors_exit", "GET", f"/jobs/{fails}/diagnose/errors")
        rec.call("session_get_output", "GET", f"/jobs/{ok}/session/out.txt")
        clean_body = json.dumps({"job": [{"id": ok}, {"id": fails}, {"id": UNKNOWN_ID}]}).encode()
        rec.call("clean_mixed", "POST", "/jobs?action=clean", clean_body, "application/json")
        rec.call("clean_one", "POST", "/jobs?action=clean", json.dumps({"job": [{"id": sleeps}]}).encode(),
                 "application/json")
    finally:
        if rec.ids:
            rec.pool.request("POST", REST_PATH + "/jobs?action=clean",
                             body=json.dumps({"job": [{"id": j} for j in rec.ids]}).encode(),
                             headers={"Content-Type": "application/json", "Accept": "application/json"})
        rec.pool.close()
    return rec.out


def shape(value: Any) -> Any:
    """What a recording's JSON body looks like with the values taken out (keys and types), for comparing a fresh
    recording with a stored one: ids and reasons change, the structure must not."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def load(name: str) -> Dict[str, Any]:
    return json.loads((ARC_FIXTURES / f"{name}.json").read_text())


def save(recordings: Dict[str, Dict[str, Any]]) -> None:
    d = ARC_FIXTURES
    d.mkdir(parents=True, exist_ok=True)
    for name, entry in recordings.items():
        (d / f"{name}.json").write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")

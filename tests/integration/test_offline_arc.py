"""`gridpilot offline .` as an ARC job, the way the tower runs it: a real A-REX (fork LRMS) runs a gridpilot install
the mapped user can run (`arc_node_install`, laid out over the node's CPython as on CVMFS) in the job's session
directory; job.json and the inputs go in by REST PUT, result.json, the outputs and the pilot's log come back by REST
GET. Two jobs in one submission: one that is saved (SAVING, its output listed and identical), one whose input was
damaged on its way (ERROR_IB, INPUT_FILES)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List

from gridpilot.arc.rest import ArcRest
from support.arex import ArexServer
from support.offlinejob import Input, adler32, job_document, md5, states, texts
from support.pilot import shell_jdl

#: A trivial ARC job takes ~20 s to FINISHED with the fork LRMS (it polls); two on a loaded machine, far less than this.
FINISH_TIMEOUT_S = 300.0
ENDED = ("FINISHED", "FAILED", "KILLED", "DELETED")
DATA = Input("/alice/data/run9/hits.dat", b"0123456789abcdef" * 4096)


def xrsl(install_path: Path, name: str, inputs: List[str]) -> str:
    """What the tower submits: the offline runner in the session, its files put there by the client (empty source),
    the whole session kept for the download."""
    files = " ".join(f'("{n}" "")' for n in ["job.json", *inputs])
    return (f'&(executable="{install_path}/bin/gridpilot")(arguments="offline" ".")'
            f'(inputfiles={files})(outputfiles=("/" ""))(stdout="gridpilot-offline.out")(join="yes")'
            f'(jobname="{name}")')


def wait_ended(rest: ArcRest, ids: List[str], server: ArexServer) -> Dict[str, str]:
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    ended: Dict[str, str] = {}
    while time.monotonic() < deadline and len(ended) < len(ids):
        for job_id in ids:
            if job_id not in ended:
                state = rest.diagnose_state(job_id)
                if state in ENDED:
                    ended[job_id] = state
        time.sleep(1.0)
    assert len(ended) == len(ids), (ended, server.log_tail())
    return ended


def test_offline_jobs_through_arex(arex_server: ArexServer, arc_node_install: Any) -> None:
    install = Path(arc_node_install)
    rest = ArcRest(arex_server.rest_url, cert=str(arex_server.user_cert), key=str(arex_server.user_key),
                   ca_file=str(arex_server.ca_file))
    jdl = shell_jdl("tr a-f A-F < hits.dat > upper.dat; echo done", InputFile=[f"LF:{DATA.lfn}"],
                    OutputFile=["upper.dat"], TTL=600)
    good = job_document(jdl, [DATA], job_id=101)
    damaged = job_document(jdl, [DATA], job_id=102)
    bad = bytearray(DATA.data)
    bad[-1] ^= 0x01
    ids: List[str] = []
    try:
        submitted = rest.submit([xrsl(install, "gridpilot-offline-good", [DATA.file_name]),
                                 xrsl(install, "gridpilot-offline-damaged", [DATA.file_name])])
        ids = [s.id for s in submitted if s.id]
        assert [s.code for s in submitted] == [201, 201] and len(ids) == 2, submitted
        good_id, damaged_id = ids
        for job_id, doc, data in ((good_id, good, DATA.data), (damaged_id, damaged, bytes(bad))):
            rest.put_file(job_id, "job.json", json.dumps(doc).encode())
            rest.put_file(job_id, DATA.file_name, data)

        ended = wait_ended(rest, [good_id, damaged_id], arex_server)
        logs = {j: rest.get_file(j, "gridpilot-offline.out").decode(errors="replace")[-3000:] for j in ended}
        assert ended == {good_id: "FINISHED", damaged_id: "FINISHED"}, (ended, logs)

        # The saved job: result.json says SAVING, and each output it lists comes back through REST as listed.
        result = json.loads(rest.get_file(good_id, "result.json"))
        assert (result["job_id"], result["final"]) == (101, {"state": "SAVING", "kill_reason": None, "exit_code": 0})
        assert states(result) == ["STARTED", "RUNNING", "SAVING"]
        [out] = result["outputs"]
        got = rest.get_file(good_id, out["name"])
        assert got == DATA.data.upper()
        assert (out["lfn"], out["size"], out["adler32"], out["md5"]) == (
            "/gridpilot/jobs/101/upper.dat", len(got), adler32(got), md5(got))
        lines = texts(result)
        assert "Starting execution" in lines and "JobWrapper exit code: 0" in lines
        assert any(e["category"] == "proc" for e in result["trace"])
        assert len({e["key"] for e in result["trace"]}) == len(result["trace"])
        # The job ran from the install it was given (the trace names its real path).
        assert any(t.startswith("Pilot installation: gridpilot") and os.path.realpath(install) in t for t in lines), [
            t for t in lines if t.startswith("Pilot installation")]
        assert "job 101 ends SAVING" in rest.get_file(good_id, "gridpilot-offline.log").decode()

        # The damaged input: caught by its checksum in the session, before the payload ran.
        result = json.loads(rest.get_file(damaged_id, "result.json"))
        assert result["final"] == {"state": "ERROR_IB", "kill_reason": "INPUT_FILES", "exit_code": None}
        assert "RUNNING" not in states(result)
        assert any("adler32" in t and adler32(DATA.data) in t for t in texts(result))
    finally:
        try:
            if ids:
                rest.clean(ids)
        finally:
            rest.close()

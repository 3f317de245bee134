"""A real pilot uploads what a JDL's `Output` names, written as ALICE's own JDLs write it: an archive named without
.zip, a trailing comma before @disk=1, a pattern of plain files, noarchive, a key repeated with the same value.
Before `Output` was read, such a job ended DONE with nothing uploaded."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Dict

from gridpilot.errors import CentralError
from support.pilot import shell_jdl

SCRIPT = ("echo payload says hello; echo a warning >&2; echo step 1 > reco.log; echo 1 > result1.txt; "
          "echo 22 > result2.txt; echo 333 > summary.json; echo 4444 > unlisted.txt")

OUTPUT = [
    "logs:stdout,stderr,*.log,@disk=1",  # AliPhysics' CPass0.jdl: "log_archive:*.log@disk=1" and "...root,@disk=1"
    "result*.txt@disk=1",  # AliDPG's skimming JDL: "skim*.root@disk=2"
    "summary.json,@disk=1,noarchive",  # AliPhysics' createLUTNT.jdl: "Ntuple.LUT.root@Alice::CERN::se,noarchive"
]


def _registered(pilot: Any, lfn: str) -> Dict[str, Any]:
    entry = pilot.grid.user.lookup_file(lfn)
    assert len(entry["replicas"]) == 1, entry  # disk=1
    return entry


def test_output_key_is_uploaded_and_registered(pilot, tmp_path: Path) -> None:
    jdl = shell_jdl(SCRIPT, Output=OUTPUT, Price=1) + "Price = 1;\n"  # the same value twice, as GUIDFILE in CPass0
    job_id = pilot.submit(jdl)
    missing_id = pilot.submit(shell_jdl("echo hi", Output=["logs:stdout@disk=1", "AO2D.root,@disk=1"]))
    pilot.start(cores=1)
    job, missing = pilot.wait_final([job_id, missing_id], timeout=180)

    assert job["state"] == "DONE", pilot.describe(job_id)
    out = job["output_dir"]
    names = {e["name"] for e in pilot.grid.user.list_dir(out)}
    assert names == {"logs", "result1.txt", "result2.txt", "summary.json"}, names

    # The archive keeps the name the JDL gives it, and holds what its patterns match.
    logs = _registered(pilot, f"{out}/logs")
    local = pilot.grid.se.path(logs["replicas"][0]["pfn"])
    with zipfile.ZipFile(local) as zf:
        assert sorted(zf.namelist()) == ["reco.log", "stderr", "stdout"]
        assert zf.read("stdout") == b"payload says hello\n" and zf.read("reco.log") == b"step 1\n"
    assert logs["size"] == local.stat().st_size

    # Plain files, one per match of the pattern; each registered with its own content on the storage element.
    for name, body in (("result1.txt", b"1\n"), ("result2.txt", b"22\n"), ("summary.json", b"333\n")):
        entry = _registered(pilot, f"{out}/{name}")
        assert entry["size"] == len(body)
        assert pilot.grid.se.path(entry["replicas"][0]["pfn"]).read_bytes() == body

    # A name without a pattern that the payload did not write fails the job, as a missing OutputFile does.
    assert missing["state"] == "ERROR_S", pilot.describe(missing_id)
    assert "required output file(s) missing: AO2D.root" in pilot.trace_text(missing_id)
    try:
        pilot.grid.user.lookup_file(f"{missing['output_dir']}/logs")
        raise AssertionError("a job that failed its outputs registered its logs archive")
    except CentralError as e:
        assert e.status == 404
    pilot.assert_clean()

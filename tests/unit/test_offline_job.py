"""job.json as `gridpilot offline` reads it (pilot/offline.py): every field bounded, every refusal naming the field;
the recording stand-in for central that JobRun reports to; the offline catalogue the JobWrapper stages from."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from gridpilot.pilot.offline import (KILL_FILE, KILL_POLL_S, MAX_INPUTS, MAX_JOB_FILE_BYTES, OfflineJob,
                                     OfflineJobError, RecordingCentral, _outputs, offline_config)
from gridpilot.pilot.offlinecatalogue import INPUTS_SE, OUTPUTS_SE, OfflineCatalogue, storage_elements
from gridpilot.errors import CentralUnreachable
from gridpilot.states import JobStatus
from gridpilot.storage.catalogue_protocol import FileEntry, Replica
from gridpilot.storage.checksum import digest_file

GOOD: Dict[str, Any] = {
    "format": 1, "job_id": 12, "resubmission": 1, "jdl": 'Executable = "/bin/true";', "user": "alice",
    "site": "NONET", "ce": "arc1", "outputs_dir": "out",
    "inputs": [{"name": "in/a.root", "lfn": "/alice/a.root", "size": 3, "adler32": "0x24d0127", "md5": None}],
}


def changed(change: Callable[[Dict[str, Any]], Any]) -> Dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    change(doc)
    return doc


def test_a_good_document() -> None:
    job = OfflineJob.from_dict(GOOD)
    assert (job.job_id, job.resubmission, job.site, job.ce, job.outputs_dir, job.output_dir) == (
        12, 1, "NONET", "arc1", "out", None)
    [i] = job.inputs
    # Checksums are kept as this project writes them: lowercase, adler32 zero-padded to 8 digits.
    assert (i.name, i.lfn, i.size, i.adler32, i.md5) == ("in/a.root", "/alice/a.root", 3, "024d0127", None)


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(format=2), "format"),
    (lambda d: d.pop("format"), "format"),
    (lambda d: d.update(job_id=0), "job_id"),
    (lambda d: d.update(job_id=True), "job_id"),
    (lambda d: d.update(job_id="12"), "job_id"),
    (lambda d: d.update(resubmission=-1), "resubmission"),
    (lambda d: d.update(jdl=""), "jdl"),
    (lambda d: d.update(jdl="x" * ((1 << 20) + 1)), "jdl"),
    (lambda d: d.update(user=None), "user"),
    (lambda d: d.update(site="s" * 257), "site"),
    (lambda d: d.update(ce="a\x00b"), "ce"),
    (lambda d: d.update(outputs_dir="/abs"), "outputs_dir"),
    (lambda d: d.update(outputs_dir="../up"), "outputs_dir"),
    (lambda d: d.update(outputs_dir="workdir"), "outputs_dir"),
    (lambda d: d.update(output_dir="relative/dir"), "output_dir"),
    (lambda d: d.update(inputs={}), "inputs"),
    (lambda d: d.update(inputs=[{}] * (MAX_INPUTS + 1)), "inputs"),
    (lambda d: d["inputs"].append("a.root"), "inputs[1]"),
    (lambda d: d["inputs"][0].update(name="../../etc/passwd"), "inputs[0].name"),
    (lambda d: d["inputs"][0].update(name="/etc/passwd"), "inputs[0].name"),
    (lambda d: d["inputs"][0].update(name="a//b"), "inputs[0].name"),
    (lambda d: d["inputs"][0].update(name="result.json"), "inputs[0].name"),
    (lambda d: d["inputs"][0].update(name="out/a.root"), "inputs[0].name"),
    (lambda d: d["inputs"][0].update(lfn="alice/a.root"), "inputs[0].lfn"),
    (lambda d: d["inputs"][0].update(size=-1), "inputs[0].size"),
    (lambda d: d["inputs"][0].update(size=1 << 53), "inputs[0].size"),
    (lambda d: d["inputs"][0].update(size=3.0), "inputs[0].size"),
    (lambda d: d["inputs"][0].update(adler32="xyz"), "inputs[0].adler32"),
    (lambda d: d["inputs"][0].update(adler32="123456789"), "inputs[0].adler32"),
    (lambda d: d["inputs"][0].update(md5="ab" * 15), "inputs[0].md5"),
    (lambda d: d["inputs"].append(dict(d["inputs"][0], name="other")), "inputs[1].lfn"),
    (lambda d: d["inputs"].append(dict(d["inputs"][0], lfn="/alice/b")), "inputs[1].name"),
])
def test_each_bad_field_is_refused_by_name(change: Callable[[Dict[str, Any]], Any], field: str) -> None:
    with pytest.raises(OfflineJobError, match="^" + re.escape(f"job.json: {field}: ")):
        OfflineJob.from_dict(changed(change))


def test_the_file_itself(tmp_path: Path) -> None:
    with pytest.raises(OfflineJobError, match="cannot be read"):
        OfflineJob.read(tmp_path)
    (tmp_path / "job.json").write_text("{")
    with pytest.raises(OfflineJobError, match="not JSON"):
        OfflineJob.read(tmp_path)
    (tmp_path / "job.json").write_text("[]")
    with pytest.raises(OfflineJobError, match="not a JSON object"):
        OfflineJob.read(tmp_path)
    (tmp_path / "job.json").write_bytes(b" " * (MAX_JOB_FILE_BYTES + 1))
    with pytest.raises(OfflineJobError, match="larger than"):
        OfflineJob.read(tmp_path)
    (tmp_path / "job.json").write_text(json.dumps(GOOD))
    assert OfflineJob.read(tmp_path).job_id == 12


def test_the_recorder_keeps_what_the_agent_reports_and_sends_nothing() -> None:
    rec = RecordingCentral()
    rec.set_status(12, state="RUNNING", resubmission=1, at=100.0)
    rec.set_status(12, state=JobStatus.ERROR_E, resubmission=1, at=101.0, kill_reason="TTL", exit_code=None,
                   resources={"cpu_s": 1.5}, message="m")
    rec.append_trace(12, [{"ts": 1.0, "category": "trace", "text": "a", "key": "1.x.1"}])
    assert rec.heartbeats_full([{"job_id": 12, "resubmission": 1, "sample": {"rss_bytes": 5}}])["commands"] == []
    assert rec.control(12, 1) == {"commands": [], "rejected": []}
    assert rec.states == [{"state": "RUNNING", "at": 100.0},
                          {"state": "ERROR_E", "at": 101.0, "kill_reason": "TTL", "message": "m"}]
    assert rec.resources == {"cpu_s": 1.5}
    assert rec.trace_entries[0]["key"] == "1.x.1"
    assert rec.samples[0]["rss_bytes"] == 5
    with pytest.raises(CentralUnreachable, match="offline"):
        rec.lookup_file("/alice/a.root")


def test_the_recorder_answers_a_kill_while_kill_request_exists(tmp_path: Path) -> None:
    """The job directory's kill.request is central's kill, to the heartbeat and the control poll alike: JobRun
    (pilot/heartbeat.py) then ends the job as a central kill. Its first line is the reason, bounded and printable;
    a FIFO (the payload is the same user) is a request too, and is never opened for reading so never blocks."""
    rec = RecordingCentral(tmp_path)
    assert rec.control(12, 1)["commands"] == []
    assert rec.heartbeats_full([{"job_id": 12, "resubmission": 1, "sample": None}])["commands"] == []
    (tmp_path / KILL_FILE).write_bytes(b"central: kill requested\x07 by tower t1\nsecond line\n" + b"x" * 5000)
    [cmd] = rec.control(12, 1)["commands"]
    assert cmd == {"job_id": 12, "command": "kill",
                   "reason": "kill.request in the job directory: central: kill requested  by tower t1"}
    assert rec.heartbeats_full([{"job_id": 12, "resubmission": 1, "sample": {"rss_bytes": 1}}])["commands"] == [cmd]
    assert rec.kill_seen == cmd["reason"]
    (tmp_path / KILL_FILE).unlink()
    os.mkfifo(tmp_path / KILL_FILE)
    [cmd] = rec.control(12, 1)["commands"]
    assert cmd["reason"] == "kill.request in the job directory: (not a file)"
    (tmp_path / KILL_FILE).unlink()
    (tmp_path / KILL_FILE).symlink_to("/etc/hostname")
    [cmd] = rec.control(12, 1)["commands"]
    assert cmd["reason"].startswith("kill.request in the job directory: (unreadable: ")
    # Without a job directory (a recorder of something else) nothing answers a kill.
    assert RecordingCentral().control(12, 1)["commands"] == []


def test_an_input_cannot_be_named_kill_request() -> None:
    doc = {**GOOD, "inputs": [{**GOOD["inputs"][0], "name": KILL_FILE}]}
    with pytest.raises(OfflineJobError, match="inputs\\[0\\].name"):
        OfflineJob.from_dict(doc)


def test_the_offline_run_looks_for_kill_request_every_few_seconds(tmp_path: Path) -> None:
    """Whatever the site's kill_poll_interval (sized for central's load), the offline run's poll is a stat."""
    config = tmp_path / "pilot.yaml"
    config.write_text("kill_poll_interval: 0\nheartbeat_interval: 60\n")
    cfg = offline_config(str(config), tmp_path, OfflineJob.from_dict(GOOD), environ={})
    assert cfg.kill_poll_interval == KILL_POLL_S <= 5


def test_the_catalogue_answers_from_job_json_and_passes_registrations_on() -> None:
    got: List[Dict[str, Any]] = []
    cat = OfflineCatalogue([{"lfn": "/a", "pfn": "file:///job/a", "size": 3, "adler32": "00000001", "md5": None}],
                           got.append)
    assert cat.lookup("/a") == FileEntry("/a", 3, "00000001", None, (Replica(INPUTS_SE, "file:///job/a"),))
    assert cat.lookup("/b") is None
    cat.register(FileEntry("/o/x", 5, "0000000a", "m" * 32, (Replica(OUTPUTS_SE, "file:///job/out/1/x"),)))
    assert got == [{"lfn": "/o/x", "size": 5, "adler32": "0000000a", "md5": "m" * 32, "se": OUTPUTS_SE,
                    "pfn": "file:///job/out/1/x"}]
    assert [se.get("close", False) for se in storage_elements("/job", "/job/out")] == [False, True]


def test_outputs_are_read_again_and_must_lie_in_the_outputs_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "ab").mkdir(parents=True)
    (out / "ab" / "abc").write_bytes(b"hello")
    d = digest_file(out / "ab" / "abc", md5=True)
    entry = {"lfn": "/o/x", "size": d.size, "adler32": d.adler32, "md5": d.md5, "se": OUTPUTS_SE,
             "pfn": f"file://{out}/ab/abc"}
    lines: List[str] = []
    assert _outputs([entry], tmp_path, out, lines.append) == [
        {"name": "out/ab/abc", "lfn": "/o/x", "size": 5, "adler32": d.adler32, "md5": d.md5}]
    (out / "ab" / "abc").write_bytes(b"HELLO")
    assert _outputs([entry], tmp_path, out, lines.append) is None
    assert "changed after it was verified" in lines[-1]
    (tmp_path / "elsewhere").write_bytes(b"hello")
    assert _outputs([dict(entry, pfn=f"file://{tmp_path}/elsewhere")], tmp_path, out, lines.append) is None
    assert "outside the outputs directory" in lines[-1]


def test_a_job_that_cannot_start_here_is_given_back_or_failed_without_running(tmp_path: Path) -> None:
    """The ends JobRun never sees: a JDL that does not parse (ERROR_A, JOBBROKER, as matching ends it) and GPUs the
    node does not have (WAITING: the tower gives the job back). States as central would need them, in order."""
    from gridpilot.config import PilotConfig
    from gridpilot.pilot.agentsettings import AgentSettings
    from gridpilot.pilot.offline import _run_job

    (tmp_path / "sys").mkdir()
    settings = AgentSettings(config=PilotConfig(workdir=str(tmp_path / "w"), sysfs=str(tmp_path / "sys")))
    for jdl, end, reason in (("Executable = ;", "ERROR_A", "JOBBROKER"),
                             ('Executable = "/bin/true";\nGPU = "Radeon Instinct MI50 32GB";\n', "WAITING", "OK")):
        rec = RecordingCentral()
        got = _run_job(settings, rec, {"id": 5, "resubmission": 0, "jdl": jdl}, tmp_path, [])
        assert got is JobStatus[end]
        assert rec.states[-1]["state"] == end and rec.states[-1].get("kill_reason") == reason
        assert [s["state"] for s in rec.states][0] in ("STARTED", "WAITING")
        assert len({e["key"] for e in rec.trace_entries}) == len(rec.trace_entries) >= 1
        assert not (tmp_path / "w").exists(), "nothing was set up for it"

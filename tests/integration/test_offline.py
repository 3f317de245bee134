"""`gridpilot offline DIR` end to end, on this machine (no ARC): the real command, agent loop, JobWrapper and payload,
with no central and no storage element. Each case reads the result.json it leaves: the states and kill reason the
agent would report, the ALICE trace sentences, the outputs listed with sizes and checksums that match the files."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from gridpilot.storage.checksum import digest_file
from support.offlinejob import (SLEEPER_SCRIPT, Input, adler32, job_document, lay_out, make_job_dir, offline_env,
                                host_pid, process_alive, read_pid_file, read_result, run_offline, states, texts)
from support.pilot import shell_jdl
from support.require import require_or_skip

DATA = Input("/alice/data/run1/events.dat", b"event data " * 1000)


def run_ok(job_dir: Path, *args: str) -> Dict[str, Any]:
    done = run_offline(job_dir, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    result = read_result(job_dir)
    assert summary["final"] == result["final"]
    assert summary["result"] == str(job_dir / "result.json")
    return result


def assert_outputs_match_files(job_dir: Path, result: Dict[str, Any]) -> None:
    for out in result["outputs"]:
        path = job_dir / out["name"]
        assert path.is_file() and path.resolve().is_relative_to(job_dir / "out"), out
        found = digest_file(path, md5=True)
        assert (found.size, found.adler32, found.md5) == (out["size"], out["adler32"], out["md5"]), out


def assert_trace_well_formed(result: Dict[str, Any]) -> None:
    keys = [e["key"] for e in result["trace"]]
    assert len(keys) == len(set(keys)), "trace keys must be unique: the tower sends them as they are"
    assert all(isinstance(e["ts"], float) and e["category"] and isinstance(e["text"], str) for e in result["trace"])
    assert result["started_at"] <= result["ended_at"]
    assert [s["at"] for s in result["states"]] == sorted(s["at"] for s in result["states"])


def test_done_input_verified_and_output_listed(tmp_path: Path) -> None:
    # The site's pilot configuration applies: here, heartbeats (each a sample in result.json) every half second.
    config = tmp_path / "pilot.yaml"
    config.write_text("heartbeat_interval: 0.5\n")
    jdl = shell_jdl("tr a-z A-Z < events.dat > upper.dat; echo made upper.dat; sleep 2",
                    InputFile=[f"LF:{DATA.lfn}"], OutputFile=["upper.dat@disk=2"],
                    OutputErrorE=["log_archive.zip:stdout,stderr@disk=1"])
    job_dir = make_job_dir(tmp_path / "session", jdl, [DATA], job_id=31, resubmission=2,
                           output_dir="/alice/sim/out31")
    result = run_ok(job_dir, "--config", str(config))

    assert (result["format"], result["job_id"], result["resubmission"]) == (1, 31, 2)
    assert states(result) == ["STARTED", "RUNNING", "SAVING"]
    assert result["final"] == {"state": "SAVING", "kill_reason": None, "exit_code": 0}
    # One copy of the output, whatever replicas the JDL asks (the tower makes those), under the match's OutputDir.
    [out] = result["outputs"]
    upper = DATA.data.upper()
    assert (out["lfn"], out["size"], out["adler32"]) == ("/alice/sim/out31/upper.dat", len(upper), adler32(upper))
    assert (job_dir / out["name"]).read_bytes() == upper
    assert_outputs_match_files(job_dir, result)
    assert_trace_well_formed(result)
    lines = texts(result)
    # The input was checked against job.json's size and checksum on its way into the work directory.
    assert any(t.startswith(f"stage-in {DATA.lfn}: from OFFLINE::INPUTS") and f"adler32 {adler32(DATA.data)}" in t
               and "verified" in t for t in lines), lines
    for sentence in ("Starting JobWrapper", "JobWrapper started", "Starting execution", "JobWrapper exit code: 0",
                     f"Registering: {out['lfn']}. Return status: true"):
        assert sentence in lines, sentence
    assert any(t.startswith("Execution completed. Time spent:") for t in lines)
    assert any(e["category"] == "proc" for e in result["trace"]), "the ALICE [proc] lines"
    assert result["resources"]["rusage"]
    assert result["samples"] and all(s["at"] >= result["started_at"] and "rss_bytes" in s for s in result["samples"])
    # The work directory is gone; the pilot's log stays.
    assert not (job_dir / "workdir").exists()
    assert "job 31 ends SAVING" in (job_dir / "gridpilot-offline.log").read_text()


def test_payload_failure_keeps_its_logs(tmp_path: Path) -> None:
    jdl = shell_jdl("echo to stdout; echo to stderr >&2; exit 3", OutputFile=["never.dat"],
                    OutputErrorE=["log_archive.zip:stdout,stderr@disk=1"])
    job_dir = make_job_dir(tmp_path / "session", jdl)
    result = run_ok(job_dir)

    assert states(result) == ["STARTED", "RUNNING", "ERROR_E"]
    assert result["final"] == {"state": "ERROR_E", "kill_reason": "OK", "exit_code": 3}
    assert result["states"][-1]["exit_code"] == 3
    assert "payload exited with 3" in texts(result)
    # OutputErrorE: the logs of a failed job are kept, as a pilot uploads them.
    assert [o["lfn"] for o in result["outputs"]] == ["/gridpilot/jobs/7/log_archive.zip"]
    assert_outputs_match_files(job_dir, result)


def test_ttl_kill_keeps_the_outputs_that_exist(tmp_path: Path) -> None:
    jdl = shell_jdl("echo 42 > partial.txt; sleep 120", TTL=3, OutputFile=["partial.txt", "final.txt"])
    job_dir = make_job_dir(tmp_path / "session", jdl)
    t0 = time.monotonic()
    result = run_ok(job_dir)

    assert time.monotonic() - t0 < 100, "killed at its TTL, not at the payload's end"
    assert states(result)[-1] == "ERROR_E"
    assert result["final"]["state"] == "ERROR_E" and result["final"]["kill_reason"] == "TTL"
    assert any("Kill reason" in t and "TTL" in t for t in texts(result)), texts(result)
    assert [o["lfn"] for o in result["outputs"]] == ["/gridpilot/jobs/7/partial.txt"]
    assert_outputs_match_files(job_dir, result)
    assert_trace_well_formed(result)


def test_missing_input(tmp_path: Path) -> None:
    jdl = shell_jdl("cat events.dat", InputFile=[f"LF:{DATA.lfn}"])
    job_dir = lay_out(tmp_path / "session", job_document(jdl, [DATA]), {})  # listed, never put there
    result = run_ok(job_dir)

    assert result["final"] == {"state": "ERROR_IB", "kill_reason": "INPUT_FILES", "exit_code": None}
    assert "RUNNING" not in states(result)
    assert any(t.startswith("[FATAL]: input files could not be staged") and DATA.lfn in t for t in texts(result))


def test_corrupt_input(tmp_path: Path) -> None:
    jdl = shell_jdl("cat events.dat", InputFile=[f"LF:{DATA.lfn}"])
    bad = bytearray(DATA.data)
    bad[100] ^= 0xFF  # same size, other content: only the checksum tells
    job_dir = lay_out(tmp_path / "session", job_document(jdl, [DATA]), {DATA.file_name: bytes(bad)})
    result = run_ok(job_dir)

    assert result["final"]["state"] == "ERROR_IB" and result["final"]["kill_reason"] == "INPUT_FILES"
    assert any("adler32" in t and adler32(DATA.data) in t for t in texts(result)), texts(result)
    assert not (job_dir / "workdir").exists()


def test_input_not_in_job_json(tmp_path: Path) -> None:
    jdl = shell_jdl("true", InputFile=["LF:/alice/data/unlisted.dat"])
    result = run_ok(make_job_dir(tmp_path / "session", jdl))

    assert result["final"]["state"] == "ERROR_IB"
    assert any("/alice/data/unlisted.dat" in t and "not in the catalogue" in t for t in texts(result))


def test_output_not_produced(tmp_path: Path) -> None:
    jdl = shell_jdl("echo made > made.txt", OutputFile=["made.txt", "absent.txt"])
    result = run_ok(make_job_dir(tmp_path / "session", jdl))

    assert states(result) == ["STARTED", "RUNNING", "SAVING", "ERROR_S"]
    assert result["final"]["state"] == "ERROR_S"
    assert "[FATAL]: required output file(s) missing: absent.txt" in texts(result)
    assert result["outputs"] == []


def test_sigterm_ends_the_payload_and_still_writes_the_result(tmp_path: Path) -> None:
    """ARC (or its batch system) ending the job: the payload gets SIGTERM and its logs are kept (OutputErrorE, by
    default log_archive.zip of stdout and stderr) and result.json is written, as a pilot's slot ending would."""
    jdl = shell_jdl("echo 1 > early.txt; echo started; sleep 120", OutputFile=["early.txt"])
    job_dir = make_job_dir(tmp_path / "session", jdl)
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "offline", str(job_dir), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env())
    try:
        deadline = time.monotonic() + 120
        log = job_dir / "gridpilot-offline.log"
        # Once the agent knows the payload (it traces the proc format then): a SIGTERM before that gives the job
        # back (WAITING), as a slot ending before the payload ran does.
        while not (log.exists() and "FRUNTIME | RUNTIME" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    result = read_result(job_dir)
    assert result["final"]["state"] == "ERROR_E" and result["final"]["kill_reason"] == "KILLED"
    assert any("the slot is ending" in t for t in texts(result))
    assert [o["lfn"] for o in result["outputs"]] == ["/gridpilot/jobs/7/log_archive.zip"]
    assert_outputs_match_files(job_dir, result)


def test_bad_job_json_is_one_line_and_no_result(tmp_path: Path) -> None:
    doc = job_document(shell_jdl("true"), [DATA])
    doc["inputs"][0]["size"] = -1
    job_dir = lay_out(tmp_path / "session", doc, {DATA.file_name: DATA.data})
    done = run_offline(job_dir)

    assert done.returncode == 2
    assert done.stderr.strip() == ("gridpilot offline: job.json: inputs[0].size: an integer from 0 to "
                                   "9007199254740991, not -1")
    assert not (job_dir / "result.json").exists()
    assert run_offline(tmp_path / "nowhere").returncode == 2


def test_unreadable_jdl_ends_error_a(tmp_path: Path) -> None:
    result = run_ok(make_job_dir(tmp_path / "session", "Executable = ;"))
    assert result["final"] == {"state": "ERROR_A", "kill_reason": "JOBBROKER", "exit_code": None}
    assert states(result) == ["STARTED", "ERROR_A"]


def test_what_the_payload_writes_outside_its_work_directory_is_not_believed(tmp_path: Path) -> None:
    """The payload shares the job directory's user: a result.json or an output it forges there is not what the
    runner reports. result.json is written last, whole, over anything of that name; only what the stage-out
    verified is listed."""
    jdl = shell_jdl('echo forged > ../../result.json; mkdir -p ../../out/zz; echo fake > ../../out/zz/fake; '
                    'echo real > real.txt', OutputFile=["real.txt"])
    job_dir = make_job_dir(tmp_path / "session", jdl)
    result = run_ok(job_dir)

    assert result["final"]["state"] == "SAVING"
    assert [o["lfn"] for o in result["outputs"]] == ["/gridpilot/jobs/7/real.txt"]
    assert (job_dir / result["outputs"][0]["name"]).read_bytes() == b"real\n"
    assert_outputs_match_files(job_dir, result)


@pytest.mark.parametrize("runtime", ["bwrap", "podman"])
def test_in_a_container(tmp_path: Path, image_dir: Path, runtime: str) -> None:
    """With the site's container runtime, the JobWrapper and the payload run in the image; the job directory's
    inputs and outputs (two file:// elements, one inside the other) are bound into it at their own paths."""
    if shutil.which(runtime) is None:
        require_or_skip(f"no {runtime} (Debian package {'podman runc' if runtime == 'podman' else 'bubblewrap'})")
    config = tmp_path / "pilot.yaml"
    config.write_text(json.dumps({"container_runtime": runtime, "default_image": str(image_dir)}))
    jdl = shell_jdl("tr a-z A-Z < events.dat > upper.dat", InputFile=[f"LF:{DATA.lfn}"], OutputFile=["upper.dat"])
    job_dir = make_job_dir(tmp_path / "session", jdl, [DATA])
    result = run_ok(job_dir, "--config", str(config))

    assert result["final"]["state"] == "SAVING", texts(result)
    assert any(t.startswith("Support for containers detected. Will use:") for t in texts(result)), texts(result)
    [out] = result["outputs"]
    assert (job_dir / out["name"]).read_bytes() == DATA.data.upper()
    assert_outputs_match_files(job_dir, result)


def _wait_for(what: str, cond: Callable[[], Any], proc: subprocess.Popen, deadline_s: float = 120.0) -> Any:
    deadline = time.monotonic() + deadline_s
    while True:
        value = cond()
        if value:
            return value
        assert proc.poll() is None, f"the runner ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {deadline_s:.0f} s"
        time.sleep(0.1)


KILL_SENTENCES = ("kill requested by central (kill.request in the job directory: ",
                  "the JobWrapper is told to end at once: nothing of a job killed by central is uploaded",
                  "killed on request: payload terminated", "Kill reason KILLED (30): Job was killed")


def test_kill_request_file_ends_the_job_killed(tmp_path: Path) -> None:
    """The tower's kill: kill.request put into the job directory while the payload runs. The runner's recording
    stand-in answers its next control poll (every KILL_POLL_S) with central's kill, and JobRun ends the job as a
    central kill: the payload gone (its pid, with its start time, no longer there), nothing uploaded, KILLED."""
    jdl = shell_jdl(SLEEPER_SCRIPT, OutputFile=["never.txt"])
    job_dir = make_job_dir(tmp_path / "session", jdl)
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "offline", str(job_dir), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env())
    try:
        log = job_dir / "gridpilot-offline.log"
        ns_pid, start = _wait_for("payload pid", lambda: read_pid_file(job_dir / "payload.pid"), proc)
        _wait_for("the agent watching the payload", lambda: log.exists() and "FRUNTIME | RUNTIME" in log.read_text(),
                  proc)
        pid = host_pid(ns_pid, start)
        assert pid is not None and process_alive(pid, start)
        asked = time.monotonic()
        (job_dir / "kill.request").write_text("central: kill requested (tower test)\n")
        _wait_for("the payload's end", lambda: not process_alive(pid, start), proc)
        latency = time.monotonic() - asked
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    result = read_result(job_dir)
    assert result["final"] == {"state": "KILLED", "kill_reason": "KILLED", "exit_code": result["final"]["exit_code"]}
    assert states(result)[-1] == "KILLED" and "SAVING" not in states(result)
    lines = texts(result)
    for sentence in KILL_SENTENCES:
        assert any(t.startswith(sentence) for t in lines), (sentence, lines)
    assert "kill requested by central (kill.request in the job directory: central: kill requested (tower test))" \
        in lines
    assert result["outputs"] == []
    # KILL_POLL_S (2 s) to see the file, the payload's SIGTERM and ForcedKillTimeout (2 s) grace: well under 30 s
    # even on a loaded machine. Printed for the record (pytest -s).
    print(f"kill.request -> payload gone: {latency:.1f} s")
    assert latency < 30, latency


def test_a_payload_writing_kill_request_ends_only_its_own_job(tmp_path: Path) -> None:
    """The payload is the same user as the runner and can write kill.request in its own job directory: that ends
    its own job KILLED (it could end itself anyway), and result.json says it came from kill.request. Another job
    directory beside it runs to its end untouched."""
    killer = make_job_dir(tmp_path / "killer", shell_jdl("echo payload > ../../kill.request; exec sleep 600"))
    other = make_job_dir(tmp_path / "other", shell_jdl("sleep 3; echo fine > fine.txt", OutputFile=["fine.txt"]),
                         job_id=8)
    procs = [subprocess.Popen([sys.executable, "-m", "gridpilot", "offline", str(d), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env())
             for d in (killer, other)]
    try:
        for p in procs:
            assert p.wait(timeout=240) == 0, p.communicate()[1][-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    result = read_result(killer)
    assert result["final"]["state"] == "KILLED" and result["final"]["kill_reason"] == "KILLED"
    assert "kill requested by central (kill.request in the job directory: payload)" in texts(result)
    assert read_result(other)["final"]["state"] == "SAVING"


def test_a_kill_request_there_before_the_runner_starts_ends_the_job_before_its_payload_runs(tmp_path: Path) -> None:
    """The tower's request can reach the session while the ARC job still waits in its batch system: the runner's
    first look (at once, before the payload starts) ends the job KILLED, and the payload never runs."""
    job_dir = make_job_dir(tmp_path / "session", shell_jdl("echo ran > ../../ran.txt; sleep 600"))
    (job_dir / "kill.request").write_text("kill requested, passed on by tower t\n")
    result = run_ok(job_dir)
    assert result["final"]["state"] == "KILLED" and result["final"]["kill_reason"] == "KILLED", texts(result)
    assert ("kill requested by central (kill.request in the job directory: kill requested, passed on by tower t) "
            "before the job started: nothing of it runs") in texts(result)
    assert states(result) == ["KILLED"] and "Kill reason KILLED (30): Job was killed" in texts(result)
    assert not (job_dir / "ran.txt").exists()


def test_a_kill_request_while_the_job_wrapper_starts(tmp_path: Path) -> None:
    """The request arriving as the JobWrapper starts (in its PID namespace it may not take a signal yet, and the
    agent kills it, and its payload, when it is still there 3 s after the kill): the job still ends KILLED with
    result.json written and no process of it left, however the two meet."""
    job_dir = make_job_dir(tmp_path / "session", shell_jdl("sleep 600"))
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "offline", str(job_dir), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=offline_env())
    try:
        log = job_dir / "gridpilot-offline.log"
        _wait_for("the JobWrapper starting", lambda: log.exists() and "Starting JobWrapper" in log.read_text(), proc)
        (job_dir / "kill.request").write_text("now\n")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    result = read_result(job_dir)
    assert result["final"]["state"] == "KILLED" and result["final"]["kill_reason"] == "KILLED", texts(result)
    assert "cleanup: no process of the job is left" in texts(result)

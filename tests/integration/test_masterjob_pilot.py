"""Masterjobs end to end: a real central, runner, JobAgent, JobWrapper and payloads (tests/support/pilot.py), the user's
side through the `gridpilot` CLI in processes of its own.

A split over 20 input files makes 20 subjobs that all end DONE, each reading its one input and writing its output
under its own OutputDir (#alien_counter_03i#), and every output is checked byte for byte on the storage element;
kill and resubmit of a masterjob act on its subjobs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import orjson
from support.pilot import Pilot

from gridpilot import cli_codes, exitcodes

N = 20


def _cli(pilot: Pilot, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env["GRIDPILOT_TOKEN"] = pilot.grid.user_token
    return subprocess.run([sys.executable, "-m", "gridpilot", *args, "--url", pilot.grid.central.url],
                          env=env, capture_output=True, text=True, timeout=120, cwd=cwd)


def _own_area(pilot: Pilot) -> str:
    return str(pilot.grid.user.areas()["areas"][0]["path"])


def _read_lfn(pilot: Pilot, lfn: str) -> bytes:
    """The file's content on the grid's file:// storage element, found through the catalogue."""
    (rep,) = pilot.grid.user.lookup_file(lfn)["replicas"]
    assert rep["pfn"].startswith("file://"), rep
    return Path(rep["pfn"][len("file://"):]).read_bytes()


def _masterjob(pilot: Pilot, master: int, tmp_path: Path, *extra: str) -> Dict[str, Any]:
    out = _cli(pilot, "masterjob", str(master), "--json", *extra, cwd=tmp_path)
    assert out.returncode == cli_codes.OK, out.stderr
    return dict(orjson.loads(out.stdout))


def _wait_master(pilot: Pilot, master: int, timeout: float) -> Dict[str, Any]:
    """The masterjob once its summary state is final (every subjob ended), or as it is at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        job = pilot.job(master)
        if job["state"] != "SPLIT" or time.monotonic() > deadline:
            return job
        pilot._check_runner_alive()
        time.sleep(1.0)


def test_a_split_over_20_files_makes_20_subjobs_that_all_end_done(pilot: Pilot, tmp_path: Path):
    area = _own_area(pilot)
    inputs: List[str] = []
    for i in range(1, N + 1):
        local = tmp_path / f"part{i:02d}.txt"
        local.write_text(f"events of part {i}\n")
        lfn = f"{area}/inputs/part{i:02d}.txt"
        pilot.grid.register_local_file(local, lfn)
        inputs.append(lfn)
    # A plain-text collection on this machine: the CLI reads it at submit time and sends its text.
    (tmp_path / "parts.txt").write_text("# the inputs\n" + "".join(f"LF:{lfn}\n" for lfn in inputs))
    (tmp_path / "split.jdl").write_text(
        'Executable = "/bin/sh";\n'
        "Arguments = \"-c 'tr a-z A-Z < $$1 > result.txt; echo $$2 >> result.txt' sh\";\n"
        'Split = "file";\n'
        'InputDataCollection = "parts.txt";\n'
        'SplitArguments = "#alienfilename# #alien_counter#";\n'
        f'OutputDir = "{area}/split/#alien_counter_03i#";\n'
        'Output = { "result.txt@disk=1" };\n'
        "TTL = 120;\nForcedKillTimeout = 2;\n")
    out = _cli(pilot, "submit", "split.jdl", "--json", cwd=tmp_path)
    assert out.returncode == cli_codes.OK, out.stderr
    answer = orjson.loads(out.stdout)
    master = int(answer["id"])
    assert (answer["state"], answer["subjobs"], answer["split"]) == ("SPLIT", N, "file")

    before = _masterjob(pilot, master, tmp_path, "-v")
    assert before["subjobs"] == N and before["split"] == "file" and before["stored_state"] == "SPLIT"
    subjobs = sorted(i for ids in before["ids"].values() for i in ids)
    assert len(subjobs) == N and master not in subjobs
    # `gridpilot jobs` shows the masterjob, not its 20 subjobs.
    listed = orjson.loads(_cli(pilot, "jobs", "--json", cwd=tmp_path).stdout)
    assert [j["id"] for j in listed] == [master] and listed[0]["masterjob"]["subjobs"] == N

    pilot.start(container_runtime="none", cores=2, max_empty_matches=2)
    job = _wait_master(pilot, master, timeout=600)
    after = _masterjob(pilot, master, tmp_path, "-v")
    assert job["state"] == "DONE" and after["states"] == {"DONE": N}, (after, [pilot.describe(i) for i in subjobs
                                                                              if pilot.job(i)["state"] != "DONE"])
    assert sorted(after["ids"]["DONE"]) == subjobs
    for counter in range(1, N + 1):
        lfn = f"{area}/split/{counter:03d}/result.txt"
        assert _read_lfn(pilot, lfn) == f"EVENTS OF PART {counter}\n{counter}\n".encode(), lfn
    # Each subjob read only its own input: the input files are not among its registered outputs.
    sub = pilot.job(subjobs[0])
    assert sub["output_dir"] == f"{area}/split/001" and "MasterJobID" in sub["jdl"]
    table = _cli(pilot, "jobs", cwd=tmp_path).stdout.splitlines()
    assert len(table) == 2 and f"DONE ({N} DONE)" in table[1], table
    text = _cli(pilot, "masterjob", str(master), cwd=tmp_path).stdout
    assert text.splitlines()[0] == f"masterjob {master} (split.jdl): DONE, split file into {N} subjobs"
    assert text.splitlines()[1].split() == ["DONE", str(N)]
    assert pilot.wait_runner_exit(timeout=120) == 0, pilot.runner_log()[-4000:]


def test_resubmit_and_kill_of_a_masterjob_act_on_its_subjobs(pilot: Pilot, tmp_path: Path):
    area = _own_area(pilot)
    # Three subjobs that fail on their first attempt (exit 1: ERROR_E) and succeed on the next.
    (tmp_path / "flaky.jdl").write_text(
        'Executable = "/bin/sh";\n'
        "Arguments = \"-c 'test $ALIEN_RESUBMISSION -ge 1'\";\n"
        'Split = "production:1-3";\n'
        f'OutputDir = "{area}/flaky/#alien_split#";\n'
        "TTL = 120;\nForcedKillTimeout = 2;\n")
    out = _cli(pilot, "submit", "flaky.jdl", cwd=tmp_path)
    assert out.returncode == cli_codes.OK, out.stderr
    said = re.fullmatch(r"submitted masterjob (\d+) \(flaky\.jdl\): 3 subjobs\n", out.stdout)
    assert said, out.stdout
    master = int(said.group(1))
    pilot.start(container_runtime="none", cores=2, max_empty_matches=1)
    assert _wait_master(pilot, master, timeout=300)["state"] == "ERROR_E"
    assert _masterjob(pilot, master, tmp_path)["states"] == {"ERROR_E": 3}
    # Three jobs failing within a minute of starting make the node nodeBad for the runner: it leaves.
    assert pilot.wait_runner_exit() in (exitcodes.OK, exitcodes.NODE_UNUSABLE), pilot.runner_log()[-4000:]

    out = _cli(pilot, "resubmit", str(master), cwd=tmp_path)
    assert out.returncode == cli_codes.OK, out.stderr
    assert out.stdout == f"masterjob {master}: 3 subjob(s) in error back to WAITING\n"
    # A second resubmission finds nothing in error: refused, naming why, exit FAILED.
    again = _cli(pilot, "resubmit", str(master), cwd=tmp_path)
    assert again.returncode == cli_codes.FAILED
    assert again.stderr == f"job {master}: masterjob {master} has no subjob in an error state to resubmit\n"
    pilot.start(container_runtime="none", cores=2, max_empty_matches=1)
    assert _wait_master(pilot, master, timeout=300)["state"] == "DONE"
    for sub in _masterjob(pilot, master, tmp_path, "-v")["ids"]["DONE"]:
        assert pilot.job(sub)["resubmission"] == 1
    assert pilot.wait_runner_exit() == 0, pilot.runner_log()[-4000:]

    # Kill: two subjobs that would sleep for minutes; one runs, the other may still wait (either way both end KILLED).
    (tmp_path / "long.jdl").write_text(
        'Executable = "/bin/sleep";\nArguments = "300";\nSplit = "production:1-2";\n'
        f'OutputDir = "{area}/long/#alien_counter#";\nTTL = 600;\nForcedKillTimeout = 2;\n')
    long_master = int(orjson.loads(_cli(pilot, "submit", "long.jdl", "--json", cwd=tmp_path).stdout)["id"])
    pilot.start(container_runtime="none", cores=1)
    deadline = time.monotonic() + 120
    while "RUNNING" not in _masterjob(pilot, long_master, tmp_path)["states"]:
        assert time.monotonic() < deadline, pilot.runner_log()[-4000:]
        time.sleep(0.5)
    out = _cli(pilot, "kill", str(long_master), "--json", cwd=tmp_path)
    assert out.returncode == cli_codes.OK, out.stderr
    (answer,) = orjson.loads(out.stdout)
    assert answer["masterjob"] is True and answer["killed"] + answer["requested"] == 2, answer
    assert _wait_master(pilot, long_master, timeout=120)["state"] == "KILLED"
    assert _masterjob(pilot, long_master, tmp_path)["states"] == {"KILLED": 2}
    # Nothing left to kill: refused with the summary state.
    again = _cli(pilot, "kill", str(long_master), cwd=tmp_path)
    assert again.returncode == cli_codes.FAILED and "has no unfinished subjob" in again.stderr
    pilot.stop()


def test_a_collection_in_the_catalogue_is_downloaded_verified_by_the_cli(pilot: Pilot, tmp_path: Path):
    """InputDataCollection = "LF:...": the CLI fetches the collection (ALICE's XML here) from the storage element,
    verified against the catalogue's size and checksum, and sends its text; a replica that does not verify is one
    line and nothing is queued. No pilot runs: the subjobs are only made."""
    area = _own_area(pilot)
    for i in (1, 2, 3):
        (tmp_path / f"in{i}").write_text(f"{i}\n")
        pilot.grid.register_local_file(tmp_path / f"in{i}", f"{area}/in/{i}.root")
    xml = ('<?xml version="1.0"?>\n<alien><collection name="c">'
           + "".join(f'<event name="{i}"><file name="{i}.root" lfn="{area}/in/{i}.root"/></event>' for i in (1, 2, 3))
           + "</collection></alien>\n")
    (tmp_path / "c.xml").write_text(xml)
    pilot.grid.register_local_file(tmp_path / "c.xml", f"{area}/c.xml")
    (tmp_path / "se.jdl").write_text(
        'Executable = "/bin/true";\nSplit = "se";\nSplitMaxInputFileNumber = 2;\n'
        f'InputDataCollection = "LF:{area}/c.xml,nodownload";\nOutputDir = "{area}/se/#alien_counter#";\n')
    out = _cli(pilot, "submit", "se.jdl", "--json", cwd=tmp_path)
    assert out.returncode == cli_codes.OK, out.stderr
    info = _masterjob(pilot, int(orjson.loads(out.stdout)["id"]), tmp_path)
    assert (info["split"], info["subjobs"], info["states"]) == ("se", 2, {"WAITING": 2})

    # The replica on the element no longer matches the catalogue: refused before anything is sent.
    (rep,) = pilot.grid.user.lookup_file(f"{area}/c.xml")["replicas"]
    Path(rep["pfn"][len("file://"):]).write_text(xml.replace("3.root", "4.root"))
    before = len(pilot.grid.user.list_jobs(subjobs=1))
    out = _cli(pilot, "submit", "se.jdl", cwd=tmp_path)
    assert out.returncode == cli_codes.USAGE and out.stdout == ""
    assert out.stderr.startswith(f"gridpilot: collection LF:{area}/c.xml: no replica could be read"), out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert len(pilot.grid.user.list_jobs(subjobs=1)) == before

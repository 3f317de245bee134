"""`gridpilot submit FILE.jdl ARG...` as a user runs it, end to end: the JDL's local script and input file go to the
user's sandbox area on a storage element (the embedded file:// one, and a real XRootD server), the job runs them,
and its output is what the script computed; bad input is refused before anything is sent; an upload cut short
(SIGKILL) leaves nothing registered and nothing at a final name, and does not block the next submit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import urllib3
from support.pilot import Pilot

from gridpilot import cli_codes
from gridpilot.errors import CentralError, FileAlreadyExists, StorageError, VerificationError
from gridpilot.private_files import write_private
from gridpilot.storage.checksum import Digest
from gridpilot.storage.registry import build_storage_element
from gridpilot.storage.xrootd_element import XRootDStorageElement
from gridpilot.testing import SE_NAME
from gridpilot.userupload import upload_file, upload_to

XRD_SE = "LOCAL::XRD::SANDBOX"

SCRIPT = """#!/bin/sh
# What the job computes from its input: line count and sha256, with the argument it was given.
set -e
printf '%s %s %s\\n' "$1" "$(wc -l < "$2" | tr -d ' ')" "$(sha256sum < "$2" | cut -d' ' -f1)" > result.txt
"""

JDL = """\
# A user's own script and input file, next to this JDL.
Executable = "bin/analyse.sh";
Arguments = "$1 $2";
InputFile = {"$2"};
Output = {"result.txt@$3"};
TTL = 300;
"""


def _env(pilot: Pilot) -> Dict[str, str]:
    token = pilot.grid.state_dir / "user.token"
    if not token.exists():
        write_private(token, pilot.grid.user_token + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env.update(GRIDPILOT_CENTRAL_URL=pilot.grid.central.url, GRIDPILOT_TOKEN_FILE=str(token),
               GRIDPILOT_STATE_DIR=str(pilot.grid.state_dir / "nowhere"))
    return env


def submit(pilot: Pilot, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridpilot", "submit", *args], cwd=cwd, env=_env(pilot),
                          capture_output=True, text=True, timeout=timeout)


def user_dir(tmp_path: Path, lines: int = 1000) -> Path:
    """A physicist's directory: the JDL, bin/analyse.sh and an input file."""
    d = tmp_path / "analysis"
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "analyse.sh").write_text(SCRIPT)
    (d / "events.txt").write_text("".join(f"event {i} energy {i * 7 % 101}\n" for i in range(lines)))
    (d / "job.jdl").write_text(JDL)
    return d


def expected_result(d: Path, tag: str) -> bytes:
    data = (d / "events.txt").read_bytes()
    lines = data.count(b"\n")
    return f"{tag} {lines} {hashlib.sha256(data).hexdigest()}\n".encode()


def own_area(pilot: Pilot) -> str:
    return next(a["path"] for a in pilot.grid.user.areas()["areas"] if a["granted"] is None)


def se_files(root: Path) -> List[Path]:
    """Files at a final name under a file:// storage element's directory (not AtomicFile's hidden temporaries)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".part"))


def catalogue_files(pilot: Pilot, directory: str) -> List[str]:
    """Every LFN under `directory`, recursively ([] when there is none)."""
    try:
        entries = pilot.grid.user.list_dir(directory)
    except CentralError as e:
        assert e.status == 404, e
        return []
    out: List[str] = []
    for e in entries:
        out += catalogue_files(pilot, e["lfn"]) if e["type"] == "dir" else [e["lfn"]]
    return out


def fetch_output(pilot: Pilot, lfn: str, dest: Path) -> bytes:
    """The output as the catalogue and its storage element hold it, verified against the catalogue's checksums."""
    entry = pilot.grid.user.lookup_file(lfn)
    elements = {e["name"]: e for e in pilot.grid.user.storage_elements()}
    rep = entry["replicas"][0]
    se = build_storage_element({"name": rep["se"], "url": elements[rep["se"]]["url"]})

    se.get(rep["pfn"], dest, expected=Digest(entry["size"], entry["adler32"], entry["md5"]))
    return dest.read_bytes()


def test_a_script_from_the_users_directory_runs_on_its_input(pilot: Pilot, tmp_path):
    d = user_dir(tmp_path)
    r = submit(pilot, tmp_path, "analysis/job.jdl", "run-42", "events.txt", "disk=1", "extra", "--json")
    assert r.returncode == 0, r.stderr
    assert "never uses $4" in r.stderr  # one argument too many: a warning, not an error
    answer = json.loads(r.stdout)
    sandbox = answer["sandbox"]
    area = own_area(pilot)
    assert sandbox["dir"].startswith(f"{area}/sandbox/")
    assert [(f["attribute"], f["lfn"], f["reused"]) for f in sandbox["files"]] == [
        ("Executable", f"{sandbox['dir']}/analyse.sh", False), ("InputFile", f"{sandbox['dir']}/events.txt", False)]
    # Registered with the local files' size and md5, as the user's own, on central's default storage element.
    for f, local in zip(sandbox["files"], (d / "bin" / "analyse.sh", d / "events.txt")):
        entry = pilot.grid.user.lookup_file(f["lfn"])
        assert entry["size"] == local.stat().st_size
        assert entry["md5"] == hashlib.md5(local.read_bytes()).hexdigest()
        assert entry["job_id"] is None and entry["owner"] == pilot.grid.user.whoami()["subject"]
        assert [rep["se"] for rep in entry["replicas"]] == [SE_NAME]
    # Central holds the rewritten JDL: LFNs, the arguments in place.
    jdl = pilot.grid.user.get_job(answer["id"])["jdl"]
    assert f'"{sandbox["dir"]}/analyse.sh"' in jdl and f'"LF:{sandbox["dir"]}/events.txt"' in jdl, jdl
    assert '"run-42 events.txt"' in jdl and "$" not in jdl

    pilot.start(cores=1)
    (job,) = pilot.wait_final([answer["id"]], timeout=180)
    assert job["state"] == "DONE", pilot.describe(answer["id"])
    got = fetch_output(pilot, f"{job['output_dir']}/result.txt", tmp_path / "result.txt")
    assert got == expected_result(d, "run-42")


def test_the_same_files_again_are_reused_not_uploaded(pilot: Pilot, tmp_path):
    d = user_dir(tmp_path, lines=10)
    first = submit(pilot, d, "job.jdl", "a", "events.txt", "disk=1", "--json")
    assert first.returncode == 0, first.stderr
    stored = se_files(pilot.grid.state_dir / "se")
    second = submit(pilot, d, "job.jdl", "b", "events.txt", "disk=1", "--json")
    assert second.returncode == 0, second.stderr
    s1, s2 = json.loads(first.stdout)["sandbox"], json.loads(second.stdout)["sandbox"]
    assert s2["dir"] == s1["dir"] and all(f["reused"] for f in s2["files"])
    assert se_files(pilot.grid.state_dir / "se") == stored  # nothing uploaded twice
    # A changed input is a new sandbox directory: a queued job's files never change under it.
    before = (d / "events.txt").stat().st_size
    (d / "events.txt").write_text("changed\n")
    third = submit(pilot, d, "job.jdl", "c", "events.txt", "disk=1", "--json")
    assert third.returncode == 0, third.stderr
    s3 = json.loads(third.stdout)["sandbox"]
    assert s3["dir"] != s1["dir"] and not any(f["reused"] for f in s3["files"])
    assert pilot.grid.user.lookup_file(f"{s1['dir']}/events.txt")["size"] == before


def _nothing_happened(pilot: Pilot) -> None:
    assert pilot.grid.user.list_jobs() == []
    assert catalogue_files(pilot, own_area(pilot)) == []
    assert se_files(pilot.grid.state_dir / "se") == []


def test_a_missing_local_file_is_one_line_and_nothing_is_sent(pilot: Pilot, tmp_path):
    d = user_dir(tmp_path)
    r = submit(pilot, d, "job.jdl", "x", "no-such-input.txt", "disk=1")
    assert r.returncode == cli_codes.USAGE, r
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"gridpilot: job.jdl:4: InputFile 'no-such-input.txt': no such local file "
                               f"{d / 'no-such-input.txt'}"), r.stderr
    (d / "bin" / "analyse.sh").unlink()
    r = submit(pilot, d, "job.jdl", "x", "events.txt", "disk=1")
    assert r.returncode == cli_codes.USAGE
    assert r.stderr.startswith("gridpilot: job.jdl:2: Executable 'bin/analyse.sh': no such local file"), r.stderr
    _nothing_happened(pilot)


def test_a_missing_argument_is_one_line_and_nothing_is_sent(pilot: Pilot, tmp_path):
    d = user_dir(tmp_path)
    r = submit(pilot, d, "job.jdl", "x", "events.txt")
    assert r.returncode == cli_codes.USAGE, r
    assert r.stderr.strip() == ("gridpilot: job.jdl:5: $3 needs argument 3, only 2 argument(s) given (`gridpilot "
                                "submit job.jdl ARG...`; write $$ for a literal $)"), r.stderr
    _nothing_happened(pilot)


def test_a_refused_job_keeps_its_shipped_files_for_the_next_submit(pilot: Pilot, tmp_path):
    d = user_dir(tmp_path, lines=5)
    (d / "bad.jdl").write_text(JDL + 'OutputDir = "/gridpilot/user/z/zed/out";\n')
    r = submit(pilot, d, "bad.jdl", "a", "events.txt", "disk=1")
    assert r.returncode == cli_codes.FAILED
    assert "central refused (400 output_dir_outside_area)" in r.stderr, r.stderr
    # After a line per file shipped, one line: central's refusal and what became of the files.
    (error,) = [line for line in r.stderr.splitlines() if line.startswith("gridpilot:")]
    assert "; the job was not queued; its 2 shipped file(s) stay registered in" in error, r.stderr
    assert pilot.grid.user.list_jobs() == []
    shipped = catalogue_files(pilot, own_area(pilot))
    assert [Path(p).name for p in shipped] == ["analyse.sh", "events.txt"]  # complete and registered
    stored = se_files(pilot.grid.state_dir / "se")
    assert len(stored) == 2
    ok = submit(pilot, d, "job.jdl", "a", "events.txt", "disk=1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert all(f["reused"] for f in json.loads(ok.stdout)["sandbox"]["files"])
    assert se_files(pilot.grid.state_dir / "se") == stored


def test_a_user_registers_only_in_its_own_areas(pilot: Pilot, tmp_path):
    grid = pilot.grid
    local = tmp_path / "mine.txt"
    local.write_text("mine\n")
    area = own_area(pilot)
    entry = upload_file(grid.user, local, f"{area}/notes/mine.txt")
    assert entry["size"] == 5 and entry["owner"] == grid.user.whoami()["subject"]
    stored = se_files(grid.state_dir / "se")
    with pytest.raises(FileAlreadyExists, match="is already in the catalogue"):  # refused before any copy
        upload_file(grid.user, local, f"{area}/notes/mine.txt")
    assert se_files(grid.state_dir / "se") == stored
    # Another user's area: refused, and the copy made before asking is gone again.
    with pytest.raises(CentralError) as e:
        upload_file(grid.user, local, "/gridpilot/user/z/zed/stolen.txt")
    assert e.value.status == 403 and "outside" in e.value.message and area in e.value.message
    assert se_files(grid.state_dir / "se") == stored
    # A shared area granted to both: the first user's file stays its own.
    grid.admin.grant_area(grid.user.whoami()["subject"], "/gridpilot/shared")
    grid.admin.grant_area("zed", "/gridpilot/shared")
    upload_file(grid.user, local, "/gridpilot/shared/mine.txt")
    from gridpilot.client import CentralClient

    zed = CentralClient(grid.central.url, grid.admin.mint_token("user", "zed"))
    other = tmp_path / "other.txt"
    other.write_text("mine\n")
    with pytest.raises(FileAlreadyExists):
        upload_file(zed, other, "/gridpilot/shared/mine.txt")
    # Past that check (a race with the owner), central refuses, and the copy made first is removed again.
    stored = se_files(grid.state_dir / "se")
    with pytest.raises(CentralError) as e:
        upload_to(zed, grid.se, other, "/gridpilot/shared/mine.txt")
    assert e.value.status == 403 and "belongs to" in e.value.message
    assert se_files(grid.state_dir / "se") == stored
    # A user's file is never a job's (resubmit removes a job's files); bounds are a 400 naming the field.
    for body, status, field in (({"job_id": 1}, 403, None), ({"size": -1}, 400, "size"),
                                ({"adler32": "xyz"}, 400, "adler32"), ({"se": "NO::SUCH::SE"}, 400, "se")):
        fields = dict(lfn=f"{area}/x.txt", size=1, se=SE_NAME, pfn="file:///nowhere/x")
        fields.update(body)
        status_got, answer = _post(grid.central.url, grid.user_token, fields)
        assert status_got == status, answer
        if field:
            assert answer["error"].get("field") == field, answer
    # An unknown --se, and no upload.
    with pytest.raises(Exception, match="no such storage element"):
        upload_file(grid.user, local, f"{area}/y.txt", se="NO::SUCH::SE")


def _post(url: str, token: str, fields: Dict[str, object]):
    """POST /catalogue/files as it reaches central, for the whole error body (the client keeps no `field`)."""
    r = urllib3.request("POST", f"{url}/api/v1/catalogue/files", body=json.dumps(fields),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                        retries=False)
    return r.status, json.loads(r.data)


def _wait(cond, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


BIG = 768 << 20


def test_sigkill_mid_upload_leaves_nothing_and_blocks_nothing(pilot: Pilot, tmp_path):
    d = user_dir(tmp_path, lines=3)
    big = d / "big.dat"
    with open(big, "wb") as f:  # sparse: cheap to make, as slow to checksum and copy as any other
        f.truncate(BIG)
    (d / "big.jdl").write_text('Executable = "bin/analyse.sh";\nArguments = "big big.dat";\n'
                               'InputFile = {"big.dat"};\nOutput = {"result.txt@disk=1"};\n')
    se_dir = pilot.grid.state_dir / "se"
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "submit", "big.jdl"], cwd=d, env=_env(pilot),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The script is small and goes first; the big file's temporary appears when its upload starts.
        def partial() -> Optional[Path]:
            for p in se_dir.rglob(".*.part"):
                try:
                    if p.stat().st_size > 1 << 20:  # the big file's (the script's is a few hundred bytes)
                        return p
                except FileNotFoundError:
                    continue
            return None

        part = _wait(partial, 120, "the big file's upload to start")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < part.stat().st_size < BIG, "killed mid-way"
    sandbox = catalogue_files(pilot, f"{own_area(pilot)}/sandbox")
    assert [Path(p).name for p in sandbox] == ["analyse.sh"]  # done before the kill: complete and verified
    assert all(p.stat().st_size < BIG for p in se_files(se_dir)), "no partial file at a final name"
    assert pilot.grid.user.list_jobs() == []
    # The next submit is not blocked by the leftover temporary: the big file goes up again, complete.
    r = submit(pilot, d, "big.jdl", "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["sandbox"]["files"]
    assert [(Path(f["lfn"]).name, f["reused"]) for f in files] == [("analyse.sh", True), ("big.dat", False)]
    assert pilot.grid.user.lookup_file(files[1]["lfn"])["size"] == BIG


def test_sandbox_on_a_real_xrootd_server(pilot: Pilot, xrootd_server, tmp_path):
    grid = pilot.grid
    url = xrootd_server.se_url("sandbox")
    grid.admin.add_storage_element(XRD_SE, url)
    d = user_dir(tmp_path, lines=20000)
    r = submit(pilot, d, "job.jdl", "xrd", "events.txt", XRD_SE, "--se", XRD_SE, "--json")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    se = XRootDStorageElement(XRD_SE, url)
    for f, local in zip(answer["sandbox"]["files"], (d / "bin" / "analyse.sh", d / "events.txt")):
        entry = grid.user.lookup_file(f["lfn"])
        (rep,) = entry["replicas"]
        assert rep["se"] == XRD_SE and rep["pfn"].startswith(url + "/")
        # What the catalogue says is what the XRootD server holds, by its own checksum.
        assert se.stat(rep["pfn"]) == local.stat().st_size == entry["size"]
        assert se.checksum(rep["pfn"], "adler32") == entry["adler32"]
    pilot.start(cores=1, close_se=[XRD_SE])
    (job,) = pilot.wait_final([answer["id"]], timeout=180)
    assert job["state"] == "DONE", pilot.describe(answer["id"])
    trace = pilot.trace_text(answer["id"])
    assert f"from {XRD_SE} root://" in trace, trace
    out = grid.user.lookup_file(f"{job['output_dir']}/result.txt")
    assert out["replicas"][0]["se"] == XRD_SE
    assert fetch_output(pilot, out["lfn"], tmp_path / "result.txt") == expected_result(d, "xrd")
    # And as the user gets it back: `gridpilot get`, verified against the catalogue, from the XRootD server.
    back = subprocess.run([sys.executable, "-m", "gridpilot", "get", str(answer["id"]), "--dest", str(tmp_path / "got"),
                           "--files", "result.txt"], env=_env(pilot), capture_output=True, text=True, timeout=180)
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "got" / "result.txt").read_bytes() == expected_result(d, "xrd")


def test_sigkill_mid_upload_to_xrootd_leaves_no_file_on_the_server(pilot: Pilot, xrootd_server, tmp_path):
    grid = pilot.grid
    grid.admin.add_storage_element(XRD_SE, xrootd_server.se_url("killed"))
    d = user_dir(tmp_path, lines=3)
    with open(d / "big.dat", "wb") as f:
        f.truncate(BIG)
    (d / "big.jdl").write_text('Executable = "bin/analyse.sh";\nInputFile = {"big.dat"};\n')
    on_disk = xrootd_server.base / "fs" / "data" / "killed"
    small = (d / "bin" / "analyse.sh").stat().st_size
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "submit", "big.jdl", "--se", XRD_SE], cwd=d,
                            env=_env(pilot), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def growing() -> Optional[Path]:
            # XRootD writes at the final name, opened persist-on-successful-close: the big file once bytes arrive.
            for p in on_disk.rglob("*"):
                try:
                    if p.is_file() and p.stat().st_size > small:
                        return p
                except FileNotFoundError:
                    continue
            return None

        partial = _wait(growing, 120, "the big file's upload to the XRootD server to start")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    # The unclosed file stays on the server's disk, pending: XRootD keeps a persist-on-successful-close file whose
    # client went away for its `ofs.persist hold` (10 minutes by default, for the client to come back), then deletes
    # it. Meanwhile no LFN points at it, and nobody else can read it.
    assert partial.stat().st_size < BIG
    assert [Path(p).name for p in catalogue_files(pilot, f"{own_area(pilot)}/sandbox")] == ["analyse.sh"]
    se = XRootDStorageElement(XRD_SE, xrootd_server.se_url("killed"))
    pfn = f"{xrootd_server.se_url('killed')}/{partial.parent.name}/{partial.name}"
    with pytest.raises(StorageError):  # the server stalls a stranger's open of it until the request expires
        se.get(pfn, tmp_path / "partial.dat")
    assert not (tmp_path / "partial.dat").exists()
    r = submit(pilot, d, "big.jdl", "--se", XRD_SE, "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["sandbox"]["files"]
    entry = grid.user.lookup_file(files[1]["lfn"])
    assert entry["size"] == BIG and not files[1]["reused"]
    assert entry["replicas"][0]["pfn"] != pfn and se.stat(entry["replicas"][0]["pfn"]) == BIG


def test_a_failed_upload_registers_nothing_and_names_the_file(pilot: Pilot, tmp_path):
    # A storage element nobody can write to, root included: /proc takes no new directories.
    pilot.grid.admin.add_storage_element("LOCAL::BROKEN::FILE", "file:///proc/gridpilot-no-such-dir")
    d = user_dir(tmp_path, lines=3)
    r = submit(pilot, d, "job.jdl", "a", "events.txt", "disk=1", "--se", "LOCAL::BROKEN::FILE")
    assert r.returncode == cli_codes.FAILED, r
    assert r.stderr.startswith("gridpilot: Executable bin/analyse.sh: "), r.stderr
    assert "nothing of it was registered and the job was not submitted" in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    _nothing_happened(pilot)


def test_ctrl_c_mid_upload_removes_the_temporary(pilot: Pilot, tmp_path):
    d = user_dir(tmp_path, lines=3)
    with open(d / "big.dat", "wb") as f:
        f.truncate(BIG)
    (d / "big.jdl").write_text('Executable = "bin/analyse.sh";\nInputFile = {"big.dat"};\n')
    se_dir = pilot.grid.state_dir / "se"
    proc = subprocess.Popen([sys.executable, "-m", "gridpilot", "submit", "big.jdl"], cwd=d, env=_env(pilot),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def big_part() -> bool:
            for p in se_dir.rglob(".*.part"):
                try:
                    if p.stat().st_size > 1 << 20:  # the big file's (the script's is a few hundred bytes)
                        return True
                except FileNotFoundError:
                    continue
            return False

        _wait(big_part, 120, "the big file's upload to start")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == cli_codes.INTERRUPTED, err
    assert list(se_dir.rglob(".*.part")) == []  # the interrupted copy's temporary is gone
    assert [Path(p).name for p in catalogue_files(pilot, f"{own_area(pilot)}/sandbox")] == ["analyse.sh"]
    assert [p.stat().st_size for p in se_files(se_dir)] == [(d / "bin" / "analyse.sh").stat().st_size]
    assert pilot.grid.user.list_jobs() == []


def test_a_file_changed_since_it_was_hashed_is_not_registered(pilot: Pilot, tmp_path):
    # What ship() guards against: the sandbox directory is named by the content read first; bytes that differ
    # when copied (the user still editing the file) must not be registered under that name.
    local = tmp_path / "edited.txt"
    local.write_text("second version\n")
    read_first = Digest(size=len("first\n"), adler32="08a40237", md5=None)
    lfn = f"{own_area(pilot)}/sandbox/0123456789abcdef/edited.txt"
    with pytest.raises(VerificationError, match="changed while it was read"):
        upload_to(pilot.grid.user, pilot.grid.se, local, lfn, expected=read_first)
    assert catalogue_files(pilot, own_area(pilot)) == []
    assert se_files(pilot.grid.state_dir / "se") == []


def _gridpilot(pilot: Pilot, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridpilot", *args], cwd=cwd, env=_env(pilot), capture_output=True,
                          text=True, timeout=120)


def test_cp_uploads_through_userupload_and_back(pilot: Pilot, tmp_path):
    # `gridpilot cp file:PATH LFN` (the get helper's command) uploads with userupload.upload_file: verified,
    # registered in the user's area, and comes back identical; another user's area or an existing LFN is refused.
    local = tmp_path / "calib.dat"
    local.write_bytes(os.urandom(3 << 20))
    lfn = f"{own_area(pilot)}/calib/calib.dat"
    up = _gridpilot(pilot, tmp_path, "cp", f"file:{local}", lfn, "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["md5"] == hashlib.md5(local.read_bytes()).hexdigest()
    down = _gridpilot(pilot, tmp_path, "cp", lfn, f"file:{tmp_path / 'back.dat'}")
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back.dat").read_bytes() == local.read_bytes()
    stored = se_files(pilot.grid.state_dir / "se")
    again = _gridpilot(pilot, tmp_path, "cp", f"file:{local}", lfn)
    assert again.returncode == cli_codes.FAILED and "is already in the catalogue" in again.stderr, again.stderr
    theirs = _gridpilot(pilot, tmp_path, "cp", f"file:{local}", "/gridpilot/user/z/zed/calib.dat")
    assert theirs.returncode == cli_codes.FAILED, theirs.stderr
    assert "central refused (403 forbidden)" in theirs.stderr and theirs.stderr.count("\n") == 1, theirs.stderr
    assert se_files(pilot.grid.state_dir / "se") == stored  # neither refusal left a copy

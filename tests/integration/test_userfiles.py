"""`gridpilot get`, `ls` and `cp` end to end (issue 19): a real pilot runs a job that writes outputs and an archive
to a file:// storage element, or to the real XRootD server, and the commands, run as a user would run them (a
process of their own, the user's token), bring them back identical to what the same script writes here. A
corrupted replica is an error that leaves no file, and a second good replica is then used; bad input is refused
with one line and the documented exit code."""

from __future__ import annotations

import gzip
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import orjson
from support.pilot import Pilot, shell_jdl
from support.unwritable import make_unwritable

from gridpilot import cli_codes
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.placement import new_pfn
from gridpilot.testing import SE_NAME

#: What the job does, and what this test does again locally to know what the outputs must be: text of ~2 MB (more
#: than one block of every transfer), a gzip of it (binary), a small file, a log and stdout for the archive.
SCRIPT = ("seq 1 300000 > data.txt; gzip -n -c data.txt > data.gz; echo result 42 > result.txt; "
          "echo step 1 > reco.log; echo payload says hello")
OUTPUT = ["logs.zip:stdout,reco.log@disk=1", "data.txt@disk=1", "data.gz@disk=1", "result.txt@disk=1"]


def expected_outputs(where: Path) -> Dict[str, bytes]:
    """The files SCRIPT writes, written here by the same shell, with its stdout as `stdout`."""
    where.mkdir()
    out = subprocess.run(["/bin/sh", "-c", SCRIPT], cwd=where, capture_output=True, check=True)
    (where / "stdout").write_bytes(out.stdout)
    return {p.name: p.read_bytes() for p in where.iterdir()}


def same(name: str, got: bytes, want: Dict[str, bytes]) -> bool:
    """`got` is what SCRIPT wrote as `name`. A gzip is compared by its content: the job may have run in a
    container whose gzip writes other bytes for the same input."""
    if name.endswith(".gz"):
        return got[:2] == b"\x1f\x8b" and gzip.decompress(got) == gzip.decompress(want[name])
    return got == want[name]


def gp(pilot: Pilot, *args: str, token: Optional[str] = None, cwd: Optional[Path] = None) -> Tuple[int, str, str]:
    """`gridpilot ARGS` in a process of its own with the user's token (or `token`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env["GRIDPILOT_TOKEN"] = token or pilot.grid.user_token
    env["GRIDPILOT_CENTRAL_URL"] = pilot.grid.central.url
    out = subprocess.run([sys.executable, "-m", "gridpilot", *args], capture_output=True, text=True, env=env,
                         cwd=cwd, timeout=300)
    return out.returncode, out.stdout, out.stderr


def gp_on_a_terminal(pilot: Pilot, *args: str) -> str:
    """`gridpilot ARGS` with its stderr on a pseudo-terminal; what it wrote there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env.update(GRIDPILOT_TOKEN=pilot.grid.user_token, GRIDPILOT_CENTRAL_URL=pilot.grid.central.url)
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "gridpilot", *args], stdout=subprocess.DEVNULL, stderr=slave,
                                env=env)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=120) == 0, b"".join(chunks)
    finally:
        os.close(master)
    return b"".join(chunks).decode(errors="replace")


def get_json(pilot: Pilot, *args: str, cwd: Optional[Path] = None) -> dict:
    rc, out, err = gp(pilot, "get", *args, "--json", cwd=cwd)
    assert rc == 0, err
    return orjson.loads(out)


def files_below(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_job(pilot: Pilot, output: List[str], **start) -> dict:
    job_id = pilot.submit(shell_jdl(SCRIPT, Output=output))
    pilot.start(cores=1, **start)
    (job,) = pilot.wait_final([job_id], timeout=180)
    assert job["state"] == "DONE", pilot.describe(job_id)
    return job


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_get_ls_cp_bring_a_jobs_outputs_back_identical(pilot: Pilot, tmp_path: Path) -> None:
    job = run_job(pilot, OUTPUT)
    jid, out = job["id"], job["output_dir"]
    want = expected_outputs(tmp_path / "expected")

    # get: every registered output, the archive unpacked beside itself, each verified and identical.
    dest = tmp_path / "got"
    got = get_json(pilot, str(jid), "--dest", str(dest), "--unpack")
    assert (got["id"], got["state"], got["output_dir"], got["dest"]) == (jid, "DONE", out, str(dest))
    by_lfn = {f["lfn"]: f for f in got["files"]}
    assert set(by_lfn) == {f"{out}/{n}" for n in ("logs.zip", "data.txt", "data.gz", "result.txt")}
    for f in got["files"]:
        entry = pilot.grid.user.lookup_file(f["lfn"])
        assert (f["status"], f["se"], f["size"], f["adler32"], f["md5"]) == \
            ("fetched", SE_NAME, entry["size"], entry["adler32"], entry["md5"]), f
        assert f["pfn"] == entry["replicas"][0]["pfn"] and f["failed_replicas"] == []
    files = files_below(dest)
    for name in ("data.txt", "data.gz", "result.txt", "stdout", "reco.log"):
        assert same(name, files[name], want), name
    assert set(files) == {"logs.zip", "data.txt", "data.gz", "result.txt", "stdout", "reco.log"}
    with zipfile.ZipFile(dest / "logs.zip") as zf:
        assert sorted(zf.namelist()) == ["reco.log", "stdout"]
    (unpacked,) = got["unpacked"]
    assert unpacked["archive"] == f"{out}/logs.zip"
    assert sorted(m["name"] for m in unpacked["members"]) == ["reco.log", "stdout"]

    # Again into the same place: nothing fetched, each file found verified; nothing overwritten.
    again = get_json(pilot, str(jid), "--dest", str(dest), "--unpack")
    assert {f["status"] for f in again["files"]} == {"present"}
    assert files_below(dest) == files

    # --files: repeatable and comma-separated globs on the file name; the default DEST is ./ID/.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    picked = get_json(pilot, str(jid), "--files", "data*", "--files", "result.txt,nothing*", cwd=cwd)
    assert sorted(Path(f["path"]).name for f in picked["files"]) == ["data.gz", "data.txt", "result.txt"]
    assert sorted(files_below(cwd)) == [f"{jid}/{n}" for n in ("data.gz", "data.txt", "result.txt")]
    assert all(same(n, (cwd / str(jid) / n).read_bytes(), want) for n in ("data.gz", "data.txt", "result.txt"))
    rc, _, err = gp(pilot, "get", str(jid), "--files", "*.root", "--dest", str(tmp_path / "none"))
    assert rc == cli_codes.FAILED and "registered no file matching *.root" in err, err

    # Plain output: one line per file.
    rc, text, err = gp(pilot, "get", str(jid), "--files", "result.txt", "--dest", str(tmp_path / "plain"))
    assert rc == 0 and text.startswith(f"{tmp_path / 'plain' / 'result.txt'}\t{len(want['result.txt'])} bytes\t"
                                       f"from {SE_NAME}"), (text, err)

    # ls: the directory, long and as JSON.
    rc, text, err = gp(pilot, "ls", out)
    assert rc == 0 and text.split() == ["data.gz", "data.txt", "logs.zip", "result.txt"], (text, err)
    rc, text, err = gp(pilot, "ls", "-l", out)
    line = next(x for x in text.splitlines() if x.endswith(" result.txt"))
    entry = pilot.grid.user.lookup_file(f"{out}/result.txt")
    assert line.split()[:5] == ["-", str(entry["size"]), entry["adler32"], entry["owner"], "1"], line
    rc, text, err = gp(pilot, "ls", "-l", f"{out}/result.txt")  # a file: listed alone, as ls(1) does
    assert rc == 0 and text.split()[:5] == line.split()[:5] and text.rstrip().endswith(" result.txt"), (text, err)
    rc, text, err = gp(pilot, "ls", "--json", str(Path(out).parent))
    assert rc == 0 and {"name": Path(out).name, "lfn": out, "type": "dir"} in orjson.loads(text)["entries"]

    # cp: an LFN to a local file, or into a local directory under its own name.
    rc, text, err = gp(pilot, "cp", f"{out}/data.gz", f"file:{tmp_path / 'copy.gz'}", "--json")
    assert rc == 0, err
    assert (tmp_path / "copy.gz").read_bytes() == files["data.gz"] and same("data.gz", files["data.gz"], want)
    assert orjson.loads(text)["se"] == SE_NAME
    (tmp_path / "into").mkdir()
    rc, _, err = gp(pilot, "cp", f"{out}/result.txt", f"file://{tmp_path / 'into'}")
    assert rc == 0 and (tmp_path / "into" / "result.txt").read_bytes() == want["result.txt"], err

    # On a terminal, a transfer of a MB or more shows its progress on stderr (here through a pseudo-terminal).
    progress = gp_on_a_terminal(pilot, "cp", f"{out}/data.txt", f"file:{tmp_path / 'tty.txt'}")
    assert f"data.txt: {len(want['data.txt']) / 1e6:.1f} of {len(want['data.txt']) / 1e6:.1f} MB (100%)" in progress, \
        progress
    assert (tmp_path / "tty.txt").read_bytes() == want["data.txt"]

    # A corrupted replica: an error naming the mismatch, and no file under its name or a temporary one.
    data = pilot.grid.user.lookup_file(f"{out}/data.txt")
    se_copy = pilot.grid.se.path(data["replicas"][0]["pfn"])
    flip_a_byte(se_copy)
    bad = tmp_path / "bad"
    rc, _, err = gp(pilot, "get", str(jid), "--files", "data.txt", "--dest", str(bad))
    assert rc == cli_codes.FAILED and "no replica could be downloaded and verified" in err and "adler32" in err, err
    assert list(bad.iterdir()) == []
    # The other files still come; the JSON says which one did not.
    rc, text, err = gp(pilot, "get", str(jid), "--dest", str(tmp_path / "partly"), "--json")
    partly = orjson.loads(text)
    assert rc == cli_codes.FAILED and "1 of the 4 file(s)" in err, err
    assert [e["lfn"] for e in partly["errors"]] == [f"{out}/data.txt"] and "adler32" in partly["errors"][0]["error"]
    assert sorted(files_below(tmp_path / "partly")) == ["data.gz", "logs.zip", "result.txt"]
    rc, _, err = gp(pilot, "cp", f"{out}/data.txt", f"file:{tmp_path / 'bad.txt'}")
    assert rc == cli_codes.FAILED and not (tmp_path / "bad.txt").exists(), err
    assert not list(tmp_path.glob(".bad.txt.*"))

    # ... and with a second, good replica on another storage element, that one is used.
    se2 = LocalStorageElement("LOCAL::SE2", f"file://{tmp_path / 'se2'}")
    (tmp_path / "se2").mkdir()
    pilot.grid.admin.add_storage_element(se2.name, se2.url)
    pfn2 = new_pfn(se2)
    se2.put(tmp_path / "expected" / "data.txt", pfn2)
    pilot.grid.admin.register_file(lfn=f"{out}/data.txt", size=data["size"], adler32=data["adler32"], se=se2.name,
                                   pfn=pfn2)
    healed = get_json(pilot, str(jid), "--files", "data.txt", "--dest", str(bad))
    (f,) = healed["files"]
    assert (f["se"], f["pfn"]) == (se2.name, pfn2)
    assert [r["se"] for r in f["failed_replicas"]] == [SE_NAME] and "adler32" in f["failed_replicas"][0]["error"]
    assert (bad / "data.txt").read_bytes() == want["data.txt"]

    # An archive with a member that climbs out of DEST: the archive comes (it is what was registered), nothing of
    # it is unpacked, and nothing lands outside.
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("fine.txt", b"fine")
        zf.writestr("../escaped.txt", b"evil")
    pfn = new_pfn(pilot.grid.se)
    digest = pilot.grid.se.put(evil, pfn)
    pilot.grid.admin.register_file(lfn=f"{out}/evil.zip", size=digest.size, adler32=digest.adler32, se=SE_NAME,
                                   pfn=pfn, job_id=jid)
    trap = tmp_path / "trap" / "dest"
    rc, _, err = gp(pilot, "get", str(jid), "--files", "evil.zip", "--unpack", "--dest", str(trap))
    assert rc == cli_codes.FAILED and "'../escaped.txt' is a '..' component" in err, err
    assert files_below(tmp_path / "trap") == {"dest/evil.zip": evil.read_bytes()}

    # Bad input: one line each, the documented exit code.
    bob = pilot.grid.admin.mint_token("user", "bob")
    for args, code, says, token in [
        (("get", "987654"), cli_codes.FAILED, "no job 987654 of yours", None),
        (("get", str(jid)), cli_codes.FAILED, f"no job {jid} of yours", bob),   # another user's job: as if absent
        (("get", str(jid), "--dest", str(tmp_path / "expected" / "result.txt" / "x")), cli_codes.USAGE,
         "is not a directory that can be written to", None),
        (("cp", f"{out}/nothing.txt", f"file:{tmp_path / 'n'}"), cli_codes.FAILED, "404 file_not_found", None),
        (("cp", f"{out}/result.txt", f"{out}/copy.txt"), cli_codes.USAGE, "not supported", None),
        (("cp", f"{out}/result.txt", "relative.txt"), cli_codes.USAGE, "file:relative.txt", None),
        (("ls", "relative/dir"), cli_codes.USAGE, "is not an LFN", None),
        (("ls", "/no/such/dir"), cli_codes.FAILED, "404 dir_not_found", None),
    ]:
        rc, text, err = gp(pilot, *args, token=token)
        assert rc == code and says in err and len(err.strip().splitlines()) == 1, (args, rc, err)
    # An existing directory that cannot be written to (root ignores its mode: chattr +i then, as
    # test_kill_reasons.py does): refused before anything is downloaded.
    locked = tmp_path / "locked"
    locked.mkdir()
    unlock = make_unwritable(locked)
    try:
        rc, _, err = gp(pilot, "get", str(jid), "--dest", str(locked))
        assert rc == cli_codes.USAGE and f"destination {locked} is not a directory that can be written to" in err, err
    finally:
        unlock()
    assert list(locked.iterdir()) == []
    if importlib.util.find_spec("gridpilot.userupload") is None:
        rc, _, err = gp(pilot, "cp", f"file:{tmp_path / 'copy.gz'}", f"{out}/up.gz")
        assert rc == cli_codes.USAGE and "userupload" in err, err


XRD_SE = "LOCAL::XRD::DISK"


def test_get_from_the_real_xrootd_server(pilot: Pilot, xrootd_server, tmp_path: Path) -> None:
    pilot.grid.admin.add_storage_element(XRD_SE, xrootd_server.se_url("get-e2e"))
    job = run_job(pilot, [f"data.gz@{XRD_SE}", f"logs.zip:stdout,reco.log@{XRD_SE}"], close_se=[XRD_SE])
    want = expected_outputs(tmp_path / "expected")

    dest = tmp_path / "got"
    got = get_json(pilot, str(job["id"]), "--dest", str(dest), "--unpack")
    assert {f["se"] for f in got["files"]} == {XRD_SE}
    assert all(f["pfn"].startswith("root://127.0.0.1:") for f in got["files"])
    files = files_below(dest)
    assert sorted(files) == ["data.gz", "logs.zip", "reco.log", "stdout"]
    assert all(same(n, files[n], want) for n in ("data.gz", "reco.log", "stdout"))

    # A byte flipped on the server's disk: refused, nothing left.
    (data,) = [f for f in got["files"] if f["lfn"].endswith("/data.gz")]
    flip_a_byte(xrootd_server.disk_path(data["pfn"]))
    rc, _, err = gp(pilot, "cp", data["lfn"], f"file:{tmp_path / 'bad.gz'}")
    assert rc == cli_codes.FAILED and "adler32" in err, err
    assert not (tmp_path / "bad.gz").exists() and not list(tmp_path.glob(".bad.gz.*"))

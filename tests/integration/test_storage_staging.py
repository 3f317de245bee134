"""Stage-in and stage-out against real storage: directories and real XRootD servers, with an in-memory catalogue in
place of central's. Servers are stopped for real to make storage elements fail."""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

import pytest
from support.memory_catalogue import MemoryCatalogue
from support.xrootd_server import XRootDServer, backend_or_skip

from gridpilot.errors import ConfigError, StageInError
from gridpilot.storage.base import StorageElement
from gridpilot.storage.catalogue_protocol import FileEntry, Replica
from gridpilot.storage.checksum import digest_file
from gridpilot.storage.local import LocalStorageElement
from gridpilot.storage.placement import new_pfn
from gridpilot.storage.registry import Registry
from gridpilot.storage.transfers import InputSpec, OutputSpec, StageOutcome, stage_in, stage_out
from gridpilot.storage.xrootd_element import XRootDStorageElement

MiB = 1 << 20


@pytest.fixture(params=["bindings", "commands"])
def backend(request) -> str:
    backend_or_skip(request.param)
    return str(request.param)


def _xrd(server: XRootDServer, label: str, backend: str = "bindings") -> XRootDStorageElement:
    sub = f"{label.lower()}-{uuid.uuid4().hex[:8]}"
    return XRootDStorageElement(f"TEST::{label}::XRD", server.se_url(sub), backend=backend)


def _local(tmp_path: Path, label: str) -> LocalStorageElement:
    return LocalStorageElement(f"TEST::{label}::FILE", f"file://{tmp_path}/se-{label.lower()}")


def _seed(ses: list[StorageElement], tmp_path: Path, lfn: str, data: bytes) -> FileEntry:
    """Put `data` on every SE in `ses` and return the catalogue entry listing those replicas, in that order."""
    src = tmp_path / f"seed-{uuid.uuid4().hex}"
    src.write_bytes(data)
    d = digest_file(src)
    replicas = []
    for se in ses:
        pfn = new_pfn(se)
        se.put(src, pfn)
        replicas.append(Replica(se.name, pfn))
    src.unlink()
    return FileEntry(lfn, d.size, d.adler32, d.md5, tuple(replicas))


def _flip_byte(path: Path, offset: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def _workdir(tmp_path: Path, name: str = "work") -> Path:
    w = tmp_path / name
    w.mkdir()
    return w


# ---- stage-in ----------------------------------------------------------------------------------------------------


def test_stage_in_takes_the_close_replica_and_verifies_it(tmp_path):
    far, near = _local(tmp_path, "FAR"), _local(tmp_path, "NEAR")
    data = os.urandom(2 * MiB + 3)
    entry = _seed([far, near], tmp_path, "/alice/sim/run1/input.root", data)
    cat = MemoryCatalogue((entry,))
    work = _workdir(tmp_path)
    result = stage_in([InputSpec(entry.lfn)], work, Registry([far, near]), cat, close_ses=["test::near::file"])
    [staged] = result.files
    assert (staged.se, staged.path) == (near.name, work / "input.root")
    assert (staged.digest.size, staged.digest.adler32) == (entry.size, entry.adler32)
    assert staged.path.read_bytes() == data
    assert "from TEST::NEAR::FILE" in result.trace[-1]


def test_corrupted_replica_is_detected_and_the_next_one_used(tmp_path, xrootd_server, xrootd_server2, backend):
    first, second = _xrd(xrootd_server, "ONE", backend), _xrd(xrootd_server2, "TWO", backend)
    data = os.urandom(5 * MiB)
    entry = _seed([first, second], tmp_path, "/alice/data/esd.root", data)
    _flip_byte(xrootd_server.disk_path(entry.replicas[0].pfn), 4 * MiB)
    work = _workdir(tmp_path)
    result = stage_in([InputSpec(entry.lfn)], work, Registry([first, second]), MemoryCatalogue((entry,)), [first.name])
    [staged] = result.files
    assert staged.se == second.name
    assert (work / "esd.root").read_bytes() == data
    assert [p.name for p in work.iterdir()] == ["esd.root"]
    failed = [line for line in result.trace if "failed" in line]
    assert len(failed) == 1 and first.name in failed[0] and "adler32" in failed[0]


def test_every_replica_failing_names_the_file_and_each_error(tmp_path, xrootd_server):
    good_then_broken = _xrd(xrootd_server, "BROKEN")
    gone = _local(tmp_path, "GONE")
    entry = _seed([good_then_broken, gone], tmp_path, "/alice/data/f.root", os.urandom(1000))
    _flip_byte(xrootd_server.disk_path(entry.replicas[0].pfn))
    gone.delete(entry.replicas[1].pfn)
    unknown = Replica("TEST::NOWHERE::DISK", "root://nowhere.example//f")
    entry = FileEntry(entry.lfn, entry.size, entry.adler32, entry.md5, entry.replicas + (unknown,))
    work = _workdir(tmp_path)
    with pytest.raises(StageInError) as e:
        stage_in([InputSpec(entry.lfn)], work, Registry([good_then_broken, gone]), MemoryCatalogue((entry,)))
    err = e.value
    assert err.lfn == entry.lfn
    assert [(se, pfn) for se, pfn, _ in err.attempts] == [(r.se, r.pfn) for r in entry.replicas]
    reasons = [why for _, _, why in err.attempts]
    assert "adler32" in reasons[0] and "no such file" in reasons[1] and "not configured" in reasons[2]
    assert str(err).startswith("stage-in /alice/data/f.root: all 3 replicas failed; TEST::BROKEN::XRD")
    assert err.trace and err.trace[-1].startswith("stage-in failed:")
    assert list(work.iterdir()) == []


def test_unknown_lfn_and_lfn_without_replicas(tmp_path):
    cat = MemoryCatalogue((FileEntry("/alice/empty", 10, "00000001"),))
    work = _workdir(tmp_path)
    with pytest.raises(StageInError, match="/alice/missing: not in the catalogue"):
        stage_in([InputSpec("/alice/missing")], work, Registry(), cat)
    with pytest.raises(StageInError, match="/alice/empty: the catalogue knows no replica"):
        stage_in([InputSpec("/alice/empty")], work, Registry(), cat)


def test_nodownload_inputs_are_listed_not_fetched(tmp_path):
    a, b = _local(tmp_path, "A"), _local(tmp_path, "B")
    fetched = _seed([a], tmp_path, "/alice/x/small.txt", b"small")
    remote = _seed([a, b], tmp_path, "/alice/x/huge.root", b"pretend this is big")
    specs = [InputSpec.parse("LF:/alice/x/small.txt"), InputSpec.parse("LF:/alice/x/huge.root,nodownload")]
    work = _workdir(tmp_path)
    result = stage_in(specs, work, Registry([a, b]), MemoryCatalogue((fetched, remote)), close_ses=[b.name])
    assert [f.lfn for f in result.files] == ["/alice/x/small.txt"]
    [listed] = result.remote
    assert listed.lfn == "/alice/x/huge.root"
    assert [r.se for r in listed.replicas] == [b.name, a.name]  # close first
    assert sorted(p.name for p in work.iterdir()) == ["small.txt"]


def test_two_inputs_with_one_name_are_refused(tmp_path):
    se = _local(tmp_path, "A")
    e1 = _seed([se], tmp_path, "/alice/run1/AliESDs.root", b"1")
    e2 = _seed([se], tmp_path, "/alice/run2/AliESDs.root", b"2")
    with pytest.raises(StageInError, match="same file name in the work directory as /alice/run1/AliESDs.root"):
        stage_in([InputSpec(e1.lfn), InputSpec(e2.lfn)], _workdir(tmp_path), Registry([se]), MemoryCatalogue((e1, e2)))


# ---- stage-out ---------------------------------------------------------------------------------------------------


def test_two_replicas_on_two_servers_verified_and_registered(tmp_path, xrootd_server, xrootd_server2, backend):
    one, two = _xrd(xrootd_server, "ONE", backend), _xrd(xrootd_server2, "TWO", backend)
    work = _workdir(tmp_path)
    data = os.urandom(11 * MiB + 1)
    (work / "histos.root").write_bytes(data)
    cat = MemoryCatalogue()
    result = stage_out(
        [OutputSpec("histos.root", replicas=2)],
        work,
        "/alice/user/j/job1",
        Registry([one, two]),
        cat,
        [two.name, one.name],
    )
    assert result.outcome is StageOutcome.COMPLETE and result.outcome.job_status == "DONE"
    [f] = result.files
    assert [r.se for r in f.replicas] == [two.name, one.name]
    entry = cat.lookup("/alice/user/j/job1/histos.root")
    assert entry is not None and entry.digest == digest_file(work / "histos.root")
    assert list(entry.replicas) == f.replicas
    for replica, server in zip(entry.replicas, (xrootd_server2, xrootd_server)):
        assert server.disk_path(replica.pfn).read_bytes() == data  # really on that server's disk
    assert len(cat.register_calls) == 2  # one registration per verified replica


def test_archives_stored_for_root_files_deflated_otherwise_and_empty_files_skipped(tmp_path):
    se = _local(tmp_path, "A")
    work = _workdir(tmp_path)
    (work / "AnalysisResults.root").write_bytes(os.urandom(5000))
    (work / "empty.root").write_bytes(b"")
    (work / "stdout").write_text("log line\n" * 1000)
    (work / "stderr").write_bytes(b"")
    (work / "input.root").write_bytes(b"staged-in input, not an output")
    specs = [
        OutputSpec("root_archive.zip", members=("*.root",)),
        OutputSpec("log_archive.zip", members=("stdout", "stderr")),
        OutputSpec("stderr"),
        OutputSpec("never-written.txt"),
        OutputSpec("nothing.zip", members=("*.nomatch",)),
    ]
    cat = MemoryCatalogue()
    result = stage_out(specs, work, "/alice/out", Registry([se]), cat, [se.name], exclude=["input.root"])
    assert result.outcome is StageOutcome.COMPLETE
    assert [f.lfn for f in result.files] == ["/alice/out/root_archive.zip", "/alice/out/log_archive.zip"]
    assert result.skipped == ["stderr", "never-written.txt", "nothing.zip"]
    with zipfile.ZipFile(work / "root_archive.zip") as z:
        assert [(i.filename, i.compress_type) for i in z.infolist()] == [("AnalysisResults.root", zipfile.ZIP_STORED)]
    with zipfile.ZipFile(work / "log_archive.zip") as z:
        assert [(i.filename, i.compress_type) for i in z.infolist()] == [("stdout", zipfile.ZIP_DEFLATED)]
    trace = "\n".join(result.trace)
    for expected in (
        "member empty.root is empty",
        "member stderr is empty",
        "stderr: empty file, skipped",
        "never-written.txt: not found",
        "nothing.zip: no non-empty file matches",
    ):
        assert expected in trace
    # What was registered is exactly what is on the storage element.
    entry = cat.lookup("/alice/out/root_archive.zip")
    assert entry is not None
    assert digest_file(se.path(entry.replicas[0].pfn)) == entry.digest == digest_file(work / "root_archive.zip")


def test_partial_replicas_are_done_warn(tmp_path, xrootd_server, xrootd_factory):
    alive = _xrd(xrootd_server, "ALIVE")
    dead_server = xrootd_factory()
    dead = _xrd(dead_server, "DEAD")
    dead_server.kill()
    work = _workdir(tmp_path)
    (work / "out.root").write_bytes(os.urandom(100_000))
    cat = MemoryCatalogue()
    result = stage_out(
        [OutputSpec("out.root", replicas=2, ses=(dead.name,))],
        work,
        "/alice/o",
        Registry([alive, dead]),
        cat,
        [alive.name],
    )
    assert result.outcome is StageOutcome.PARTIAL and result.outcome.job_status == "DONE_WARN"
    [f] = result.files
    assert [r.se for r in f.replicas] == [alive.name]
    assert [se for se, _, _ in f.errors] == [dead.name]
    entry = cat.lookup("/alice/o/out.root")
    assert entry is not None and [r.se for r in entry.replicas] == [alive.name]
    assert "1 of 2 replica(s), partial" in "\n".join(result.trace)


def _dies_mid_upload(server: XRootDServer, se_name: str, moved: list[int]):
    def progress(lfn: str, se: str, done: int) -> None:
        if se != se_name:
            return
        moved.append(done)
        if done >= 16 * MiB and server.alive():
            server.kill()  # SIGKILL with data flowing: the storage element vanishes mid-transfer

    return progress


def test_storage_element_dying_mid_upload_fails_over_and_registers_nothing_of_it(
    tmp_path, xrootd_factory, xrootd_server2, backend
):
    dying_server = xrootd_factory()
    dying, spare = _xrd(dying_server, "DYING", backend), _xrd(xrootd_server2, "SPARE", backend)
    work = _workdir(tmp_path)
    data = os.urandom(64 * MiB)
    (work / "big.root").write_bytes(data)
    cat = MemoryCatalogue()
    moved: list[int] = []
    result = stage_out(
        [OutputSpec("big.root")],
        work,
        "/alice/o",
        Registry([dying, spare]),
        cat,
        [dying.name, spare.name],
        progress=_dies_mid_upload(dying_server, dying.name, moved),
    )
    assert not dying_server.alive()
    assert 16 * MiB <= max(moved) < len(data), "the server must have died during the upload"
    assert result.outcome is StageOutcome.COMPLETE
    [f] = result.files
    assert [r.se for r in f.replicas] == [spare.name]
    [(se, pfn, why)] = f.errors
    assert se == dying.name and "partial copy" in why
    entry = cat.lookup("/alice/o/big.root")
    assert entry is not None and [r.se for r in entry.replicas] == [spare.name]
    assert [r.se for c in cat.register_calls for r in c.replicas] == [spare.name]
    assert xrootd_server2.disk_path(entry.replicas[0].pfn).read_bytes() == data


def test_only_storage_element_dying_mid_upload_is_error_sv_with_nothing_registered(tmp_path, xrootd_factory, backend):
    dying_server = xrootd_factory()
    dying = _xrd(dying_server, "DYING", backend)
    work = _workdir(tmp_path)
    (work / "big.root").write_bytes(os.urandom(64 * MiB))
    cat = MemoryCatalogue()
    result = stage_out(
        [OutputSpec("big.root")],
        work,
        "/alice/o",
        Registry([dying]),
        cat,
        [dying.name],
        progress=_dies_mid_upload(dying_server, dying.name, []),
    )
    assert result.outcome is StageOutcome.FAILED and result.outcome.job_status == "ERROR_SV"
    assert cat.register_calls == [] and cat.entries == {}
    assert "stage-out: failed (ERROR_SV)" in result.trace[-1]


def test_a_replica_the_catalogue_refuses_is_removed(tmp_path):
    se = _local(tmp_path, "A")
    work = _workdir(tmp_path)
    (work / "f.txt").write_text("payload output")
    cat = MemoryCatalogue()
    cat.fail_register = True
    result = stage_out([OutputSpec("f.txt")], work, "/alice/o", Registry([se]), cat, [se.name])
    assert result.outcome is StageOutcome.FAILED
    [(_, pfn, why)] = result.files[0].errors
    assert "registration failed: ConnectionError" in why and "(copy removed)" in why
    assert not se.path(pfn).exists()


def test_bad_output_specs_are_refused_before_any_transfer(tmp_path):
    work = _workdir(tmp_path)
    for specs, message in [
        ([OutputSpec("../escape")], "relative path"),
        ([OutputSpec("a"), OutputSpec("a")], "listed twice"),
        ([OutputSpec("a", replicas=0)], "at least 1"),
        ([OutputSpec("a.zip", members=("/etc/*",))], "must be relative"),
    ]:
        with pytest.raises(ConfigError, match=message):
            stage_out(specs, work, "/alice/o", Registry(), MemoryCatalogue())


def test_a_job_reads_from_and_writes_to_xrootd_end_to_end(tmp_path, xrootd_server, xrootd_server2):
    """Stage in from XRootD, run a stand-in payload, stage out to XRootD, and read the output back as the next job
    of a chain would: the catalogue alone says where everything is."""
    se1, se2 = _xrd(xrootd_server, "SITE1"), _xrd(xrootd_server2, "SITE2")
    registry = Registry([se1, se2])
    raw = os.urandom(3 * MiB)
    cat = MemoryCatalogue((_seed([se1], tmp_path, "/alice/raw/chunk.raw", raw),))
    work = _workdir(tmp_path, "job1")
    staged = stage_in([InputSpec("/alice/raw/chunk.raw")], work, registry, cat, [se2.name])
    (work / "reco.root").write_bytes(staged.files[0].path.read_bytes()[::-1])  # the "reconstruction"
    (work / "stdout").write_text("done\n")
    out = stage_out(
        [OutputSpec("reco_archive.zip", members=("*.root", "stdout"), replicas=2)],
        work,
        "/alice/reco/job1",
        registry,
        cat,
        [se2.name, se1.name],
        exclude=["chunk.raw"],
    )
    assert out.outcome is StageOutcome.COMPLETE
    work2 = _workdir(tmp_path, "job2")
    again = stage_in([InputSpec("/alice/reco/job1/reco_archive.zip")], work2, registry, cat, [se1.name])
    assert again.files[0].se == se1.name
    with zipfile.ZipFile(work2 / "reco_archive.zip") as z:
        assert z.read("reco.root") == raw[::-1]
        assert sorted(z.namelist()) == ["reco.root", "stdout"]

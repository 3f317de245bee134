"""A job end to end through the pilot, reading its input from and writing its output to a real XRootD server
(issue 7): the catalogue knows a root:// replica, the JobWrapper stages it in verified, the output goes to the
XRootD storage element named in the JDL, is verified there and registered."""

from __future__ import annotations

import hashlib
import zlib

from support.pilot import Pilot, shell_jdl

from gridpilot.storage.xrootd_element import XRootDStorageElement
from gridpilot.storage.placement import new_pfn

XRD_SE = "LOCAL::XRD::DISK"


def test_job_reads_and_writes_xrootd(pilot: Pilot, xrootd_server, tmp_path):
    grid = pilot.grid
    url = xrootd_server.se_url("pilot-e2e")
    grid.admin.add_storage_element(XRD_SE, url)
    se = XRootDStorageElement(XRD_SE, url)

    data = tmp_path / "input.txt"
    data.write_text("".join(f"event {i}\n" for i in range(5000)))
    pfn = new_pfn(se)
    digest = se.put(data, pfn)
    grid.admin.register_file(lfn="/gridpilot/test/xrd/input.txt", size=digest.size, adler32=digest.adler32,
                             md5=digest.md5, se=XRD_SE, pfn=pfn)

    job_id = pilot.submit(shell_jdl(
        "wc -l < input.txt > count.txt",
        InputFile=["LF:/gridpilot/test/xrd/input.txt"],
        OutputFile=[f"count.txt@{XRD_SE}"],
    ))
    pilot.start(cores=1, close_se=[XRD_SE])
    (job,) = pilot.wait_final([job_id])
    assert job["state"] == "DONE", pilot.describe(job_id)
    trace = pilot.trace_text(job_id)
    assert f"stage-in /gridpilot/test/xrd/input.txt: from {XRD_SE} root://" in trace, trace

    out = grid.user.lookup_file(f"{job['output_dir']}/count.txt")
    assert out["size"] == len(b"5000\n")
    (replica,) = out["replicas"]
    assert replica["se"] == XRD_SE and replica["pfn"].startswith("root://127.0.0.1:")
    # What the catalogue says is what the XRootD server holds.
    assert se.stat(replica["pfn"]) == out["size"]
    assert se.checksum(replica["pfn"], "adler32") == out["adler32"] == f"{zlib.adler32(b'5000' + bytes([10])):08x}"
    got = tmp_path / "count.txt"
    se.get(replica["pfn"], got)
    assert got.read_bytes() == b"5000\n"
    assert hashlib.md5(got.read_bytes()).hexdigest() == out["md5"]

"""Staging a large file in and out of a real XRootD server on loopback, against plain xrdcp (`make bench`).

Both sides verify checksums end to end:
  xrdcp out   xrdcp --cksum adler32 --posc FILE root://...   (adler32 of the source, compared with the server's)
  xrdcp in    xrdcp --cksum adler32 root://... FILE          (adler32 of what arrived, compared with the server's)
  stage-out   gridpilot stage_out of one output, 1 replica: put (adler32 + md5 on the way), the server's own
              size and adler32 asked and compared, registration in an in-memory catalogue
  stage-in    gridpilot stage_in of one input: download with adler32 + md5 on the way, compared with the
              catalogue's size and checksums, fsync, rename into the work directory
gridpilot does more work than xrdcp here (md5 as well, fsync of the download), as it does in production.
Each figure is the best of --repeats rounds (the least disturbed by other work on a shared machine); within a round
the contenders run one after another, so load from elsewhere falls on all alike. The file sits in the page cache,
so this measures the client and protocol path, not the disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import orjson  # noqa: E402
from support import xrootd_server  # noqa: E402  (sets the XRootD client environment before gridpilot imports XRootD)
from support.memory_catalogue import MemoryCatalogue  # noqa: E402

from gridpilot.storage.registry import Registry  # noqa: E402
from gridpilot.storage.transfers import InputSpec, OutputSpec, stage_in, stage_out  # noqa: E402
from gridpilot.storage.xrootd_element import XRootDStorageElement  # noqa: E402

MiB = 1 << 20


class Contender:
    """One way of moving the file: `run` is timed, `reset` undoes it (untimed) so the next run starts alike."""

    def __init__(self, name: str, run: Callable[[], None], reset: Callable[[], None]) -> None:
        self.name, self.run, self.reset = name, run, reset
        self.best = float("inf")


def race(contenders: list[Contender], repeats: int) -> None:
    """Each contender's best time. Runs are interleaved, one of each per round, so that load from other work on a
    shared machine falls on all of them alike rather than on whichever happened to run during it."""
    for _ in range(repeats):
        for c in contenders:
            t0 = time.perf_counter()
            c.run()
            c.best = min(c.best, time.perf_counter() - t0)
            c.reset()


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(os.urandom(n))
            left -= n


def xrdcp(*args: str) -> None:
    subprocess.run(["xrdcp", "--silent", "--cksum", "adler32", *args], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (default 1024)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="bindings,commands", help="gridpilot XRootD back ends to measure")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if shutil.which("xrootd") is None or shutil.which("xrdcp") is None:
        print("bench_storage: skipped: needs xrootd and xrdcp (Debian xrootd-server xrootd-client)")
        return 0

    size = args.size_mib * MiB
    scratch = Path(tempfile.mkdtemp(prefix="gridpilot-bench-storage-"))
    server_base = Path(tempfile.mkdtemp(prefix="gridpilot-xrootd-"))
    server = xrootd_server.start_server(server_base)
    results: dict[str, float] = {}
    try:
        src = scratch / "payload.root"
        make_file(src, size)
        backends = args.backends.split(",")
        outs: list[Contender] = []
        ins: list[Contender] = []

        remote_out = f"{server.url}//data/bench/xrdcp-out.root"
        remote_in = f"{server.url}//data/bench/xrdcp-in.root"
        xrdcp("--posc", str(src), remote_in)
        dl = scratch / "xrdcp-in.root"
        outs.append(
            Contender(
                "xrdcp out",
                lambda: xrdcp("--posc", str(src), remote_out),
                lambda: server.disk_path(remote_out).unlink(),
            )
        )
        ins.append(Contender("xrdcp in", lambda: xrdcp(remote_in, str(dl)), dl.unlink))

        for backend in backends:
            se = XRootDStorageElement(f"BENCH::{backend}::XRD", server.se_url(f"se-{backend}"), backend=backend)
            registry = Registry([se])
            work = scratch / f"out-{backend}"
            work.mkdir()
            os.link(src, work / "payload.root")
            out_cat = MemoryCatalogue()

            def out(work: Path = work, cat: MemoryCatalogue = out_cat, registry: Registry = registry) -> None:
                r = stage_out([OutputSpec("payload.root")], work, "/bench", registry, cat, registry.names)
                assert r.outcome.value == "complete", r.trace

            def forget(cat: MemoryCatalogue = out_cat) -> None:
                for replica in cat.entries.pop("/bench/payload.root").replicas:
                    server.disk_path(replica.pfn).unlink()

            outs.append(Contender(f"stage-out {backend}", out, forget))

            # The input: one replica put there beforehand, known to the catalogue with both checksums.
            in_cat = MemoryCatalogue()
            out(cat=in_cat)
            inwork = scratch / f"in-{backend}"

            def stage(inwork: Path = inwork, cat: MemoryCatalogue = in_cat, registry: Registry = registry) -> None:
                inwork.mkdir()
                stage_in([InputSpec("/bench/payload.root")], inwork, registry, cat, registry.names)

            def clear(inwork: Path = inwork) -> None:
                shutil.rmtree(inwork)

            ins.append(Contender(f"stage-in {backend}", stage, clear))

        race(outs + ins, args.repeats)
        results = {c.name: c.best for c in outs + ins}
    finally:
        server.stop()
        shutil.rmtree(server_base, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)

    mb = size / 1e6
    print(f"\nstaging {args.size_mib} MiB on loopback, checksums verified on both sides, best of {args.repeats} rounds")
    print(f"{platform.node()}  {platform.python_implementation()} {platform.python_version()}  {os.cpu_count()} cpus\n")
    print(f"{'':24}{'seconds':>9}{'MB/s':>9}{'vs xrdcp':>10}")
    for name, seconds in results.items():
        peer = results["xrdcp out" if "out" in name else "xrdcp in"]
        ratio = peer / seconds  # > 1: faster than xrdcp
        print(f"{name:24}{seconds:9.2f}{mb / seconds:9.0f}{ratio:9.2f}x")
    if args.json:
        args.json.write_bytes(
            orjson.dumps(
                {"size_mib": args.size_mib, "repeats": args.repeats, "seconds": results}, option=orjson.OPT_INDENT_2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

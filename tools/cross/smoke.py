"""Smoke test of an installed gridpilot wheel, run by the Python of the wheel's architecture (under qemu-user for
aarch64 and riscv64, natively for x86_64): make test-arch runs it after installing the wheel.

Checks that gridpilot._native imports and is built for this machine, samples this interpreter's own process tree
(and times it), and, where the module has them, parses the real /proc/cpuinfo captures of this architecture and
lists GPUs from a sysfs tree laid out from real lspci captures. Under qemu-user /proc/cpuinfo is the host's, so
only captures are parsed. Prints one `RESULT` line for the summary; exits non-zero on the first failure.

Stdlib only, Python >= 3.9 (the wheel's floor).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

BEGIN = "# ---- BEGIN CAPTURE"
GPU_CLASSES = {0x0300, 0x0302, 0x0380, 0x1200}  # VGA, 3D, other display, processing accelerator
# Device lines that carry the numeric ids: `lspci -nn` ([domain:]bus:dev.fn ...[cccc]: ...[vvvv:dddd]) and
# `lspci -mm -nn` (bus:dev.fn "...[cccc]" "...[vvvv]" "...[dddd]").
ADDR = r"^(?P<addr>(?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) "
LSPCI_NN = [
    re.compile(ADDR + r".*?\[(?P<cls>[0-9a-f]{4})\]: .*?\[(?P<ven>[0-9a-f]{4}):(?P<dev>[0-9a-f]{4})\]"),
    re.compile(ADDR + r'"[^"]*\[(?P<cls>[0-9a-f]{4})\]" "[^"]*\[(?P<ven>[0-9a-f]{4})\]" "[^"]*\[(?P<dev>[0-9a-f]{4})\]"'),
]


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"FAIL: {what}")


def load(path: Path) -> Tuple[Dict[str, str], str]:
    """A capture's `# key: value` header (first value of each key) and the verbatim text after BEGIN."""
    raw = path.read_bytes().decode("utf-8")
    start = raw.index(BEGIN)
    header: Dict[str, str] = {}
    for line in raw[:start].split("\n"):
        key, _, value = line.lstrip("# ").partition(":")
        if key.strip():
            header.setdefault(key.strip(), value.strip())
    return header, raw[raw.index("\n", start) + 1 :]


def stated(expected: str, key: str) -> str:
    m = re.search(rf"\b{key}=(\S+)", expected)
    check(m is not None, f"the header states {key}= ({expected!r})")
    assert m is not None
    return m.group(1)


def spawn_tree(branches: int) -> Tuple[int, List[int]]:
    """`branches` children of this process, each with one child of its own: 2 x branches descendants. They block
    on a pipe and exit when its write end closes (also if this process dies). Returns (write end, children)."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    kids = []
    for _ in range(branches):
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.close(ready_r)
            if os.fork() == 0:
                os.write(ready_w, b"g")
                os.read(r, 1)
                os._exit(0)
            os.write(ready_w, b"c")
            os.read(r, 1)
            os.wait()
            os._exit(0)
        kids.append(pid)
    os.close(r)
    os.close(ready_w)
    got = 0
    while got < 2 * branches:
        chunk = os.read(ready_r, 64)
        check(bool(chunk), "every process of the test tree started")
        got += len(chunk)
    os.close(ready_r)
    return w, kids


def sample_tree(native, branches: int, seconds: float) -> Tuple[int, float]:
    """Sample this interpreter's own tree: returns (processes seen, median microseconds per process)."""
    w, kids = spawn_tree(branches)
    try:
        sampler = native.TreeSampler(os.getpid())
        first = sampler.sample()
        want = 1 + 2 * branches
        check(first.nprocs == want, f"the sampler sees {want} processes of the tree (saw {first.nprocs})")
        check(os.getpid() in first.pids and set(kids) <= set(first.pids), "the sample lists this process and its children")
        check(first.nthreads >= first.nprocs and first.rss_bytes > 0, "threads and RSS are summed")
        full = sampler.sample_full()
        check(full.pss_bytes is not None and full.pss_bytes > 0, "the slow tier reads PSS")
        rounds: List[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(rounds) < 20:
            t0 = time.perf_counter()
            s = sampler.sample()
            rounds.append(time.perf_counter() - t0)
            check(s.nprocs == want, "the tree stays whole while sampled")
        return want, statistics.median(rounds) / want * 1e6
    finally:
        os.close(w)
        for pid in kids:
            os.waitpid(pid, 0)


def check_cpuinfo(native, arch: str, fixtures: Path) -> int:
    files = sorted(fixtures.glob(f"{arch}-*-cpuinfo.txt"))
    check(bool(files), f"{fixtures} holds {arch} cpuinfo captures")
    for path in files:
        header, text = load(path)
        expected = header.get("expected", "")
        info = native.parse_cpuinfo(text)
        check(info.arch == stated(expected, "arch") == arch, f"{path.name}: arch {info.arch}")
        cpus = int(stated(expected, "logical_cpus"))
        check(info.logical_cpus == cpus, f"{path.name}: {info.logical_cpus} logical CPUs, header says {cpus}")
        check(bool(info.model) and bool(info.flags), f"{path.name}: model and features are read")
    # cpu_info() reads a tree and takes this build's own architecture: the wheel must know where it runs.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cpuinfo").write_text(load(files[0])[1])
        info = native.cpu_info(proc=tmp, sys=tmp)
        check(info.arch == arch, f"cpu_info() of this build takes the {arch} layout (got {info.arch})")
    return len(files)


def fake_sysfs(root: Path, devices: List[Tuple[str, int, int, int]]) -> None:
    """PCI functions laid out as the kernel does: bus/pci/devices/<addr> -> ../../../devices/pciDDDD:BB/<addr>."""
    links = root / "sys/bus/pci/devices"
    links.mkdir(parents=True)
    for addr, cls, ven, dev in devices:
        real = root / "sys/devices" / f"pci{addr[:7]}" / addr
        real.mkdir(parents=True)
        for name, value in (("class", f"0x{cls:04x}00"), ("vendor", f"0x{ven:04x}"), ("device", f"0x{dev:04x}")):
            (real / name).write_text(value + "\n")
        (links / addr).symlink_to(os.path.relpath(real, links))
    (root / "dev").mkdir()


def check_gpus(native, _arch: str, fixtures: Path) -> int:
    """A sysfs tree from each lspci -nn capture (of any architecture: the parsing is this build's): list_gpus must
    find the GPU-class functions the capture shows, and parse_lspci the same ones from the text."""
    files = sorted(fixtures.glob("*-lspci-*.txt"))
    pci_ids = fixtures / "pciids-gpu-accelerator-excerpt.txt"
    found = 0
    for path in files:
        text = load(path)[1]
        devices = []
        for line in text.splitlines():
            m = next((m for m in (p.match(line) for p in LSPCI_NN) if m), None)
            if m:
                addr = m["addr"] if m["addr"].count(":") == 2 else "0000:" + m["addr"]
                devices.append((addr, int(m["cls"], 16), int(m["ven"], 16), int(m["dev"], 16)))
        if not devices:
            continue  # a capture without -nn ids cannot be laid out as sysfs
        want = sorted(a for a, cls, _, _ in devices if cls in GPU_CLASSES)
        with tempfile.TemporaryDirectory() as tmp:
            fake_sysfs(Path(tmp), devices)
            gpus = native.list_gpus(sysfs=f"{tmp}/sys", pci_ids=str(pci_ids), dev=f"{tmp}/dev")
        got = sorted(g.pci_address for g in gpus)
        check(got == want, f"{path.name}: list_gpus found {got}, the capture shows {want}")
        from_text = sorted(g.pci_address for g in native.parse_lspci(text, pci_ids=str(pci_ids)))
        check(from_text == want, f"{path.name}: parse_lspci found {from_text}, the capture shows {want}")
        found += len(gpus)
    check(found > 0, "some lspci capture lays out GPUs")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True, choices=["x86_64", "aarch64", "riscv64"])
    ap.add_argument("--fixtures", required=True, type=Path, help="the arch captures (shared/fixtures/arch)")
    ap.add_argument("--branches", type=int, default=10, help="children of the sampled tree, each with one child")
    ap.add_argument("--seconds", type=float, default=2.0, help="how long to time the sampler")
    args = ap.parse_args()

    check(platform.machine() == args.arch, f"this Python runs as {args.arch} (uname says {platform.machine()})")
    from gridpilot import _native as native

    so = Path(native.__file__).name
    check(so.endswith(".abi3.so"), f"the extension is the abi3 build ({so})")
    print(f"{args.arch}: Python {platform.python_version()}, {native.__file__}")

    nprocs, us = sample_tree(native, args.branches, args.seconds)
    print(f"{args.arch}: TreeSampler(os.getpid()) over {nprocs} processes: {us:.1f} us per process (median)")
    results = [f"arch={args.arch}", f"procs={nprocs}", f"us_per_proc={us:.1f}"]

    for name, fn in (("parse_cpuinfo", check_cpuinfo), ("list_gpus", check_gpus)):
        if hasattr(native, name):
            n = fn(native, args.arch, args.fixtures)
            print(f"{args.arch}: {name}: {n} {'captures' if name == 'parse_cpuinfo' else 'GPUs'} as stated")
            results.append(f"{name}={n}")
        else:
            print(f"{args.arch}: {name}: not in this build of gridpilot._native, not checked")
            results.append(f"{name}=absent")
    print("RESULT " + " ".join(results))


if __name__ == "__main__":
    sys.exit(main())

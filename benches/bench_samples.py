"""What the sample fields of issue 16 cost the JobAgent (`python benches/bench_samples.py`).

One real payload (`sleep`), one JobMonitor; each case calls one tier directly, N times per round, R rounds:

  medium, no GPU          the medium tier of a job without GPUs in the node's network namespace: one readlink
  medium, netns           the same payload in its own network namespace (`unshare -n sleep`): readlink + net/dev
  medium, 1 AMD GPU       one AMD GPU from a fixture sysfs tree (two sysfs files per tick)
  medium, 1 NVIDIA GPU    one NVIDIA GPU through nvidia-ml-py and the stand-in libnvidia-ml of tests/support/fake_nvml.c
                          (a real driver answers slower: each call is an ioctl; not measurable here, there is no GPU)
  fast tier               JobMonitor._fast, what runs every second (to compare with main's: git stash, run again)
  resources()             the heartbeat's and final report's dict
  usage_line()            the `usage` trace record's JSON

Prints microseconds per call (min / median / max over the rounds) and the load average; `--json` one JSON line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from gridpilot.pilot.monitor import JobMonitor  # noqa: E402
from gridpilot.pilot.rules import Limits  # noqa: E402


def per_call_us(fn: Callable[[], Any], n: int, rounds: int) -> List[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return out


def amd_tree(root: Path) -> Path:
    dev = root / "sys/devices/pci0000:03/0000:03:00.0"
    dev.mkdir(parents=True)
    (dev / "uevent").write_text("DRIVER=amdgpu\nPCI_SLOT_NAME=0000:03:00.0\n")
    for name, v in (("gpu_busy_percent", 40), ("mem_info_vram_used", 1 << 30), ("mem_info_vram_total", 8 << 30)):
        (dev / name).write_text(f"{v}\n")
    (root / "sys/class/drm/card0").mkdir(parents=True)
    (root / "sys/class/drm/card0/device").symlink_to(dev)
    return root / "sys"


def nvml_case(tmp: Path, n: int, rounds: int) -> Any:
    """Runs in a child with the stand-in library on LD_LIBRARY_PATH; None when it cannot be built or loaded."""
    cc = shutil.which("cc")
    try:
        import pynvml  # noqa: F401  # type: ignore[import-untyped]
    except ImportError:
        return None
    if cc is None:
        return None
    lib = tmp / "nvml"
    lib.mkdir()
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib / "libnvidia-ml.so.1"),
                    str(ROOT / "tests/support/fake_nvml.c")], check=True)
    code = f"""
import orjson, subprocess, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from types import SimpleNamespace
from pathlib import Path
from bench_samples import per_call_us
from gridpilot.pilot.monitor import JobMonitor
from gridpilot.pilot.rules import Limits
p = subprocess.Popen(["sleep", "600"])
m = JobMonitor(p.pid, Path("."), Limits(), gpus=[SimpleNamespace(vendor="NVIDIA", pci_address="0000:41:00.0")])
m._fast(0.0)
m._medium()
assert m.gpu_use and "util_percent" in m.gpu_use[0], m.gpu_use
print(orjson.dumps(per_call_us(m._medium, {n}, {rounds})).decode())
p.kill()
"""
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib), FAKE_NVML_GPU="0000:41:00.0", FAKE_NVML_UTIL="50",
               FAKE_NVML_USED=str(1 << 30), FAKE_NVML_PROCS="1:1000")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return orjson.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="calls per round")
    ap.add_argument("-r", "--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    results: Dict[str, List[float]] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        plain = subprocess.Popen(["sleep", "600"])
        own_net = subprocess.Popen(["unshare", "-n", "sleep", "600"]) if shutil.which("unshare") else None
        try:
            m = JobMonitor(plain.pid, tmp, Limits())
            m._fast(0.0)
            results["medium, no GPU"] = per_call_us(m._medium, a.n, a.rounds)
            results["fast tier"] = per_call_us(lambda: m._fast(0.0), a.n, a.rounds)
            results["resources()"] = per_call_us(m.resources, a.n, a.rounds)
            results["usage_line()"] = per_call_us(m.usage_line, a.n, a.rounds)
            if own_net is not None:
                time.sleep(0.2)  # unshare has exec'ed sleep by then
                mn = JobMonitor(own_net.pid, tmp, Limits())
                mn._medium()
                if mn.net_bytes is not None:
                    results["medium, netns"] = per_call_us(mn._medium, a.n, a.rounds)
            ma = JobMonitor(plain.pid, tmp, Limits(), gpus=[SimpleNamespace(vendor="AMD", pci_address="0000:03:00.0")],
                            sysfs=str(amd_tree(tmp / "node")))
            ma._fast(0.0)
            results["medium, 1 AMD GPU"] = per_call_us(ma._medium, a.n, a.rounds)
            nv = nvml_case(tmp, a.n, a.rounds)
            if nv is not None:
                results["medium, 1 NVIDIA GPU (stand-in NVML)"] = nv
        finally:
            for p in (plain, own_net):
                if p is not None:
                    p.kill()
                    p.wait()
    load = open("/proc/loadavg").read().split()[:3]
    if a.json:
        print(orjson.dumps({"us_per_call": results, "loadavg": load}).decode())
        return 0
    print(f"{'case':<40} {'min us':>9} {'median':>9} {'max':>9}   ({a.rounds} rounds x {a.n} calls)")
    for k, v in results.items():
        print(f"{k:<40} {min(v):9.1f} {statistics.median(v):9.1f} {max(v):9.1f}")
    print(f"load average: {' '.join(load)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

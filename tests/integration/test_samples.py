"""What the JobAgent's samples hold beyond CPU and memory: I/O, threads and processes, network bytes of a job with its
own network namespace, GPU use (AMD from a fixture sysfs tree, NVIDIA through nvidia-ml-py against a stand-in
libnvidia-ml built here). Real payload processes throughout; docs/monitoring.md describes the fields.

There is no GPU on the machines these tests run on: the NVIDIA path is checked against tests/support/fake_nvml.c, the
AMD path against files laid out as amdgpu lays them out. A run on real GPUs is still to be done where there are some.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List

import pytest
from support.require import require_or_skip
from support.pilot import Pilot, shell_jdl
from support.sysfs import NO_PCI_IDS, add_device

from gridpilot import _native
from gridpilot.pilot import gpuuse, netuse
from gridpilot.pilot.monitor import IO_CGROUP, IO_PROC, JobMonitor
from gridpilot.pilot.rules import Limits
from support import paths

MB = 1 << 20
HERE = paths.TESTS / "support"


def wait_for(what: Callable[[], Any], timeout: float = 60.0, message: Any = "") -> Any:
    """`what()` once it is true; `message` (a text, or a function giving one) says what was waited for."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {message() if callable(message) else message}")
        time.sleep(0.05)


@pytest.fixture
def procs():
    started: List[subprocess.Popen] = []

    def start(argv: List[str], **kw: Any) -> subprocess.Popen:
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def poll_until(m: JobMonitor, cond: Callable[[Dict[str, Any]], bool], timeout: float = 60.0) -> Dict[str, Any]:
    """Poll the monitor (every tier due at once: the test's own pace) until `cond` holds on its resources()."""
    last: Dict[str, Any] = {}

    def check() -> bool:
        nonlocal last
        m._next_fast = m._next_medium = 0.0  # due now
        m.poll()
        last = m.resources()
        return cond(last)

    wait_for(check, timeout, lambda: f"last resources: {last}")
    return last


# -- I/O ----------------------------------------------------------------------------------------------------------

IO_PAYLOAD = textwrap.dedent("""
    import os, sys, time
    path, size, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for _ in range(size >> 20):
        os.write(fd, block)
    os.fsync(fd)
    # Out of the page cache, so reading it back goes to the disk and counts in read_bytes, not only in rchar.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    while os.read(fd, 1 << 20):
        pass
    os.close(fd)
    open(done, "w").close()
    time.sleep(120)
""")


def _on_tmpfs(path: Path) -> bool:
    best = ("", "")
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mnt, fstype = line.split()[:3]
            if str(path).startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best[0]):
                best = (mnt, fstype)
    return best[1] in ("tmpfs", "ramfs")


def test_io_of_a_payload_that_writes_and_reads_20_mb_is_counted(procs, tmp_path):
    size = 20 * MB
    data, done = tmp_path / "data", tmp_path / "done"
    p = procs([sys.executable, "-c", IO_PAYLOAD, str(data), str(size), str(done)])
    m = JobMonitor(p.pid, tmp_path, Limits())
    r = poll_until(m, lambda r: done.exists() and r["wchar_bytes"] >= size and r["rchar_bytes"] >= size)
    assert r["io_source"] == IO_PROC  # no job cgroup here
    assert r["nprocs"] == 1 and r["nthreads"] >= 1
    if _on_tmpfs(tmp_path):
        pytest.skip("the temporary directory is on tmpfs, where nothing reaches a disk: read_bytes and write_bytes "
                    "stay 0 (rchar/wchar were checked)")
    # Storage-level counters: the fsync'ed write and the read after the page cache was dropped.
    assert r["write_bytes"] >= size and r["read_bytes"] >= size, r


def test_io_counters_never_drop_when_a_process_leaves_the_tree(procs, tmp_path):
    """A grandchild writes 8 MB, is orphaned and exits: init reaps it, so its counters go nowhere in the tree (a
    reaped child's I/O is added to its reaper's), and the tree's sum drops. The reported counters must not."""
    orphan, end = tmp_path / "orphan", tmp_path / "end"
    code = textwrap.dedent(f"""
        import os, time
        def wait(path):
            while not os.path.exists(path):
                time.sleep(0.05)
        child = os.fork()
        if child == 0:
            if os.fork() == 0:  # the grandchild
                with open({str(tmp_path / 'data')!r}, "wb") as f:
                    f.write(b"x" * (8 << 20))
                wait({str(end)!r})
            else:
                wait({str(orphan)!r})
            os._exit(0)
        os.waitpid(child, 0)
        time.sleep(120)
    """)
    p = procs([sys.executable, "-c", code])
    m = JobMonitor(p.pid, tmp_path, Limits())
    before = poll_until(m, lambda r: r["nprocs"] == 3 and r["wchar_bytes"] >= 8 * MB)
    orphan.touch()
    poll_until(m, lambda r: r["nprocs"] <= 2)
    end.touch()
    after = poll_until(m, lambda r: r["nprocs"] == 1)
    assert after["wchar_bytes"] >= before["wchar_bytes"] >= 8 * MB


def test_io_comes_from_the_job_cgroup_s_io_stat_when_it_has_one(procs, tmp_path):
    """A cgroup v2 directory laid out as on a node with the io controller delegated (this machine has none in v2):
    read_bytes and write_bytes are io.stat's sums over devices, and the record says so."""
    p = procs(["sleep", "120"])
    cg = tmp_path / "job"
    cg.mkdir()
    (cg / "cgroup.procs").write_text(f"{p.pid}\n")
    (cg / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (cg / "io.stat").write_text("8:0 rbytes=1000 wbytes=2000 rios=1 wios=2 dbytes=0 dios=0\n"
                                "259:0 rbytes=30 wbytes=40 rios=1 wios=1 dbytes=0 dios=0\n")
    m = JobMonitor(p.pid, tmp_path, Limits(), cgroup=str(cg))
    r = poll_until(m, lambda r: r["nprocs"] == 1)
    assert (r["io_source"], r["read_bytes"], r["write_bytes"]) == (IO_CGROUP, 1030, 2040)
    # Without io.stat (no io controller for the job cgroup): the processes' own counters.
    (cg / "io.stat").unlink()
    m = JobMonitor(p.pid, tmp_path, Limits(), cgroup=str(cg))
    r = poll_until(m, lambda r: r["nprocs"] == 1)
    assert r["io_source"] == IO_PROC


WRITE_ON_REQUEST = textwrap.dedent("""
    import os, sys
    path = sys.argv[1]
    print("ready", flush=True)
    for line in sys.stdin:
        with open(path, "ab") as f:
            f.write(b"x" * int(line))
        print("written", flush=True)
""")


def test_the_fast_tier_reads_io_every_nth_tick_and_holds_the_last_counters_between(procs, tmp_path):
    """The native fast tier reads the processes' io only at every io_every-th tick (or a full sample): between two
    reads the sample holds the last counters read, never 0 and never a newer figure."""
    p = procs([sys.executable, "-c", WRITE_ON_REQUEST, str(tmp_path / "data")],
              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    # io_every far beyond the test: after the first tick, io is read only by sample_full.
    ft = _native.FastTier(p.pid, interval_s=0.02, io_every=1_000_000)
    try:
        first = wait_for(lambda: ft.take().last, message="a first tick")
        assert 0 < first.io_timestamp <= first.timestamp and first.wchar > 0
        p.stdin.write(f"{8 * MB}\n")
        p.stdin.flush()
        assert p.stdout.readline() == "written\n"
        written_at = time.time()
        later = wait_for(lambda: (lambda t: t if t and t.timestamp > written_at else None)(ft.take().last),
                         message="a tick after the write")
        assert (later.wchar, later.rchar, later.io_timestamp) == (first.wchar, first.rchar, first.io_timestamp)
        full = ft.sample_full()
        assert full.wchar >= first.wchar + 8 * MB and full.io_timestamp == full.timestamp
        after = wait_for(lambda: (lambda t: t if t and t.timestamp > full.timestamp else None)(ft.take().last),
                         message="a tick after the full sample")
        assert (after.wchar, after.io_timestamp) == (full.wchar, full.timestamp)
    finally:
        ft.stop()


def test_a_tree_sampler_reads_io_every_sample_unless_told_otherwise(procs, tmp_path):
    p = procs([sys.executable, "-c", WRITE_ON_REQUEST, str(tmp_path / "data")],
              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    every, third = _native.TreeSampler(p.pid), _native.TreeSampler(p.pid, io_every=3)
    assert (every.io_every, third.io_every) == (1, 3)
    a, b = every.sample(), third.sample()
    p.stdin.write(f"{4 * MB}\n")
    p.stdin.flush()
    assert p.stdout.readline() == "written\n"
    assert every.sample().wchar >= a.wchar + 4 * MB
    # Samples 2 and 3 hold the first one's counters; the 4th reads io again.
    two, three, four = (third.sample() for _ in range(3))
    assert (two.wchar, three.wchar, three.io_timestamp) == (b.wchar, b.wchar, b.timestamp)
    assert four.wchar >= b.wchar + 4 * MB and four.io_timestamp == four.timestamp
    with pytest.raises(ValueError, match="io_every"):
        _native.TreeSampler(p.pid, io_every=0)


def test_threads_and_processes_are_counted(procs, tmp_path):
    code = textwrap.dedent("""
        import subprocess, threading, time
        kids = [subprocess.Popen(["sleep", "120"]) for _ in range(3)]
        for _ in range(4):
            threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
        time.sleep(120)
    """)
    p = procs([sys.executable, "-c", code])
    m = JobMonitor(p.pid, tmp_path, Limits())
    r = poll_until(m, lambda r: r["nprocs"] == 4 and r["nthreads"] >= 8)
    assert r["nthreads"] == 5 + 3  # the python process and its 4 threads, one each for the sleeps


# -- network ------------------------------------------------------------------------------------------------------

NET_PAYLOAD = textwrap.dedent("""
    import socket, subprocess, sys, time
    frames, size, done = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ip = ["ip", "link"]
    subprocess.run(ip + ["add", "gpa", "type", "veth", "peer", "name", "gpb"], check=True)
    subprocess.run(ip + ["set", "gpa", "up"], check=True)
    subprocess.run(ip + ["set", "gpb", "up"], check=True)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("gpa", 0))
    # Broadcast frames of an experimental ethertype: counted as sent on gpa and received on gpb, nothing answers.
    frame = b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x01" + b"\\x88\\xb5" + b"x" * (size - 14)
    for _ in range(frames):
        s.send(frame)
    # Loopback is not counted: traffic here must not show.
    subprocess.run(ip + ["set", "lo", "up"], check=True)
    lo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(100):
        lo.sendto(b"y" * 60000, ("127.0.0.1", 9))
    open(done, "w").close()
    time.sleep(120)
""")


def _can_unshare_net() -> str:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2)"
    r = subprocess.run(["unshare", "-n", "ip", "link", "add", "t0", "type", "veth", "peer", "name", "t1"],
                       capture_output=True, text=True)
    return "" if r.returncode == 0 else f"cannot make a network namespace with a veth pair here: {r.stderr.strip()}"


def test_network_bytes_of_a_job_in_its_own_namespace(procs, tmp_path):
    why = _can_unshare_net()
    if why:
        require_or_skip(why)
    frames, size, done = 500, 1000, tmp_path / "done"
    # `unshare -n` execs in place: the root pid enters the new namespace after the monitor has started.
    p = procs(["unshare", "-n", sys.executable, "-c", NET_PAYLOAD, str(frames), str(size), str(done)])
    m = JobMonitor(p.pid, tmp_path, Limits())
    r = poll_until(m, lambda r: done.exists() and r.get("net_tx_bytes", 0) >= frames * size
                   and r.get("net_rx_bytes", 0) >= frames * size)
    # gpa sent every frame, gpb received every one; the 6 MB sent over loopback are not in it.
    assert r["net_tx_bytes"] < frames * size + 100_000 and r["net_rx_bytes"] < frames * size + 100_000, r


def test_no_network_bytes_for_a_job_in_the_node_s_namespace(procs, tmp_path):
    p = procs(["sleep", "120"])
    m = JobMonitor(p.pid, tmp_path, Limits())
    r = poll_until(m, lambda r: r["nprocs"] == 1)
    assert "net_rx_bytes" not in r and "net_tx_bytes" not in r


def test_net_dev_sums_every_interface_but_loopback():
    text = ("Inter-|   Receive                                                |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
            "carrier compressed\n"
            "    lo: 9999 1 0 0 0 0 0 0 9999 1 0 0 0 0 0 0\n"
            "  eth0: 100 2 0 0 0 0 0 0 200 3 0 0 0 0 0 0\n"
            "veth1@if3: 10 1 0 0 0 0 0 0 20 1 0 0 0 0 0 0\n")
    assert netuse.parse_net_dev(text) == (110, 220)


# -- GPUs: AMD through sysfs --------------------------------------------------------------------------------------


def amd_sysfs(root: Path, cards: Dict[str, Dict[str, int]]) -> Path:
    """A sysfs tree shaped as amdgpu makes it: the PCI function (test_hardware.add_device, so list_gpus finds it
    too), class/drm/cardN/device/{uevent, gpu_busy_percent, mem_info_vram_*}, with a connector entry and a render
    node beside each card."""
    drm = root / "sys" / "class" / "drm"
    for n, (address, files) in enumerate(cards.items()):
        device = add_device(root, address, "0x038000", "0x1002", "0x740f", "-1", "amdgpu")
        (device / "uevent").write_text(f"DRIVER=amdgpu\nPCI_CLASS=38000\nPCI_SLOT_NAME={address}\n")
        for name, value in files.items():
            (device / name).write_text(f"{value}\n")
        for entry in (f"card{n}", f"card{n}-DP-1", f"renderD{128 + n}"):
            (drm / entry).mkdir(parents=True)
            (drm / entry / "device").symlink_to(device)
    return root / "sys"


def gpu_file(sysfs: Path, address: str, name: str) -> Path:
    return sysfs / "bus" / "pci" / "devices" / address / name


def amd(address: str) -> Any:
    return SimpleNamespace(vendor="AMD", pci_address=address)


def test_amd_gpu_use_from_sysfs_for_the_job_s_gpu_only(tmp_path):
    sysfs = amd_sysfs(tmp_path, {
        "0000:03:00.0": {"gpu_busy_percent": 11, "mem_info_vram_used": 1 * MB, "mem_info_vram_total": 8192 * MB},
        "0000:83:00.0": {"gpu_busy_percent": 87, "mem_info_vram_used": 5120 * MB, "mem_info_vram_total": 16384 * MB},
    })
    notes: List[str] = []
    s = gpuuse.GpuUseSampler([amd("0000:83:00.0")], sysfs=str(sysfs), note=notes.append)
    assert s.sample([]) == [{"pci_address": "0000:83:00.0", "vendor": "AMD", "source": "sysfs", "util_percent": 87.0,
                             "memory_used_bytes": 5120 * MB, "memory_total_bytes": 16384 * MB}]
    gpu_file(sysfs, "0000:83:00.0", "gpu_busy_percent").write_text("3\n")
    assert s.sample([])[0]["util_percent"] == 3.0
    assert notes == []


def test_an_amd_gpu_without_its_files_is_reported_once_with_the_reason(tmp_path):
    sysfs = amd_sysfs(tmp_path, {"0000:03:00.0": {"mem_info_vram_used": 1}})
    notes: List[str] = []
    s = gpuuse.GpuUseSampler([amd("0000:03:00.0"), amd("0000:04:00.0")], sysfs=str(sysfs), note=notes.append)
    for _ in range(3):
        got = s.sample([])
    assert [g["pci_address"] for g in got] == ["0000:03:00.0", "0000:04:00.0"]
    assert all("error" in g and "util_percent" not in g for g in got), got
    assert "gpu_busy_percent" in got[0]["error"] and "no DRM card" in got[1]["error"]
    assert len(notes) == 2, notes


def test_the_monitor_reports_amd_gpu_use_in_its_medium_tier(procs, tmp_path):
    sysfs = amd_sysfs(tmp_path, {"0000:03:00.0": {"gpu_busy_percent": 42, "mem_info_vram_used": 7 * MB,
                                                  "mem_info_vram_total": 8192 * MB}})
    p = procs(["sleep", "120"])
    m = JobMonitor(p.pid, tmp_path, Limits(), gpus=[amd("0000:03:00.0")], sysfs=str(sysfs), medium_s=3600)
    r = poll_until(m, lambda r: "gpus" in r)
    assert r["gpus"][0]["util_percent"] == 42.0 and r["gpus"][0]["memory_used_bytes"] == 7 * MB
    # The fast tier does not read GPUs: a change shows only when the medium tier is due again.
    gpu_file(sysfs, "0000:03:00.0", "gpu_busy_percent").write_text("99\n")
    m._next_fast = 0.0
    m.poll()
    assert m.resources()["gpus"][0]["util_percent"] == 42.0
    m._next_medium = 0.0
    m.poll()
    assert m.resources()["gpus"][0]["util_percent"] == 99.0


def test_without_gpus_the_monitor_touches_no_gpu_file_at_all(procs, tmp_path):
    """No GPU: no sampler is made, nothing under sysfs is opened or listed in any tier, and the record has no
    `gpus`. Checked with an audit hook on every open and directory listing this process makes."""
    sysfs = amd_sysfs(tmp_path / "node", {"0000:03:00.0": {"gpu_busy_percent": 1, "mem_info_vram_used": 1}})
    seen: List[str] = []

    def hook(event: str, args: Any) -> None:
        if event in ("open", "os.listdir", "os.scandir") and args and str(args[0]).startswith(str(sysfs)):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)  # cannot be removed: it only records paths under this test's own tree
    p = procs(["sleep", "120"])
    work = tmp_path / "work"  # the slow tier walks the work directory: not the tree holding the fixture sysfs
    work.mkdir()
    m = JobMonitor(p.pid, work, Limits(), sysfs=str(sysfs), medium_s=0.0)
    for _ in range(5):
        m._next_fast = m._next_slow = 0.0
        m.poll()
    assert m.gpu_sampler is None and "gpus" not in m.resources() and seen == []
    # The same hook sees a job with a GPU read its two files per medium tick (and list class/drm once, at start).
    m = JobMonitor(p.pid, work, Limits(), gpus=[amd("0000:03:00.0")], sysfs=str(sysfs), medium_s=0.0)
    assert any("os.listdir" in s for s in seen)
    seen.clear()
    for _ in range(3):
        m.poll()
    assert len([s for s in seen if s.startswith("open")]) == 6 and not any("listdir" in s for s in seen), seen


# -- GPUs: NVIDIA through NVML (nvidia-ml-py) against a stand-in libnvidia-ml ---------------------------------------

NVML_DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from types import SimpleNamespace
    from gridpilot.pilot.monitor import JobMonitor
    from gridpilot.pilot.rules import Limits
    if os.environ.get("HIDE_PYNVML"):
        sys.modules["pynvml"] = None  # as if nvidia-ml-py were not installed
    gpus = [SimpleNamespace(vendor="NVIDIA", pci_address=a) for a in sys.argv[1].split(",")]
    child = subprocess.Popen(["sleep", "120"])
    # The job's own process and one of another job (pid 1) on the same GPU.
    os.environ["FAKE_NVML_PROCS"] = f"{child.pid}:{1 << 30},1:{5 << 30}"
    notes = []
    m = JobMonitor(child.pid, Path("."), Limits(), gpus=gpus, medium_s=0.0, trace=notes.append)
    m.poll()
    os.environ["FAKE_NVML_UTIL"] = "64"
    m.poll()
    child.kill()
    print(json.dumps({"gpus": m.resources().get("gpus"), "notes": notes, "pid": child.pid}))
""")


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory) -> Path:
    """A directory holding libnvidia-ml.so.1 built from tests/support/fake_nvml.c."""
    try:
        import pynvml  # noqa: F401
    except ImportError:
        require_or_skip("nvidia-ml-py (the gpu extra, also in the test extra) is not installed")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        require_or_skip("no C compiler (cc; Debian gcc) to build the stand-in libnvidia-ml")
    d = tmp_path_factory.mktemp("nvml")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(d / "libnvidia-ml.so.1"),
                    str(HERE / "fake_nvml.c")], check=True)
    return d


def run_nvml(gpus: str, libdir: "Path | None", **env: str) -> Dict[str, Any]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML")}
    e.update(FAKE_NVML_GPU="0000:41:00.0", FAKE_NVML_UTIL="37", FAKE_NVML_USED=str(3 << 30), **env)
    if libdir is not None:
        e["LD_LIBRARY_PATH"] = f"{libdir}:{e['LD_LIBRARY_PATH']}" if e.get("LD_LIBRARY_PATH") else str(libdir)
    r = subprocess.run([sys.executable, "-c", NVML_DRIVER, gpus], env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_nvidia_gpu_use_and_the_job_s_own_gpu_memory_through_nvml(fake_nvml):
    out = run_nvml("0000:41:00.0", fake_nvml)
    assert out["notes"] == []
    assert out["gpus"] == [{"pci_address": "0000:41:00.0", "vendor": "NVIDIA", "source": "nvml",
                            "util_percent": 64.0, "memory_used_bytes": 3 << 30, "memory_total_bytes": 16 << 30,
                            "job_processes": 1, "job_memory_bytes": 1 << 30}]


def test_an_nvidia_gpu_nvml_does_not_know_is_reported_with_nvml_s_error(fake_nvml):
    out = run_nvml("0000:41:00.0,0000:42:00.0", fake_nvml)
    known, unknown = out["gpus"]
    assert known["util_percent"] == 64.0
    assert unknown == {"pci_address": "0000:42:00.0", "vendor": "NVIDIA", "source": "nvml", "error": "NVML: Not Found"}
    assert out["notes"] == ["GPU 0000:42:00.0 use not read: NVML: Not Found"]


def test_without_libnvidia_ml_there_is_no_nvidia_sampling_and_one_note(fake_nvml):
    out = run_nvml("0000:41:00.0", None)
    assert out["gpus"] is None
    assert len(out["notes"]) == 1 and "NVML did not start" in out["notes"][0], out["notes"]


def test_nvml_that_fails_to_start_is_said_once(fake_nvml):
    out = run_nvml("0000:41:00.0", fake_nvml, FAKE_NVML_INIT="9")  # NVML_ERROR_DRIVER_NOT_LOADED
    assert out["gpus"] is None and out["notes"] == ["NVIDIA GPU use not sampled: NVML did not start "
                                                    "(Driver Not Loaded)"]


def test_without_nvidia_ml_py_there_is_no_nvidia_sampling_and_one_note(fake_nvml):
    out = run_nvml("0000:41:00.0", fake_nvml, HIDE_PYNVML="1")
    assert out["gpus"] is None
    assert len(out["notes"]) == 1 and "nvidia-ml-py package is not installed" in out["notes"][0]


# -- end to end: a real local grid ---------------------------------------------------------------------------------


def test_the_heartbeat_central_stores_holds_io_threads_and_the_job_s_gpu_use(pilot: Pilot, tmp_path):
    """A job given an AMD GPU of a fixture node (sysfs=) writes 8 MB and waits: the sample central keeps from its
    heartbeats has its I/O with the source, its threads and processes, and its GPU's use; no network bytes (the job
    shares the node's namespace); the final report has them too."""
    address = "0000:03:00.0"
    sysfs = amd_sysfs(pilot.grid.state_dir / "node", {address: {"gpu_busy_percent": 55, "mem_info_vram_used": 9 * MB,
                                                                "mem_info_vram_total": 8192 * MB}})
    stop = tmp_path / "stop"
    job = pilot.submit(shell_jdl(f"dd if=/dev/zero of=io.dat bs=1M count=8 conv=fsync 2>/dev/null; "
                                 f"while [ ! -e {stop} ]; do sleep 0.2; done", GPU=1))
    pilot.start(cores=2, sysfs=str(sysfs), pci_ids=NO_PCI_IDS, monitor_medium_s=1.0)
    pilot.wait_state(job, ["RUNNING"])

    def stored() -> Dict[str, Any]:
        res = pilot.job(job).get("resources") or {}
        return res if res.get("wchar_bytes", 0) >= 8 * MB and res.get("gpus") else {}

    res = wait_for(stored, 90, "a heartbeat with the job's I/O and GPU use")
    # The source follows the job cgroup: io.stat where it has the io controller (the agent traces its controllers).
    cg = next((t for t in pilot.trace_text(job).splitlines() if "job cgroup:" in t), "")
    has_io = "controllers:" in cg and "io" in cg.split("controllers:", 1)[1].replace(")", " ").split()
    assert res["io_source"] == (IO_CGROUP if has_io else IO_PROC), (res["io_source"], cg)
    assert res["nprocs"] >= 1 and res["nthreads"] >= res["nprocs"]
    assert res["write_bytes"] >= 0 and res["rchar_bytes"] >= 0
    assert res["gpus"] == [{"pci_address": address, "vendor": "AMD", "source": "sysfs", "util_percent": 55.0,
                            "memory_used_bytes": 9 * MB, "memory_total_bytes": 8192 * MB}]
    assert "net_rx_bytes" not in res and "net_tx_bytes" not in res
    stop.touch()
    (final,) = pilot.wait_final([job])
    assert final["state"] == "DONE", pilot.describe(job)
    assert final["resources"]["wchar_bytes"] >= 8 * MB and final["resources"]["gpus"][0]["util_percent"] == 55.0
    # The trace keeps their history: a `usage` record beside every `proc` line (whose ALICE columns stay as they are).
    trace = pilot.trace(job)
    procs_lines = [e["text"] for e in trace if e["category"] == "proc"]
    usage = [json.loads(e["text"]) for e in trace if e["category"] == "usage"]
    assert len(usage) == len(procs_lines) >= 2 and all(len(t.split(" ")) == 14 for t in procs_lines)
    assert usage[-1]["wchar_bytes"] >= 8 * MB and usage[-1]["nthreads"] >= 1 and usage[-1]["io_source"]
    assert usage[-1]["gpus"][0]["util_percent"] == 55.0 and "rss_bytes" not in usage[-1]
    # PSS+swap and the work directory's size too (the slow tier samples at once), for the job page's plots.
    assert usage[-1]["pss_swap_bytes"] > 0 and usage[-1]["disk_bytes"] >= 0

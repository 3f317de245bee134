"""TreeSampler against real process trees spawned by the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from gridpilot import _native
from gridpilot.errors import CgroupError

from support import proctree
from support import paths


@pytest.mark.parametrize(
    "spec",
    [
        proctree.flat(10),
        proctree.chain(30),
        proctree.balanced(100),
        {"threads": 4, "children": [{"threads": 3}, {"threads": 2, "children": [{}]}]},
    ],
    ids=["flat10", "deep30", "balanced100", "threads"],
)
def test_pids_and_counts_are_exact(tree_factory, spec):
    tree = tree_factory(spec)
    sampler = _native.TreeSampler(tree.root)
    s = sampler.sample()
    assert set(s.pids) == tree.pids
    assert s.nprocs == len(tree.pids) == proctree.count(spec)
    expected_threads = sum(psutil.Process(p).num_threads() for p in tree.pids)
    assert s.nthreads == expected_threads
    assert s.pids == sorted(s.pids)
    assert sampler.pids() == sorted(tree.pids)


def test_children_forked_from_another_thread_are_found(tree_factory):
    # A child of a non-main thread is listed only in that thread's task/<tid>/children file.
    tree = tree_factory({"threads": 2, "thread_children": [{}, {"children": [{}]}]})
    s = _native.TreeSampler(tree.root).sample()
    assert set(s.pids) == tree.pids
    assert s.nprocs == 4


def test_name_with_spaces_and_parentheses(tree_factory):
    tree = tree_factory({"children": [{"name": "a (b) c) d"}, {"name": ") ("}]})
    names = {psutil.Process(p).name() for p in tree.pids}
    assert "a (b) c) d" in names and ") (" in names
    s = _native.TreeSampler(tree.root).sample()
    assert set(s.pids) == tree.pids
    assert s.nprocs == 3


def test_cpu_and_memory_agree_with_psutil(tree_factory):
    tree = tree_factory({"burn": 0.3, "children": [{"burn": 0.4, "alloc_mb": 40}, {"burn": 0.2, "alloc_mb": 20}]})
    sampler = _native.TreeSampler(tree.root)
    s = sampler.sample()
    procs = [psutil.Process(p) for p in tree.pids]
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
    rss = sum(p.memory_info().rss for p in procs)
    vms = sum(p.memory_info().vms for p in procs)
    # The tree is idle once it has reported, so both read the same kernel counters; the tolerance covers one
    # clock tick per process and the pages a sleeping Python interpreter may still touch.
    assert s.cpu_time_s == pytest.approx(cpu, abs=0.01 * len(procs) + 0.02)
    assert s.cpu_time_s >= 0.8
    assert s.cpu_time_s == pytest.approx(s.utime_s + s.stime_s)
    assert s.rss_bytes == pytest.approx(rss, rel=0.02)
    assert s.rss_bytes > 60 * 1024 * 1024
    assert s.vmem_bytes == pytest.approx(vms, rel=0.02)
    assert s.swap_bytes is None and s.pss_bytes is None
    assert s.minflt > 0


def test_slow_tier_adds_pss_and_swap(tree_factory):
    tree = tree_factory({"children": [{"alloc_mb": 30}]})
    sampler = _native.TreeSampler(tree.root)
    full = sampler.sample_full()
    pss = 0
    for p in tree.pids:
        with open(f"/proc/{p}/smaps_rollup") as f:
            pss += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    assert full.pss_bytes == pytest.approx(pss, rel=0.05)
    assert full.pss_bytes > 30 * 1024 * 1024
    assert full.swap_bytes is not None and full.swap_bytes >= 0
    # The fast tier after a slow one goes back to None for the slow fields.
    assert sampler.sample().pss_bytes is None


def test_io_counters_grow_with_writes(tmp_path):
    target = tmp_path / "out.bin"
    script = (
        "import os, sys, time\n"
        f"fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n"
        "os.write(fd, b'x' * (4 << 20)); os.fsync(fd); os.close(fd)\n"
        "sys.stdout.write('ok\\n'); sys.stdout.flush(); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline() == b"ok\n"
        s = _native.TreeSampler(p.pid).sample()
        io = psutil.Process(p.pid).io_counters()
        assert s.wchar == io.write_chars >= 4 << 20
        assert s.write_bytes == io.write_bytes
        assert s.rchar == io.read_chars
    finally:
        p.kill()
        p.wait()


def test_processes_exiting_mid_sample_are_dropped_silently():
    # A parent that keeps starting children that exit at once: every sample races with exits.
    script = (
        "import os, time, sys\n"
        "sys.stdout.write('go\\n'); sys.stdout.flush()\n"
        "end = time.time() + 20\n"
        "while time.time() < end:\n"
        "    pid = os.fork()\n"
        "    if pid == 0: os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline() == b"go\n"
        sampler = _native.TreeSampler(p.pid)
        seen_child = False
        for _ in range(2000):
            s = sampler.sample()
            assert p.pid in s.pids
            # A sample is not atomic: the child read first may have been reaped and replaced by the time the
            # parent's children file is read, so two successive children can both show up.
            assert 1 <= s.nprocs <= 3
            seen_child |= s.nprocs >= 2
        assert seen_child
    finally:
        p.kill()
        p.wait()


def test_reparented_member_stays_in_the_job():
    # The payload daemonises: its child is re-parented to init when the middle process exits.
    script = (
        "import os, sys, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"
        "        os.write(w, b'%d\\n' % os.getpid()); time.sleep(60); os._exit(0)\n"
        "    os.read(0, 1); os._exit(0)\n"
        "sys.stdout.write(os.read(r, 64).decode()); sys.stdout.flush(); time.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        grandchild = int(p.stdout.readline())
        sampler = _native.TreeSampler(p.pid)
        assert grandchild in sampler.sample().pids
        middle = psutil.Process(grandchild).ppid()
        p.stdin.write(b"x")  # let the middle process exit
        p.stdin.flush()
        assert proctree.wait_until(lambda: psutil.Process(grandchild).ppid() != middle)
        s = sampler.sample()
        assert grandchild in s.pids
    finally:
        p.kill()
        p.wait()
        try:
            os.kill(grandchild, 9)
        except ProcessLookupError:
            pass


def test_reused_pid_is_a_new_process(tmp_path):
    """A fake /proc whose pid 4242 changes its start time: the sampler must drop the old process's counters."""
    root = tmp_path / "proc"
    d = root / "4242"
    d.mkdir(parents=True)
    (root / "self").symlink_to("4242")

    def write(start: int, utime: int) -> None:
        (d / "stat").write_text(
            f"4242 (job) S 1 4242 4242 0 -1 0 0 0 0 0 {utime} 0 0 0 20 0 1 0 {start} 1000 10 0\n"
        )

    write(100, 500)
    sampler = _native.TreeSampler(4242, proc=str(root))
    first = sampler.sample()
    assert first.pids == [4242]
    write(900, 7)
    second = sampler.sample()
    assert second.pids == [4242]
    assert second.utime_s < first.utime_s


def test_vanished_root_gives_empty_sample():
    p = subprocess.Popen(["true"])
    p.wait()
    s = _native.TreeSampler(p.pid).sample()
    assert s.nprocs == 0 and s.pids == []


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="root_pid"):
        _native.TreeSampler(0)
    with pytest.raises(CgroupError, match="no cgroup.procs"):
        _native.TreeSampler(1, cgroup=str(tmp_path))


def test_sampling_releases_the_gil(tree_factory):
    tree = tree_factory(proctree.balanced(200))
    sampler = _native.TreeSampler(tree.root)
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0)

    t = threading.Thread(target=count)
    t.start()
    for _ in range(50):
        sampler.sample()
    stop.set()
    t.join()
    assert ticks > 0


def test_stat_reads_dont_leak_descriptors(tree_factory):
    tree = tree_factory(proctree.flat(20))
    sampler = _native.TreeSampler(tree.root)
    sampler.sample()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        sampler.sample()
    assert len(os.listdir("/proc/self/fd")) == before


FIXTURES = paths.FIXTURES / "proc"


@pytest.mark.parametrize("capture", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_captured_proc_tree(capture):
    """A /proc capture of a real tree (tests/fixtures/capture_proc.py), checked against psutil's view at capture."""
    root = FIXTURES / capture
    expected = json.loads((root / "expected.json").read_text())
    sampler = _native.TreeSampler(expected["root"], proc=str(root))
    s = sampler.sample()
    assert s.pids == expected["pids"]
    assert s.nthreads == expected["nthreads"]
    assert s.cpu_time_s == pytest.approx(expected["cpu_time_s"], abs=0.011 * len(s.pids))
    page = os.sysconf("SC_PAGE_SIZE")
    stat_rss = sum(
        int((root / str(p) / "stat").read_bytes().rsplit(b")", 1)[1].split()[21]) * page for p in expected["pids"]
    )
    assert s.rss_bytes == stat_rss
    # stat's rss comes from the kernel's per-CPU approximate counters, statm's (and so psutil's) from the exact
    # sum since Linux 6.x: they differ by a few dozen pages per process.
    statm_rss = sum(int((root / str(p) / "statm").read_text().split()[1]) * page for p in expected["pids"])
    assert s.rss_bytes == pytest.approx(statm_rss, rel=0.03)
    assert s.rss_bytes == pytest.approx(expected["rss_bytes"], rel=0.03)
    assert s.vmem_bytes == pytest.approx(expected["vmem_bytes"], rel=0.01)
    assert s.wchar == expected["wchar"]
    assert s.rchar == pytest.approx(expected["rchar"], rel=0.05)
    full = sampler.sample_full()
    pss = sum(
        int(line.split()[1]) * 1024
        for pid in expected["pids"]
        for line in (root / str(pid) / "smaps_rollup").read_text().splitlines()
        if line.startswith("Pss:")
    )
    assert full.pss_bytes == pss > 0


def test_cpu_of_reaped_children_is_kept():
    # Short-lived children burn CPU and are reaped: their time moves to the parent's cutime/cstime.
    script = (
        "import os, sys, time\n"
        "for _ in range(3):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        end = time.process_time() + 0.2\n"
        "        while time.process_time() < end: pass\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "sys.stdout.write('done\\n'); sys.stdout.flush(); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline() == b"done\n"
        s = _native.TreeSampler(p.pid).sample()
        assert s.nprocs == 1
        assert s.children_cpu_s >= 0.55
        assert s.cpu_time_s < 0.5
        assert "children_cpu_s" in s.to_dict()
    finally:
        p.kill()
        p.wait()

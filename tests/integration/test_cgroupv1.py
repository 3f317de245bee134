"""cgroup v1 limits on hybrid hosts, for real on this build machine (memory, pids, cpu live in v1 here), and the
delegation check for the unprivileged case, for real as an unprivileged user.

The test cgroups are children of this process's own v1 cgroups (never beside them), removed after each test.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from support.paths import FIXTURES
from support.require import require_or_skip

from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupv1, jobcgroup, limits
from gridpilot.isolation.cgroupv1 import V1Cgroups

PROC = FIXTURES / "cgroup" / "proc"
MB = 1 << 20
_names = itertools.count()


def test_v1_dirs_on_an_el8_hybrid_node() -> None:
    dirs, missing = cgroupv1.own_v1_dirs(mountinfo=PROC / "el8-hybrid" / "mountinfo", proc_cgroup=PROC / "el8-hybrid" / "cgroup")
    assert missing == {}
    assert dirs == {
        "memory": Path("/sys/fs/cgroup/memory/system.slice/condor.service"),
        # cpu and cpuacct share one hierarchy there, mounted at cpu,cpuacct.
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct/system.slice/condor.service"),
        "pids": Path("/sys/fs/cgroup/pids/system.slice/condor.service"),
    }


def test_v1_dirs_on_this_host_capture_and_v1_only_el7() -> None:
    dirs, missing = cgroupv1.own_v1_dirs(
        mountinfo=PROC / "this-host-hybrid" / "mountinfo", proc_cgroup=PROC / "this-host-hybrid" / "cgroup"
    )
    assert missing == {} and dirs["cpu"] == Path("/sys/fs/cgroup/cpu") and dirs["pids"] == Path("/sys/fs/cgroup/pids")
    dirs, missing = cgroupv1.own_v1_dirs(mountinfo=PROC / "el7-v1" / "mountinfo", proc_cgroup=PROC / "el7-v1" / "cgroup")
    assert set(dirs) == {"memory", "cpu", "pids"}, missing


def test_no_v1_on_a_unified_node_says_why_per_controller() -> None:
    dirs, missing = cgroupv1.own_v1_dirs(mountinfo=PROC / "el9-unified" / "mountinfo", proc_cgroup=PROC / "el9-unified" / "cgroup")
    assert dirs == {}
    assert set(missing) == {"memory", "cpu", "pids"}
    assert "no cgroup v1 hierarchy with the memory controller" in missing["memory"]
    assert str(PROC / "el9-unified" / "mountinfo") in missing["memory"]


def test_memberships_split_joined_controllers_and_skip_named_ones() -> None:
    m = cgroupv1.parse_v1_memberships("9:cpu,cpuacct:/a\n1:name=systemd:/b\n0::/c\n4:memory:/d\n")
    assert m == {"cpu": "/a", "cpuacct": "/a", "memory": "/d"}


@pytest.fixture
def v1_job() -> Iterator[V1Cgroups]:
    """A fresh child of this process's own memory, pids and cpu v1 cgroups; skipped (failed under
    GRIDPILOT_REQUIRE_ALL) where this host has no writable v1 hierarchy for one of them."""
    try:
        dirs, missing = cgroupv1.own_v1_dirs()
    except CgroupError as e:
        require_or_skip(f"no cgroup v1 here: {e}")
    if missing:
        require_or_skip("no cgroup v1 for " + "; ".join(f"{c}: {why}" for c, why in missing.items()))
    for c, d in dirs.items():
        problem = cgroupv1.delegation_problem(d)
        if problem:
            require_or_skip(f"cgroup v1 {c}: {problem}")
    job = V1Cgroups(dirs).make_child(f"gridpilot-test-{os.getpid()}-{next(_names)}")
    try:
        yield job
    finally:
        job.remove()


def test_limits_land_in_the_v1_files(v1_job: V1Cgroups) -> None:
    lim = limits.job_limits(256 * MB, 2, swap_mb=0, pids_max=300)
    done, skipped = v1_job.apply(lim)
    assert skipped == [], skipped
    mem, cpu, pids = v1_job.dirs["memory"], v1_job.dirs["cpu"], v1_job.dirs["pids"]
    # The kernel rounds memory limits down to whole pages.
    page = os.sysconf("SC_PAGE_SIZE")
    assert int((mem / "memory.limit_in_bytes").read_text()) == int(256 * MB * 1.2) // page * page
    assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == int(256 * MB * 1.2) // page * page
    assert int((mem / "memory.soft_limit_in_bytes").read_text()) == 256 * MB
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 200_000
    assert int((cpu / "cpu.cfs_period_us").read_text()) == 100_000
    assert (pids / "pids.max").read_text().strip() == "300"
    assert len(done) == 6


def test_a_payload_beyond_the_memory_limit_is_oom_killed(v1_job: V1Cgroups) -> None:
    v1_job.apply(limits.job_limits(64 * MB, 1))
    before = v1_job.oom_kills()
    # bytes * n writes every page (a zero-filled bytearray would not: its pages stay untouched), 400 MB at once.
    script = f"{sys.executable} -c 'b = b\"x\" * (400 << 20)'; exit $?"
    proc = subprocess.run(["/bin/sh", "-c", script], preexec_fn=v1_job.join, capture_output=True)
    assert proc.returncode == 137, proc.stderr  # 128 + SIGKILL, as the shell reports a killed child
    assert before == 0
    assert v1_job.oom_kills() == 1
    assert v1_job.failcnt() >= 0  # readable; this 6.18 kernel does not count failures in v1 any more
    # The peak stayed at the limit, so the kill happened in our cgroup, not somewhere on the node.
    assert int((v1_job.dirs["memory"] / "memory.max_usage_in_bytes").read_text()) <= int(64 * MB * 1.2)


def test_pids_max_makes_forks_fail(v1_job: V1Cgroups) -> None:
    v1_job.apply(limits.job_limits(256 * MB, 1, pids_max=20))
    code = (
        "import os, time\n"
        "kids, failed = [], 0\n"
        "for _ in range(60):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        failed += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(5)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "print(len(kids), failed, flush=True)\n"
        "for k in kids: os.kill(k, 9); os.waitpid(k, 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], preexec_fn=v1_job.join, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    started, failed = map(int, proc.stdout.split())
    assert started < 20 and failed == 60 - started
    assert started > 0


def test_join_moves_the_child_and_remove_kills_what_is_left(v1_job: V1Cgroups) -> None:
    child = subprocess.Popen(["sleep", "60"], preexec_fn=v1_job.join)
    try:
        assert v1_job.procs() == [child.pid]
        for c, d in v1_job.dirs.items():
            assert str(child.pid) in (d / "cgroup.procs").read_text().split(), c
        nested = v1_job.make_child("inner")
        assert all(d.is_dir() for d in nested.dirs.values())
        v1_job.remove(timeout=5)
        assert child.wait(timeout=5) == -9
        assert not any(d.exists() for d in v1_job.dirs.values())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_remove_refuses_a_cgroup_holding_the_caller(v1_job: V1Cgroups) -> None:
    mem = V1Cgroups({"memory": v1_job.dirs["memory"]})
    original = v1_job.dirs["memory"].parent / "cgroup.procs"
    mem.move(os.getpid())
    try:
        with pytest.raises(CgroupError, match="this process"):
            mem.remove(timeout=1)
    finally:
        with open(original, "w") as f:
            f.write(str(os.getpid()))


def _as_nobody(check: str, path: Path) -> str:
    """Run a delegation check in a forked child that has become uid/gid 65534 (nobody): the unprivileged pilot."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            fn = jobcgroup.delegation_problem if check == "v2" else cgroupv1.delegation_problem
            os.write(w, (fn(path) or "OK").encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def test_unprivileged_pilot_needs_dir_procs_and_subtree_control(cgroup_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a cgroup to another user (the unprivileged side is what is tested)")
    assert "not writable by uid 65534" in _as_nobody("v2", cgroup_dir)
    os.chown(cgroup_dir, 65534, 65534)
    os.chown(cgroup_dir / "cgroup.procs", 65534, 65534)
    # Half a delegation (as a batch system that forgets subtree_control): refused, naming the file.
    problem = _as_nobody("v2", cgroup_dir)
    assert "cgroup.subtree_control is not writable by uid 65534 (owner uid 0)" in problem
    os.chown(cgroup_dir / "cgroup.subtree_control", 65534, 65534)
    assert _as_nobody("v2", cgroup_dir) == "OK"


def test_unprivileged_pilot_and_v1(v1_job: V1Cgroups) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a cgroup to another user (the unprivileged side is what is tested)")
    mem = v1_job.dirs["memory"]
    assert "not writable by uid 65534" in _as_nobody("v1", mem)
    os.chown(mem, 65534, 65534)
    os.chown(mem / "cgroup.procs", 65534, 65534)
    assert _as_nobody("v1", mem) == "OK"


def test_setup_on_this_host_uses_v1_for_what_v2_lacks(cgroup_dir: Path, v1_job: V1Cgroups) -> None:
    """The agent's path on this hybrid machine: a real v2 job cgroup (no memory/pids/cpu there) and v1 beside it."""
    job = jobcgroup.setup(cgroup_dir, v1_job.to_json(), limits.job_limits(128 * MB, 1, pids_max=500))
    try:
        assert set(job.v1.dirs) == {"memory", "cpu", "pids"}
        assert all(d.name == "job" and d.parent == v1_job.dirs[c] for c, d in job.v1.dirs.items())
        # Everything was set (in v1), so nothing is reported as missing.
        assert len(job.notes) == 1, job.notes
        assert "v1 memory.limit_in_bytes=" in job.notes[0] and "v1 pids.max=500" in job.notes[0]
        child = subprocess.Popen(["sleep", "30"], preexec_fn=job.join)
        try:
            deadline = time.monotonic() + 5
            while child.pid not in job.v1.procs() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert job.v1.procs() == [child.pid]
        finally:
            child.kill()
            child.wait()
        assert job.remove() == []
        assert not any(d.exists() for d in job.v1.dirs.values())
    finally:
        job.remove()


def test_the_monitor_sees_a_v1_oom_kill(v1_job: V1Cgroups, tmp_path: Path) -> None:
    """The agent's wiring on a hybrid host: the job's v1 OOM counter feeds JobMonitor's OOM rule."""
    from gridpilot.pilot.monitor import JobMonitor
    from gridpilot.pilot.rules import Limits
    from gridpilot.states import KillReason

    v1_job.apply(limits.job_limits(64 * MB, 1))
    watched = subprocess.Popen(["sleep", "60"], preexec_fn=v1_job.join)
    try:
        now = [1000.0]
        m = JobMonitor(watched.pid, tmp_path, Limits(memory_bytes=64 * MB), oom_counter=v1_job.oom_kills,
                       clock=lambda: now[0])
        m.mark_running()
        assert m.poll() is None and m.oom_breach() is None
        hog = subprocess.run([sys.executable, "-c", 'b = b"x" * (400 << 20)'], preexec_fn=v1_job.join)
        assert hog.returncode == -9
        # Right away, as the agent does at the job's end, and at the next fast sample, as its loop does.
        breach = m.oom_breach()
        assert breach is not None and breach.reason is KillReason.OOM_SYSTEM and "1 OOM kill" in breach.message
        now[0] += 1.0
        polled = m.poll()
        assert polled is not None and polled.reason is KillReason.OOM_SYSTEM
    finally:
        watched.kill()
        watched.wait()


def test_the_monitor_measures_the_v1_charge_not_pss(v1_job: V1Cgroups, tmp_path: Path) -> None:
    """Memory on a hybrid host is what the job's v1 memory cgroup is charged, as on v2 (memory.current): the number
    the kernel's limit bounds. PSS also counts file pages the job maps that another cgroup paid for: here 48 MB of a
    file this test read first, mapped and touched by a process in the job cgroup. By PSS the job would be over a
    30 MB threshold; by its charge it is not, and the kernel, not the rule, is the one to act at the limit."""
    from gridpilot.pilot.monitor import JobMonitor
    from gridpilot.pilot.rules import Limits

    data = tmp_path / "mapped.bin"
    data.write_bytes(os.urandom(48 * MB))
    assert len(data.read_bytes()) == 48 * MB  # in the page cache now, charged to this test's cgroup
    v1_job.apply(limits.job_limits(256 * MB, 1))
    code = ("import mmap, sys, time\n"
            "f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
            "s = sum(m[i] for i in range(0, len(m), 4096))\n"
            "print('touched', flush=True); time.sleep(60)\n")
    watched = subprocess.Popen([sys.executable, "-c", code, str(data)], preexec_fn=v1_job.join,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watched.stdout is not None and watched.stdout.readline().strip() == "touched"
        m = JobMonitor(watched.pid, tmp_path, Limits(memory_bytes=25 * MB), oom_counter=v1_job.oom_kills,
                       memory_counter=v1_job.memory_usage)
        m.mark_running()
        breach = m.poll(force_slow=True)
        obs = m.observation(time.monotonic())
        assert m.pss_swap is not None and m.pss_swap > 48 * MB, m.pss_swap  # PSS alone would breach
        charged = v1_job.memory_usage()
        assert charged is not None and charged < 30 * MB, charged
        assert obs.memory_source == "cgroup v1 memory.usage_in_bytes"
        assert obs.memory_bytes is not None and obs.memory_bytes < 30 * MB
        assert breach is None, breach
    finally:
        watched.kill()
        watched.wait()


def test_the_native_fast_tier_wakes_the_agent_on_a_v1_oom_kill(v1_job: V1Cgroups, tmp_path: Path) -> None:
    """As above, with the fast tier on the native thread (as the agent runs it): the kill makes its descriptor
    readable, though the monitor's next check is an hour away."""
    import select

    from gridpilot.pilot.monitor import JobMonitor
    from gridpilot.pilot.rules import Limits
    from gridpilot.states import KillReason

    v1_job.apply(limits.job_limits(64 * MB, 1))
    watched = subprocess.Popen(["sleep", "60"], preexec_fn=v1_job.join)
    m = None
    try:
        m = JobMonitor(watched.pid, tmp_path, Limits(memory_bytes=64 * MB), oom_counter=v1_job.oom_kills,
                       memory_counter=v1_job.memory_usage, native_fast=True,
                       v1_memory_dir=str(v1_job.dirs["memory"]), fast_s=0.05, check_s=3600.0, slow_s=3600.0)
        m.mark_running()
        assert m.poll() is None
        hog = subprocess.run([sys.executable, "-c", 'b = b"x" * (400 << 20)'], preexec_fn=v1_job.join)
        assert hog.returncode == -9
        ready, _, _ = select.select([m.fileno()], [], [], 60.0)
        assert ready, "the OOM kill did not wake the agent"
        polled = m.poll()
        assert polled is not None and polled.reason is KillReason.OOM_SYSTEM and "1 OOM kill" in polled.message
    finally:
        if m is not None:
            m.close()
        watched.kill()
        watched.wait()


def test_the_native_fast_tier_wakes_the_agent_on_memory_over_the_limit(v1_job: V1Cgroups, tmp_path: Path) -> None:
    """A job's v1 charge above 1.2 x MemorySize (below the kernel's limit, so the rule acts first) wakes the agent at
    once and the rule ends the job, judged on the charge."""
    import select

    from gridpilot.pilot.monitor import JobMonitor
    from gridpilot.pilot.rules import Limits
    from gridpilot.states import KillReason

    v1_job.apply(limits.job_limits(256 * MB, 1))
    code = ("import sys, time\nprint('up', flush=True); sys.stdin.readline()\n"
            "x = bytearray(60 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\ntime.sleep(60)\n")
    watched = subprocess.Popen([sys.executable, "-c", code], preexec_fn=v1_job.join, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    m = None
    try:
        assert watched.stdout is not None and watched.stdout.readline() == "up\n"
        m = JobMonitor(watched.pid, tmp_path, Limits(memory_bytes=25 * MB), oom_counter=v1_job.oom_kills,
                       memory_counter=v1_job.memory_usage, native_fast=True,
                       v1_memory_dir=str(v1_job.dirs["memory"]), fast_s=0.05, check_s=3600.0, slow_s=3600.0)
        m.mark_running()
        assert m.poll() is None
        assert watched.stdin is not None
        watched.stdin.write("go\n")
        watched.stdin.flush()
        ready, _, _ = select.select([m.fileno()], [], [], 60.0)
        assert ready, "memory over the limit did not wake the agent"
        b = m.poll()
        assert b is not None and b.reason is KillReason.MEMORY_USAGE
        assert "cgroup v1 memory.usage_in_bytes" in b.message
    finally:
        if m is not None:
            m.close()
        watched.kill()
        watched.wait()


def test_memory_usage_without_a_memory_cgroup_is_none(tmp_path: Path) -> None:
    assert V1Cgroups({}).memory_usage() is None
    assert V1Cgroups({"memory": str(tmp_path / "gone")}).memory_usage() is None
    (tmp_path / "memory.usage_in_bytes").write_text("12345\n")
    assert V1Cgroups({"memory": str(tmp_path)}).memory_usage() == 12345

"""JobMonitor on real payloads, with a clock the test moves so TTL and idle rules need no waiting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gridpilot.pilot.monitor import PROC_COLUMNS, PROCFMT, JobMonitor, dir_usage
from gridpilot.pilot.rules import Limits
from gridpilot.states import KillReason

MB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def payload(tmp_path):
    procs = []

    def start(code: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-c", code + "\nimport sys, time\nsys.stdout.write('ok\\n'); sys.stdout.flush(); time.sleep(120)"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        procs.append(p)
        assert p.stdout.readline() == b"ok\n"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def monitor(p, tmp_path, clock, **limits) -> JobMonitor:
    m = JobMonitor(p.pid, tmp_path, Limits(**limits), clock=clock)
    m.mark_running()
    return m


def test_quiet_payload_breaks_nothing(payload, tmp_path):
    clock = Clock()
    m = monitor(payload("pass"), tmp_path, clock)
    assert m.poll() is None
    r = m.resources()
    assert r["nprocs"] == 1 and r["rss_bytes"] > 0 and r["pss_swap_bytes"] > 0


def test_ttl(payload, tmp_path):
    clock = Clock()
    m = monitor(payload("pass"), tmp_path, clock, ttl_s=10)
    assert m.poll() is None
    clock.t += 10.5
    b = m.poll()
    assert b.reason == KillReason.TTL and "TTL of 10 s" in b.message


def test_memory_from_pss_in_the_slow_tier(payload, tmp_path):
    clock = Clock()
    m = monitor(payload("x = bytearray(60 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1"), tmp_path, clock,
                memory_bytes=30 * MB)
    b = m.poll()
    assert b.reason == KillReason.MEMORY_USAGE
    assert "pss+swap" in b.message


def test_disk(payload, tmp_path):
    clock = Clock()
    m = monitor(payload("import os\nwith open('big', 'wb') as f: f.write(os.urandom(3 << 20))"), tmp_path, clock,
                disk_bytes=1 * MB)
    b = m.poll()
    assert b.reason == KillReason.DISK_USAGE
    assert dir_usage(tmp_path) >= 3 * MB


def test_core_file_but_not_inp(payload, tmp_path):
    clock = Clock()
    m = monitor(payload("open('core.inp', 'w').write('input')"), tmp_path, clock)
    assert m.poll() is None
    (tmp_path / "core.4242").write_bytes(b"\0" * 10)
    assert m.poll().reason == KillReason.CORE_DUMP
    m2 = JobMonitor(m.root_pid, tmp_path, Limits(abort_on_core=False), clock=clock)
    assert m2.poll() is None


def test_idle_sleeper(payload, tmp_path):
    clock = Clock()
    m = monitor(payload("pass"), tmp_path, clock, cores=1)
    assert m.poll() is None
    for _ in range(16):
        clock.t += 60
        b = m.poll()
    assert b is not None and b.reason == KillReason.IDLE_CPU


def test_proc_line_has_the_alice_columns(payload, tmp_path):
    clock = Clock()
    m = monitor(payload("pass"), tmp_path, clock, cores=2)
    m.cpu_mhz, m.cpu_family = 2400.0, "25"
    m.poll()
    clock.t += 3725
    line = m.proc_line().split(" ")
    assert len(line) == len(PROC_COLUMNS) == len(PROCFMT.split(" | ")) + 1 == 14
    assert line[13] == "1000"  # JAliEn's constant ksi2k factor
    assert line[0] == "01:02:05" and line[1] == "3725"
    assert line[7] == "2" and line[8] == "25" and line[9] == "2400"
    assert float(line[5]) > 1.0  # RMEM in MB
    assert float(line[11]) >= float(line[5])  # RMEMMAX >= RMEM


def test_cgroup_counters_are_preferred(payload, tmp_path, cgroup_dir):
    from gridpilot.isolation import cgroupfs

    p = payload("end = __import__('time').process_time() + 0.3\nwhile __import__('time').process_time() < end: pass")
    cgroupfs.move_pid(cgroup_dir, p.pid)
    clock = Clock()
    m = JobMonitor(p.pid, tmp_path, Limits(), cgroup=str(cgroup_dir), clock=clock)
    m.mark_running()
    assert m.poll() is None
    # The CPU burnt before the move is not the cgroup's; what the monitor reports never goes below the tree's own.
    assert m.resources()["cpu_s"] >= 0.25
    assert m.resources()["nprocs"] == 1


def test_proc_line_counts_the_payloads_cpu_not_what_the_job_cgroup_spent_before(payload, tmp_path, cgroup_dir):
    """The JobWrapper's start-up and stage-in run in the job cgroup before the payload: the proc line's CPUTIME and
    CPUUSAGE (over RUNTIME, which counts from RUNNING) leave them out; the job's resources keep the whole."""
    from gridpilot.isolation import cgroupfs

    p = payload("pass")
    cgroupfs.move_pid(cgroup_dir, p.pid)
    burner = subprocess.Popen([sys.executable, "-c", "import sys, time\nsys.stdin.readline()\n"
                               "end = time.process_time() + 0.4\nwhile time.process_time() < end: pass"],
                              stdin=subprocess.PIPE)
    cgroupfs.move_pid(cgroup_dir, burner.pid)
    burner.communicate(b"go\n", timeout=120)
    clock = Clock()
    m = JobMonitor(p.pid, tmp_path, Limits(), cgroup=str(cgroup_dir), clock=clock)
    m.mark_running()
    assert m.poll() is None
    clock.t += 10
    line = dict(zip(PROC_COLUMNS, m.proc_line().split(" ")))
    assert m.resources()["cpu_s"] >= 0.35
    assert float(line["CPUTIME"]) < 0.2 and float(line["CPUUSAGE"]) < 2.0, line

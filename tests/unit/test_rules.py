"""The pilot's rules as pure functions: each one breached, each one respected, and their order."""

from __future__ import annotations

import pytest

from gridpilot.jdl import parse_job
from gridpilot.pilot.rules import (
    CpuWindow,
    Limits,
    Observation,
    check,
    core_files,
    is_core_file,
)
from gridpilot.states import JobStatus, KillReason

GB = 1 << 30
L = Limits(ttl_s=100, cores=2, memory_bytes=4 * GB, disk_bytes=10 * GB)


def test_nothing_measured_breaks_nothing():
    assert check(L, Observation()) is None


@pytest.mark.parametrize(
    "obs,reason",
    [
        (Observation(running_s=100.5), KillReason.TTL),
        (Observation(memory_bytes=int(4 * GB * 1.2) + 1), KillReason.MEMORY_USAGE),
        (Observation(oom_kills=1), KillReason.OOM_SYSTEM),
        (Observation(disk_bytes=10 * GB + 1), KillReason.DISK_USAGE),
        (Observation(core_files=("core.123",)), KillReason.CORE_DUMP),
        (Observation(window_cpu_s=179.0, window_s=900.0), KillReason.IDLE_CPU),
    ],
)
def test_each_rule_breached(obs, reason):
    b = check(L, obs)
    assert b is not None and b.reason == reason
    assert b.state == JobStatus.ERROR_E
    assert b.trace.startswith("[FATAL]: Monitor has detected an error: ")


@pytest.mark.parametrize(
    "obs",
    [
        Observation(running_s=100.0),
        Observation(memory_bytes=int(4 * GB * 1.2)),  # the margin itself is allowed
        Observation(disk_bytes=10 * GB),
        Observation(window_cpu_s=180.0, window_s=900.0),  # exactly 10% of 2 cores
        Observation(window_cpu_s=0.0, window_s=899.0),  # window not full yet
        Observation(core_files=()),
    ],
)
def test_limits_respected(obs):
    assert check(L, obs) is None


def test_core_files_allowed_when_abort_on_core_is_false():
    assert check(Limits(abort_on_core=False), Observation(core_files=("core",))) is None


def test_oom_comes_first_then_ttl():
    both = Observation(oom_kills=1, running_s=1e9, memory_bytes=100 * GB)
    assert check(L, both).reason == KillReason.OOM_SYSTEM
    assert check(L, Observation(running_s=1e9, memory_bytes=100 * GB)).reason == KillReason.TTL


def test_messages_say_what_and_how_much():
    b = check(L, Observation(memory_bytes=6 * GB, memory_source="cgroup memory.current"))
    assert "6.00 GB" in b.message and "4.00 GB" in b.message and "memory.current" in b.message
    assert "101 s" in check(L, Observation(running_s=101)).message


def test_core_file_names():
    assert is_core_file("core") and is_core_file("core.4242") and is_core_file("core-aliroot")
    assert not is_core_file("core.inp") and not is_core_file("mycore") and not is_core_file("score")
    assert core_files(["b", "core.2", "core.inp", "core.1"]) == ("core.1", "core.2")


def test_limits_from_a_jdl():
    job = parse_job('Executable = "/bin/x"; TTL = 7200; CPUCores = 4; MemorySize = "2GB"; AbortOnCore = false;')
    lim = Limits.from_job(job)
    assert lim.ttl_s == 7200 and lim.cores == 4 and lim.memory_bytes == 2 * GB
    assert lim.abort_on_core is False
    assert lim.disk_bytes == job.work_directory_size
    default = Limits.from_job(parse_job('Executable = "/bin/x"; CPUCores = 2;'))
    assert default.memory_bytes == 16 * GB and default.disk_bytes == 20 * GB and default.ttl_s == 3600


def test_cpu_window_slides():
    w = CpuWindow(length_s=10)
    assert w.usage() == (None, 0.0)
    for t in range(0, 31):
        w.add(float(t), t * 0.5)  # half a core
    used, span = w.usage()
    assert span == pytest.approx(10.0)
    assert used == pytest.approx(5.0)
    w.add(31.0, 0.0)  # the busiest process exited: cumulative CPU dropped
    assert w.usage()[0] == 0.0


def test_memory_that_stays_unmeasured_ends_the_job():
    # Processes unread and no cgroup counter: the PSS is a lower bound. Under it the job goes on for a while ...
    below = Observation(memory_bytes=GB, memory_source="pss+swap, a lower bound: 3 process(es) unread",
                        memory_unmeasured_s=299.0)
    assert check(L, below) is None
    # ... a lower bound above the limit is a certain breach at once ...
    above = Observation(memory_bytes=5 * GB, memory_source=below.memory_source, memory_unmeasured_s=1.0)
    assert check(L, above).reason == KillReason.MEMORY_USAGE
    # ... and memory unmeasured for longer than UNMEASURED_MEMORY_S ends the job as if it had broken the limit.
    breach = check(L, Observation(memory_bytes=GB, memory_source=below.memory_source, memory_unmeasured_s=301.0))
    assert breach.reason == KillReason.MEMORY_USAGE
    assert "cannot be measured" in breach.message and "301 s" in breach.message

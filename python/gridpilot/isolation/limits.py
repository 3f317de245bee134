"""The kernel limits of one job's cgroup, as pure functions: from the JDL's MemorySize and CPUCores and the site's
configuration to the values of the cgroup v2 and v1 interface files, and the parsers of the files that report OOM.

Nothing here reads or writes a file; `gridpilot.isolation.jobcgroup` (v2) and `gridpilot.isolation.cgroupv1` (v1) do.

The numbers, and why:
- memory.max (v1 memory.limit_in_bytes) = MemorySize x 1.2: the hard limit sits exactly where the pilot's own memory
  rule (pilot/rules.py, MEMORY_MARGIN, the ALICE margin) would kill the job, so the kernel enforces between two
  samples what the pilot would enforce at the next one, and a job is never killed earlier than the rule promises.
- memory.high = MemorySize: above what it asked for, the job is throttled and reclaimed, but not killed; it
  slows down before it reaches the hard limit. v1 has no such knob; memory.soft_limit_in_bytes = MemorySize is the
  nearest (it only matters under memory pressure on the node) and is set for the same reason.
- memory.swap.max = the configured swap (0 by default): a job that swaps slows the whole node and hides its own
  use from the memory rule. v1: memory.memsw.limit_in_bytes = memory limit + swap (memsw counts memory plus swap).
- cpu.max = CPUCores x the period (100 ms, the kernel's default): a job cannot take more cores than it was given.
  v1: cpu.cfs_quota_us / cpu.cfs_period_us, the same numbers.
- pids.max = the configured number (counts threads as well as processes, as the kernel's pids controller does);
  it is what turns a fork bomb into failing forks instead of a node without free pids.
- memory.oom.group = 1 (v2 only): an OOM kill takes the whole job, not one process of it, so no half-dead job
  goes on; the pilot then sees oom_kill in memory.events and ends the job ERROR_E, OOM_SYSTEM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Tuple

from gridpilot.errors import CgroupError

#: The ALICE pilot's memory margin, the same number as gridpilot.pilot.rules.MEMORY_MARGIN (isolation/ may not
#: import pilot/; tests/test_limits.py checks that the two agree).
MEMORY_MARGIN = 1.2
#: The CFS period the kernel uses by default (cpu.max "max 100000", cpu.cfs_period_us 100000).
CPU_PERIOD_US = 100_000
#: Default pids.max for a job: threads count, and an 8-core ROOT/Geant4 job runs a few hundred of them.
DEFAULT_PIDS_MAX = 4096

#: The controllers the limits need, in the order they are set.
CONTROLLERS = ("memory", "cpu", "pids")

MB = 1 << 20


@dataclass(frozen=True)
class JobLimits:
    """What the kernel is asked to enforce for one job. Bytes, microseconds; None means "no limit"."""

    memory_high: int
    memory_max: int
    swap_max: int
    cpu_quota_us: int
    cpu_period_us: int = CPU_PERIOD_US
    pids_max: Optional[int] = DEFAULT_PIDS_MAX

    def describe(self) -> str:
        pids = "unlimited" if self.pids_max is None else str(self.pids_max)
        return (
            f"memory.high {self.memory_high // MB} MB, memory.max {self.memory_max // MB} MB, swap "
            f"{self.swap_max // MB} MB, cpu {self.cpu_quota_us / self.cpu_period_us:g} core(s), pids {pids}"
        )


def job_limits(memory_size: int, cores: int, *, swap_mb: int = 0, pids_max: int = DEFAULT_PIDS_MAX) -> JobLimits:
    """The limits of a job asking for `memory_size` bytes (JDL MemorySize) and `cores` (CPUCores).

    `pids_max` 0 means no pids limit. A value that cannot be a limit is a CgroupError naming it.
    """
    if memory_size <= 0:
        raise CgroupError(f"MemorySize must be positive to set a memory limit, got {memory_size} bytes")
    if cores < 1:
        raise CgroupError(f"CPUCores must be at least 1 to set a CPU limit, got {cores}")
    if swap_mb < 0:
        raise CgroupError(f"configuration field 'swap_mb' must be >= 0, got {swap_mb}")
    if pids_max < 0:
        raise CgroupError(f"configuration field 'pids_max' must be >= 0 (0: no limit), got {pids_max}")
    return JobLimits(
        memory_high=memory_size,
        memory_max=int(memory_size * MEMORY_MARGIN),
        swap_max=swap_mb * MB,
        cpu_quota_us=cores * CPU_PERIOD_US,
        pids_max=pids_max or None,
    )


#: (controller, interface file, value): one write each, in this order.
Setting = Tuple[str, str, str]


def v2_settings(limits: JobLimits) -> List[Setting]:
    """The cgroup v2 interface files and values for `limits`.

    memory.high before memory.max: lowering max first could OOM-kill a job that high would only have throttled.
    """
    return [
        ("memory", "memory.high", str(limits.memory_high)),
        ("memory", "memory.max", str(limits.memory_max)),
        ("memory", "memory.swap.max", str(limits.swap_max)),
        ("memory", "memory.oom.group", "1"),
        ("cpu", "cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us}"),
        ("pids", "pids.max", "max" if limits.pids_max is None else str(limits.pids_max)),
    ]


def v1_settings(limits: JobLimits, *, memsw: bool = True) -> List[Setting]:
    """The cgroup v1 interface files and values for `limits`; `memsw` False where the kernel has no swap accounting.

    The kernel refuses memory.memsw.limit_in_bytes below memory.limit_in_bytes, so the memory limit comes first
    (a fresh cgroup's memsw limit is unlimited, so that order always works there). The period is set before the
    quota, as the quota is checked against it.
    """
    out: List[Setting] = [
        ("memory", "memory.limit_in_bytes", str(limits.memory_max)),
        ("memory", "memory.soft_limit_in_bytes", str(limits.memory_high)),
    ]
    if memsw:
        out.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory_max + limits.swap_max)))
    out += [
        ("cpu", "cpu.cfs_period_us", str(limits.cpu_period_us)),
        ("cpu", "cpu.cfs_quota_us", str(limits.cpu_quota_us)),
        ("pids", "pids.max", "max" if limits.pids_max is None else str(limits.pids_max)),
    ]
    return out


def parse_flat_keyed(text: str, source: str) -> Mapping[str, int]:
    """A flat-keyed cgroup file ("key value" per line: memory.events, memory.oom_control, cgroup.events) as a dict.

    `source` names the file in errors.
    """
    out = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise CgroupError(f"{source} line {lineno}: expected 'key value', got {line!r}")
        try:
            out[words[0]] = int(words[1])
        except ValueError:
            raise CgroupError(f"{source} line {lineno}: value of {words[0]!r} is not a number: {line!r}") from None
    return out


def oom_kills(text: str, source: str) -> int:
    """The OOM kill count of a v2 memory.events or a v1 memory.oom_control text (key `oom_kill`).

    Kernels before 4.13 have no `oom_kill` line in either file; they report 0 here, and the OOM shows only as the
    payload's SIGKILL (and, in v1, a rising memory.failcnt).
    """
    return parse_flat_keyed(text, source).get("oom_kill", 0)

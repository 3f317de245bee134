"""The limits the JobAgent enforces on a running payload, as pure functions of what the monitor observed.

Defaults are the ALICE pilot's (DESIGN.md, "Rules the pilot enforces"); the JDL overrides them. Nothing here reads a
file or a clock: the monitor passes in an `Observation` and gets back the first `Breach`, or None.
"""

from __future__ import annotations

import fnmatch
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Iterable, Optional, Tuple

from gridpilot.states import JobStatus, KillReason

#: Memory may exceed MemorySize by this factor before the job is killed (the ALICE pilot's margin).
MEMORY_MARGIN = 1.2
#: The payload is idle when it used less than this share of its cores' time over the idle window.
IDLE_CPU_SHARE = 0.10
IDLE_WINDOW_S = 15 * 60.0
#: How long the memory rule accepts a lower bound (processes unread, no cgroup counter) before ending the job.
UNMEASURED_MEMORY_S = 300.0


@dataclass(frozen=True)
class Limits:
    """What one job may use. Sizes in bytes, times in seconds."""

    ttl_s: float = 3600.0
    cores: int = 1
    memory_bytes: int = 8 << 30
    disk_bytes: int = 10 << 30
    abort_on_core: bool = True
    idle_window_s: float = IDLE_WINDOW_S
    idle_cpu_share: float = IDLE_CPU_SHARE

    @classmethod
    def from_job(cls, job: object) -> Limits:
        """From a gridpilot.jdl.JobDescription (duck-typed, so this module stays free of the JDL package)."""
        return cls(
            ttl_s=float(getattr(job, "ttl")),
            cores=int(getattr(job, "cpu_cores")),
            memory_bytes=int(getattr(job, "memory_size")),
            disk_bytes=int(getattr(job, "work_directory_size")),
            abort_on_core=bool(getattr(job, "abort_on_core")),
        )

    @property
    def memory_kill_bytes(self) -> int:
        return int(self.memory_bytes * MEMORY_MARGIN)


@dataclass(frozen=True)
class Observation:
    """What the monitor knows at one moment. None means "not measured (yet)": it never breaches a rule."""

    running_s: Optional[float] = None
    #: PSS + swap from the slow tier, or the job cgroup's memory.current: whichever is the better measure available.
    memory_bytes: Optional[int] = None
    memory_source: str = "pss+swap"
    #: How long memory_bytes has been a lower bound (processes the sampler could not read, and no cgroup counter
    #: to fall back on); None while every process is read or a cgroup counts the job's memory.
    memory_unmeasured_s: Optional[float] = None
    #: OOM kills the kernel reported for the job's cgroup since the job started (memory.events or v1 oom_control).
    oom_kills: int = 0
    disk_bytes: Optional[int] = None
    #: CPU seconds used over the last idle window, and how long that window really is (it grows until full).
    window_cpu_s: Optional[float] = None
    window_s: float = 0.0
    core_files: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Breach:
    """A rule the payload broke: how the job ends and the line the agent traces."""

    reason: KillReason
    message: str
    state: JobStatus = JobStatus.ERROR_E

    @property
    def trace(self) -> str:
        return f"[FATAL]: Monitor has detected an error: {self.message}"


def _gb(n: float) -> str:
    return f"{n / (1 << 30):.2f} GB"


def check(limits: Limits, obs: Observation) -> Optional[Breach]:
    """The first rule `obs` breaks, in the order the ALICE pilot checks them, or None."""
    if obs.oom_kills > 0:
        return Breach(KillReason.OOM_SYSTEM, f"the kernel killed a process of the job for lack of memory ({obs.oom_kills} OOM kill(s))")
    if obs.running_s is not None and obs.running_s > limits.ttl_s:
        return Breach(KillReason.TTL, f"job ran {obs.running_s:.0f} s, longer than its TTL of {limits.ttl_s:.0f} s")
    if obs.memory_bytes is not None and obs.memory_bytes > limits.memory_kill_bytes:
        return Breach(
            KillReason.MEMORY_USAGE,
            f"memory ({obs.memory_source}) {_gb(obs.memory_bytes)} exceeds {MEMORY_MARGIN:g} x MemorySize "
            f"({_gb(limits.memory_bytes)})",
        )
    if obs.memory_unmeasured_s is not None and obs.memory_unmeasured_s > UNMEASURED_MEMORY_S:
        # Without a cgroup counter the sampler is the memory rule's only eye; a job whose processes cannot be read
        # for this long could grow past its limit unseen, so it ends as if it had. Transient causes (a burst of
        # EMFILE, ENFILE on a busy node) clear well within it; the agent traced when reading stopped.
        return Breach(
            KillReason.MEMORY_USAGE,
            f"memory ({obs.memory_source}) cannot be measured: processes of the job unreadable for "
            f"{obs.memory_unmeasured_s:.0f} s (more than {UNMEASURED_MEMORY_S:.0f} s) and no cgroup counts it",
        )
    if obs.disk_bytes is not None and obs.disk_bytes > limits.disk_bytes:
        return Breach(
            KillReason.DISK_USAGE,
            f"work directory holds {_gb(obs.disk_bytes)}, more than WorkDirectorySize ({_gb(limits.disk_bytes)})",
        )
    if limits.abort_on_core and obs.core_files:
        return Breach(KillReason.CORE_DUMP, f"core file(s) in the work directory: {', '.join(obs.core_files)}")
    if (
        obs.window_cpu_s is not None
        and obs.window_s >= limits.idle_window_s
        and obs.window_cpu_s < limits.idle_cpu_share * limits.cores * obs.window_s
    ):
        return Breach(
            KillReason.IDLE_CPU,
            f"job used {obs.window_cpu_s:.1f} s of CPU in the last {obs.window_s / 60:.0f} min, less than "
            f"{limits.idle_cpu_share:.0%} of {limits.cores} core(s)",
        )
    return None


def is_core_file(name: str) -> bool:
    """`core`, `core.1234`, `core-x`... are core dumps; `core*.inp` are inputs some payloads ship."""
    return fnmatch.fnmatchcase(name, "core*") and not name.endswith(".inp")


def core_files(names: Iterable[str]) -> Tuple[str, ...]:
    return tuple(sorted(n for n in names if is_core_file(n)))


@dataclass
class CpuWindow:
    """CPU time used over a sliding window, from (wall time, cumulative CPU seconds) points."""

    length_s: float = IDLE_WINDOW_S
    points: Deque[Tuple[float, float]] = field(default_factory=deque)

    def add(self, t: float, cpu_s: float) -> None:
        self.points.append((t, cpu_s))
        # Keep one point at or before the window's start, so the window can be measured over its full length.
        while len(self.points) >= 2 and self.points[1][0] <= t - self.length_s:
            self.points.popleft()

    def usage(self) -> Tuple[Optional[float], float]:
        """(CPU seconds used in the window, the window's real length); (None, 0) before two points exist."""
        if len(self.points) < 2:
            return None, 0.0
        (t0, c0), (t1, c1) = self.points[0], self.points[-1]
        # Cumulative CPU of a tree can drop when a process exits; a drop is not negative use.
        return max(0.0, c1 - c0), t1 - t0


"""The JobAgent's view of a running payload: samples in two tiers, the rules applied, the ALICE `proc` lines.

Fast tier (every second): the native TreeSampler (or the job cgroup's counters) and a look at the work directory's top
level for core files. Slow tier (every 60 s, stretched when it gets expensive): PSS and swap from smaps_rollup and the
work directory's size. PSS holds the payload's mmap lock and costs ~12 ms per GB of RSS, so it never runs in the fast
tier.

Medium tier (every 15 s): network bytes where the job has a network namespace of its own (pilot/netuse.py) and the
use of the job's GPUs (pilot/gpuuse.py); with neither, it reads one namespace link. docs/monitoring.md lists every
field of the records, with units and sources.

With `native_fast` (the JobAgent's choice), the fast tier runs on a native thread (_native.FastTier) and this monitor
takes what it sampled when it is polled: a Python wake costs ~0.5 ms of CPU whatever it does, most of a job's
monitoring when it came every second (issue 16). The thread wakes the agent (`fileno()` becomes readable) within one
tick when a rule may break: memory above the kill threshold, a new OOM kill, a core-like name in the work directory.
TTL and the idle rule need no wake-up from it: `next_due` brings the poll back every `fast_s` when either is within
`check_s` of breaking, and every `check_s` otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import orjson

from gridpilot import _native
from gridpilot.pilot.gpuuse import GpuUseSampler
from gridpilot.pilot.netuse import NetSampler
from gridpilot.pilot.rules import Breach, CpuWindow, Limits, Observation, check, core_files

#: The header of the `proc` lines, sent once per job as the `procfmt` trace (ALICE's column names, " | " between
#: them, as JAliEn sends it).
PROCFMT = (
    "FRUNTIME | RUNTIME | CPUUSAGE | MEMUSAGE | CPUTIME | RMEM | VMEM | NOCPUS | CPUFAMILY | CPUMHZ | "
    "RESOURCEUSAGE | RMEMMAX | VMEMMAX"
)
#: The columns of a `proc` line: PROCFMT's, then the one JAliEn appends without naming it in the header, its
#: constant ksi2k factor (KSI2K_FACTOR). A `proc` line has its values separated by single spaces, as JAliEn's.
PROC_COLUMNS = (*PROCFMT.split(" | "), "KSI2K")
KSI2K_FACTOR = 1000
MB = 1 << 20
#: Where read_bytes and write_bytes come from (the record's io_source).
IO_CGROUP = "cgroup io.stat"
IO_PROC = "/proc/<pid>/io"
#: What the `usage` trace record holds beside each `proc` line (resources() has them too): the fields that are not
#: among PROCFMT's ALICE columns. PSS+swap and the work directory's size are here so the trace keeps their history
#: for the job page's plots (ui/plots.py): the job's resources keep only the last sample.
USAGE_KEYS = ("nprocs", "nthreads", "read_bytes", "write_bytes", "io_source", "rchar_bytes", "wchar_bytes",
              "net_rx_bytes", "net_tx_bytes", "gpus", "pss_swap_bytes", "disk_bytes")


def dir_usage(path: Path) -> int:
    """Bytes allocated on disk under `path` (st_blocks, as du counts), not following links; vanishing files are fine."""
    total = 0
    stack = [str(path)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return total


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_proc_line(*, wall_s: float, cpu_s: float, rss_bytes: int, vmem_bytes: int, node_memory_bytes: int,
                     cores: int, cpu_family: str, cpu_mhz: float, rss_max_bytes: int, vmem_max_bytes: int) -> str:
    """One `proc` trace line as JAliEn's JobAgent writes it: the 13 PROCFMT values and its constant 1000, separated
    by single spaces. Units are JAliEn's: FRUNTIME hh:mm:ss, RUNTIME whole seconds, CPUUSAGE % of one core over the
    run, MEMUSAGE % of the node's memory, CPUTIME seconds, RMEM/VMEM/RMEMMAX/VMEMMAX MB, CPUMHZ whole MHz,
    RESOURCEUSAGE CPU seconds x MHz / 1000 (ksi2k-seconds style: faster nodes count more)."""
    wall = max(wall_s, 1e-9)
    # A value with a space in it would shift every column after it for a reader that splits on spaces.
    family = "".join(cpu_family.split()) or "unknown"
    values = [
        _hms(wall),
        str(int(wall)),
        f"{100.0 * cpu_s / wall:.2f}",
        f"{100.0 * rss_bytes / max(node_memory_bytes, 1):.2f}",
        f"{cpu_s:.2f}",
        f"{rss_bytes / MB:.2f}",
        f"{vmem_bytes / MB:.2f}",
        str(cores),
        family,
        f"{cpu_mhz:.0f}",
        f"{cpu_s * cpu_mhz / 1000.0:.2f}",
        f"{rss_max_bytes / MB:.2f}",
        f"{vmem_max_bytes / MB:.2f}",
        str(KSI2K_FACTOR),
    ]
    return " ".join(values)


def parse_proc_line(text: str) -> Dict[str, str]:
    """A `proc` line's values by column name (PROC_COLUMNS); ValueError when it does not have that many values."""
    values = text.split()
    if len(values) != len(PROC_COLUMNS):
        raise ValueError(f"a proc line has {len(PROC_COLUMNS)} space-separated values, got {len(values)}: {text!r:.200}")
    return dict(zip(PROC_COLUMNS, values))


@dataclass
class Peaks:
    rss: int = 0
    vmem: int = 0
    pss: int = 0
    swap: int = 0
    memory: int = 0


@dataclass
class JobMonitor:
    """Samples one job and applies its limits. `poll()` is called from the agent's loop as often as it likes."""

    root_pid: int
    workdir: Path
    limits: Limits
    cgroup: Optional[str] = None
    fast_s: float = 1.0
    slow_s: float = 60.0
    #: Extra OOM-kill counter for hosts where memory lives in cgroup v1 (returns the cumulative count).
    oom_counter: Optional[Callable[[], int]] = None
    #: The job's memory charge where memory lives in cgroup v1 (memory.usage_in_bytes), or None; read with the fast
    #: tier, as v2's memory.current is.
    memory_counter: Optional[Callable[[], Optional[int]]] = None
    clock: Callable[[], float] = time.monotonic
    cpu_mhz: Optional[float] = None
    cpu_family: str = ""
    #: Where the monitor's own notes go (the agent's trace): processes it cannot read, and when it can again; NVML
    #: missing, a GPU unreadable.
    trace: Optional[Callable[[str], None]] = None
    #: Run the fast tier on a native thread (the clock must then be time.monotonic, the thread's).
    native_fast: bool = False
    #: With native_fast: the job's v1 memory cgroup directory (hybrid hosts), read by the thread as memory_counter
    #: and oom_counter read it here.
    v1_memory_dir: Optional[str] = None
    #: With native_fast: the longest time between two polls when no rule is near breaking. Memory, OOM kills and core
    #: files wake the agent through the thread at once; disk and PSS are the slow tier's: nothing needs it shorter.
    check_s: float = 60.0
    node_memory: int = field(default_factory=lambda: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    #: The job's GPUs (objects with vendor and pci_address); none: no GPU sampling at all.
    gpus: Sequence[Any] = ()
    sysfs: str = "/sys"
    medium_s: float = 15.0

    def __post_init__(self) -> None:
        self.fast: Optional[_native.FastTier] = None
        self.sampler: Optional[_native.TreeSampler] = None
        if self.native_fast:
            self.fast = _native.FastTier(
                self.root_pid, interval_s=self.fast_s, cgroup=self.cgroup, v1_memory=self.v1_memory_dir,
                workdir=str(self.workdir) if self.limits.abort_on_core else None,
                memory_limit=self.limits.memory_kill_bytes,
                # The processes' io feeds only the records, made at the medium cadence: read it that often.
                io_every=max(1, round(self.medium_s / self.fast_s)),
            )
        else:
            self.sampler = _native.TreeSampler(self.root_pid, cgroup=self.cgroup)
        self.cgroup_sampler = _native.CgroupSampler(self.cgroup) if self.cgroup else None
        self.started = self.clock()
        self.running_since: Optional[float] = None
        self.window = CpuWindow(self.limits.idle_window_s)
        self.peaks = Peaks()
        self.last: Optional[_native.ProcSample] = None
        self.last_cgroup: Optional[_native.CgroupSample] = None
        self.last_v1_memory: Optional[int] = None
        self.pss_swap: Optional[int] = None
        self.disk: Optional[int] = None
        self.cpu_s = 0.0
        #: The job cgroup's CPU seconds when the payload started RUNNING (0 without a cgroup: the tree's own count
        #: starts with the payload).
        self.cpu_at_running = 0.0
        self._next_fast = self.started
        self._next_slow = self.started
        self._slow_interval = self.slow_s
        self._oom_base = self._oom_total()
        self._oom_now = self._oom_base
        self.io_source = IO_PROC
        self.io_read = 0
        self.io_write = 0
        self.rchar = 0
        self.wchar = 0
        self.net = NetSampler(self.root_pid)
        self.net_bytes: Optional[Tuple[int, int]] = None
        self.gpu_sampler = (GpuUseSampler(self.gpus, sysfs=self.sysfs, **({"note": self.trace} if self.trace else {}))
                            if self.gpus else None)
        self.gpu_use: Optional[List[Dict[str, Any]]] = None
        self._next_medium = self.started
        #: Since when the latest sample has had processes it could not read (None: all were read).
        self.unread_since: Optional[float] = None
        self.unread_full = 0
        self._unread_causes: FrozenSet[str] = frozenset()
        #: What the native fast tier read last: the cgroup's memory.current, a core-like name in the work directory.
        self._native_cgroup_memory: Optional[int] = None
        self._core_candidate = False
        self._next_check = self.started
        #: Native fast-tier ticks on which a read failed, and the last failure (the monitor goes on without them).
        self.fast_errors = 0
        self.last_fast_error: Optional[str] = None

    def mark_running(self) -> None:
        """TTL and the idle rule count from RUNNING."""
        if self.running_since is None:
            self.running_since = self.clock()
            # The job cgroup's CPU counter holds what the JobWrapper spent before the payload (its start-up, the
            # packages, the stage-in): the proc line's CPUTIME and CPUUSAGE are the payload's, over RUNTIME, so they
            # count from here. The job's resources keep the whole.
            self.cpu_at_running = self._cgroup_cpu()

    @property
    def next_due(self) -> float:
        """When the next sample is due (the agent sleeps until then, not in fixed short steps)."""
        if self.fast is not None:
            return min(self._next_check, self._next_slow, self._next_medium)
        return min(self._next_fast, self._next_slow, self._next_medium)

    def fileno(self) -> Optional[int]:
        """With the native fast tier: a descriptor that becomes readable when a rule may break (poll then)."""
        return self.fast.fileno() if self.fast is not None else None

    def close(self) -> None:
        """Stop the native fast tier's thread (nothing to do without one)."""
        if self.fast is not None:
            self.fast.stop()

    def _cgroup_cpu(self) -> float:
        if self.cgroup_sampler is None:
            return 0.0
        try:
            return self.cgroup_sampler.sample().cpu_usage_s or 0.0
        except Exception:  # the cgroup may already be gone: nothing of the payload's to tell apart then
            return 0.0

    def _oom_total(self) -> int:
        n = 0
        if self.cgroup_sampler is not None:
            try:
                n += self.cgroup_sampler.sample().oom_kill or 0
            except Exception:  # the cgroup may already be gone; the counter then cannot grow either
                pass
        if self.oom_counter is not None:
            n += self.oom_counter()
        return n

    def _note_unread(self, s: _native.ProcSample, now: float) -> None:
        """Trace when processes of the job start to go unread (and when the causes change), and when all are read
        again: a process is never dropped from the figures without a word."""
        causes = frozenset(s.unread_reasons)
        if s.unread:
            if self.unread_since is None:
                self.unread_since = now
            if causes != self._unread_causes:
                reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.unread_reasons.items()))
                self._trace(f"[WARN] monitor: {s.unread} of {s.nprocs + s.unread} processes of the job cannot be "
                            f"read ({reasons}): its CPU and memory figures are lower bounds")
        elif self.unread_since is not None:
            self._trace(f"monitor: every process of the job is read again ({s.nprocs} processes), after "
                        f"{now - self.unread_since:.0f} s with some unread")
            self.unread_since = None
        self._unread_causes = causes

    def _trace(self, text: str) -> None:
        if self.trace is not None:
            self.trace(text)

    def _fast(self, now: float) -> None:
        assert self.sampler is not None, "the Python fast tier runs only without native_fast"
        s = self.sampler.sample()
        self.last = s
        self._note_unread(s, now)
        self.peaks.rss = max(self.peaks.rss, s.rss_bytes)
        self.peaks.vmem = max(self.peaks.vmem, s.vmem_bytes)
        cpu = s.cpu_time_s + s.children_cpu_s
        io = (s.read_bytes, s.write_bytes)
        if self.cgroup_sampler is not None:
            c = self.cgroup_sampler.sample()
            self.last_cgroup = c
            if c.cpu_usage_s is not None:
                # The cgroup's counter keeps every process that ever ran in it, the tree's keeps what was spent before
                # the move into it: both are lower bounds of the job's CPU, so the larger is the better.
                cpu = max(cpu, c.cpu_usage_s)
            if c.memory_current is not None:
                self.peaks.memory = max(self.peaks.memory, c.memory_current)
            if c.io_rbytes is not None and c.io_wbytes is not None:
                # io.stat exists only where the io controller is enabled for the job cgroup; it keeps what exited
                # processes did, where the tree's sum loses a process reaped outside the tree (an orphan, by init).
                io, self.io_source = (c.io_rbytes, c.io_wbytes), IO_CGROUP
        # The OOM counters come from the sample just taken: observation() runs at every poll, and re-reading the
        # cgroup there cost more than the whole fast tier.
        self._oom_now = (c.oom_kill or 0) if self.cgroup_sampler is not None else 0
        if self.oom_counter is not None:
            self._oom_now += self.oom_counter()
        if self.memory_counter is not None:
            self.last_v1_memory = self.memory_counter()
            if self.last_v1_memory is not None:
                self.peaks.memory = max(self.peaks.memory, self.last_v1_memory)
        self.cpu_s = max(self.cpu_s, cpu)
        # Kept as maxima: the tree's sum drops when a process leaves it and is reaped outside it (as its CPU time does).
        self.io_read = max(self.io_read, io[0])
        self.io_write = max(self.io_write, io[1])
        self.rchar = max(self.rchar, s.rchar)
        self.wchar = max(self.wchar, s.wchar)
        if self.running_since is not None:
            self.window.add(now, self.cpu_s)

    def _take(self, now: float) -> None:
        """The native fast tier's ticks since the last poll, counted as _fast counts its own."""
        assert self.fast is not None, "only the native fast tier has ticks to take"
        t = self.fast.take()
        if t.last is not None:
            self.last = t.last
            self._note_unread(t.last, now)
            # io.stat, where the job cgroup has it, is read by the medium tier (it needs no 1 Hz); the processes'
            # own counters are read by the thread at the medium cadence too (io_every), and when a process leaves.
            # Kept as maxima, as _fast keeps them.
            if self.io_source != IO_CGROUP:
                self.io_read = max(self.io_read, t.last.read_bytes)
                self.io_write = max(self.io_write, t.last.write_bytes)
            self.rchar = max(self.rchar, t.last.rchar)
            self.wchar = max(self.wchar, t.last.wchar)
        self.peaks.rss = max(self.peaks.rss, t.rss_max)
        self.peaks.vmem = max(self.peaks.vmem, t.vmem_max)
        if t.memory_max is not None:
            self.peaks.memory = max(self.peaks.memory, t.memory_max)
        self._native_cgroup_memory = t.cgroup_memory if self.cgroup_sampler is not None else None
        self.last_v1_memory = t.v1_memory if self.v1_memory_dir is not None else None
        self._oom_now = t.oom_kills
        self._core_candidate = t.core_candidate
        if t.errors:
            self.fast_errors += t.errors
            self.last_fast_error = t.last_error
        for at, cpu in t.points:
            self.cpu_s = max(self.cpu_s, cpu)
            # As _fast: the idle window counts from RUNNING.
            if self.running_since is not None and at >= self.running_since:
                self.window.add(at, self.cpu_s)

    def _check_due(self, now: float) -> float:
        """With the native fast tier: when to poll again. Every fast_s while TTL or the idle rule is within check_s
        of breaking (the latency the fast tier gave them), else every check_s."""
        soon = now + self.fast_s
        if self.running_since is not None:
            if self.running_since + self.limits.ttl_s - now < self.check_s:
                return soon
            used, span = self.window.usage()
            limit = self.limits.idle_cpu_share * self.limits.cores
            full_in = self.limits.idle_window_s - (now - self.window.points[0][0]) if self.window.points else None
            # Near: the window is (almost) full and its use is within twice the threshold.
            if full_in is not None and full_in < self.check_s and (used is None or used < 2 * limit * max(span, self.limits.idle_window_s)):
                return soon
        return now + self.check_s

    def _slow(self) -> None:
        t0 = time.perf_counter()
        if self.fast is not None:
            full = self.fast.sample_full()
        else:
            assert self.sampler is not None  # __post_init__ makes one of the two
            full = self.sampler.sample_full()
        self.unread_full = full.unread
        self.pss_swap = (full.pss_bytes or 0) + (full.swap_bytes or 0)
        self.peaks.pss = max(self.peaks.pss, full.pss_bytes or 0)
        self.peaks.swap = max(self.peaks.swap, full.swap_bytes or 0)
        self.peaks.memory = max(self.peaks.memory, self.pss_swap)
        try:
            self.disk = dir_usage(self.workdir)
        except OSError as e:
            # No descriptor left (EMFILE) and the like: the last figure stands, not a smaller one or a crash.
            self._trace(f"[WARN] monitor: cannot measure the work directory's size: {e}")
        # Adaptive: a slow tier that costs more than 1% of its interval is spread out further.
        cost = time.perf_counter() - t0
        self._slow_interval = max(self.slow_s, cost * 100)

    def _medium(self) -> None:
        if self.fast is not None and self.cgroup_sampler is not None:
            # The native fast tier reads only what its alarms need; the job cgroup's io.stat (where the io controller
            # is on) comes here, as often as the records that carry it are made.
            c = self.cgroup_sampler.sample()
            if c.io_rbytes is not None and c.io_wbytes is not None:
                self.io_source = IO_CGROUP
                self.io_read = max(self.io_read, c.io_rbytes)
                self.io_write = max(self.io_write, c.io_wbytes)
        self.net_bytes = self.net.sample()
        if self.gpu_sampler is not None:
            self.gpu_use = self.gpu_sampler.sample(self.last.pids if self.last is not None else ())

    def observation(self, now: float) -> Observation:
        # The job cgroup's own charge when there is one: it is what the kernel's limit (memory.max, or v1's
        # memory.limit_in_bytes, both at the rule's 1.2 x MemorySize) bounds, so the kernel and the rule agree on
        # what the job uses. PSS does not: it also counts file pages the job maps but another cgroup was charged
        # for (its interpreter and libraries, read first outside), so a job growing towards the limit was ended by
        # the rule (MEMORY_USAGE) a few MB before the kernel would have (OOM_SYSTEM), or the other way round.
        memory, source = self.pss_swap, "pss+swap"
        lower_bound = False
        cgroup_memory = self.last_cgroup.memory_current if self.last_cgroup is not None else self._native_cgroup_memory
        if cgroup_memory is not None:
            memory, source = cgroup_memory, "cgroup memory.current"
        elif self.last_v1_memory is not None:
            memory, source = self.last_v1_memory, "cgroup v1 memory.usage_in_bytes"
        elif self.unread_full or self.unread_since is not None:
            # PSS of the processes read only: the rule still applies to it (a lower bound that breaks the limit is
            # a certain breach), and Observation.memory_unmeasured_s lets it end a job whose memory stays unmeasured.
            unread = max(self.unread_full, self.last.unread if self.last else 0)
            source = f"pss+swap, a lower bound: {unread} process(es) unread"
            lower_bound = True
        used, span = self.window.usage()
        names: List[str] = []
        # The native fast tier lists the work directory itself (when its mtime changes) and says when a core-like
        # name is there; the rule's own test (rules.core_files) then judges the names.
        if self.fast is None or self._core_candidate:
            try:
                names = os.listdir(self.workdir)
            except OSError:
                pass
        return Observation(
            running_s=None if self.running_since is None else now - self.running_since,
            memory_bytes=memory,
            memory_source=source,
            memory_unmeasured_s=now - self.unread_since if lower_bound and self.unread_since is not None else None,
            oom_kills=max(0, self._oom_now - self._oom_base),
            disk_bytes=self.disk,
            window_cpu_s=used,
            window_s=span,
            core_files=core_files(names),
        )

    def poll(self, *, force_slow: bool = False) -> Optional[Breach]:
        """Sample what is due and return the first rule broken, if any."""
        now = self.clock()
        if self.fast is not None:
            self._take(now)
        elif now >= self._next_fast:
            self._fast(now)
            self._next_fast = now + self.fast_s
        if force_slow or now >= self._next_slow:
            self._slow()
            self._next_slow = now + self._slow_interval
        if now >= self._next_medium:
            self._medium()
            self._next_medium = now + self.medium_s
        if self.fast is not None:
            self._next_check = self._check_due(now)
        return check(self.limits, self.observation(now))

    def oom_breach(self) -> Optional[Breach]:
        """The OOM rule alone, on counters read now: for the job's end, when the kernel killed the payload after the
        last sample and the wrapper reported its exit first."""
        kills = self._oom_total() - self._oom_base
        return check(self.limits, Observation(oom_kills=kills)) if kills > 0 else None

    def proc_line(self) -> str:
        """One `proc` trace line in JAliEn's form (format_proc_line)."""
        now = self.clock()
        since = self.running_since if self.running_since is not None else self.started
        s = self.last
        return format_proc_line(
            wall_s=now - since, cpu_s=max(0.0, self.cpu_s - self.cpu_at_running), rss_bytes=s.rss_bytes if s else 0,
            vmem_bytes=s.vmem_bytes if s else 0, node_memory_bytes=self.node_memory, cores=self.limits.cores,
            cpu_family=self.cpu_family, cpu_mhz=self.cpu_mhz or 0.0, rss_max_bytes=self.peaks.rss,
            vmem_max_bytes=self.peaks.vmem)

    def usage_line(self) -> str:
        """The `usage` trace record: a JSON object of USAGE_KEYS (those present), sent with each `proc` line so the
        trace keeps their history (the job's resources keep only the last sample). A record of its own: PROCFMT
        keeps ALICE's columns."""
        r = self.resources()
        return orjson.dumps({k: r[k] for k in USAGE_KEYS if r.get(k) is not None}).decode()

    def resources(self) -> Dict[str, object]:
        """The job's use so far, for heartbeats and the final status report."""
        now = self.clock()
        s = self.last
        out: Dict[str, object] = {
            "wall_s": round(now - self.started, 3),
            "running_s": None if self.running_since is None else round(now - self.running_since, 3),
            "cpu_s": round(self.cpu_s, 3),
            "nprocs": s.nprocs if s else 0,
            "unread_procs": s.unread if s else 0,
            "nthreads": s.nthreads if s else 0,
            "rss_bytes": s.rss_bytes if s else 0,
            "vmem_bytes": s.vmem_bytes if s else 0,
            "pss_swap_bytes": self.pss_swap,
            "disk_bytes": self.disk,
            "read_bytes": self.io_read,
            "write_bytes": self.io_write,
            "io_source": self.io_source,
            "rchar_bytes": self.rchar,
            "wchar_bytes": self.wchar,
            "rss_max_bytes": self.peaks.rss,
            "vmem_max_bytes": self.peaks.vmem,
            "pss_max_bytes": self.peaks.pss,
            "memory_max_bytes": self.peaks.memory,
        }
        if self.net_bytes is not None:
            out["net_rx_bytes"], out["net_tx_bytes"] = self.net_bytes
        if self.gpu_use:
            out["gpus"] = self.gpu_use
        return out

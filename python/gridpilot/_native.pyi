"""Type stubs for gridpilot._native, the Rust hot path (rust/src/py/ binds rust/src/core/)."""

from typing import Optional, final

__version__: str
__all__ = [
    "CgroupSample",
    "CgroupSampler",
    "CpuInfo",
    "FastTake",
    "FastTier",
    "Gpu",
    "KillReport",
    "ProcSample",
    "TreeSampler",
    "__version__",
    "children",
    "cpu_info",
    "descendants",
    "kill_cgroup",
    "list_gpus",
    "parse_cpuinfo",
    "parse_lspci",
    "signal_process",
    "signal_tree",
    "start_time",
    "terminate_tree",
]

@final
class ProcSample:
    """One sample of a process tree. Sizes in bytes, times in seconds."""

    @property
    def timestamp(self) -> float:
        """Wall-clock time of the sample (seconds since the epoch)."""
    @property
    def nprocs(self) -> int:
        """Number of processes in the tree (or cgroup) that were read; those that could not be are in `unread`."""
    @property
    def nthreads(self) -> int:
        """Sum of the threads of those processes."""
    @property
    def pids(self) -> list[int]:
        """The pids that were read, sorted."""
    @property
    def utime_s(self) -> float:
        """User CPU time of the live processes, summed."""
    @property
    def stime_s(self) -> float:
        """System CPU time of the live processes, summed."""
    @property
    def cpu_time_s(self) -> float:
        """utime_s + stime_s."""
    @property
    def children_cpu_s(self) -> float:
        """CPU time of reaped descendants (cutime + cstime), summed; with cpu_time_s a total that never drops."""
    @property
    def rss_bytes(self) -> int:
        """Resident set size, summed (shared pages counted once per process)."""
    @property
    def vmem_bytes(self) -> int:
        """Virtual memory size, summed."""
    @property
    def swap_bytes(self) -> Optional[int]:
        """VmSwap summed; None in the fast tier."""
    @property
    def pss_bytes(self) -> Optional[int]:
        """Proportional set size from smaps_rollup, summed; None in the fast tier. A process whose smaps_rollup
        cannot be read (another user's) counts with its RSS, an upper bound of its PSS."""
    @property
    def read_bytes(self) -> int:
        """Bytes fetched from storage (io: read_bytes); 0 where io is unreadable."""
    @property
    def write_bytes(self) -> int:
        """Bytes sent to storage (io: write_bytes)."""
    @property
    def rchar(self) -> int:
        """Bytes read through read(2) and friends (io: rchar)."""
    @property
    def wchar(self) -> int:
        """Bytes written through write(2) and friends (io: wchar)."""
    @property
    def io_timestamp(self) -> float:
        """When every process's io was last read (as timestamp): with io_every > 1 the four io sums above hold
        counters read then or later (a process first seen since is read at once), never fewer. 0 before any read."""
    @property
    def minflt(self) -> int:
        """Minor page faults, summed."""
    @property
    def majflt(self) -> int:
        """Major page faults, summed."""
    @property
    def unread(self) -> int:
        """Processes known to be in the job that exist but could not be read (no descriptor left, access denied):
        not in nprocs, pids or any sum, so the sums are lower bounds when this is not 0."""
    @property
    def unread_reasons(self) -> dict[str, int]:
        """`unread` by cause, named by errno: {"EMFILE": n, "EACCES": n, ...}; empty when all were read."""
    @property
    def unlisted(self) -> int:
        """Processes read whose children could not be listed (tree discovery): new descendants may be missing."""
    def to_dict(self) -> dict[str, object]:
        """All fields as a plain dict (for JSON)."""

@final
class TreeSampler:
    """Samples every process of a job: the tree under root_pid, or the members of a cgroup."""

    def __new__(
        cls,
        root_pid: int,
        *,
        cgroup: Optional[str] = None,
        proc: str = "/proc",
        max_fds: Optional[int] = None,
        io_every: int = 1,
    ) -> TreeSampler:
        """max_fds: keep at most this many descriptors open between samples (None: this sampler's share of the
        process's soft RLIMIT_NOFILE, less a reserve; 0: open, read and close every file at every sample).
        io_every: read the processes' io at every this many samples (and every sample_full); the samples between
        hold the last counters read (see ProcSample.io_timestamp). >= 1, else ValueError."""
    @property
    def io_every(self) -> int:
        """Samples per read of the processes' io."""
    @property
    def root_pid(self) -> int:
        """The pid the tree hangs from."""
    @property
    def cgroup(self) -> Optional[str]:
        """The cgroup directory whose cgroup.procs lists the job, if any."""
    @property
    def kept_fds(self) -> int:
        """Descriptors kept open between samples now (stat first, then children, then io when io_every is 1, within
        the budget)."""
    def sample(self) -> ProcSample:
        """Fast tier: stat of every process through kept-open descriptors, and io as io_every says."""
    def sample_full(self) -> ProcSample:
        """Slow tier: the fast tier plus VmSwap (status) and PSS (smaps_rollup)."""
    def pids(self) -> list[int]:
        """Discover the processes of the job now, without reading their counters."""

@final
class FastTake:
    """What a FastTier sampled since its last take."""

    @property
    def points(self) -> list[tuple[float, float]]:
        """(time.monotonic() seconds, the job's CPU seconds) per tick: max of the tree's and the cgroup's."""
    @property
    def rss_max(self) -> int:
        """The largest tree RSS since the last take (bytes)."""
    @property
    def vmem_max(self) -> int:
        """The largest tree virtual size since the last take (bytes)."""
    @property
    def memory_max(self) -> Optional[int]:
        """The largest cgroup charge since the last take (memory.current, or v1 memory.usage_in_bytes)."""
    @property
    def last(self) -> Optional[ProcSample]:
        """The last tree sample (None before the first one that could be read)."""
    @property
    def cgroup_memory(self) -> Optional[int]:
        """The cgroup v2 memory.current at the last tick."""
    @property
    def v1_memory(self) -> Optional[int]:
        """The v1 memory cgroup's memory.usage_in_bytes at the last tick."""
    @property
    def oom_kills(self) -> int:
        """OOM kills so far (memory.events plus v1 memory.oom_control), cumulative."""
    @property
    def core_candidate(self) -> bool:
        """The work directory held a name like a core file (core*, not *.inp) at the last look."""
    @property
    def ticks(self) -> int:
        """Ticks since the last take."""
    @property
    def errors(self) -> int:
        """Ticks since the last take on which a read failed."""
    @property
    def last_error(self) -> Optional[str]:
        """The last read that failed, and why."""

@final
class FastTier:
    """The monitor's fast tier on a native thread: samples every interval_s and makes fileno() readable when a rule
    may break (memory above memory_limit, a new OOM kill, a core-like name in workdir). Stops when dropped."""

    def __new__(
        cls,
        root_pid: int,
        *,
        interval_s: float,
        cgroup: Optional[str] = None,
        v1_memory: Optional[str] = None,
        workdir: Optional[str] = None,
        memory_limit: Optional[int] = None,
        proc: str = "/proc",
        io_every: int = 15,
    ) -> FastTier:
        """io_every: read the processes' io at every this many ticks (the records that carry it are made at the
        monitor's medium cadence, 15 s); the ticks between keep the last counters (ProcSample.io_timestamp)."""
    def fileno(self) -> int:
        """An eventfd, readable when a rule may have broken since the last take."""
    def take(self) -> FastTake:
        """Everything since the last take; clears the points, the peaks and the event."""
    def sample_full(self) -> ProcSample:
        """The slow tier (TreeSampler.sample_full) on the thread's own sampler and descriptors."""
    def stop(self) -> None:
        """Stop the thread (idempotent)."""
    @property
    def running(self) -> bool:
        """The thread has not been stopped."""

@final
class CgroupSample:
    """One sample of a cgroup v2 directory. A counter the kernel does not provide is None."""

    @property
    def timestamp(self) -> float:
        """Wall-clock time of the sample (seconds since the epoch)."""
    @property
    def cpu_usage_s(self) -> Optional[float]:
        """cpu.stat usage_usec, in seconds."""
    @property
    def cpu_user_s(self) -> Optional[float]:
        """cpu.stat user_usec, in seconds."""
    @property
    def cpu_system_s(self) -> Optional[float]:
        """cpu.stat system_usec, in seconds."""
    @property
    def nr_periods(self) -> Optional[int]:
        """cpu.stat nr_periods (CPU bandwidth enforcement periods)."""
    @property
    def nr_throttled(self) -> Optional[int]:
        """cpu.stat nr_throttled."""
    @property
    def throttled_s(self) -> Optional[float]:
        """cpu.stat throttled_usec, in seconds."""
    @property
    def memory_current(self) -> Optional[int]:
        """memory.current in bytes."""
    @property
    def memory_peak(self) -> Optional[int]:
        """memory.peak in bytes."""
    @property
    def memory_swap_current(self) -> Optional[int]:
        """memory.swap.current in bytes."""
    @property
    def memory_anon(self) -> Optional[int]:
        """memory.stat anon in bytes."""
    @property
    def memory_file(self) -> Optional[int]:
        """memory.stat file in bytes."""
    @property
    def memory_shmem(self) -> Optional[int]:
        """memory.stat shmem in bytes."""
    @property
    def oom(self) -> Optional[int]:
        """memory.events oom."""
    @property
    def oom_kill(self) -> Optional[int]:
        """memory.events oom_kill."""
    @property
    def memory_max_events(self) -> Optional[int]:
        """memory.events max (times usage hit memory.max)."""
    @property
    def memory_high_events(self) -> Optional[int]:
        """memory.events high (times usage went over memory.high)."""
    @property
    def pids_current(self) -> Optional[int]:
        """pids.current."""
    @property
    def io_rbytes(self) -> Optional[int]:
        """io.stat rbytes summed over devices."""
    @property
    def io_wbytes(self) -> Optional[int]:
        """io.stat wbytes summed over devices."""
    @property
    def populated(self) -> Optional[bool]:
        """cgroup.events populated."""
    @property
    def frozen(self) -> Optional[bool]:
        """cgroup.events frozen."""
    def to_dict(self) -> dict[str, object]:
        """All fields as a plain dict (for JSON)."""

@final
class CgroupSampler:
    """Samples a cgroup v2 directory through kept-open descriptors; cost does not depend on its size."""

    # A pyo3 #[new] is __new__ at runtime; stubtest rejects an __init__ here.
    def __new__(cls, path: str) -> CgroupSampler:
        """Find which counter files `path` provides and keep them open; CgroupError if it is no cgroup v2 directory."""
    @property
    def path(self) -> str:
        """The cgroup directory."""
    def sample(self) -> CgroupSample:
        """Read every counter the directory provides."""

@final
class KillReport:
    """What terminate_tree or signal_tree did."""

    @property
    def signalled(self) -> list[int]:
        """Pids the first signal (SIGTERM, or signal_tree's signal) was delivered to."""
    @property
    def terminated(self) -> list[int]:
        """Pids that exited after SIGTERM (or the single signal), within the grace period."""
    @property
    def killed(self) -> list[int]:
        """Pids that needed SIGKILL (or were killed through cgroup.kill)."""
    @property
    def survivors(self) -> list[int]:
        """Pids still alive when the rounds ran out."""
    @property
    def refused(self) -> list[tuple[int, str]]:
        """Pids the guards would not signal, with the reason."""
    @property
    def elapsed_s(self) -> float:
        """Wall time spent."""
    @property
    def rounds(self) -> int:
        """Rounds of listing and signalling that ran."""
    def to_dict(self) -> dict[str, object]:
        """All fields as a plain dict (for JSON)."""

def terminate_tree(
    root_pid: Optional[int] = None,
    *,
    cgroup: Optional[str] = None,
    grace_s: float = 60.0,
    rounds: int = 10,
    include_root: bool = True,
    start_time: Optional[int] = None,
    proc: str = "/proc",
) -> KillReport:
    """SIGTERM every process of the job, wait up to grace_s, SIGKILL what is left, repeat for late forks.

    start_time: the root's, as learnt while it was surely the caller's; a root pid now held by a process with
    another start time (the pid was reused) is refused, its tree untouched. Without it, the root is the process
    holding root_pid when the call starts."""

def signal_tree(
    root_pid: int,
    signum: int,
    *,
    cgroup: Optional[str] = None,
    include_root: bool = True,
    start_time: Optional[int] = None,
    proc: str = "/proc",
) -> KillReport:
    """Send one signal to every process of the job, with the same guards (and start_time) as terminate_tree."""

def signal_process(
    pid: int,
    signum: int,
    *,
    start_time: Optional[int] = None,
    group: bool = False,
    proc: str = "/proc",
) -> bool:
    """Send one signal to one process (group: to the process group it leads, like killpg) through a pidfd, only
    while it is the process started at start_time (default: the one holding pid now). False when it has gone, its
    pid names another process, or (group) it leads no group. ValueError for pid <= 1 and the caller itself."""

def kill_cgroup(cgroup: str, *, proc: str = "/proc") -> bool:
    """SIGKILL every member of the cgroup and below, without waiting: cgroup.kill, else freeze, SIGKILL each by its
    identity, thaw (a v1 directory: the SIGKILLs alone). CgroupError when the caller is a member. True when
    cgroup.kill did it."""

def start_time(pid: int, *, live_only: bool = False, proc: str = "/proc") -> Optional[int]:
    """The process's start time (/proc/<pid>/stat field 22, clock ticks since boot): with the pid, its identity.
    None when there is no such process, nor (live_only) when it has exited and waits to be reaped."""

def children(pid: int, *, proc: str = "/proc") -> list[int]:
    """The direct children of pid (every thread's children file), sorted; empty when it is gone."""

def descendants(pid: int, *, proc: str = "/proc") -> list[int]:
    """Every descendant of pid, each after its parent; empty when it is gone."""

@final
class Gpu:
    """A GPU or accelerator found in sysfs or in lspci output."""

    @property
    def pci_address(self) -> str:
        """PCI address with domain, e.g. 0000:41:00.0."""
    @property
    def vendor_id(self) -> int:
        """PCI vendor id, e.g. 0x10de; 0xffff when the source names the vendor without its id and it is unknown."""
    @property
    def device_id(self) -> int:
        """PCI device id; 0xffff when the source (plain lspci) names the device and pci.ids cannot tell which."""
    @property
    def vendor(self) -> str:
        """NVIDIA, AMD, Intel or other."""
    @property
    def model(self) -> Optional[str]:
        """Device name from pci.ids (or from lspci text), None when unknown."""
    @property
    def class_id(self) -> int:
        """PCI class and subclass, e.g. 0x0302."""
    @property
    def driver(self) -> Optional[str]:
        """Bound kernel driver, e.g. nvidia or amdgpu."""
    @property
    def numa_node(self) -> Optional[int]:
        """NUMA node of the device, None when the kernel reports none (-1)."""
    @property
    def device_nodes(self) -> list[str]:
        """Device files a container needs: /dev/nvidiaN, /dev/dri/renderD*, /dev/kfd."""
    def to_dict(self) -> dict[str, object]:
        """All fields as a plain dict (for JSON)."""

def list_gpus(sysfs: str = "/sys", pci_ids: Optional[str] = None, dev: str = "/dev") -> list[Gpu]:
    """GPUs and accelerators from sysfs PCI devices; an empty list where there is no sysfs or no GPU."""

def parse_lspci(text: str, pci_ids: Optional[str] = None) -> list[Gpu]:
    """GPUs and accelerators from `lspci -mm -nn -D` output (and the plain, -k and -vvnn forms)."""

@final
class CpuInfo:
    """The processor of this node."""

    @property
    def arch(self) -> str:
        """x86_64, aarch64, riscv64 or other."""
    @property
    def model(self) -> Optional[str]:
        """Model name (x86 model name, aarch64 implementer/part names, riscv64 model name, uarch or isa)."""
    @property
    def family(self) -> Optional[str]:
        """CPU family (x86 cpu family, aarch64 architecture, riscv64 mvendorid)."""
    @property
    def mhz(self) -> Optional[float]:
        """Clock in MHz from cpuinfo, else cpufreq in sysfs, else None."""
    @property
    def flags(self) -> list[str]:
        """Feature flags (x86 flags, aarch64 Features, riscv64 isa extensions)."""
    @property
    def has_avx(self) -> bool:
        """True when the CPU has AVX."""
    @property
    def logical_cpus(self) -> int:
        """Number of logical CPUs listed."""
    def to_dict(self) -> dict[str, object]:
        """All fields as a plain dict (for JSON)."""

def cpu_info(proc: str = "/proc", sys: str = "/sys", arch: Optional[str] = None) -> CpuInfo:
    """Read /proc/cpuinfo (and cpufreq in sysfs); arch defaults to this machine's."""

def parse_cpuinfo(text: str, arch: Optional[str] = None) -> CpuInfo:
    """Parse the text of a /proc/cpuinfo; arch is guessed from the text when not given."""

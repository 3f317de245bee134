"""What benches/compare.py and benches/bench_node.py share: C programs built with the system cc, the W64 jobs (real
process trees, each in its own cgroup v2 where this process may make one), prmon found on PATH or through PRMON=path,
and the CPU time of monitoring processes measured from outside."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs

HERE = Path(__file__).resolve().parent


class Unavailable(Exception):
    """A method cannot run here; str() says why, for the bench to print instead of a figure."""


def build_c(name: str, outdir: Path) -> Path:
    """Compile benches/<name>.c with the system cc (-O2) into outdir; Unavailable when there is no cc or it fails."""
    cc = os.environ.get("CC") or shutil.which("cc")
    if not cc:
        raise Unavailable("no C compiler (cc) on PATH; on Debian: apt-get install gcc")
    out = outdir / name
    res = subprocess.run([cc, "-O2", "-pthread", "-o", str(out), str(HERE / f"{name}.c")],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise Unavailable(f"{cc} could not build benches/{name}.c: {res.stderr.strip().splitlines()[-1:]}")
    return out


def prmon_binary() -> Path:
    """prmon from PRMON=path, else from PATH; Unavailable (with how to get it) when neither."""
    env = os.environ.get("PRMON")
    if env:
        if not os.access(env, os.X_OK):
            raise Unavailable(f"PRMON={env} is not an executable file")
        return Path(env)
    found = shutil.which("prmon")
    if not found:
        raise Unavailable("no prmon on PATH and PRMON is not set (build it: tools/build-prmon.sh DIR, "
                          "see docs/benchmarks.md)")
    return Path(found)


def cpu_s(pid: int) -> float:
    """CPU time of the process so far, in seconds, from the scheduler's run time of each of its threads (stat's
    utime/stime count 10 ms ticks: too coarse for a monitor using a few ms a second). 0 when it is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


def node_procs() -> int:
    """How many processes the node has now (psutil's children() scans all of them, so its cost follows this)."""
    return sum(1 for e in os.listdir("/proc") if e.isdigit())


@dataclass
class Job:
    proc: subprocess.Popen
    nprocs: int
    cgroup: Optional[Path] = None

    @property
    def root(self) -> int:
        return self.proc.pid


@dataclass
class Jobs:
    """W64-style jobs: `count` trees of `nprocs` processes (fanout `fanout`, one in ten with 4 threads, each waking
    once a second), each in its own cgroup v2 below ours where we may make one."""

    payload: Path
    count: int
    nprocs: int
    fanout: int = 10
    use_cgroups: bool = True
    jobs: List[Job] = field(default_factory=list)
    parent: Optional[Path] = None
    #: Why the jobs have no cgroups (None when they have).
    no_cgroup: Optional[str] = None

    def start(self, timeout: float = 300.0) -> None:
        if self.use_cgroups:
            try:
                own = cgroupfs.own_v2_dir()
                if not cgroupfs.can_make_children(own):
                    raise CgroupError(f"{own} is not writable by this process")
                self.parent = cgroupfs.make_child(own, f"gridpilot-bench-node-{os.getpid()}")
            except CgroupError as e:
                self.no_cgroup = f"no job cgroups: {e}; tree discovery only"
        else:
            self.no_cgroup = "job cgroups not asked for"
        try:
            for i in range(self.count):
                cg = cgroupfs.make_child(self.parent, f"job{i}") if self.parent else None
                argv = [str(self.payload), str(self.nprocs), str(self.fanout)] + ([str(cg)] if cg else [])
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
                self.jobs.append(Job(proc, self.nprocs, cg))
                self._wait_ready(self.jobs[-1], time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, job: Job, deadline: float) -> None:
        """Read one byte per process from the job's stdout: every process is then forked and has its threads."""
        assert job.proc.stdout is not None
        got = 0
        fd = job.proc.stdout.fileno()
        os.set_blocking(fd, False)
        while got < job.nprocs:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                raise RuntimeError(f"job {job.root}: its processes closed stdout after {got} of {job.nprocs} started "
                                   f"(exit {job.proc.poll()})")
            if chunk:
                got += len(chunk)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job.root}: {got} of {job.nprocs} processes started in time")
            time.sleep(0.01)

    def first(self, k: int) -> List[Job]:
        return self.jobs[:k]

    def stop(self) -> None:
        for job in self.jobs:
            if job.cgroup is not None:
                try:
                    cgroupfs.kill_members(job.cgroup)
                except CgroupError:
                    pass
            try:
                os.killpg(job.root, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for job in self.jobs:
            job.proc.wait()
            if job.proc.stdout:
                job.proc.stdout.close()
        if self.parent is not None:
            cgroupfs.remove(self.parent, timeout=60.0)
        self.jobs.clear()

    def __enter__(self) -> "Jobs":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(procs: Sequence[subprocess.Popen], timeout: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

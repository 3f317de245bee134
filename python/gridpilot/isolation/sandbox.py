"""One job's sandbox, as its JobAgent uses it: the job's cgroups, the container or PID namespace the JobWrapper runs
in, and the processes in them, from their making to their end.

The agent calls, in this order: `create(...)` (the job cgroup below its agents/JobAgent_<n>, with the job's
limits: v2 where the controllers are delegated, the v1 hierarchies of a hybrid host for what v2 lacks), `launch(...)`
(the wrapper, started by the runtime from its `launch_spec`; its child joins the job's cgroups before exec: `join`),
`adopt_payload(...)` when the wrapper names the payload, `usage()` for the monitor, and `destroy()` once the job
has ended. Which cgroup version holds what stays in here (and in jobcgroup.py and the cgroupfs/cgroupv1 modules
below it): the agent never asks.

Every process of the job is ended through `_native.terminate_tree`, which checks each one's identity before it
signals it. The wrapper alone is sent one SIGTERM (`signal_wrapper`, through `_native.signal_process`, identity
checked too): it passes it on to the payload and still saves its outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from gridpilot import _native
from gridpilot.config import PilotConfig
from gridpilot.errors import GridpilotError
from gridpilot.isolation import cgroupfs, containers, jobcgroup, nspid
from gridpilot.isolation import gpus as gpu_names
from gridpilot.isolation.limits import JobLimits, job_limits
from gridpilot.isolation.runtimes import LaunchSpec


@dataclass(frozen=True)
class Usage:
    """Where the job's usage is read, for the monitor: the v2 job cgroup (its CgroupSampler), and on hybrid hosts
    the v1 memory cgroup's OOM count and charge."""

    cgroup: Optional[str]
    oom_counter: Optional[Callable[[], int]]
    memory_counter: Optional[Callable[[], Optional[int]]]
    v1_memory_dir: Optional[str]


class Sandbox:
    """The cgroups, the container and the processes of one job."""

    def __init__(self, agent_cgroup: Optional[str], agent_v1: Mapping[str, str],
                 trace: Callable[[str], None]) -> None:
        #: The agent's agents/JobAgent_<n> cgroup v2 the runner made (None: none), and its v1 ones on hybrid hosts.
        self.agent_cgroup = agent_cgroup
        self.agent_v1 = dict(agent_v1)
        self.trace = trace
        #: The job's v2 cgroup; None until create(), and where there is none (process groups and sessions only).
        self.cgroup: Optional[Path] = None
        #: The job's cgroups with their limits (v2 and, on hybrid hosts, v1); empty until create().
        self.cgroups = jobcgroup.JobCgroups()
        #: The container runtime and image the wrapper runs in, and its launch spec: set by launch_spec().
        self.isolation: Optional[containers.Isolation] = None
        self.spec: Optional[LaunchSpec] = None
        self.payload_pid: Optional[int] = None
        #: The payload's start time: with its pid, what names the payload process (pids are reused).
        self.payload_start: Optional[int] = None

    # -- making it ----------------------------------------------------------------------------------------------
    def create(self, cfg: PilotConfig, memory_size: int, cores: int) -> None:
        """The job cgroups, with the limits of a job of `memory_size` bytes on `cores` cores in force where they can
        be (none where cfg.cgroup_limits is off). Limits that cannot be worked out are traced, and then the job
        cgroups go without any, not even the v1 ones."""
        self.cgroup = self._make_v2()
        limits: Optional[JobLimits] = None
        if cfg.cgroup_limits:
            try:
                limits = job_limits(memory_size, cores, swap_mb=cfg.swap_mb, pids_max=cfg.pids_max)
            except GridpilotError as e:
                self.trace(f"cgroup limits not set: {e}")
        if limits is not None or not cfg.cgroup_limits:
            self.cgroups = jobcgroup.setup(self.cgroup, self.agent_v1, limits)
            for note in self.cgroups.notes:
                self.trace(note)
        self.trace(f"job cgroup: {self.cgroup} ({_controllers(self.cgroup)})" if self.cgroup
                   else "job cgroup: none (process groups and sessions only)")

    def _make_v2(self) -> Optional[Path]:
        if not self.agent_cgroup:
            return None
        try:
            job, notes = jobcgroup.make_agent_tree(Path(self.agent_cgroup), os.getpid())
            for note in notes:
                self.trace(note)
            return job
        except GridpilotError as e:
            self.trace(f"no job cgroup, going on with process groups only: {e}")
            return None

    def launch(self, isolation: containers.Isolation, argv: List[str], *, workdir: str, env: Dict[str, str],
               cfg: PilotConfig, gpus: Sequence[_native.Gpu], storage: Optional[Sequence[Dict[str, Any]]],
               name: str, fds: Dict[int, int], log_path: Path) -> Tuple[subprocess.Popen, LaunchSpec]:
        """Start `argv` in this sandbox, through the runtime of `isolation`, in a session of its own, its stdin a
        pipe and its output appended to `log_path`: the process, and the spec it was launched from. `fds`, {number in
        the child: descriptor here}, are passed on at 3, 4, ... (every runtime passes them there); in a Podman
        container the job cgroups' cgroup.procs follow."""
        spec = self.launch_spec(isolation, argv, workdir=workdir, env=env, cfg=cfg, gpus=gpus, storage=storage,
                                name=name, pass_fds=len(fds))
        launch = isolation.runtime.command(spec)
        passed = dict(fds)
        join_fds = containers.open_cgroup_procs(spec)
        passed.update(join_fds)

        def in_job_cgroup() -> None:
            # Runs in the child before exec: it joins the job cgroups itself, so nothing it forks escapes them.
            self.join()
            containers.place_fds(passed)

        try:
            proc = subprocess.Popen(
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=open(log_path, "ab"),
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=launch.env,
                # Not pass_fds: it would keep the parent's fds 3 and 4, whatever they are; the fds place_fds puts at
                # 3, 4, ... are the only ones without close-on-exec (Python opens every fd with it).
                close_fds=False,
                start_new_session=True,
                preexec_fn=in_job_cgroup,
            )
        finally:
            containers.close_fds(join_fds)
        return proc, spec

    def launch_spec(self, isolation: containers.Isolation, argv: List[str], *, workdir: str, env: Dict[str, str],
                    cfg: PilotConfig, gpus: Sequence[_native.Gpu], storage: Optional[Sequence[Dict[str, Any]]],
                    name: str, pass_fds: int) -> LaunchSpec:
        """How the runtime of `isolation` starts `argv` in this sandbox: its GPUs' device nodes, and (in a Podman
        container) the job cgroups' cgroup.procs passed in for the wrapper to join them through. Traces the
        runtime, the image, /tmp and what nested containers are told (containers.launch_notes)."""
        self.isolation = isolation
        self.spec = containers.launch_spec(
            isolation, argv, workdir=workdir, env=env, cfg=cfg,
            gpus=containers.gpu_devices(gpus, cfg.sysfs, gpu_names.procfs_beside(cfg.sysfs)),
            storage=storage, job_cgroups=self._cgroup_dirs(), name=name, pass_fds=pass_fds,
        )
        for note in containers.launch_notes(isolation, self.spec, workdir):
            self.trace(note)
        return self.spec

    def _cgroup_dirs(self) -> List[str]:
        """Every cgroup directory the job's processes belong in: v2, and the v1 ones of a hybrid host's limits."""
        dirs = [str(self.cgroup)] if self.cgroup is not None else []
        for d in self.cgroups.v1.dirs.values():
            if str(d) not in dirs:
                dirs.append(str(d))
        return dirs

    def join(self) -> None:
        """Move the calling process into the job's cgroups: in the wrapper's child, before exec, so nothing it forks
        escapes them."""
        if self.cgroup is not None:
            with open(self.cgroup / "cgroup.procs", "w") as f:
                f.write("0")
        self.cgroups.join()  # the v1 cgroups of a hybrid host, for the job's limits

    # -- while the job runs -------------------------------------------------------------------------------------
    def adopt_payload(self, pid: int, pidns: Optional[int], wrapper_pid: int) -> int:
        """The wrapper says the payload started, as `pid` in the PID namespace `pidns`: its pid here, remembered
        with its start time for kill_payload."""
        self.payload_pid = self._host_pid(pid, pidns, wrapper_pid)
        self.payload_start = _native.start_time(self.payload_pid)
        return self.payload_pid

    def _host_pid(self, pid: int, ns: Optional[int], wrapper_pid: int) -> int:
        """The payload's pid here. In a container or PID namespace the wrapper knows it by its namespace pid; it is
        found among this agent's descendants and the job cgroup's members by its NSpid line and namespace."""
        if ns is None or ns == nspid.pid_namespace_inode():
            return pid
        candidates = nspid.descendants(os.getpid())
        if self.cgroup is not None:
            try:
                candidates += [int(x) for x in (self.cgroup / "cgroup.procs").read_text().split()]
            except OSError:
                pass
        found = nspid.host_pid(int(ns), pid, candidates)
        if found is None:
            # Watch the wrapper's whole tree instead: still the job, with the runtime's own processes on top.
            self.trace(f"the payload (pid {pid} in its namespace) was not found here: watching the JobWrapper's tree")
            return wrapper_pid
        return found

    def usage(self) -> Usage:
        """Where the monitor reads the job's usage (fixed once create() has run)."""
        v1 = self.cgroups.v1
        return Usage(
            cgroup=str(self.cgroup) if self.cgroup else None,
            oom_counter=self.cgroups.oom_kills if v1 else None,
            memory_counter=self.cgroups.memory_usage if v1 else None,
            v1_memory_dir=_str(v1.dirs.get("memory")),
        )

    def kill_payload(self, why: str, grace: float) -> None:
        """End the payload and its descendants: SIGTERM, SIGKILL after `grace` seconds. Traced with `why`."""
        if self.payload_pid is None or _native.start_time(self.payload_pid) != self.payload_start:
            return  # it has exited and been reaped: its pid may be another process's by now
        # The start time goes along: the pid may still be reused between the check above and the kill.
        report = _native.terminate_tree(self.payload_pid, grace_s=grace, start_time=self.payload_start)
        self.trace(
            f"{why}: payload terminated ({len(report.terminated)} exited on SIGTERM, {len(report.killed)} killed "
            f"after {grace:.0f} s, {len(report.survivors)} survivors)"
        )

    def signal_wrapper(self, wrapper_pid: int, sig: int) -> None:
        """Send the JobWrapper `sig` (SIGTERM: it passes it on to the payload, and saves what it can)."""
        _native.signal_process(self._wrapper_pid(wrapper_pid), sig)

    def _wrapper_pid(self, launched: int) -> int:
        """The JobWrapper's pid here, for signals: in a container or PID namespace it is pid 1 of that namespace,
        not the runtime's process we started (unshare blocks SIGTERM while it waits, bwrap does not pass it on)."""
        if self.isolation is None or not self.isolation.own_pid_namespace:
            return launched
        found = nspid.namespace_init(nspid.descendants(os.getpid()))
        return found if found is not None else launched

    def end_wrapper(self, wrapper_pid: int, grace: float) -> None:
        """End the wrapper we launched and everything of the job: SIGTERM, SIGKILL after `grace` seconds."""
        _native.terminate_tree(wrapper_pid, cgroup=_str(self.cgroup), grace_s=grace)

    # -- the end ------------------------------------------------------------------------------------------------
    def destroy(self, reap: Optional[Callable[[], object]] = None) -> None:
        """End every process of the job, then remove what the runtime keeps of its container and the job cgroups.
        `reap` runs once they are killed (the agent reaps what was handed to it as a child subreaper)."""
        survivors: List[int] = []
        ended = 0
        reports = []
        if self.cgroup is not None:
            reports.append(_native.terminate_tree(cgroup=str(self.cgroup), grace_s=5))
        # Every descendant of this agent belongs to the job: the wrapper is its only child, and the agent and the
        # wrapper are child subreapers, so what escaped the payload's session or lost its parent is still below us.
        # (Not the wrapper's or the payload's pid: both have been reaped, and a reaped pid may be someone else's.)
        reports.append(_native.terminate_tree(os.getpid(), include_root=False, grace_s=5))
        for r in reports:
            survivors += list(r.survivors)
            ended += len(r.terminated) + len(r.killed)
        if reap is not None:
            reap()
        if ended:
            self.trace(f"cleanup: {ended} leftover process(es) of the job ended")
        if survivors:
            self.trace(f"cleanup: processes still alive after the kill: {sorted(set(survivors))}")
        else:
            self.trace("cleanup: no process of the job is left")
        cleanup = self.isolation.runtime.cleanup(self.spec) if self.isolation and self.spec else None
        if cleanup:
            # What the runtime still records of a container whose processes were killed (Podman's container entry).
            try:
                subprocess.run(cleanup, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.trace(f"cleanup: {' '.join(cleanup)} failed: {e}")
        if self.cgroup is not None:
            try:
                cgroupfs.remove(self.cgroup)
            except GridpilotError as e:
                self.trace(f"cleanup: job cgroup not removed: {e}")
        for problem in self.cgroups.remove():
            self.trace(f"cleanup: {problem}")

    def remove_workdir(self, workdir: Path, *, keep: bool) -> None:
        """Delete the job's work directory, once its last state is reported (`keep`: the site keeps them)."""
        if keep:
            self.trace(f"work directory kept: {workdir}")
            return
        if not os.path.lexists(workdir):
            return  # never made: the job ended because it could not be (SANDBOX_CREATE)
        try:
            shutil.rmtree(workdir)
            self.trace("cleanup: work directory deleted")
        except OSError as e:
            self.trace(f"cleanup: work directory not fully deleted: {e}")


def _controllers(cgroup: Path) -> str:
    """The controllers a job cgroup has, for the trace."""
    try:
        have = cgroupfs.available_controllers(cgroup)
    except GridpilotError as e:
        return f"controllers unknown: {e}"
    return "controllers: " + (" ".join(have) if have else "none")


def _str(p: Optional[Path]) -> Optional[str]:
    return str(p) if p is not None else None


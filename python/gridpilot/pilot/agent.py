"""The JobAgent: one process per job. Matches a job, runs its JobWrapper, watches the payload, reports, cleans up.

The JobRunner starts it as `python -m gridpilot.pilot.agent` with its settings as JSON on stdin, and reads its events
(JSON lines on stdout): `matched` (job id, cores and GPUs taken), `nomatch`, `unreachable` (central did not answer:
not an empty match), `error` (central refused the match; its HTTP status), `done` (final state and kill reason).
The agent holds the agent token; the wrapper gets only the job token, on its stdin.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import orjson

from gridpilot import _native
from gridpilot.client import CentralClient
from gridpilot.config import PilotConfig
from gridpilot.errors import CentralError, CentralUnreachable, ConfigError, GridpilotError, JdlError
from gridpilot.isolation import cgroupfs, jobcgroup
from gridpilot.isolation import gpus as gpu_names
from gridpilot.isolation.runtimes import ContainerRuntime
from gridpilot.isolation.limits import job_limits
from gridpilot.jdl import JobDescription, parse_job
from gridpilot.isolation import nspid
from gridpilot.pilot import containers, fdlimit, protocol, subreaper
from gridpilot.pilot.monitor import PROCFMT, JobMonitor
from gridpilot.pilot.outbox import Outbox, sender
from gridpilot.pilot.rules import Breach, Limits
from gridpilot.pilot.sitemap import build_site_map, cvmfs_revision, disk_free_mb, gpu_name, node_gpus
from gridpilot.pilot.wakeup import SignalWakeup
from gridpilot.reachability import UNAVAILABLE_STATUSES
from gridpilot.states import JobStatus, KillReason, is_allowed
from gridpilot.tls import read_ca_file

log = logging.getLogger("gridpilot.agent")

EXIT_DONE = 0
EXIT_NOMATCH = 3
EXIT_UNREACHABLE = 4
EXIT_ERROR = 1
#: The longest the job loop sleeps with nothing due: every event it waits for wakes it (a descriptor or a signal),
#: so this only bounds what an unforeseen one would cost.
MAX_WAIT_S = 30.0
#: SIGTERM to SIGKILL for a wrapper whose payload never started, when the slot ends: nothing of it is worth waiting for.
GIVE_BACK_GRACE_S = 1.0

#: Where a job ends when its wrapper dies without telling the final state (issue 5). Where the shared transition
#: table (states.py) does not allow one of these from the job's state, final_path() picks the legal fallback.
_LOST_WRAPPER = {
    JobStatus.STARTED: JobStatus.ERROR_E,
    JobStatus.RUNNING: JobStatus.ERROR_E,
    JobStatus.SAVING: JobStatus.ERROR_SV,
}


def final_path(current: Optional[JobStatus], final: JobStatus) -> List[JobStatus]:
    """The states to report, in order, so that central accepts the job's end from `current` (None: ASSIGNED).

    Central refuses an illegal transition with 409, and a refused final state leaves the job held until the
    sweeper finds it silent, so the agent never sends one: a job that ends before the wrapper said STARTED is
    reported STARTED first; an end the table does not allow from where the job is (ERROR_E from STARTED, say)
    becomes ERROR_A, the state for "the pilot could not run it".
    """
    cur = current or JobStatus.ASSIGNED
    for target in (final, JobStatus.ERROR_A):
        if is_allowed(cur, target):
            return [target]
        if cur is JobStatus.ASSIGNED and is_allowed(JobStatus.STARTED, target):
            return [JobStatus.STARTED, target]
    return [final]  # nothing legal (SAVING -> ERROR_A, say): let central refuse it and say why


@dataclass
class AgentSettings:
    """What the runner hands one agent."""

    config: PilotConfig
    index: int = 0
    free_cores: int = 1
    ttl_left: float = 86400.0
    memory_mb: int = 0
    disk_mb: int = 0
    #: PCI addresses of the GPUs no other job holds.
    free_gpus: List[str] = field(default_factory=list)
    #: This agent's cgroup (agents/JobAgent_<n>) when the runner built the slot tree.
    cgroup: Optional[str] = None
    #: This agent's cgroup v1 directories, {controller: agents/JobAgent_<n>}, on hybrid hosts (for limits only).
    cgroup_v1: Dict[str, str] = field(default_factory=dict)
    batch_id: Optional[str] = None

    def to_json(self) -> bytes:
        d = dict(self.__dict__)
        d["config"] = dict(self.config.__dict__)
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, data: bytes) -> AgentSettings:
        d = orjson.loads(data)
        d["config"] = PilotConfig(**d["config"])
        return cls(**d)


def job_workdir(cfg: PilotConfig, job_id: int) -> Path:
    """Where a job runs: one directory per job below the pilot's work directory."""
    return Path(cfg.workdir) / f"alien-job-{job_id}"


def emit(event: str, **fields: Any) -> None:
    """One event line for the runner."""
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.flush()


def claim_gpus(job: JobDescription, free: List[Any]) -> Optional[List[Any]]:
    """The GPUs this job gets from the free ones, or None when they cannot satisfy its request."""
    if job.gpu is None:
        return []
    want = job.gpu.name.lower() if job.gpu.name else None
    fitting = [g for g in free if want is None or want in f"{g.vendor} {g.model or ''}".lower()]
    if len(fitting) < job.gpu.count:
        return None
    return fitting[: job.gpu.count]


def gpu_environment(gpus: List[Any], runtime: ContainerRuntime, sysfs: str = "/sys",
                    node_gpus: Optional[List[Any]] = None) -> Dict[str, str]:
    """Visible-device variables so the payload sees only the GPUs it was given, named as CUDA and ROCm take them in
    this runtime (UUIDs, else indices: gridpilot.isolation.gpus), and GRIDPILOT_GPUS, their PCI addresses.
    `node_gpus`: every GPU of the node (what the indices count where all are visible); read from `sysfs` if None."""
    if not gpus:
        return {}
    if node_gpus is None:
        # Only where every GPU of the node is reachable do the indices count them all.
        node_gpus = [] if runtime.shows_only_job_gpus else _native.list_gpus(sysfs=sysfs)
    env = gpu_names.visible_devices(gpus, node_gpus, only_job_devices=runtime.shows_only_job_gpus, sysfs=sysfs,
                                    procfs=gpu_names.procfs_beside(sysfs))
    env["GRIDPILOT_GPUS"] = ",".join(g.pci_address for g in gpus)
    return env


def gpu_sanity_check(gpus: List[Any]) -> Optional[str]:
    """Run the vendor's tool where it exists; the reason it failed, or None."""
    for vendor, tool in (("NVIDIA", "nvidia-smi"), ("AMD", "rocminfo")):
        if any(g.vendor == vendor for g in gpus) and shutil.which(tool):
            try:
                out = subprocess.run([tool], capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:
                return f"{tool} did not answer within 60 s"
            if out.returncode != 0:
                return f"{tool} failed with exit code {out.returncode}: {out.stderr.decode(errors='replace')[-300:]}"
    return None


class JobRun:
    """One matched job, from the work directory to the cleanup."""

    def __init__(self, settings: AgentSettings, client: CentralClient, match: Dict[str, Any], job: JobDescription,
                 gpus: List[Any], node_gpus: Optional[List[Any]] = None, ca_pem: Optional[str] = None) -> None:
        self.s = settings
        #: The text of the CA bundle central is verified with, for the wrapper (which may not see the file).
        self.ca_pem = ca_pem
        self.cfg = settings.config
        self.client = client
        self.job_id = int(match["id"])
        self.resubmission = int(match.get("resubmission", 0))
        self.job_token = match["token"]
        self.jdl = match["jdl"]
        self.match = match
        self.job = job
        self.gpus = gpus
        #: Every GPU of the node (None: read again from sysfs when the job's GPU variables are set).
        self.node_gpus = node_gpus
        # The idle window is the site's choice (the JDL has no key for it); the other limits are the job's.
        self.limits = dataclasses.replace(Limits.from_job(job), idle_window_s=self.cfg.idle_window_s)
        self.workdir = job_workdir(self.cfg, self.job_id)
        # Keys of this run's trace lines: the resubmission and a random part tell this run from any other of the
        # job (a second match of the same resubmission after central lost the first one, say).
        # A report central refuses (pilot/outbox.py) is logged, traced and dropped, and the job goes on: if the
        # refusal means central gave the job up (resubmitted it, ended it), the next heartbeat is refused for the job
        # or answered with a kill, which ends the payload and the wrapper's waits (_heartbeat); if central refused
        # the agent token itself, the heartbeats are refused whole, and its sweeper ends the job once it is silent.
        self.outbox = Outbox(sender(client, self.job_id, self.resubmission),
                             key_prefix=f"{self.resubmission}.{uuid.uuid4().hex[:12]}.", name=f"job {self.job_id}")
        self.state: Optional[JobStatus] = None
        self.final: Optional[Dict[str, Any]] = None
        self.breach: Optional[Breach] = None
        self.killed_by_central = False
        self.wind_down_at: Optional[float] = None
        self.monitor: Optional[JobMonitor] = None
        self.payload_pid: Optional[int] = None
        #: The payload's start time: with its pid, what names the payload process (pids are reused).
        self.payload_start: Optional[int] = None
        self.job_cgroup: Optional[Path] = None
        #: The job's cgroups with their limits (v2 and, on hybrid hosts, v1); empty until _make_cgroup.
        self.job_cgroups = jobcgroup.JobCgroups()
        #: The container runtime and image the wrapper runs in (containers.choose), and its launch spec.
        self.isolation: Optional[containers.Isolation] = None
        self.launch_spec: Optional[Any] = None
        self.wrapper: Optional[subprocess.Popen] = None
        self.next_heartbeat = 0.0
        self.next_proc = 0.0
        self.stop_requested = False
        #: The slot ended before the payload ran: the job goes back to the queue (DESIGN: at most 3 times).
        self.give_back = False
        self.kill_reason = KillReason.OK

    # -- reporting --------------------------------------------------------------------------------------------
    def trace(self, text: str, category: str = "trace") -> None:
        log.info("job %d: %s", self.job_id, text)
        self.outbox.trace(category, text)

    def report_state(self, state: JobStatus, **fields: Any) -> None:
        self.state = state
        # `at`: when it happened here, so a report held back through an outage is not dated at its delivery.
        self.outbox.status(state=state.name, at=time.time(), **{k: v for k, v in fields.items() if v is not None})
        if self.monitor is not None and self.monitor.last is not None and state in (JobStatus.RUNNING, JobStatus.SAVING):
            self._trace_proc()

    def _trace_proc(self) -> None:
        """The ALICE `proc` line, and beside it the `usage` record (I/O, threads, network, GPUs: docs/monitoring.md)."""
        assert self.monitor is not None
        self.trace(self.monitor.proc_line(), "proc")
        self.trace(self.monitor.usage_line(), "usage")

    # -- setup ------------------------------------------------------------------------------------------------
    def _make_cgroup(self) -> Optional[Path]:
        v2 = self._make_v2_cgroup()
        limits = None
        if self.cfg.cgroup_limits:
            try:
                limits = job_limits(self.job.memory_size, self.job.cpu_cores, swap_mb=self.cfg.swap_mb,
                                    pids_max=self.cfg.pids_max)
            except GridpilotError as e:
                self.trace(f"cgroup limits not set: {e}")
        if limits is not None or not self.cfg.cgroup_limits:
            self.job_cgroups = jobcgroup.setup(v2, self.s.cgroup_v1, limits)
            for note in self.job_cgroups.notes:
                self.trace(note)
        return v2

    def _make_v2_cgroup(self) -> Optional[Path]:
        if not self.s.cgroup:
            return None
        try:
            job, notes = jobcgroup.make_agent_tree(Path(self.s.cgroup), os.getpid())
            for note in notes:
                self.trace(note)
            return job
        except GridpilotError as e:
            self.trace(f"no job cgroup, going on with process groups only: {e}")
            return None

    def _start_wrapper(self) -> protocol.AgentChannel:
        to_agent_r, to_agent_w = os.pipe()
        to_wrapper_r, to_wrapper_w = os.pipe()
        cg = self.job_cgroup
        iso = self.isolation or containers.without_container(self.cfg, self.trace)
        msg_fd, ack_fd = containers.FIRST_PASSED_FD, containers.FIRST_PASSED_FD + 1

        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_TOKEN")}
        gpu_env = gpu_environment(self.gpus, iso.runtime, self.cfg.sysfs, node_gpus=self.node_gpus)
        argv = [sys.executable, "-m", "gridpilot.pilot.wrapper", "--msg-fd", str(msg_fd), "--ack-fd", str(ack_fd)]
        self.launch_spec = spec = containers.launch_spec(
            iso, argv, workdir=str(self.workdir), env=env if not iso.contained else gpu_env, cfg=self.cfg,
            gpus=containers.gpu_devices(self.gpus, self.cfg.sysfs, gpu_names.procfs_beside(self.cfg.sysfs)),
            storage=self.match.get("storage"),
            job_cgroups=self._job_cgroup_dirs(), name=containers.container_name(self.job_id),
            pass_fds=2,
        )
        launch = iso.runtime.command(spec)
        # The pipes go to fds 3 and 4, where every runtime passes them on (Podman: --preserve-fds); in a Podman
        # container the job cgroups' cgroup.procs follow, for the wrapper to join them through.
        passed = {msg_fd: to_agent_w, ack_fd: to_wrapper_r}
        join_fds = containers.open_cgroup_procs(spec)
        passed.update(join_fds)

        def in_job_cgroup() -> None:
            # Runs in the child before exec: it joins the job cgroup itself, so nothing it forks escapes it.
            if cg is not None:
                with open(cg / "cgroup.procs", "w") as f:
                    f.write("0")
            self.job_cgroups.join()  # the v1 cgroups of a hybrid host, for the job's limits
            containers.place_fds(passed)

        try:
            self.wrapper = subprocess.Popen(
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=open(self.workdir / "wrapper.log", "ab"),
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=launch.env,
                # Not pass_fds: it would keep the parent's fds 3 and 4, whatever they are; the fds place_fds puts at
                # 3, 4, ... are the only ones without close-on-exec (Python opens every fd with it).
                close_fds=False,
                start_new_session=True,
                preexec_fn=in_job_cgroup,
            )
        finally:
            containers.close_fds(join_fds)
        os.close(to_agent_w)
        os.close(to_wrapper_r)
        handover = protocol.Handover(
            job_id=self.job_id,
            resubmission=self.resubmission,
            token=self.job_token,
            central_url=self.cfg.central_url or "",
            ca_pem=self.ca_pem,
            jdl=self.jdl,
            workdir=spec.workdir,
            close_se=self.cfg.close_se,
            output_dir=self.match.get("output_dir"),
            storage=self.match.get("storage"),
            env=gpu_env,
            site=self.cfg.site,
            ce=self.cfg.ce,
            stdout_max_mb=self.cfg.stdout_max_mb,
        )
        assert self.wrapper.stdin is not None
        try:
            self.wrapper.stdin.write(handover.to_json())
            self.wrapper.stdin.close()
        except BrokenPipeError:
            pass  # the wrapper died at once; the loop sees it exit
        return protocol.AgentChannel(to_agent_r, to_wrapper_w)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _handle(self, msg: Dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == protocol.STATE:
            state = JobStatus[msg["state"]]
            if state == JobStatus.RUNNING and self.monitor is not None:
                self.monitor.mark_running()
            self.report_state(state, message=msg.get("message"))
        elif kind == protocol.PAYLOAD:
            self.payload_pid = self._host_pid(msg)
            self.payload_start = _native.start_time(self.payload_pid)
            self.monitor = JobMonitor(
                self.payload_pid,
                self.workdir,
                self.limits,
                cgroup=str(self.job_cgroup) if self.job_cgroup else None,
                oom_counter=self.job_cgroups.oom_kills if self.job_cgroups.v1 else None,
                memory_counter=self.job_cgroups.memory_usage if self.job_cgroups.v1 else None,
                # The fast tier on a native thread: the loop wakes on its descriptor, not every second (issue 16).
                native_fast=True,
                v1_memory_dir=_str(self.job_cgroups.v1.dirs.get("memory")),
                fast_s=self.cfg.monitor_fast_s,
                slow_s=self.cfg.monitor_slow_s,
                cpu_mhz=_cpu().mhz,
                cpu_family=_cpu().family or "",
                gpus=self.gpus,
                sysfs=self.cfg.sysfs,
                medium_s=self.cfg.monitor_medium_s,
                trace=self.trace,
            )
            self.trace(PROCFMT, "procfmt")
        elif kind == protocol.TRACE:
            self.trace(str(msg.get("text", "")))
        elif kind == protocol.RESULT:
            self.final = msg

    def _job_cgroup_dirs(self) -> List[str]:
        """Every cgroup directory the job's processes belong in: v2, and the v1 ones of a hybrid host's limits."""
        dirs = [str(self.job_cgroup)] if self.job_cgroup is not None else []
        for d in self.job_cgroups.v1.dirs.values():
            if str(d) not in dirs:
                dirs.append(str(d))
        return dirs

    def _wrapper_pid(self) -> int:
        """The JobWrapper's pid here, for signals: in a container or PID namespace it is pid 1 of that namespace,
        not the runtime's process we started (unshare blocks SIGTERM while it waits, bwrap does not pass it on)."""
        assert self.wrapper is not None
        if self.isolation is None or not self.isolation.own_pid_namespace:
            return self.wrapper.pid
        found = nspid.namespace_init(nspid.descendants(os.getpid()))
        return found if found is not None else self.wrapper.pid

    def _host_pid(self, msg: Dict[str, Any]) -> int:
        """The payload's pid here. In a container or PID namespace the wrapper knows it by its namespace pid; it is
        found among this agent's descendants and the job cgroup's members by its NSpid line and namespace."""
        pid, ns = int(msg["pid"]), msg.get("pidns")
        if ns is None or ns == nspid.pid_namespace_inode():
            return pid
        candidates = nspid.descendants(os.getpid())
        if self.job_cgroup is not None:
            try:
                candidates += [int(x) for x in (self.job_cgroup / "cgroup.procs").read_text().split()]
            except OSError:
                pass
        found = nspid.host_pid(int(ns), pid, candidates)
        if found is None:
            # Watch the wrapper's whole tree instead: still the job, with the runtime's own processes on top.
            self.trace(f"the payload (pid {pid} in its namespace) was not found here: watching the JobWrapper's tree")
            assert self.wrapper is not None
            return self.wrapper.pid
        return found

    def _kill_payload(self, why: str) -> None:
        if self.payload_pid is None or _native.start_time(self.payload_pid) != self.payload_start:
            return  # it has exited and been reaped: its pid may be another process's by now
        grace = float(self.job.forced_kill_timeout)
        # The start time goes along: the pid may still be reused between the check above and the kill.
        report = _native.terminate_tree(self.payload_pid, grace_s=grace, start_time=self.payload_start)
        self.trace(
            f"{why}: payload terminated ({len(report.terminated)} exited on SIGTERM, {len(report.killed)} killed "
            f"after {grace:.0f} s, {len(report.survivors)} survivors)"
        )

    def _heartbeat(self, now: float) -> None:
        if now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.cfg.heartbeat_interval
        sample = self.monitor.resources() if self.monitor else {}
        try:
            answer = self.client.heartbeats_full([{"job_id": self.job_id, "resubmission": self.resubmission,
                                                   "sample": sample}])
        except CentralUnreachable as e:
            self.outbox.note_unreachable()
            log.warning("heartbeat for job %d not delivered: %s", self.job_id, e)
            return
        except CentralError as e:
            # Central (or a gateway for it) answered: an outage as the outbox counts them, or not.
            if e.status in UNAVAILABLE_STATUSES:
                self.outbox.note_unreachable()
            elif e.status < 500:
                self.outbox.note_reachable()
            log.warning("heartbeat for job %d refused: %s", self.job_id, e)
            return
        self.outbox.note_reachable()
        for item in answer.get("rejected") or []:
            if item.get("job_id") == self.job_id:
                # Not this agent's job any more, or not this run of it (given back and resubmitted, say): central
                # refuses its reports too, and what it still does counts for nothing, or runs beside the next run.
                self._stop_for_central(f"central gave this run of the job up (its heartbeat was refused: "
                                       f"{item.get('code')}): the job is killed", now)
        for cmd in answer.get("commands") or []:
            if cmd.get("job_id") == self.job_id and cmd.get("command") == "kill":
                self._stop_for_central(f"kill requested by central ({cmd.get('reason') or 'no reason given'})", now)

    def _stop_for_central(self, why: str, now: float) -> None:
        """Central wants the job ended (a kill, or it gave this run up): the payload is killed, the wrapper told."""
        if self.killed_by_central:
            return
        self.killed_by_central = True
        self.trace(why)
        self._kill_payload("killed on request")
        if self.wrapper is not None and self.wrapper.poll() is None:
            # The wrapper still saves the killed payload's logs (OutputErrorE) and says so; SIGTERM keeps it from
            # starting a payload it has not started yet, and ends its waits for central's catalogue. The wind-down
            # bound ends it if it hangs.
            _native.signal_process(self._wrapper_pid(), signal.SIGTERM)
            if self.wind_down_at is None:
                self.wind_down_at = now + self.cfg.drain_grace

    def request_stop(self) -> None:
        """SIGTERM from the runner (the batch system is ending the slot): wind down, outputs still go out."""
        self.stop_requested = True

    def run(self) -> JobStatus:
        subreaper.become_subreaper()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        self.trace(f"job {self.job_id} matched on {self.cfg.node} ({self.cfg.site}, {self.cfg.ce}), batch job {self.s.batch_id or 'none'}; work directory {self.workdir}")
        if self.gpus:
            self.trace("GPUs given to this job: " + ", ".join(f"{g.pci_address} ({gpu_name(g)})" for g in self.gpus))
            problem = gpu_sanity_check(self.gpus)
            if problem:
                self.trace(f"GPU sanity check failed: {problem}")
                return self._finish(JobStatus.ERROR_A, KillReason.OK, None)
        if self.stop_requested:
            self.give_back = True
            self.trace("the slot is ending before the payload started: the job goes back to the queue")
            return self._finish(JobStatus.WAITING, KillReason.OK, None)
        self.job_cgroup = self._make_cgroup()
        self.trace(f"job cgroup: {self.job_cgroup} ({_controllers(self.job_cgroup)})" if self.job_cgroup
                   else "job cgroup: none (process groups and sessions only)")
        self.isolation, why_not = containers.choose(self.cfg, containers.job_image(self.cfg, self.job, _cpu().arch), self.trace)
        if self.isolation is None:
            self.give_back = True
            self.trace("containers are required on this site and none works here: the job goes back to the queue")
            return self._finish(JobStatus.WAITING, KillReason.OK, None)
        channel = self._start_wrapper()
        assert self.wrapper is not None
        wakeup = SignalWakeup()
        try:
            return self._loop(channel, wakeup)
        finally:
            wakeup.close()
            if self.monitor is not None:
                self.monitor.close()

    def _loop(self, channel: protocol.AgentChannel, wakeup: SignalWakeup) -> JobStatus:
        assert self.wrapper is not None
        wrapper_gone = False
        while True:
            now = time.monotonic()
            wake_fds = [wakeup.fd]
            watched = self._watched()
            if watched is not None:
                fd = watched.fileno()
                if fd is not None:  # always: the agent's monitor runs the native fast tier
                    wake_fds.append(fd)
            try:
                msg = channel.receive(timeout=self._wait_s(now), wake_fds=wake_fds)
            except protocol.ProtocolError:
                msg, wrapper_gone = None, True
            wakeup.drain()
            if msg is not None:
                self._handle(msg)
                channel.ack(msg)
            watched = self._watched()
            if watched is not None:
                breach = watched.poll()
                if breach is not None:
                    self.breach = breach
                    self.trace(breach.trace)
                    self._kill_payload(f"limit exceeded ({breach.reason.name})")
                if now >= self.next_proc and watched.running_since is not None:
                    if self.next_proc:
                        self._trace_proc()
                    self.next_proc = now + self.cfg.proc_trace_interval
            self._heartbeat(now)
            self.outbox.flush()
            if self.stop_requested and self.wind_down_at is None:
                self.wind_down_at = now + self.cfg.drain_grace
                if self.state in (None, JobStatus.STARTED) and self.payload_pid is None:
                    # Nothing ran yet, so nothing is worth saving: another slot can run the job whole.
                    self.give_back = True
                    self.trace("the slot is ending before the payload started: the job goes back to the queue")
                    # Quickly: the batch system SIGKILLs everything KillWait after its SIGTERM (Slurm: 30 s by
                    # default, less on some sites), and the job goes back only if WAITING reaches central before.
                    # A wrapper blocked in a stage-in (a hung storage element) ignores SIGTERM until that returns.
                    _native.terminate_tree(self.wrapper.pid, cgroup=_str(self.job_cgroup), grace_s=GIVE_BACK_GRACE_S)
                else:
                    self.trace("the slot is ending: the payload gets SIGTERM, outputs are still uploaded")
                    _native.signal_process(self._wrapper_pid(), signal.SIGTERM)
                    # The wrapper passes SIGTERM on; the agent holds the payload to ForcedKillTimeout, as for any kill.
                    self._kill_payload("the slot is ending")
            if self.wind_down_at is not None and now > self.wind_down_at and self.wrapper.poll() is None:
                self.trace(f"wind-down grace of {self.cfg.drain_grace:.0f} s over: the job is killed")
                _native.terminate_tree(self.wrapper.pid, cgroup=_str(self.job_cgroup), grace_s=1)
            if wrapper_gone or self.wrapper.poll() is not None:
                # Whatever the wrapper said last, acknowledged or not, still counts.
                for late in channel.drain(0.5):
                    self._handle(late)
                self.wrapper.wait()
                break
        if self.monitor is not None:
            self.monitor.close()  # nothing to watch any more; what it sampled stays for the final report
        return self._conclude()

    def _watched(self) -> Optional[JobMonitor]:
        """The monitor while it is polled (the payload runs and no rule has ended it yet), else None."""
        if self.breach is None and self.state == JobStatus.RUNNING:
            return self.monitor
        return None

    def _wait_s(self, now: float) -> float:
        """How long the loop may wait for the wrapper: until the next sample, proc line, heartbeat or report retry is
        due. A message from the wrapper, its exit (SIGCHLD), a signal or the monitor's alarm wake it at once, so
        nothing else needs a short wait; MAX_WAIT_S bounds it all the same."""
        due = [self.next_heartbeat]
        watched = self._watched()
        if watched is not None:
            due.append(watched.next_due)
            if watched.running_since is not None:
                due.append(self.next_proc)
        if self.outbox.queue:
            due.append(self.outbox.next_try)
        if self.wind_down_at is not None:
            due.append(self.wind_down_at)
        return min(MAX_WAIT_S, max(0.01, min(due) - now))

    def _conclude(self) -> JobStatus:
        assert self.wrapper is not None
        exit_code = None
        if self.breach is None and self.monitor is not None and not self.killed_by_central:
            # The kernel's OOM kill can come between two samples, and the wrapper then reports the payload's exit
            # (137) before the next one: one last look, so the job still ends ERROR_E with OOM_SYSTEM.
            self.breach = self.monitor.oom_breach()
            if self.breach is not None:
                self.trace(self.breach.trace)
        if self.give_back and self.state in (None, JobStatus.STARTED) and self.payload_pid is None:
            state, reason = JobStatus.WAITING, KillReason.OK
        elif self.breach is not None:
            state, reason = self.breach.state, self.breach.reason
        elif self.killed_by_central:
            state, reason = JobStatus.KILLED, KillReason.KILLED
        elif self.final is not None:
            state = JobStatus[self.final["state"]]
            reason = KillReason[self.final.get("kill_reason") or "OK"]
            exit_code = self.final.get("exit_code")
        else:
            state = _LOST_WRAPPER.get(self.state, JobStatus.ERROR_A) if self.state else JobStatus.ERROR_A
            reason = KillReason.OK
            self.trace(f"the JobWrapper ended (exit status {self.wrapper.returncode}) without a final state; the job was {self.state.name if self.state else 'not started'}")
            last = log_tail(self.workdir / "wrapper.log")
            if last:
                # What the wrapper, or the container runtime around it, said last: the work directory goes at cleanup.
                self.trace(f"the JobWrapper's last words (wrapper.log): {last}")
        if self.final is not None and exit_code is None:
            exit_code = self.final.get("exit_code")
        if self.stop_requested and state is JobStatus.ERROR_E and reason is KillReason.OK:
            # The payload failed because the pilot stopped it (the slot ended), not on its own: say so.
            reason = KillReason.KILLED
        return self._finish(state, reason, exit_code)

    def _finish(self, state: JobStatus, reason: KillReason, exit_code: Optional[int]) -> JobStatus:
        self._cleanup_processes()
        resources = self.monitor.resources() if self.monitor else {}
        if self.monitor is not None:
            self._trace_proc()
        if self.final is not None and self.final.get("rusage"):
            resources["rusage"] = self.final["rusage"]
        path = final_path(self.state, state)
        if path[-1] is not state:
            self.trace(f"the job would end {state.name}, which central does not accept after "
                       f"{self.state.name if self.state else 'ASSIGNED'}: it ends {path[-1].name}")
            state = path[-1]
        for step in path[:-1]:
            self.report_state(step, message="reported by the JobAgent on the JobWrapper's behalf")
        self.kill_reason = reason
        self.report_state(state, kill_reason=reason.name, exit_code=exit_code, resources=resources)
        self._cleanup_files()
        if not self.outbox.drain(timeout_s=self.cfg.report_grace):
            log.error("job %d: %d report(s) could not be delivered to central", self.job_id, len(self.outbox.queue))
        return state

    def _cleanup_processes(self) -> None:
        survivors: List[int] = []
        ended = 0
        reports = []
        if self.job_cgroup is not None:
            reports.append(_native.terminate_tree(cgroup=str(self.job_cgroup), grace_s=5))
        # Every descendant of this agent belongs to the job: the wrapper is its only child, and the agent and the
        # wrapper are child subreapers, so what escaped the payload's session or lost its parent is still below us.
        # (Not the wrapper's or the payload's pid: both have been reaped, and a reaped pid may be someone else's.)
        reports.append(_native.terminate_tree(os.getpid(), include_root=False, grace_s=5))
        for r in reports:
            survivors += list(r.survivors)
            ended += len(r.terminated) + len(r.killed)
        if self.wrapper is None or self.wrapper.poll() is not None:
            subreaper.reap_zombies()
        if ended:
            self.trace(f"cleanup: {ended} leftover process(es) of the job ended")
        if survivors:
            self.trace(f"cleanup: processes still alive after the kill: {sorted(set(survivors))}")
        else:
            self.trace("cleanup: no process of the job is left")
        cleanup = self.isolation.runtime.cleanup(self.launch_spec) if self.isolation and self.launch_spec else None
        if cleanup:
            # What the runtime still records of a container whose processes were killed (Podman's container entry).
            try:
                subprocess.run(cleanup, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                self.trace(f"cleanup: {' '.join(cleanup)} failed: {e}")
        if self.job_cgroup is not None:
            try:
                cgroupfs.remove(self.job_cgroup)
            except GridpilotError as e:
                self.trace(f"cleanup: job cgroup not removed: {e}")
        for problem in self.job_cgroups.remove():
            self.trace(f"cleanup: {problem}")

    def _cleanup_files(self) -> None:
        if self.cfg.keep_workdir:
            self.trace(f"work directory kept: {self.workdir}")
            return
        try:
            shutil.rmtree(self.workdir)
            self.trace("cleanup: work directory deleted")
        except OSError as e:
            self.trace(f"cleanup: work directory not fully deleted: {e}")


def log_tail(path: Path, lines: int = 5, max_bytes: int = 4096) -> str:
    """The last few non-empty lines of a log file, joined with ' | ' ('' when it is missing or empty)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[-1000:]


def _controllers(cgroup: Path) -> str:
    """The controllers a job cgroup has, for the trace."""
    try:
        have = cgroupfs.available_controllers(cgroup)
    except GridpilotError as e:
        return f"controllers unknown: {e}"
    return "controllers: " + (" ".join(have) if have else "none")


def _str(p: Optional[Path]) -> Optional[str]:
    return str(p) if p is not None else None


_CPU: Optional[Any] = None


def _cpu() -> Any:
    global _CPU
    if _CPU is None:
        _CPU = _native.cpu_info()
    return _CPU


def run_agent(settings: AgentSettings) -> int:
    cfg = settings.config
    # SIGTERM from the runner can come while this agent is still matching: note it, so a job that central assigns
    # meanwhile is given back at once instead of being left ASSIGNED to a process that died of the signal.
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    # The runner resolves these before it starts agents (central.url, the agent token's site and CE).
    assert cfg.central_url and cfg.site and cfg.ce, "the agent needs a resolved configuration"
    url = cfg.central_url
    try:
        # The CA's text, read now: the wrapper may run in a container that does not see the file.
        ca_pem = read_ca_file(cfg.ca_file) if cfg.ca_file else None
        client = CentralClient(url, cfg.agent_token(), timeout=10.0, retries=1, ca_file=cfg.ca_file)
    except ConfigError as e:
        emit("error", error=str(e))
        return EXIT_ERROR
    every_gpu = node_gpus(cfg.sysfs, cfg.pci_ids)
    all_gpus = [g for g in every_gpu if g.pci_address in settings.free_gpus]
    site_map = build_site_map(
        site=cfg.site,
        ce=cfg.ce,
        partition=cfg.partition,
        node=cfg.node,
        ttl_left=settings.ttl_left,
        free_cores=settings.free_cores,
        memory_mb=settings.memory_mb,
        disk_mb=settings.disk_mb or disk_free_mb(cfg.workdir),
        cpu=_cpu(),
        gpus=all_gpus,
        close_se=cfg.close_se,
        users=cfg.users,
        nousers=cfg.nousers,
        cvmfs_revision=cvmfs_revision(),
    )
    try:
        match = client.match(site_map)
    except CentralUnreachable as e:
        emit("unreachable", error=e.reason)
        return EXIT_UNREACHABLE
    except CentralError as e:
        # The status tells the runner whether central refused the token itself (401, 403): no use matching again.
        emit("error", error=str(e), status=e.status)
        return EXIT_ERROR
    if match is None:
        emit("nomatch")
        return EXIT_NOMATCH
    job_client = CentralClient(url, cfg.agent_token(), timeout=5.0, retries=0, ca_file=cfg.ca_file)
    job_id, resubmission = int(match["id"]), int(match.get("resubmission", 0))

    def end_unstarted(state: JobStatus, reason: KillReason, message: str) -> None:
        # Retried a few times: this is the only report of the job, and a lost one leaves it ASSIGNED.
        reporter = CentralClient(url, cfg.agent_token(), timeout=5.0, retries=5, ca_file=cfg.ca_file)
        try:
            for step in final_path(None, state):
                reporter.set_status(job_id, state=step.name, resubmission=resubmission,
                                    kill_reason=reason.name if step is state else None, message=message)
        except (CentralUnreachable, CentralError) as e:
            log.error("job %d: could not report %s: %s", job_id, state.name, e)
        emit("done", job_id=job_id, state=state.name, kill_reason=reason.name)

    if stop["requested"]:
        end_unstarted(JobStatus.WAITING, KillReason.OK, "the slot ended while the job was being matched")
        return EXIT_DONE
    try:
        job = parse_job(match["jdl"])
    except JdlError as e:
        # Central validated it at submission; a JDL that fails here is the broker's fault, not the node's.
        end_unstarted(JobStatus.ERROR_A, KillReason.JOBBROKER, str(e))
        return EXIT_ERROR
    gpus = claim_gpus(job, all_gpus)
    if gpus is None:
        # The broker counted GPUs this slot no longer has free (another agent claimed them meanwhile).
        end_unstarted(JobStatus.WAITING, KillReason.OK, "the GPUs the job asks for are not free on this node")
        return EXIT_DONE
    emit("matched", job_id=job_id, cores=job.cpu_cores, gpus=[g.pci_address for g in gpus])
    run = JobRun(settings, job_client, match, job, gpus, node_gpus=every_gpu, ca_pem=ca_pem)
    signal.signal(signal.SIGTERM, lambda *_: run.request_stop())
    if stop["requested"]:
        run.request_stop()
    state = run.run()
    emit("done", job_id=run.job_id, state=state.name, kill_reason=run.kill_reason.name)
    return EXIT_DONE


def main() -> int:
    logging.basicConfig(level=os.environ.get("GRIDPILOT_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    fdlimit.raise_nofile()  # before the job monitor's sampler takes its descriptor budget
    settings = AgentSettings.from_json(sys.stdin.buffer.read())
    return run_agent(settings)


if __name__ == "__main__":
    raise SystemExit(main())

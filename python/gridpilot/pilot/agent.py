"""The JobAgent: one process per job. Matches a job, runs its JobWrapper, watches the payload, reports, cleans up.

The JobRunner starts it as `python -m gridpilot.pilot.agent` with its settings (pilot/agentsettings.py) as JSON on
stdin, and reads its events, JSON lines on stdout (pilot/matching.py). A runner that sends its jobs' heartbeats in
bulk keeps stdin open and writes the agent its part of their answers there (pilot/runnerlink.py). The agent holds the agent token; the wrapper
gets only the job token, on its stdin.

A matched job goes through JobRun: set up (work directory, GPUs, the sandbox: isolation/sandbox.py), launch the
wrapper, then one loop until the wrapper is gone, and the end (_conclude, _finish). The loop waits for the wrapper's
messages (each a job state, the payload's start, a trace line or the result), the monitor's samples, heartbeats
(pilot/heartbeat.py) and the runner's SIGTERM; what it decides is kept in a few fields: `breach` (a limit broken),
`killed_by_central`, `stop_requested`/`give_back` (the slot is ending) and `wind_down` (pilot/winddown.py: when the
wrapper is killed if it is still there, and what its trace says then).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

from gridpilot import _native
from gridpilot.client import CentralClient
from gridpilot.isolation import containers, gpus as gpus_mod
from gridpilot.isolation.sandbox import Sandbox
from gridpilot.jdl import JobDescription
from gridpilot.jdl.platform import platform_from_packages as packages_platform
from gridpilot.pilot import fdlimit, finalstate, jobtrace, matching, packages, protocol, subreaper
from gridpilot.pilot.agentsettings import AgentSettings, job_workdir
from gridpilot.pilot.finalstate import final_path, log_tail
from gridpilot.pilot.heartbeat import Heartbeats
from gridpilot.pilot.matching import EXIT_DONE, emit
from gridpilot.pilot.monitor import PROCFMT, JobMonitor
from gridpilot.pilot.outbox import COALESCE_S, Outbox, sender
from gridpilot.pilot.runnerlink import RunnerLink, handshake
from gridpilot.pilot.rules import Breach, Limits
from gridpilot.pilot.sitemap import arch_override_line, gpu_name
from gridpilot.pilot.spyanswer import SpyAnswers
from gridpilot.pilot.watchdog import LoopBeat
from gridpilot.pilot.wakeup import SignalWakeup
from gridpilot.pilot.winddown import WindDown
from gridpilot.states import CONTAINER_GIVE_BACK, JobStatus, KillReason

log = logging.getLogger("gridpilot.agent")

#: The longest the job loop sleeps with nothing due: every event it waits for wakes it (a descriptor or a signal),
#: so this only bounds what an unforeseen one would cost.
MAX_WAIT_S = 30.0
#: SIGTERM to SIGKILL for a wrapper whose payload never started, when the slot ends: nothing of it is worth waiting for.
GIVE_BACK_GRACE_S = 1.0
#: The longest message a job given back for its container carries (central cuts at 4096; `gridpilot why` shows it).
GIVE_BACK_MESSAGE_CHARS = 1000
#: Beyond a kill's grace, what its last rounds (SIGKILL, reaping) may take before the watchdog counts a stall.
KILL_MARGIN_S = 30.0


class JobRun:
    """One matched job, from the work directory to the cleanup."""

    def __init__(self, settings: AgentSettings, client: CentralClient, match: Dict[str, Any], job: JobDescription,
                 gpus: List[_native.Gpu], node_gpus: Optional[List[_native.Gpu]] = None,
                 ca_pem: Optional[str] = None, link: Optional[RunnerLink] = None) -> None:
        self.settings = settings
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
        # job (a second match of the same resubmission after central lost the first one, say). What happens to a
        # report central refuses: pilot/heartbeat.py.
        self.outbox = Outbox(sender(client, self.job_id, self.resubmission),
                             key_prefix=f"{self.resubmission}.{uuid.uuid4().hex[:12]}.", name=f"job {self.job_id}",
                             on_outage=lambda down: emit("outage", job_id=self.job_id, seconds=down),
                             # Lines that are not urgent go together, a few seconds apart (outbox.py, COALESCE_S).
                             hold_s=COALESCE_S)
        #: Tells the runner's watchdog that the loop turns (pilot/watchdog.py): it reports a stalled one.
        self.loop_beat = LoopBeat(emit, self.cfg.watchdog_interval)
        self.heartbeats = Heartbeats(client, self.job_id, self.resubmission, self.outbox, self.cfg.heartbeat_interval,
                                     self.cfg.kill_poll_interval, link=link, emit=emit)
        #: Answers the owner's `gridpilot spy` requests that come with the polls (pilot/spyanswer.py).
        self.spy_answers = SpyAnswers.for_run(client, self.job_token, ca_pem, self.job_id, self.resubmission,
                                              self.workdir)
        #: The job's cgroups, container and processes.
        self.sandbox = Sandbox(settings.cgroup, settings.cgroup_v1, self.trace)
        self.state: Optional[JobStatus] = None
        self.final: Optional[Dict[str, Any]] = None
        self.breach: Optional[Breach] = None
        self.killed_by_central = False
        #: When (time.monotonic()) the agent learned central's kill.
        self.central_kill_at: Optional[float] = None
        #: When the wrapper is killed if it is still there (upload grace, slot end, central kill), and why.
        self.wind_down = WindDown(self.cfg.drain_grace)
        self.monitor: Optional[JobMonitor] = None
        self.wrapper: Optional[subprocess.Popen] = None
        self.next_proc = 0.0
        self.stop_requested = False
        #: The slot ended before the payload ran: the job goes back to the queue (DESIGN: at most 3 times).
        self.give_back = False
        self.kill_reason = KillReason.OK

    # -- reporting --------------------------------------------------------------------------------------------
    def trace(self, text: str, category: str = "trace", urgent: bool = False) -> None:
        """`urgent`: sent at once with what is queued before it (a kill, a broken limit); else it may wait a few
        seconds to go with the lines after it."""
        log.info("job %d: %s", self.job_id, text)
        self.outbox.trace(category, text, urgent=urgent)

    def report_state(self, state: JobStatus, **fields: Any) -> None:
        self.state = state
        # `at`: when it happened here, so a report held back through an outage is not dated at its delivery.
        self.outbox.status(state=state.name, at=time.time(), **{k: v for k, v in fields.items() if v is not None})
        if state in (JobStatus.RUNNING, JobStatus.SAVING) and self.monitor and self.monitor.last is not None:
            self._trace_proc()

    def _trace_proc(self) -> None:
        """The ALICE `proc` line, and beside it the `usage` record (I/O, threads, network, GPUs: docs/monitoring.md)."""
        assert self.monitor is not None
        self.trace(self.monitor.proc_line(), "proc")
        self.trace(self.monitor.usage_line(), "usage")

    # -- setup ------------------------------------------------------------------------------------------------
    def run(self) -> JobStatus:
        subreaper.become_subreaper()
        self.trace(jobtrace.batch_id(self.settings.batch_id))
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "tmp").mkdir(exist_ok=True)
        except OSError as e:
            return self._sandbox_failed(f"Error. Workdir for job could not be created: {self.workdir}: "
                                        f"{e.strerror or e}")
        self.trace(jobtrace.created_workdir(self.workdir))
        self.trace(jobtrace.running(self.cfg.node))
        self.trace(jobtrace.installation())
        override = arch_override_line(self.cfg.arch_override, matching.cpu().arch)
        if override is not None:
            self.trace(override)
        for line in jobtrace.limits(self.job):
            self.trace(line)
        if self.gpus:
            self.trace("GPUs given to this job: " + ", ".join(f"{g.pci_address} ({gpu_name(g)})" for g in self.gpus))
            problem = gpus_mod.sanity_check(self.gpus)
            if problem:
                self.trace(f"GPU sanity check failed: {problem}")
                return self._finish(JobStatus.ERROR_A, KillReason.OK, None)
        if self.stop_requested:
            self.give_back = True
            self.trace("the slot is ending before the payload started: the job goes back to the queue")
            return self._finish(JobStatus.WAITING, KillReason.OK, None)
        self.trace(jobtrace.STARTING_WRAPPER)
        self.trace(jobtrace.ttl(self.job.ttl))
        try:
            self.sandbox.create(self.cfg, self.job.memory_size, self.job.cpu_cores)
            image = containers.job_image(self.cfg, self.job, matching.cpu().arch)
            isolation, refused = containers.choose(self.cfg, image, self.trace)
        except Exception as e:  # whatever the cgroups or the container runtime raise, the job cannot run here
            return self._sandbox_failed(f"Error. The sandbox for the job could not be created: {_why(e)}", e)
        if isolation is None:
            self.give_back = True
            self.trace("containers are required on this site and none works here: the job goes back to the queue")
            # Said to central, whose `gridpilot why` shows it for this site: the broker cannot foresee it.
            platform = self.job.platform or packages_platform(self.job.packages)
            message = (f"{CONTAINER_GIVE_BACK} (platform {platform or 'not named'}; image: {image.why}): "
                       + "; ".join(refused))
            return self._finish(JobStatus.WAITING, KillReason.OK, None, message=message[:GIVE_BACK_MESSAGE_CHARS])
        try:
            channel = self._start_wrapper(isolation)
        except Exception as e:
            return self._sandbox_failed(f"Error starting JobWrapper: {_why(e)}", e)
        assert self.wrapper is not None
        self.trace(jobtrace.WRAPPER_STARTED)
        wakeup = SignalWakeup()
        try:
            return self._loop(channel, wakeup)
        finally:
            wakeup.close()
            self.spy_answers.close()
            if self.monitor is not None:
                self.monitor.close()

    def _sandbox_failed(self, why: str, error: Optional[BaseException] = None) -> JobStatus:
        """The work directory, the job cgroups, the container or the wrapper's launch failed: the job ends now,
        ERROR_A with SANDBOX_CREATE (docs/kill-reasons.md), rather than waiting ASSIGNED for the sweeper. The agent
        stays well: it reports, cleans up what was made and tells the runner, whose node rules see the failure."""
        if error is not None:
            log.error("job %d: %s", self.job_id, why, exc_info=error)
        self.trace(why)
        return self._finish(JobStatus.ERROR_A, KillReason.SANDBOX_CREATE, None, message=why)

    def _start_wrapper(self, iso: containers.Isolation) -> protocol.AgentChannel:
        to_agent_r, to_agent_w = os.pipe()
        to_wrapper_r, to_wrapper_w = os.pipe()
        msg_fd, ack_fd = containers.FIRST_PASSED_FD, containers.FIRST_PASSED_FD + 1

        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_TOKEN")}
        gpu_env = gpus_mod.environment(self.gpus, iso.runtime, self.cfg.sysfs, node_gpus=self.node_gpus)
        argv = [sys.executable, "-m", "gridpilot.pilot.wrapper", "--msg-fd", str(msg_fd), "--ack-fd", str(ack_fd)]
        # The pipes go to fds 3 and 4, where every runtime passes them on (Podman: --preserve-fds).
        self.wrapper, spec = self.sandbox.launch(
            iso, argv, workdir=str(self.workdir), env=env if not iso.contained else gpu_env, cfg=self.cfg,
            gpus=self.gpus, storage=self.match.get("storage"), name=containers.container_name(self.job_id),
            fds={msg_fd: to_agent_w, ack_fd: to_wrapper_r}, log_path=self.workdir / "wrapper.log",
        )
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
            packages=packages.PackagesSettings.from_config(self.cfg).to_dict(),
            upload_grace_s=self.cfg.ttl_upload_grace,
            offline=self.match.get("offline"),  # set only by pilot/offline.py: the wrapper stages from its directory
        )
        assert self.wrapper.stdin is not None
        try:
            self.wrapper.stdin.write(handover.to_json())
            self.wrapper.stdin.close()
        except BrokenPipeError:
            pass  # the wrapper died at once; the loop sees it exit
        return protocol.AgentChannel(to_agent_r, to_wrapper_w)

    # -- the loop ---------------------------------------------------------------------------------------------
    def _loop(self, channel: protocol.AgentChannel, wakeup: SignalWakeup) -> JobStatus:
        assert self.wrapper is not None
        wrapper_gone = False
        while True:
            self.loop_beat.beat()
            now = time.monotonic()
            # The monitor's descriptor (its native fast tier) wakes the loop when a rule may break.
            alarm = self.monitor.fileno() if self._watched() and self.monitor is not None else None
            wake_fds = [wakeup.fd] + ([alarm] if alarm is not None else [])
            if self.heartbeats.link is not None:
                wake_fds.append(self.heartbeats.link.fileno())  # the runner's relayed answers (a kill) wake it
            try:
                msg = channel.receive(timeout=self._wait_s(now), wake_fds=wake_fds)
            except protocol.ProtocolError:
                msg, wrapper_gone = None, True
            wakeup.drain()
            if msg is not None:
                self._handle(msg)
                try:
                    channel.ack(msg)
                except protocol.ProtocolError:
                    wrapper_gone = True  # killed right after it wrote (a kill before its payload ran): it ends
            monitor = self._watched()
            if monitor is not None:
                breach = monitor.poll()
                if breach is not None:
                    self.breach = breach
                    self.trace(breach.trace, urgent=True)
                    self._upload_grace(now)
                    self._kill_payload(f"limit exceeded ({breach.reason.name})")
                if now >= self.next_proc and monitor.running_since is not None:
                    if self.next_proc:
                        self._trace_proc()
                    self.next_proc = now + self.cfg.proc_trace_interval
            for why in self.heartbeats.beat(now, lambda: self.monitor.resources() if self.monitor else {}):
                self._stop_for_central(why, now)
            self.spy_answers.handle(self.heartbeats.take_spies())
            self.outbox.flush()
            if self.stop_requested and not self.wind_down.wound_down:
                self._wind_down(now)
            # The clock read now, not `now`: the wait above may have ended at the wind-down deadline itself.
            expired = self.wind_down.expired(time.monotonic())
            if expired and self.wrapper.poll() is None:
                for line in expired:
                    self.trace(line)
                self.sandbox.end_wrapper(self.wrapper.pid, grace=1)
            if wrapper_gone or self.wrapper.poll() is not None:
                # Whatever the wrapper said last, acknowledged or not, still counts.
                for late in channel.drain(0.5):
                    self._handle(late)
                self.wrapper.wait()
                break
        self.loop_beat.stop()
        self.heartbeats.end()
        if self.monitor is not None:
            self.monitor.close()  # nothing to watch any more; what it sampled stays for the final report
        return self._conclude()

    def _handle(self, msg: Dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == protocol.STATE:
            state = JobStatus[msg["state"]]
            if state == JobStatus.RUNNING and self.monitor is not None:
                self.monitor.mark_running()
            self.report_state(state, message=msg.get("message"))
        elif kind == protocol.PAYLOAD:
            assert self.wrapper is not None
            pid = self.sandbox.adopt_payload(int(msg["pid"]), msg.get("pidns"), self.wrapper.pid)
            usage = self.sandbox.usage()
            self.monitor = JobMonitor(
                pid, self.workdir, self.limits, cgroup=usage.cgroup, oom_counter=usage.oom_counter,
                memory_counter=usage.memory_counter, v1_memory_dir=usage.v1_memory_dir,
                # The fast tier on a native thread: the loop wakes on its descriptor, not every second (issue 16).
                native_fast=True, fast_s=self.cfg.monitor_fast_s, slow_s=self.cfg.monitor_slow_s,
                medium_s=self.cfg.monitor_medium_s, cpu_mhz=matching.cpu().mhz, cpu_family=matching.cpu().family or "",
                gpus=self.gpus, sysfs=self.cfg.sysfs, trace=self.trace,
            )
            # The payload started: said at once (with what is queued before it), not coalesced.
            self.trace(PROCFMT, "procfmt", urgent=True)
        elif kind == protocol.TRACE:
            self.trace(str(msg.get("text", "")))
        elif kind == protocol.RESULT:
            self.final = msg
        elif kind == protocol.UPLOADS:
            self.wind_down.upload_progress(msg)

    def _watched(self) -> Optional[JobMonitor]:
        """The monitor, while it is polled: the payload runs and no rule has ended it yet."""
        if self.monitor is not None and self.breach is None and self.state == JobStatus.RUNNING:
            return self.monitor
        return None

    def _wait_s(self, now: float) -> float:
        """How long the loop may wait for the wrapper: until the next sample, proc line, heartbeat or report retry is
        due. A message from the wrapper, its exit (SIGCHLD), a signal or the monitor's alarm wake it at once, so
        nothing else needs a short wait; MAX_WAIT_S bounds it all the same."""
        due = [self.heartbeats.due]
        monitor = self._watched()
        if monitor is not None:
            due.append(monitor.next_due)
            if monitor.running_since is not None:
                due.append(self.next_proc)
        if self.outbox.queue:
            due.append(self.outbox.next_try)
        wind_down_at = self.wind_down.due()
        if wind_down_at is not None:
            due.append(wind_down_at)
        return min(MAX_WAIT_S, self.cfg.watchdog_interval, max(0.01, min(due) - now))

    def _kill_payload(self, why: str) -> None:
        grace = float(self.job.forced_kill_timeout)
        self.loop_beat.busy(grace + KILL_MARGIN_S)  # the kill blocks the loop up to its grace: no stall
        self.sandbox.kill_payload(why, grace=grace)

    def _upload_grace(self, now: float) -> None:
        """A limit is broken: tell the wrapper before the payload is killed, so that it uploads what exists within
        ttl_upload_grace instead of taking the kill for the payload's own failure; it is killed when that is over."""
        assert self.wrapper is not None
        grace = self.cfg.ttl_upload_grace
        self.wind_down.after_limit_kill(now, grace)
        if self.wrapper.poll() is None:
            self.trace(f"The JobWrapper uploads the outputs that exist and the logs within {grace:.0f} s "
                       f"(ttl_upload_grace)")
            self.sandbox.signal_wrapper(self.wrapper.pid, protocol.SIGNAL_LIMIT_KILL)

    def _wind_down(self, now: float) -> None:
        """The slot is ending (SIGTERM from the runner): the job gets drain_grace to save its outputs."""
        assert self.wrapper is not None
        if self.wind_down.slot_ending(now):
            # Uploading after a limit kill: the slot's end bounds that too, the wrapper's waits end on SIGTERM.
            self.trace("the slot is ending during the upload grace: the JobWrapper gets SIGTERM")
            self.sandbox.signal_wrapper(self.wrapper.pid, signal.SIGTERM)
            return
        if self.state in (None, JobStatus.STARTED) and self.sandbox.payload_pid is None:
            # Nothing ran yet, so nothing is worth saving: another slot can run the job whole.
            self.give_back = True
            self.trace("the slot is ending before the payload started: the job goes back to the queue")
            # Quickly: the batch system SIGKILLs everything KillWait after its SIGTERM (Slurm: 30 s by
            # default, less on some sites), and the job goes back only if WAITING reaches central before.
            # A wrapper blocked in a stage-in (a hung storage element) ignores SIGTERM until that returns.
            self.sandbox.end_wrapper(self.wrapper.pid, grace=GIVE_BACK_GRACE_S)
        else:
            self.trace("the slot is ending: the payload gets SIGTERM, outputs are still uploaded")
            self.sandbox.signal_wrapper(self.wrapper.pid, signal.SIGTERM)
            # The wrapper passes SIGTERM on; the agent holds the payload to ForcedKillTimeout, as for any kill.
            self._kill_payload("the slot is ending")

    def _stop_for_central(self, why: str, now: float) -> None:
        """Central wants the job ended (a kill, or it gave this run up): the payload is killed, the wrapper told."""
        if self.killed_by_central:
            return
        self.killed_by_central = True
        self.central_kill_at = now
        self.trace(why, urgent=True)
        told = self.wrapper is not None and self.wrapper.poll() is None
        if told:
            assert self.wrapper is not None
            # Nothing of a killed job is uploaded (JAliEn 2.0): the wrapper is told before the payload dies, so it
            # ends when it sees the payload's exit instead of saving its logs.
            self.trace("the JobWrapper is told to end at once: nothing of a job killed by central is uploaded")
            self.sandbox.signal_wrapper(self.wrapper.pid, protocol.SIGNAL_CENTRAL_KILL)
        self._kill_payload("killed on request")
        if told:
            # Counted from the payload's end (its kill may take ForcedKillTimeout): the wrapper's own way out.
            self.wind_down.after_central_kill(time.monotonic())

    def request_stop(self) -> None:
        """SIGTERM from the runner (the batch system is ending the slot): wind down, outputs still go out."""
        self.stop_requested = True

    # -- the end ----------------------------------------------------------------------------------------------
    def _conclude(self) -> JobStatus:
        assert self.wrapper is not None
        if self.breach is None and self.monitor is not None and not self.killed_by_central:
            # The kernel's OOM kill can come between two samples, and the wrapper then reports the payload's exit
            # (137) before the next one: one last look, so the job still ends ERROR_E with OOM_SYSTEM.
            self.breach = self.monitor.oom_breach()
            if self.breach is not None:
                self.trace(self.breach.trace)
        self.trace(jobtrace.wrapper_exit_code(self.wrapper.returncode))
        if self.central_kill_at is not None:
            self.trace(f"the JobWrapper ended {time.monotonic() - self.central_kill_at:.1f} s after the central kill "
                       f"(exit status {self.wrapper.returncode}), nothing uploaded")
        gave_back = self.give_back and self.state in (None, JobStatus.STARTED) and self.sandbox.payload_pid is None
        if not gave_back and self.breach is None and not self.killed_by_central and self.final is None:
            self.trace(f"the JobWrapper ended (exit status {self.wrapper.returncode}) without a final state; the job "
                       f"was {self.state.name if self.state else 'not started'}")
            last = log_tail(self.workdir / "wrapper.log")
            if last:
                # What the wrapper, or the container runtime around it, said last: the work directory goes at cleanup.
                self.trace(f"the JobWrapper's last words (wrapper.log): {last}")
        state, reason, exit_code = finalstate.outcome(
            self.state, gave_back=gave_back, breach=self.breach, killed_by_central=self.killed_by_central,
            final=self.final, stop_requested=self.stop_requested)
        return self._finish(state, reason, exit_code)

    def _finish(self, state: JobStatus, reason: KillReason, exit_code: Optional[int],
                message: Optional[str] = None) -> JobStatus:
        # Reaping waitpid(-1)s: only once the wrapper's exit status is Popen's, or it would be lost.
        wrapper_done = self.wrapper is None or self.wrapper.poll() is not None
        self.sandbox.destroy(reap=subreaper.reap_zombies if wrapper_done else None)
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
        if reason is not KillReason.OK:
            self.trace(f"Kill reason {reason.describe()}")
        self.report_state(state, kill_reason=reason.name, exit_code=exit_code, resources=resources, message=message)
        self.sandbox.remove_workdir(self.workdir, keep=self.cfg.keep_workdir)
        if not self.outbox.drain(timeout_s=self.cfg.report_grace):
            log.error("job %d: %d report(s) could not be delivered to central", self.job_id, len(self.outbox.queue))
        return state


def _why(e: BaseException) -> str:
    """An exception for the trace: its message, or its type when it has none."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    filename = getattr(e, "filename", None)
    return f"{filename}: {text}" if filename and isinstance(e, OSError) else (text or type(e).__name__)


def run_agent(settings: AgentSettings, link: Optional[RunnerLink] = None) -> int:
    # SIGTERM from the runner can come while this agent is still matching: note it, so a job that central assigns
    # meanwhile is given back at once instead of being left ASSIGNED to a process that died of the signal.
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    took = matching.take(settings, lambda: stop["requested"])
    if isinstance(took, int):
        return took
    run = JobRun(settings, took.client, took.match, took.job, took.gpus, node_gpus=took.node_gpus, ca_pem=took.ca_pem,
                 link=link)
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
    # The runner's end of stdin moves to a descriptor of the agent's own (not inherited): the commands the agent runs
    # (container runtimes, the wrapper) get /dev/null, and read nothing meant for the agent.
    fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    raw, link = handshake(fd)
    if link is None:
        os.close(fd)
    settings = AgentSettings.from_json(raw)
    return run_agent(settings, link)


if __name__ == "__main__":
    raise SystemExit(main())

"""The JobWrapper: one process per job, holding only the job token. Stages inputs, runs the payload in its own
session, validates, stages outputs, and tells the JobAgent every step (pilot/protocol.py).

Started by the agent as `python -m gridpilot.pilot.wrapper --msg-fd W --ack-fd R`, with the job hand-over (JDL, job
id, job token, central URL) as one JSON document on stdin, which is then closed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from gridpilot import _native
from gridpilot.errors import GridpilotError, JdlError
from gridpilot.jdl import JobDescription, parse_job
from gridpilot.isolation import nspid
from gridpilot.pilot import fdlimit, inputlist, jobtrace, packages, protocol, staging, subreaper
from gridpilot.pilot.capture import CappedCopy
from gridpilot.states import JobStatus, KillReason

log = logging.getLogger("gridpilot.wrapper")

VALIDATION_TIMEOUT_S = 900.0
#: SIGTERM to SIGKILL for what the payload leaves running when it exits (it has had its run; this is cleanup).
LEFTOVER_GRACE_S = 5.0
#: How long the payload's stdout and stderr may stay open after every process of the job was ended.
STREAM_DRAIN_S = 5.0
#: Environment variables of the pilot that must never reach the payload.
_PRIVATE_ENV_PREFIXES = ("GRIDPILOT_TOKEN", "GRIDPILOT_CONFIG")


class JobWrapper:
    def __init__(self, handover: protocol.Handover, channel: protocol.WrapperChannel) -> None:
        self.handover = handover
        self.ch = channel
        self.job_id = int(handover.job_id)
        self.workdir = Path(handover.workdir)
        self.job: Optional[JobDescription] = None
        self.payload: Optional[subprocess.Popen] = None
        self.terminating = False
        self.rusage: Dict[str, float] = {}
        self.payload_exited: Optional[float] = None
        #: When (time.monotonic()) the agent said it is killing the payload for a broken limit (SIGNAL_LIMIT_KILL).
        self.limit_killed_at: Optional[float] = None
        #: Central killed the job (SIGNAL_CENTRAL_KILL): nothing more is uploaded.
        self.central_killed = False

    # -- talking to the agent -----------------------------------------------------------------------------------
    def state(self, state: JobStatus, message: Optional[str] = None) -> None:
        self.ch.send(protocol.STATE, state=state.name, message=message)

    def trace(self, text: str) -> None:
        self.ch.send(protocol.TRACE, text=text)

    def result(self, state: JobStatus, reason: KillReason = KillReason.OK, exit_code: Optional[int] = None) -> int:
        self.ch.send(protocol.RESULT, state=state.name, kill_reason=reason.name, exit_code=exit_code, rusage=self.rusage)
        return 0

    def report_uploads(self, pending: List[str], current: Optional[str]) -> None:
        """Tell the agent what is not uploaded yet after a limit kill, so it can say so if it must kill us."""
        self.ch.send(protocol.UPLOADS, pending=pending, current=current)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        # The slot is ending: the payload gets its own SIGTERM (and its cleanup time); outputs are still uploaded.
        self.terminating = True
        # Not payload.poll(): that would reap the payload behind run_payload's back (see there why it must not be).
        if self.payload is not None and self.payload.returncode is None:
            # Its whole process group (it leads one: start_new_session), as killpg, through the leader's pidfd.
            _native.signal_process(self.payload.pid, signal.SIGTERM, group=True)

    def on_limit_kill(self, signum: int, frame: Any) -> None:
        # The agent is killing the payload for a broken limit (it signals us first): when the payload is gone, what
        # exists is uploaded within the upload grace, counted from now.
        if self.limit_killed_at is None:
            self.limit_killed_at = time.monotonic()

    def on_central_kill(self, signum: int, frame: Any) -> None:
        # Central killed the job (JAliEn 2.0: "do not attempt upload for killed jobs, abort immediately"). Flags only:
        # the handler may run in the middle of a send to the agent. The agent kills the payload; `terminating` ends
        # any wait for central's catalogue (a copy it cannot register is removed); the stager starts no other upload.
        self.central_killed = True
        self.terminating = True

    def save(self, stager: staging.Stager, job: JobDescription, *, error: bool) -> JobStatus:
        """Stage-out (OutputErrorE after a failure), unless central killed the job: then nothing is uploaded."""
        if self.central_killed:
            self.trace("the job was killed by central: nothing is uploaded")
            return JobStatus.KILLED
        return stager.stage_out(job, error=error)

    def upload_deadline(self) -> Optional[float]:
        if self.limit_killed_at is None:
            return None
        return self.limit_killed_at + float(self.handover.upload_grace_s)

    # -- the payload ----------------------------------------------------------------------------------------------
    def payload_env(self, job: JobDescription) -> Dict[str, str]:
        """The payload's environment before its packages (pilot/packages.py applies theirs over it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
        env.update(self.job_variables(job))
        return env

    def job_variables(self, job: JobDescription) -> Dict[str, str]:
        """gridpilot's variables of the job: the work directory, the job's identity, its JDL variables and GPUs. The
        packages' environment never changes these."""
        env: Dict[str, str] = {}
        env.update(
            {
                "HOME": str(self.workdir),
                "TMPDIR": str(self.workdir / "tmp"),
                "TMP": str(self.workdir / "tmp"),
                "ALIEN_PROC_ID": str(self.job_id),
                "ALIEN_JOB_ID": str(self.job_id),
                "ALIEN_SITE": str(self.handover.site),
                "ALIEN_CE": str(self.handover.ce),
                "ALIEN_RESUBMISSION": str(self.handover.resubmission),
            }
        )
        env.update(job.jdl_variables)
        env.update({str(k): str(v) for k, v in (self.handover.env or {}).items()})
        return env

    def packages_env(self, job: JobDescription) -> Dict[str, str]:
        """The payload's environment with its JDL Packages' (pilot/packages.py: where, how and in which order).
        PackagesError when they cannot be set up."""
        env = self.payload_env(job)
        if not job.packages:
            return env
        settings = packages.PackagesSettings.from_dict(self.handover.packages)
        if not settings.command:
            self.trace(f"Packages {packages.listing(job.packages)} are not set up: packages_command is empty here")
            return env
        got = packages.environment(settings, job.packages, env, protected=self.job_variables(job),
                                   cwd=str(self.workdir), stopping=lambda: self.terminating)
        self.trace(packages.success_text(job.packages, got, settings))
        return got.env

    def resolve_executable(self, job: JobDescription, stager: staging.Stager) -> str:
        exe = job.executable
        if os.path.isabs(exe) and os.access(exe, os.X_OK) and os.path.isfile(exe):
            return exe
        local = self.workdir / os.path.basename(exe)
        if not local.exists():
            found = shutil.which(exe) if "/" not in exe else None
            if found:
                return found
            stager.fetch_executable(exe, local)
        local.chmod(local.stat().st_mode | 0o755)
        return str(local)

    def output_cap(self) -> Optional[int]:
        """Bytes kept of each of stdout and stderr (the site's stdout_max_mb; 0 or absent: no cap)."""
        mb = self.handover.stdout_max_mb
        return int(mb) << 20 if mb else None

    def run_payload(self, argv: List[str], env: Dict[str, str]) -> int:
        cap = self.output_cap()
        streams = [CappedCopy("stdout", self.workdir / "stdout", cap)]
        try:
            streams.append(CappedCopy("stderr", self.workdir / "stderr", cap))
            self.payload = subprocess.Popen(
                argv, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=streams[0].write_fd, stderr=streams[1].write_fd,
                start_new_session=True,  # its own session and process group: its kill -9 0 cannot reach us
                preexec_fn=fdlimit.payload_limit,  # the site's soft RLIMIT_NOFILE, not the pilot's raised one
            )
        except BaseException:
            for s in streams:
                s.abandon()
            raise
        for s in streams:
            s.start()
        # In a container or PID namespace this pid is the namespace's: the namespace's inode lets the agent find it.
        self.ch.send(protocol.PAYLOAD, pid=self.payload.pid, pidns=nspid.pid_namespace_inode())
        self.state(JobStatus.RUNNING)
        pid = self.payload.pid
        # Wait for the exit without reaping: the payload stays a zombie, so its pid (and the session it leads) are
        # still its own while what it left behind is ended; a reaped pid could already name someone else's process.
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        self.payload_exited = time.monotonic()
        # Whatever the payload left behind goes now: its session (daemons, stopped children), then the processes
        # that left the session and were handed to us as their subreaper when their parent exited.
        self._trace_leftovers([_native.terminate_tree(pid, grace_s=LEFTOVER_GRACE_S), *end_orphans(exclude=pid)])
        try:
            _, status, ru = os.wait4(pid, 0)
            self.payload.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            # Someone else reaped it: its status is lost, and an unknown end is not a success.
            self.trace("the payload's exit status is unknown (it was reaped elsewhere)")
            self.payload.returncode, ru = 255, None
        subreaper.reap_zombies()
        self._finish_streams(streams)
        if ru is not None:
            self.rusage = {
                "utime_s": ru.ru_utime,
                "stime_s": ru.ru_stime,
                "maxrss_kb": ru.ru_maxrss,
                "minflt": ru.ru_minflt,
                "majflt": ru.ru_majflt,
                "inblock": ru.ru_inblock,
                "oublock": ru.ru_oublock,
            }
        return self.payload.returncode

    def _trace_leftovers(self, reports: List[Any]) -> None:
        """Say what of the payload was still running when it exited, and how that was ended. (When the agent is killing
        the job, these may be processes its SIGTERM has not ended yet: the wrapper's sweep runs beside its kill.)"""
        termed = sum(len(r.terminated) for r in reports)
        killed = sum(len(r.killed) for r in reports)
        survivors = sorted({p for r in reports for p in r.survivors})
        if termed or killed or survivors:
            self.trace(f"when the payload exited, {termed + killed + len(survivors)} of its processes were still running: "
                       f"{termed} ended on SIGTERM, {killed} killed after {LEFTOVER_GRACE_S:.0f} s"
                       + (f", still alive: {survivors}" if survivors else ""))

    def _finish_streams(self, streams: List[CappedCopy]) -> None:
        """Wait for the copies of stdout and stderr to end (every process of the job is gone by now, so the pipes
        are at EOF), and trace what the cap threw away."""
        for s in streams:
            if not s.finish(timeout=STREAM_DRAIN_S):
                self.trace(f"{s.name} is still held open by a process that outlived the job; {s.kept} bytes kept so far")
            if s.write_error is not None:
                self.trace(f"[WARN] {s.name} could not be written to the work directory after {s.kept} bytes "
                           f"({s.write_error}): {s.discarded} bytes lost")
            elif s.capped:
                self.trace(f"[WARN] {s.name} capped at {s.limit >> 20 if s.limit else 0} MB (stdout_max_mb): the first "
                           f"{s.kept} bytes kept, {s.discarded} bytes discarded")

    def validate(self, command: str, env: Dict[str, str]) -> Optional[Tuple[JobStatus, str]]:
        """None when validation passed, else the error state and why."""
        try:
            proc = subprocess.Popen(
                shlex.split(command) if not os.path.exists(self.workdir / command) else [str(self.workdir / command)],
                cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=open(self.workdir / "validation.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=fdlimit.payload_limit,
            )
        except OSError as e:
            return JobStatus.ERROR_VN, f"validation command {command!r} could not start: {e.strerror}"
        try:
            rc = proc.wait(timeout=VALIDATION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _native.terminate_tree(proc.pid, grace_s=5)
            proc.wait()
            return JobStatus.ERROR_VT, f"validation command did not finish within {VALIDATION_TIMEOUT_S:.0f} s"
        if rc != 0:
            return JobStatus.ERROR_V, f"validation command exited with {rc}"
        return None

    # -- the job --------------------------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_sigterm)
        signal.signal(protocol.SIGNAL_LIMIT_KILL, self.on_limit_kill)
        signal.signal(protocol.SIGNAL_CENTRAL_KILL, self.on_central_kill)
        if _early_sigterm:
            self.terminating = True
        if _early_central_kill:
            self.central_killed = self.terminating = True
        try:
            job = parse_job(self.handover.jdl)
        except JdlError as e:
            self.trace(f"the JDL could not be read: {e}")
            return self.result(JobStatus.ERROR_A, KillReason.JOBBROKER)
        self.job = job
        # A SIGTERM ends any wait for central's catalogue: the job was killed, or the slot ends and the batch system
        # kills what is left soon after; an output not registered by then is removed, not left orphaned.
        stager = staging.Stager(self.handover, self.workdir, self.trace, stopping=lambda: self.terminating,
                                deadline=self.upload_deadline, aborted=lambda: self.central_killed,
                                registered=lambda entry: self.ch.send(protocol.REGISTERED, **entry))
        # Read here, where the payload will run: inside the container when there is one.
        self.trace(jobtrace.os_detected())
        self.state(JobStatus.STARTED)
        try:
            # Before the inputs: a job whose packages cannot be set up ends before it transfers anything.
            env = self.packages_env(job)
        except packages.PackagesError as e:
            if self.terminating:
                self.trace(f"The packages environment was not set up: {e}")
                return self.result(JobStatus.KILLED, KillReason.KILLED)
            self.trace(packages.failure_text(job.packages, str(e)))
            return self.result(JobStatus.ERROR_E, KillReason.PACKAGES)
        try:
            stager.stage_in(job)
            argv = [self.resolve_executable(job, stager), *shlex.split(job.arguments)]
        except staging.StageInError as e:
            self.trace(f"[FATAL]: input files could not be staged: {e}")
            return self.result(JobStatus.ERROR_IB, KillReason.INPUT_FILES)
        try:
            stager.write_input_list(job)
        except inputlist.InputListError as e:
            self.trace(f"[FATAL]: the InputDataList could not be written: {e}")
            return self.result(JobStatus.ERROR_IB, KillReason.INPUT_FILES)
        if self.terminating:
            return self.result(JobStatus.KILLED, KillReason.KILLED)
        self.trace(jobtrace.STARTING_EXECUTION)
        t0 = time.monotonic()
        try:
            rc = self.run_payload(argv, env)
        except OSError as e:
            self.trace(f"[FATAL]: the payload could not start: {argv[0]}: {e.strerror}")
            self.save(stager, job, error=True)
            return self.result(JobStatus.ERROR_E, exit_code=None)
        # Until its own exit, not until the end of what it left behind (traced apart).
        self.trace(jobtrace.time_spent((self.payload_exited or time.monotonic()) - t0, self.rusage))
        if self.central_killed:
            self.trace(f"payload exited with {rc}")
            self.trace("the job was killed by central: nothing is uploaded")
            return self.result(JobStatus.KILLED, KillReason.KILLED, exit_code=rc)
        deadline = self.upload_deadline()
        if deadline is not None:
            self.trace(f"payload exited with {rc}")
            self.trace("The payload was killed for a broken limit: uploading the outputs that exist, then the logs")
            stager.stage_out_after_kill(job, deadline, self.report_uploads)
            return self.result(JobStatus.ERROR_E, exit_code=rc)
        if rc != 0:
            # Not JAliEn's "Marking the job as ERROR_E ...": the agent may end it otherwise (a limit, a kill).
            self.trace(f"payload exited with {rc}")
            # A failed payload still leaves its logs: OutputErrorE (default log_archive.zip with std*).
            self.save(stager, job, error=True)
            return self.result(JobStatus.ERROR_E, exit_code=rc)
        if job.validation_command:
            failed = self.validate(job.validation_command, env)
            if failed is not None:
                state, why = failed
                self.trace(why)
                self.save(stager, job, error=True)
                return self.result(state, exit_code=rc)
            self.trace("validation passed")
        self.state(JobStatus.SAVING)
        outcome = self.save(stager, job, error=False)
        if outcome is JobStatus.KILLED:
            # Central refused a registration: the job was killed before this pilot learned of it.
            return self.result(JobStatus.KILLED, KillReason.KILLED, exit_code=rc)
        return self.result(outcome, exit_code=rc)


#: SIGTERM that came before the JobWrapper could handle it (while it read the hand-over): the job must not start.
_early_sigterm = False


def _note_early_sigterm(signum: int, frame: Any) -> None:
    global _early_sigterm
    _early_sigterm = True


#: The same for a central kill (protocol.SIGNAL_CENTRAL_KILL).
_early_central_kill = False


def _note_early_central_kill(signum: int, frame: Any) -> None:
    global _early_central_kill
    _early_central_kill = True


def end_orphans(exclude: int) -> List[Any]:
    """End every process below this one but `exclude` (the payload, a zombie kept for its exit status); the kill
    reports."""
    if os.getpid() != 1:
        return [_native.terminate_tree(os.getpid(), include_root=False, grace_s=LEFTOVER_GRACE_S)]
    # As pid 1 of its PID namespace (container, unshare) the wrapper is refused as a tree root (terminate_tree never
    # signals or walks from pid <= 1), and every orphan of the namespace is its child: each child's subtree is
    # ended instead, a few rounds for children handed over meanwhile.
    reports = []
    for _ in range(3):
        kids = [c for c in _native.children(1) if c != exclude]
        if not kids:
            break
        for child in kids:
            reports.append(_native.terminate_tree(child, grace_s=LEFTOVER_GRACE_S))
        subreaper.reap_zombies_except(exclude)
    return reports


def join_cgroups(fds: str) -> None:
    """Move this process into the job's cgroups through the descriptors listed (":"-separated), each an open
    cgroup.procs the agent passed in, and close them: Podman on a hybrid host puts the container in cgroups of its
    own, outside the job's (isolation/containers.py). Done before anything else starts, so nothing the payload could
    reach (no mount, no open descriptor, not /proc/1/fd) is left of the job's cgroups. SystemExit, naming the
    descriptor, when one is not a descriptor number or the kernel refuses the move: the payload must not run outside
    its job's limits."""
    numbers = [w for w in fds.split(":") if w]
    problem = None
    for word in numbers:
        if not word.isdigit():
            problem = problem or f"{word!r} in {protocol.JOIN_CGROUP_FDS_ENV} is not a descriptor number"
            continue
        fd = int(word)
        try:
            os.write(fd, b"0")
        except OSError as e:
            problem = problem or f"cannot join the job cgroup through descriptor {fd}: {e.strerror}"
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
    if problem:
        raise SystemExit(f"JobWrapper: {problem}; not starting the job outside its cgroups")


def main(argv: Optional[List[str]] = None) -> int:
    signal.signal(signal.SIGTERM, _note_early_sigterm)
    # A central kill before JobWrapper.run handles it: noted, so the job does not start (and no default action ends
    # the wrapper before it can say so). A limit kill can come only once the payload runs.
    signal.signal(protocol.SIGNAL_CENTRAL_KILL, _note_early_central_kill)
    signal.signal(protocol.SIGNAL_LIMIT_KILL, signal.SIG_IGN)
    join_cgroups(os.environ.pop(protocol.JOIN_CGROUP_FDS_ENV, ""))
    ap = argparse.ArgumentParser(prog="gridpilot-wrapper")
    ap.add_argument("--msg-fd", type=int, required=True)
    ap.add_argument("--ack-fd", type=int, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("GRIDPILOT_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    fdlimit.raise_nofile()
    subreaper.become_subreaper()
    handover = protocol.Handover.from_json(sys.stdin.buffer.read())
    sys.stdin.close()
    channel = protocol.WrapperChannel(args.ack_fd, args.msg_fd)
    try:
        return JobWrapper(handover, channel).run()
    except protocol.ProtocolError as e:
        log.error("the JobAgent is gone: %s", e)
        return 2
    except GridpilotError as e:
        log.exception("job failed: %s", e)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

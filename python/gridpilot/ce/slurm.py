"""Slurm: `sbatch --parsable` to submit, `squeue --states=all` (then `scontrol show job`, then `sacct` where
accounting exists) for states, `scancel` to remove.

Every pilot of one CE carries the same job name (`gridpilot.<CE>`), so one squeue call lists exactly this CE's
pilots, finished ones included while slurmctld remembers them (MinJobAge, 300 s by default).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from typing import Dict, List, Mapping, Optional, Sequence

from gridpilot.ce.backend import FAILED, FINISHED, HELD, QUEUED, RUNNING, BatchBackend, PilotSubmission, Resources
from gridpilot.errors import BatchError

log = logging.getLogger("gridpilot.ce.slurm")

#: Slurm job states (squeue %T, scontrol JobState, sacct State) as pilot states. A PENDING job held by a user or an
#: admin is `held` (told apart by its reason, see state_from_slurm).
_STATES: Mapping[str, str] = {
    "PENDING": QUEUED, "CONFIGURING": QUEUED, "REQUEUED": QUEUED, "REQUEUE_FED": QUEUED, "REQUEUE_HOLD": HELD,
    "RESV_DEL_HOLD": HELD, "SPECIAL_EXIT": HELD, "SUSPENDED": HELD, "STOPPED": HELD,
    "RUNNING": RUNNING, "COMPLETING": RUNNING, "SIGNALING": RUNNING, "STAGE_OUT": RUNNING, "RESIZING": RUNNING,
    "COMPLETED": FINISHED,
    "FAILED": FAILED, "CANCELLED": FAILED, "TIMEOUT": FAILED, "NODE_FAIL": FAILED, "PREEMPTED": FAILED,
    "BOOT_FAIL": FAILED, "DEADLINE": FAILED, "OUT_OF_MEMORY": FAILED, "REVOKED": FAILED,
}
#: Environment the pilot takes from the CE's; the start-up script sets the rest. Not --export=ALL (the CE's own
#: environment is not the pilot's business) and not NONE (which makes sbatch run `su -` for a login environment).
EXPORT = "PATH,LANG,LC_ALL,TZ"


def state_from_slurm(state: str, reason: str = "") -> str:
    """A pilot state from Slurm's job state (and, for PENDING, its reason). Unknown states count as queued."""
    base = state.strip().upper().split()[0].rstrip("+") if state.strip() else ""
    if base == "PENDING" and reason.strip().startswith(("JobHeld", "Held")):
        return HELD
    return _STATES.get(base, QUEUED)


def time_limit(seconds: int) -> str:
    """Slurm's D-HH:MM:SS, rounded up to the minute (Slurm's unit)."""
    minutes = max(1, -(-seconds // 60))
    d, rest = divmod(minutes, 24 * 60)
    h, m = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:00"


def sbatch_command(pilot: PilotSubmission, job_name: str, *, partition: Optional[str] = None,
                   account: Optional[str] = None, uid: Optional[str] = None,
                   extra: Sequence[str] = (), sbatch: str = "sbatch") -> List[str]:
    """The sbatch command line for one pilot. Pure, so the tests read it without a cluster."""
    r: Resources = pilot.resources
    cmd = [sbatch, "--parsable", f"--job-name={job_name}", "--nodes=1", "--ntasks=1",
           f"--cpus-per-task={r.cores}", f"--mem={r.memory_mb}M", f"--time={time_limit(r.wall_s)}",
           f"--output={pilot.output}", f"--chdir={pilot.workdir}", f"--export={EXPORT}",
           f"--comment=gridpilot pilot {pilot.name}"]
    if r.gpus:
        # By count only: Slurm's GPU type names (gpu:a100:N) are the site's own words, not the vendor and model
        # central matches on; a site routes GPU models with partitions (slurm_partition, slurm_args).
        cmd.append(f"--gres=gpu:{r.gpus}")
    if r.constraint:
        # Per-arch shapes of a mixed site: the node features (e.g. "aarch64") that put the pilot on nodes of its arch.
        cmd.append(f"--constraint={r.constraint}")
    if r.partition or partition:
        cmd.append(f"--partition={r.partition or partition}")  # the shape's own over the CE's slurm_partition
    if account:
        cmd.append(f"--account={account}")
    if uid:
        cmd.append(f"--uid={uid}")
    cmd += list(extra)
    cmd.append(str(pilot.script))
    return cmd


def parse_sbatch(stdout: str) -> str:
    """The job id of `sbatch --parsable` output: `<id>` or `<id>;<cluster>`."""
    first = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise BatchError(f"sbatch printed no job id (got {stdout.strip()!r})")
    return job_id


def parse_squeue(stdout: str) -> Dict[str, str]:
    """`squeue --format=%i|%T|%r` lines as {job id: pilot state}."""
    out: Dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            out[parts[0]] = state_from_slurm(parts[1], parts[2] if len(parts) > 2 else "")
    return out


_SCONTROL_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_scontrol(stdout: str) -> Dict[str, str]:
    """`scontrol show job` fields (only the single-word values, which is all the state needs)."""
    return dict(_SCONTROL_FIELD.findall(stdout))


def parse_exit_code(value: str) -> Optional[int]:
    """Slurm's ExitCode `<status>:<signal>` (scontrol, sacct) as one code: -signal when a signal ended the job,
    else the status; None when it is not of that form."""
    status, _, sig = value.strip().partition(":")
    if not status.isdigit() or (sig and not sig.isdigit()):
        return None
    return -int(sig) if sig and int(sig) else int(status)


class SlurmBackend(BatchBackend):
    name = "slurm"

    def __init__(self, ce: str, *, partition: Optional[str] = None, account: Optional[str] = None,
                 uid: Optional[str] = None, extra_args: Sequence[str] = (), timeout_s: float = 60.0,
                 env: Optional[Mapping[str, str]] = None) -> None:
        if shutil.which("sbatch") is None:
            raise BatchError("no sbatch on PATH: the slurm backend needs the Slurm client commands "
                             "(Debian package slurm-client) and SLURM_CONF or /etc/slurm/slurm.conf")
        self.job_name = "gridpilot." + re.sub(r"[^A-Za-z0-9_.:-]", "_", ce)
        self.partition, self.account, self.uid = partition, account, uid
        self.extra_args = list(extra_args)
        self.timeout_s = timeout_s
        self.env = dict(os.environ if env is None else env)
        self._sacct: Optional[bool] = None

    def _run(self, cmd: List[str], what: str) -> "subprocess.CompletedProcess[str]":
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s, env=self.env,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BatchError(f"{what}: `{' '.join(cmd)}` did not answer in {self.timeout_s:.0f} s") from None
        except OSError as e:
            raise BatchError(f"{what}: cannot run {cmd[0]}: {e.strerror}") from e
        if r.returncode != 0:
            said = (r.stderr or r.stdout).strip() or "(nothing on stderr)"
            raise BatchError(f"{what}: `{' '.join(cmd)}` exited with {r.returncode}: {said}")
        return r

    def submit(self, pilot: PilotSubmission) -> str:
        cmd = sbatch_command(pilot, self.job_name, partition=self.partition, account=self.account, uid=self.uid,
                             extra=self.extra_args)
        return parse_sbatch(self._run(cmd, f"submitting pilot {pilot.name}").stdout)

    def states(self) -> Dict[str, str]:
        r = self._run(["squeue", "--noheader", "--states=all", f"--name={self.job_name}", "--format=%i|%T|%r"],
                      "listing pilots")
        return parse_squeue(r.stdout)

    def state_of(self, batch_id: str) -> Optional[str]:
        try:
            r = self._run(["scontrol", "--oneliner", "show", "job", batch_id], f"looking up pilot {batch_id}")
        except BatchError:
            r = None  # slurmctld forgot it (MinJobAge): accounting may still know
        if r is not None:
            f = parse_scontrol(r.stdout)
            if "JobState" in f:
                return state_from_slurm(f["JobState"], f.get("Reason", ""))
        return self._sacct_state(batch_id)

    def exit_code(self, batch_id: str) -> Optional[int]:
        try:
            f = parse_scontrol(self._run(["scontrol", "--oneliner", "show", "job", batch_id],
                                         f"looking up pilot {batch_id}").stdout)
        except BatchError:
            f = {}
        if "ExitCode" in f:
            return parse_exit_code(f["ExitCode"])
        if self._sacct is False:
            return None
        try:
            r = self._run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={batch_id}",
                           "--format=JobID,ExitCode"], f"asking accounting about pilot {batch_id}")
        except BatchError:
            self._sacct = False
            return None
        for line in r.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 2 and parts[0] == batch_id:
                return parse_exit_code(parts[1])
        return None

    def _sacct_state(self, batch_id: str) -> Optional[str]:
        # Only where accounting exists: without it sacct says "Slurm accounting storage is disabled" every time.
        if self._sacct is False:
            return None
        try:
            r = self._run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={batch_id}",
                           "--format=JobID,State"], f"asking accounting about pilot {batch_id}")
        except BatchError as e:
            self._sacct = False
            log.info("no Slurm accounting (%s); finished pilots are known only while slurmctld keeps them", e)
            return None
        self._sacct = True
        for line in r.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 2 and parts[0] == batch_id:
                return state_from_slurm(parts[1])
        return None

    def remove(self, batch_id: str) -> None:
        self._run(["scancel", batch_id], f"removing pilot {batch_id}")

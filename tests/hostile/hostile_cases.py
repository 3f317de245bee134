"""The hostile payload battery's table (issue 6): each payload, its job description, and how its job must end.

Everything the expectations depend on is here, in one place:
- RUNTIMES: the pilot configurations the battery runs under. Adding a container runtime is one entry (its extra
  PilotConfig fields, and whether it gives the payload a PID namespace of its own).
- cgroup_limits() and LIMIT_DEPENDENT: the ends that change where the job cgroup carries memory/pids limits.
- CASES: the payloads (tests/hostile/payloads/*.sh) and the end each job must reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from support.pilot import _jdl_value

HOSTILE_DIR = Path(__file__).with_name("payloads")
#: Where the driver registers the payload scripts in the catalogue: jobs name them by LFN and the JobWrapper stages
#: them into the work directory, which every runtime shows the payload (a container need not see tests/ at all).
LFN_DIR = "/gridpilot/hostile"


@dataclass(frozen=True)
class Runtime:
    """One way of running the payload: the PilotConfig fields it sets, and what isolation it gives."""

    pilot: Mapping[str, Any]
    #: The payload gets a PID namespace of its own (a container, or the `unshare` fallback): its kill -9 -1 cannot
    #: reach the pilot or other jobs.
    pid_namespace: bool
    #: It runs the job in the test image (tests/support/images.py), given to the pilot as default_image.
    image: bool = False


RUNTIMES: Dict[str, Runtime] = {
    # No container: the JobWrapper runs under `unshare`, pid 1 of a PID namespace of its own, and the payload in its
    # own session and process group, in the job cgroup with its limits.
    "none": Runtime(pilot={"container_runtime": "none"}, pid_namespace=True),
    # The same without a slot cgroup tree (a node whose cgroup is not the pilot's to write): the JobAgent and the
    # JobWrapper find the job's processes through the process tree alone (they are child subreapers), and no
    # cgroup limit holds the job: only the pilot's own rules do.
    "none-nocgroup": Runtime(pilot={"container_runtime": "none", "cgroups": "off"}, pid_namespace=True),
    "bwrap": Runtime(pilot={"container_runtime": "bwrap", "require_container": True}, pid_namespace=True, image=True),
    "podman": Runtime(pilot={"container_runtime": "podman", "require_container": True}, pid_namespace=True, image=True),
}

#: Pilot settings of every battery run, on top of the runtime's: a second core for the bystander job, and a small
#: stdout cap so the flood case shows it.
BATTERY_PILOT: Dict[str, Any] = dict(cores=2, stdout_max_mb=4)


def cgroup_limits(runtime: str) -> bool:
    """Whether the job cgroup carries memory and pids limits under this runtime (it does wherever there is one)."""
    return RUNTIMES[runtime].pilot.get("cgroups") != "off"


@dataclass(frozen=True)
class End:
    """How a job must end: state, kill reason, exit code (None: the pilot reports none, the wrapper having died;
    negative: the signal that ended the payload, -15 when it honoured the kill's SIGTERM, -9 when SIGKILL came)."""

    state: str
    kill_reason: str = "OK"
    exit_code: Optional[int] = None


#: Ends that depend on the job cgroup's limits: case -> {cgroup_limits(runtime): End}.
LIMIT_DEPENDENT: Dict[str, Dict[bool, End]] = {
    "memory_hog": {
        # Without a job cgroup the pilot's own rule ends it (PSS + swap above 1.2 x MemorySize, seen by the slow tier).
        False: End("ERROR_E", "MEMORY_USAGE", -15),
        # With memory.max (v2) or memory.limit_in_bytes (v1) at 1.2 x MemorySize, the kernel OOM-kills it first.
        True: End("ERROR_E", "OOM_SYSTEM", -9),
    },
}


#: Ends that differ in one runtime: (runtime, case) -> End. Empty: every runtime here gives the same ends (a
#: container that put an init of its own between the JobWrapper and the payload would differ in kill_parent).
RUNTIME_DEPENDENT: Dict[Tuple[str, str], End] = {}


@dataclass(frozen=True)
class Case:
    name: str
    #: What the payload does, as the issue says it.
    what: str
    #: Arguments of the script.
    args: str = ""
    #: JDL keys of the hostile job (TTL 120 and ForcedKillTimeout 2 unless given).
    jdl: Mapping[str, Any] = field(default_factory=dict)
    #: The end without cgroup limits (LIMIT_DEPENDENT overrides it where they matter).
    end: Optional[End] = None
    #: Needs a PID namespace for the payload: without one, the payload reaches the pilot (xfail there).
    needs_pid_namespace: bool = False

    @property
    def script(self) -> Path:
        return HOSTILE_DIR / f"{self.name}.sh"

    def expected(self, runtime: str) -> End:
        if (runtime, self.name) in RUNTIME_DEPENDENT:
            return RUNTIME_DEPENDENT[runtime, self.name]
        ends = LIMIT_DEPENDENT.get(self.name)
        if ends is not None:
            return ends[cgroup_limits(runtime)]
        assert self.end is not None, self.name
        return self.end


CASES: Dict[str, Case] = {c.name: c for c in [
    Case("kill_group", "kill -9 0", end=End("ERROR_E", exit_code=-9)),
    Case("kill_all", "kill -9 -1", end=End("ERROR_E", exit_code=3), needs_pid_namespace=True),
    # Its parent is the JobWrapper, pid 1 of the payload's PID namespace (container or unshare): the kernel drops a
    # SIGKILL sent to a namespace's init from inside it, so the wrapper lives on and the payload sleeps on until its
    # TTL (a short one keeps the case quick).
    Case("kill_parent", "kill its parent", jdl={"TTL": 15}, end=End("ERROR_E", "TTL", -15)),
    # TTL counts from RUNNING: long enough for the last forks on a busy 2-core machine. The bomb's processes all
    # wait, so only the TTL ends the job; pids.max (4096) is just above the bomb's 4095 processes, and a shell whose
    # fork fails goes on waiting for the children it has.
    # 4,095 processes take more than ForcedKillTimeout's usual 2 s to be scheduled and exit on SIGTERM when the
    # machine is at load 17 (seen: "0 exited on SIGTERM, 4092 killed after 2 s", exit -9): a longer grace, which
    # costs nothing when they go at once.
    Case("fork_bomb", "a fork bomb", args="11", jdl={"TTL": 20, "ForcedKillTimeout": 20},
         end=End("ERROR_E", "TTL", -15)),
    Case("memory_hog", "a memory hog beyond MemorySize", args="400", jdl={"MemorySize": "100MB"}),
    Case("disk_filler", "a disk filler", args="256", jdl={"WorkDirectorySize": "16MB"},
         end=End("ERROR_E", "DISK_USAGE", -15)),
    # TTL counts from RUNNING, which the shell reaches before it runs its `trap`: with a TTL of 3 s a loaded CI
    # machine (load 34) sent SIGTERM before the trap was set, and the shell died of it (-15, not -9).
    Case("sigterm_ignorer", "a SIGTERM ignorer", jdl={"TTL": 15, "ForcedKillTimeout": 2},
         end=End("ERROR_E", "TTL", -9)),
    Case("setsid_daemon", "a double-forked setsid daemon that tries to outlive the job", end=End("DONE", exit_code=0)),
    Case("stopped_child", "a stopped (SIGSTOP) child", end=End("DONE", exit_code=0)),
    Case("closed_output", "a child that closes its stdout and stderr",
         jdl={"OutputFile": ["after-close.txt@disk=1"]}, end=End("DONE", exit_code=0)),
    Case("core_dump", "a core dump (ulimit -c unlimited, a real segfault; AbortOnCore defaults to true)",
         end=End("ERROR_E", "CORE_DUMP", -15)),
    Case("zombie_parent", "a zombie-producing parent", jdl={"TTL": 15}, end=End("ERROR_E", "TTL", -15)),
    # 256 MB of stdout in a work directory allowed 64 MB: only the cap keeps it in bounds. stdout is an output file,
    # so the catalogue says how much of it was kept.
    Case("stdout_flood", "output flooding of stdout", args="256",
         jdl={"WorkDirectorySize": "64MB", "OutputFile": ["stdout@disk=1"]}, end=End("DONE", exit_code=0)),
]}


def job_jdl(script: str, args: str = "", **keys: Any) -> str:
    """The JDL of a job running tests/hostile/payloads/<script>.sh from the catalogue."""
    keys.setdefault("TTL", 120)
    keys.setdefault("ForcedKillTimeout", 2)
    lines = [f'Executable = "{LFN_DIR}/{script}.sh";']
    if args:
        lines.append(f'Arguments = "{args}";')
    lines += [f"{k} = {_jdl_value(v)};" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def driver_spec(case: Case, runtime_name: str, state_dir: Path, image: Optional[Path] = None) -> Dict[str, Any]:
    """What tests/hostile/hostile_driver.py needs for one case: the scripts to register, the three jobs, the pilot's
    settings (`image`: the image directory, for a runtime that needs one)."""
    runtime = RUNTIMES[runtime_name]
    pilot = {**BATTERY_PILOT, **runtime.pilot}
    if runtime.image:
        assert image is not None, f"runtime {runtime_name} needs an image"
        pilot["default_image"] = str(image)
    scripts = {f"{LFN_DIR}/{p.name}": str(p) for p in (case.script, HOSTILE_DIR / "bystander.sh",
                                                         HOSTILE_DIR / "followup.sh")}
    return {
        "case": case.name,
        "runtime": runtime_name,
        "state_dir": str(state_dir),
        "pilot": pilot,
        "scripts": scripts,
        "hostile": job_jdl(case.name, case.args, **case.jdl),
        # Long TTL: it waits for the hostile job, the follow-up and the release.
        "bystander": job_jdl("bystander", TTL=600),
        "followup": job_jdl("followup"),
    }

"""A job's cgroups as the JobAgent uses them: the v2 job cgroup (process control, and limits where the controllers
are delegated) plus, on hybrid hosts, one v1 cgroup per controller that v2 lacks (limits and OOM counts only).

The runner's slot (isolation/slot.py) hands controllers down from its own cgroup where it may (`enable_in_own`,
undone by `disable_in_own`); the job's sandbox (isolation/sandbox.py) builds the agent/ and job/ cgroups with
`make_agent_tree`, then calls `setup()` once, `join()` in the wrapper's child before exec, and `remove()` at the
end, after every process of the job is gone; the monitor reads `oom_kills()` and `memory_usage()`. What could not be
set is collected in `notes`, for the agent's trace.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs
from gridpilot.isolation.cgroupv1 import V1Cgroups
from gridpilot.isolation.limits import CONTROLLERS, JobLimits, oom_kills, v2_settings


def delegation_problem(path: cgroupfs.StrPath) -> Optional[str]:
    """Why this process may not manage the cgroup v2 `path` and its children, or None when it may.

    The unprivileged case (a batch system delegating a cgroup to the pilot's user): the directory (to make
    children), cgroup.procs (to move processes in) and cgroup.subtree_control (to hand controllers down) must all
    be writable by us. As root access() says yes to all three unless the mount is read-only.
    """
    p = Path(path)
    if not cgroupfs.is_v2_dir(p):
        return f"{p} is not a cgroup v2 directory (no cgroup.controllers and cgroup.procs)"
    for target in (p, p / "cgroup.procs", p / "cgroup.subtree_control"):
        if not os.access(target, os.W_OK):
            try:
                owner = str(target.stat().st_uid)
            except OSError:
                owner = "unknown"
            return f"{target} is not writable by uid {os.geteuid()} (owner uid {owner}): not delegated to us"
    return None


def enable_in_own(own: cgroupfs.StrPath, wanted: Sequence[str]) -> Tuple[List[str], str]:
    """Enable, in the runner's own cgroup, those of `wanted` that it has (cgroup.controllers) but does not hand to
    its children yet, so that the slot cgroup below it gets them: ([controllers enabled here], note for the log).

    Called after the runner moved itself into <slot>/runner. cgroup v2's no-internal-process rule lets a non-root
    cgroup enable domain controllers (memory, cpu, pids) for its children only while it holds no process itself
    (EBUSY otherwise), so:
    - the hierarchy root is left alone: the rule does not bind it, but its controllers are the node's
      configuration, shared by everything on the node, not the pilot's to change;
    - a cgroup still holding other processes (the batch job's start-up script, a login shell) is left alone too:
      they are not the runner's to move, and with controllers enabled the kernel would refuse every later attempt
      to put a process into it (the batch system attaching one to the job, say) for as long as the slot lives;
    - otherwise (the delegated case: a cgroup the batch system gave the pilot alone) it is the pilot's to
      organise, as systemd's Delegate= and Slurm's and HTCondor's job cgroups mean it: enable what is missing.
    Whoever enables here must turn it off again before moving a process back in (disable_in_own).
    """
    p = Path(own)
    missing = [c for c in cgroupfs.available_controllers(p) if c in wanted and c not in cgroupfs.enabled_controllers(p)]
    if not missing:
        return [], ""
    names = ", ".join(missing)
    if cgroupfs.is_root(p):
        return [], (f"{names} not enabled in {p}, the hierarchy's root: its controllers are the node's to enable, "
                    "so the slot goes without them")
    others = cgroupfs.procs(p)
    if others:
        shown = ", ".join(str(x) for x in others[:5]) + (", ..." if len(others) > 5 else "")
        return [], (f"{names} not enabled in {p}: it holds {len(others)} process(es) besides the slot (pid {shown}), "
                    "and cgroup v2 enables controllers for children only in a cgroup without processes of its own; "
                    "the slot goes without them")
    try:
        cgroupfs.enable_controllers(p, missing)
    except CgroupError as e:
        # A process put into it since we looked (EBUSY), or a subtree_control that is not ours to write.
        return [], f"{names} not enabled in {p}: {e}"
    return missing, f"{names} enabled in {p} for the slot"


def disable_in_own(own: cgroupfs.StrPath, slot: cgroupfs.StrPath, enabled: Sequence[str]) -> None:
    """Undo enable_in_own before the runner moves itself back into `own`: the kernel takes no process into a
    non-root cgroup with controllers in its subtree_control, and turns one off in `own` only when no child enables
    it further down. So: the slot's agents go first (their members killed), then the slot's own controllers, then
    ours in `own`. The slot keeps only its runner/ child, for the caller to leave and remove."""
    if not enabled:
        return
    s = Path(slot)
    cgroupfs.remove(s / "agents")
    cgroupfs.disable_controllers(s, cgroupfs.enabled_controllers(s))
    cgroupfs.disable_controllers(own, enabled)


def make_agent_tree(agent_cgroup: cgroupfs.StrPath, agent_pid: int) -> Tuple[Path, List[str]]:
    """The JobAgent's part of the slot tree, in its agents/JobAgent_<n> cgroup: agent/ (the agent, moved there) and
    job/ (for the wrapper and the payload), with every controller JobAgent_<n> has enabled for them, so the job's
    limits can be set. Returns job/ and notes for the trace (controllers that could not be handed down, and why).

    Order matters to the kernel: cgroup v2 enables domain controllers for a cgroup's children only while the cgroup
    itself holds no process (the no-internal-process rule; EBUSY), so the agent leaves JobAgent_<n> for agent/
    before it writes JobAgent_<n>/cgroup.subtree_control (the runner starts it in its own runner/ cgroup; an agent
    started inside JobAgent_<n> would otherwise block it), and all of this happens before the job cgroup gets any
    process. Without the write, job/ would get no memory, cpu or pids controller on a unified (EL9) node, and none of
    its v2 limits could be set.
    """
    base = Path(agent_cgroup)
    agent_cg = cgroupfs.make_child(base, "agent", exist_ok=True)
    cgroupfs.move_pid(agent_cg, agent_pid)
    notes: List[str] = []
    try:
        cgroupfs.enable_controllers(base, cgroupfs.available_controllers(base))
    except CgroupError as e:
        # The job cgroup still serves process control (listing, freezing, killing); the limits say what is missing.
        notes.append(f"controllers not handed down to the job cgroup: {e}")
    return cgroupfs.make_child(base, "job", exist_ok=True), notes


def apply_v2_limits(cgroup: cgroupfs.StrPath, limits: JobLimits) -> Tuple[List[str], List[str]]:
    """Write `limits` into the v2 cgroup, for each controller it has (its cgroup.controllers, which is what its
    parent delegates through cgroup.subtree_control): ([file = value set], [what was not set, and why])."""
    p = Path(cgroup)
    have = set(cgroupfs.available_controllers(p))
    done: List[str] = []
    skipped: List[str] = []
    for controller in CONTROLLERS:
        if controller not in have:
            skipped.append(f"{controller} (not delegated to {p})")
    for controller, name, value in v2_settings(limits):
        if controller not in have:
            continue
        f = p / name
        try:
            cgroupfs._write(f, value)
            done.append(f"{name}={value}")
        except FileNotFoundError:
            # memory.swap.max is missing without swap accounting (CONFIG_MEMCG_SWAP or swapaccount=0).
            skipped.append(f"{name} (no such file in {p})")
        except OSError as e:
            skipped.append(f"{name}={value} ({f}: {e.strerror})")
    return done, skipped


def v2_oom_kills(cgroup: cgroupfs.StrPath) -> int:
    """OOM kills in the v2 cgroup and below (memory.events, `oom_kill`); 0 where it has no memory controller."""
    f = Path(cgroup) / "memory.events"
    try:
        return oom_kills(f.read_text(), str(f))
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise CgroupError(f"cannot read {f}: {e.strerror}") from e


@dataclass
class JobCgroups:
    """The cgroups of one job: v2 (or None) and v1 (possibly empty), with what was set and what could not be."""

    v2: Optional[Path] = None
    v1: V1Cgroups = field(default_factory=lambda: V1Cgroups({}))
    #: Lines for the job's trace, each said once: the limits set, and what could not be set and why.
    notes: List[str] = field(default_factory=list)

    def join(self) -> None:
        """Move the calling process into the job's v1 cgroups: for the wrapper's child, between fork and exec.
        (The v2 cgroup is joined by Sandbox.join, which also handles having none.)"""
        self.v1.join()

    def oom_kills(self) -> int:
        """OOM kills seen in the v1 memory cgroup. The v2 count comes from the monitor's CgroupSampler."""
        return self.v1.oom_kills()

    def memory_usage(self) -> Optional[int]:
        """The v1 memory cgroup's charge (memory.usage_in_bytes), or None. The v2 one (memory.current) comes from the
        monitor's CgroupSampler."""
        return self.v1.memory_usage()

    def remove(self) -> List[str]:
        """Remove the v1 cgroups (the v2 one the sandbox removes with cgroupfs.remove). Problems, for the trace."""
        if not self.v1:
            return []
        try:
            self.v1.remove()
        except CgroupError as e:
            return [f"job v1 cgroups not removed: {e}"]
        return []


def setup(
    v2: Optional[Path],
    agent_v1: Mapping[str, str],
    limits: Optional[JobLimits],
) -> JobCgroups:
    """The job's cgroups with `limits` in force where they can be (None: limits disabled by configuration).

    `v2` is the job's v2 cgroup the agent made (or None); `agent_v1` the agent's v1 cgroups, {controller: dir}, that
    the runner made for the controllers v2 lacks. A controller in neither is reported once in `notes`.
    """
    job = JobCgroups(v2=v2)
    if limits is None:
        job.notes.append("cgroup limits: disabled by configuration (cgroup_limits: false)")
        return job
    done: List[str] = []
    skipped: List[str] = []
    v2_have: set = set()
    if v2 is not None:
        try:
            v2_have = set(cgroupfs.available_controllers(v2))
            d, s = apply_v2_limits(v2, limits)
            done += d
            # A controller v2 lacks but v1 provides is not a miss: say nothing about it here.
            skipped += [x for x in s if x.split()[0] not in agent_v1]
        except CgroupError as e:
            skipped.append(f"v2 limits ({e})")
    wanted_v1 = {c: d for c, d in agent_v1.items() if c in CONTROLLERS and c not in v2_have}
    if wanted_v1:
        try:
            job.v1 = V1Cgroups(wanted_v1).make_child("job", exist_ok=True)
            d, s = job.v1.apply(limits)
            done += [f"v1 {x}" for x in d]
            skipped += [f"v1 {x}" for x in s]
        except CgroupError as e:
            skipped.append(f"v1 limits ({e})")
            job.v1 = V1Cgroups({})
    if v2 is None:
        # With a v2 cgroup, apply_v2_limits has named the controllers it lacks; without one, name them here.
        skipped += [f"{c} (no job cgroup with this controller)" for c in CONTROLLERS if c not in agent_v1]
    job.notes.append(f"cgroup limits for {limits.describe()}: " + (", ".join(done) if done else "none set"))
    if skipped:
        job.notes.append("cgroup limits not set: " + "; ".join(skipped))
    return job

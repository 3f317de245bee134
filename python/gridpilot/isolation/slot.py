"""The batch slot's cgroup tree, as the JobRunner builds it and hands one part of it to each JobAgent:

    <own cgroup>/gridpilot-slot-<pid>/runner                  the runner
    <own cgroup>/gridpilot-slot-<pid>/agents/JobAgent_<n>/    one per agent: agent/ (the agent), job/ (the wrapper
                                                              and the payload: isolation/sandbox.py)

and, on hybrid hosts with cgroup limits on, <own v1 cgroup>/gridpilot-slot-<pid>/agents/JobAgent_<n>/job in each
v1 hierarchy (memory, pids, cpu) that v2 lacks, for the job's limits only.

The tree is made below the cgroup the batch system put us in, never beside it, so the slot's limits bind the jobs.
Controllers go down it level by level through cgroup.subtree_control: the runner enables them in its own cgroup
(only where that is legal and ours: jobcgroup.enable_in_own), in the slot and in agents/; each agent enables them
in its JobAgent_<n> for agent/ and job/ (jobcgroup.make_agent_tree).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional

from gridpilot.errors import GridpilotError
from gridpilot.isolation import cgroupfs, cgroupv1, jobcgroup
from gridpilot.isolation import limits as limits_mod

#: The runner's log: what goes wrong with the slot tree is the runner's to report.
log = logging.getLogger("gridpilot.runner")


class Slot:
    """The slot's cgroup tree, or nothing (with the reason) where the cgroup v2 directory is not ours to write.

    On hybrid hosts (memory, pids, cpu in cgroup v1 hierarchies) and when limits are on, the same
    gridpilot-slot-<pid>/agents/JobAgent_<n> tree is also made in each v1 hierarchy v2 lacks, for the job's limits.
    """

    def __init__(self, mode: str, limits: bool = False) -> None:
        self.slot: Optional[Path] = None
        self.own: Optional[Path] = None
        #: Controllers this runner enabled in its own cgroup's subtree_control, to turn off again at close().
        self.own_enabled: List[str] = []
        self.reason = ""
        self.v1_slot = cgroupv1.V1Cgroups({})
        self.v1_agents: Dict[int, cgroupv1.V1Cgroups] = {}
        if mode == "off":
            self.reason = "disabled by configuration (cgroups: off)"
            return
        enabled: List[str] = []
        try:
            own = cgroupfs.own_v2_dir()
            problem = jobcgroup.delegation_problem(own)
            if problem:
                self.reason = f"no slot cgroup v2: {problem}"
            else:
                enabled = self._make_v2(own, limits)
        except GridpilotError as e:
            self.reason = f"no usable cgroup v2 here: {e}"
        if limits:
            self._make_v1([c for c in limits_mod.CONTROLLERS if c not in enabled])

    def _make_v2(self, own: Path, limits: bool) -> List[str]:
        """The v2 slot tree below `own`, with this process moved into <slot>/runner; the controllers the agents get.
        On failure nothing of it is left (the runner back in `own`), and the error goes up."""
        slot = cgroupfs.make_child(own, f"gridpilot-slot-{os.getpid()}")
        try:
            cgroupfs.move_pid(cgroupfs.make_child(slot, "runner"), os.getpid())
            own_note = ""
            if limits:
                # The slot gets only what its parent enables for it. Where the batch system gave us a cgroup of our
                # own but left its subtree_control empty, the limits' controllers are enabled there, now that the
                # runner has left it (jobcgroup.enable_in_own says when that is legal, and ours to do).
                self.own_enabled, own_note = jobcgroup.enable_in_own(own, limits_mod.CONTROLLERS)
            cgroupfs.make_child(slot, "agents")
            enabled = cgroupfs.enable_controllers(slot, cgroupfs.available_controllers(slot))
            cgroupfs.enable_controllers(slot / "agents", enabled)
        except GridpilotError:
            try:
                jobcgroup.disable_in_own(own, slot, self.own_enabled)
                cgroupfs.move_pid(own, os.getpid())
                cgroupfs.remove(slot)
            except GridpilotError as e:
                log.warning("half-made slot cgroup %s not removed: %s", slot, e)
            self.own_enabled = []
            raise
        self.own, self.slot = own, slot
        self.reason = f"slot cgroup {slot} (controllers delegated: {', '.join(enabled) or 'none'})"
        if own_note:
            self.reason += f"; {own_note}"
        return enabled

    def _make_v1(self, controllers: List[str]) -> None:
        if not controllers:
            return
        try:
            dirs, missing = cgroupv1.own_v1_dirs(controllers)
        except GridpilotError as e:
            self.reason += f"; no cgroup v1 for {', '.join(controllers)}: {e}"
            return
        usable = {}
        for c, d in dirs.items():
            problem = cgroupv1.delegation_problem(d)
            if problem:
                missing[c] = problem
            else:
                usable[c] = d
        try:
            slot = cgroupv1.V1Cgroups(usable).make_child(f"gridpilot-slot-{os.getpid()}")
            self.v1_slot = slot
            slot.make_child("agents")
        except GridpilotError as e:
            self.reason += f"; no cgroup v1 slot tree: {e}"
            return
        if usable:
            self.reason += f"; cgroup v1 for limits: {', '.join(f'{c} {d}' for c, d in slot.dirs.items())}"
        if missing:
            self.reason += "; no cgroup for " + "; ".join(f"{c}: {why}" for c, why in missing.items())

    def for_agent(self, index: int) -> Optional[Path]:
        if self.slot is None:
            return None
        try:
            return cgroupfs.make_child(self.slot / "agents", f"JobAgent_{index}", exist_ok=True)
        except GridpilotError as e:
            log.warning("no cgroup for agent %d: %s", index, e)
            return None

    def v1_for_agent(self, index: int) -> Dict[str, str]:
        """The agent's v1 cgroups, {controller: directory}; empty when there is no v1 slot tree."""
        if not self.v1_slot:
            return {}
        try:
            agents = cgroupv1.V1Cgroups({c: d / "agents" for c, d in self.v1_slot.dirs.items()})
            self.v1_agents[index] = agents.make_child(f"JobAgent_{index}", exist_ok=True)
        except GridpilotError as e:
            log.warning("no cgroup v1 for agent %d: %s", index, e)
            return {}
        return self.v1_agents[index].to_json()

    def release_agent(self, cg: Optional[Path], index: Optional[int] = None) -> None:
        if cg is not None:
            try:
                cgroupfs.remove(cg)
            except GridpilotError as e:
                log.warning("agent cgroup %s not removed: %s", cg, e)
        v1 = self.v1_agents.pop(index, None) if index is not None else None
        if v1:
            try:
                v1.remove()
            except GridpilotError as e:
                log.warning("agent cgroups %r not removed: %s", v1, e)

    def close(self) -> None:
        if self.v1_slot:
            try:
                self.v1_slot.remove()
            except GridpilotError as e:
                log.warning("slot cgroups %r not removed: %s", self.v1_slot, e)
        if self.slot is None or self.own is None:
            return
        try:
            # Back into our own cgroup, so the slot can go: only once what we enabled there is off again.
            jobcgroup.disable_in_own(self.own, self.slot, self.own_enabled)
            cgroupfs.move_pid(self.own, os.getpid())
            cgroupfs.remove(self.slot)
        except GridpilotError as e:
            log.warning("slot cgroup %s not removed: %s", self.slot, e)

"""Runs one case of the hostile payload battery and writes what happened as JSON: `hostile_driver.py SPEC OUT`.

It must be pid 1 of a PID namespace made for it (test_hostile.py beside it starts it under `unshare --pid --fork
--mount-proc --kill-child`): a payload's `kill -9 -1` that gets past the pilot then ends only processes of this
namespace, never the machine's, and pid 1 itself survives it (the kernel never delivers a signal its init has no
handler for, from inside its namespace), so the driver still writes its report. When it exits, the kernel kills
whatever is left in the namespace.

One case: a JobRunner with two cores on an embedded central (a thread of this process); a bystander job is
running when the hostile job is submitted; once the hostile job has ended, the processes of the namespace are
checked for anything of it, a follow-up job must run, the bystander is released and must end DONE, and the runner
must exit 0 on SIGTERM leaving nothing behind.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import orjson

from gridpilot.testing import LocalGrid
from gridpilot.errors import GridpilotError
from gridpilot.isolation import cgroupfs, cgroupv1, limits
from gridpilot.states import JobStatus
from gridpilot.tracefmt import state_of

# Run as a script (pid 1 of its namespace), not by pytest: tests/, where the helpers are, goes on the path here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.pilot import FAST, MARK_VAR  # noqa: E402

#: After the runner has died, how long the driver keeps waiting for states it can no longer get.
DEAD_RUNNER_GRACE_S = 3.0


# -- the processes of this namespace, read from /proc -----------------------------------------------------------
def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class Proc:
    """One process as /proc shows it at one moment."""

    __slots__ = ("pid", "ppid", "state", "session", "comm", "env", "cwd", "cmdline")

    def __init__(self, pid: int, stat: bytes) -> None:
        self.pid = pid
        # The command name sits between the first "(" and the last ")", and may hold either.
        self.comm = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode(errors="replace")
        rest = stat[stat.rfind(b")") + 2:].split()
        self.state = rest[0].decode()
        self.ppid = int(rest[1])
        self.session = int(rest[3])
        self.env: Optional[Dict[str, str]] = None
        self.cwd: Optional[str] = None
        self.cmdline = ""

    def load_details(self) -> None:
        raw = _read(f"/proc/{self.pid}/environ")
        if raw is not None:
            env = {}
            for item in raw.split(b"\0"):
                k, sep, v = item.partition(b"=")
                if sep:
                    env[k.decode(errors="replace")] = v.decode(errors="replace")
            self.env = env
        try:
            self.cwd = os.readlink(f"/proc/{self.pid}/cwd")
        except OSError:
            self.cwd = None
        raw = _read(f"/proc/{self.pid}/cmdline")
        self.cmdline = (raw or b"").replace(b"\0", b" ").decode(errors="replace").strip()[:300]

    def describe(self) -> Dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "state": self.state, "session": self.session,
                "cmdline": self.cmdline or f"[{self.comm}]", "cwd": self.cwd,
                "alien_proc_id": (self.env or {}).get("ALIEN_PROC_ID")}


def processes(details: bool = True) -> Dict[int, Proc]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read(f"/proc/{name}/stat")
        if not stat:
            continue
        p = Proc(int(name), stat)
        if details and p.state != "Z":
            p.load_details()
        out[p.pid] = p
    return out


def descendants(procs: Dict[int, Proc], root: int) -> Set[int]:
    children: Dict[int, List[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: Set[int] = set()
    stack = [root]
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


class Witness(threading.Thread):
    """Looks at the namespace's processes every 0.3 s while the case runs: how far the hostile payload got (its
    processes, zombies, stopped ones, sessions), and what was handed to pid 1 (this driver) because it escaped the
    pilot's subreapers. As pid 1 it also reaps those, as any init must."""

    def __init__(self) -> None:
        super().__init__(name="witness", daemon=True)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.runner_pid: Optional[int] = None
        #: The runner's log and the hostile job's id: the JobAgent that runs it says so there, with its pid (as this
        #: namespace sees it), whatever runtime the payload is in.
        self.runner_log: Optional[Path] = None
        self.hostile_id: Optional[int] = None
        self.agent: Optional[int] = None
        self.peak = {"processes": 0, "zombies": 0, "stopped": 0, "sessions": 0}
        self.reached_init: Dict[int, Dict[str, Any]] = {}
        self.timeline: List[Any] = []

    def run(self) -> None:
        while not self.stop_event.wait(0.3):
            try:
                self.look()
            except Exception:  # a witness that breaks must not take the case down; the report says so
                with self.lock:
                    self.peak["error"] = traceback.format_exc()  # type: ignore[assignment]

    def find_agent(self) -> Optional[int]:
        if self.agent is None and self.hostile_id is not None and self.runner_log is not None:
            log = self.runner_log.read_text(errors="replace")
            m = re.search(rf"gridpilot\.agent\[(\d+)\] INFO job {self.hostile_id}: ", log)
            if m:
                self.agent = int(m[1])
        return self.agent

    def look(self) -> None:
        procs = processes(details=False)
        for p in procs.values():
            if p.ppid == 1 and p.pid != self.runner_pid:
                if p.pid not in self.reached_init:
                    p.load_details()
                    with self.lock:
                        self.reached_init[p.pid] = p.describe()
                if p.state == "Z":
                    try:
                        os.waitpid(p.pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
        agent = self.find_agent()
        if agent is None or agent not in procs:
            return
        # The hostile job's processes: everything below its JobAgent (a child subreaper, so orphans stay below it),
        # the JobWrapper (the one python process there; the payloads are sh, perl and coreutils) excepted.
        job = {pid for pid in descendants(procs, agent)
               if not (procs[pid].comm.startswith("python")
                       and b"gridpilot.pilot." in (_read(f"/proc/{pid}/cmdline") or b""))}
        tree = [procs[pid] for pid in job if pid in procs]
        seen = {
            "processes": len(tree),
            "zombies": sum(p.state == "Z" for p in tree),
            "stopped": sum(p.state in ("T", "t") for p in tree),
            # Zombies too: the payload, once exited, is one (held unreaped by its JobWrapper) while its daemon lives.
            "sessions": len({p.session for p in tree}),
        }
        with self.lock:
            for k, v in seen.items():
                self.peak[k] = max(self.peak[k], v)
            comms: Dict[str, int] = {}
            for p in tree:
                if p.state != "Z":
                    comms[p.comm] = comms.get(p.comm, 0) + 1
            self.timeline.append((round(time.monotonic(), 2), seen["processes"] - seen["zombies"], seen["zombies"], comms))


# -- the case -------------------------------------------------------------------------------------------------
class CaseRun:
    def __init__(self, spec: Dict[str, Any]) -> None:
        self.spec = spec
        self.state_dir = Path(spec["state_dir"])
        self.mark = uuid.uuid4().hex
        self.result: Dict[str, Any] = {"case": spec["case"], "runtime": spec["runtime"], "timings": {}}
        self.t0 = time.monotonic()
        self.witness = Witness()
        self.grid: Optional[LocalGrid] = None
        self.cgroup: Optional[Path] = None
        self.v1: Optional[cgroupv1.V1Cgroups] = None
        self.v1_parent = cgroupv1.V1Cgroups({})

    def mark_time(self, what: str) -> None:
        self.result["timings"][what] = round(time.monotonic() - self.t0, 2)

    @property
    def runner_alive(self) -> bool:
        return self.grid is not None and self.grid.runner is not None and self.grid.runner.poll() is None

    # -- waiting on central --
    def wait_for(self, job_id: int, done: Any, timeout: float) -> Dict[str, Any]:
        """Poll the job until done(job) or timeout; give up early once the runner has been dead for a while."""
        assert self.grid is not None
        deadline = time.monotonic() + timeout
        dead_since = None
        while True:
            job = self.grid.user.get_job(job_id)
            if done(job) or time.monotonic() > deadline:
                return job
            if not self.runner_alive:
                dead_since = dead_since or time.monotonic()
                if time.monotonic() - dead_since > DEAD_RUNNER_GRACE_S:
                    return job
            time.sleep(0.2)

    def wait_final(self, job_id: int, timeout: float) -> Dict[str, Any]:
        return self.wait_for(job_id, lambda j: JobStatus[j["state"]].is_final, timeout)

    def agent_reported(self, job_id: int, timeout: float) -> bool:
        """The job's JobAgent lived to tell the runner how the job ended (its `done` event, in the runner's log)."""
        deadline = time.monotonic() + timeout
        while True:
            log = (self.state_dir / "grid" / "runner.log").read_text(errors="replace")
            if f": job {job_id} ended " in log:
                return True
            if time.monotonic() > deadline or not self.runner_alive:
                return f": job {job_id} ended " in log
            time.sleep(0.2)

    # -- what is left --
    def leftovers_of(self, job_id: int, workdir: str, wait_s: float) -> List[Dict[str, Any]]:
        """Live processes of the namespace that are not the pilot's or another job's: anything carrying the job's id,
        working in its directory, or neither carrying the runner's mark (a payload's child that wiped its
        environment) nor running below a live JobAgent (another job's: a container's processes get an environment
        built from nothing, so they carry no mark)."""
        deadline = time.monotonic() + wait_s
        while True:
            found = []
            procs = processes()
            below_agents: Set[int] = set()
            for a in procs.values():
                if "gridpilot.pilot.agent" in a.cmdline and (a.env or {}).get(MARK_VAR) == self.mark:
                    below_agents |= descendants(procs, a.pid)
            for p in procs.values():
                if p.pid == 1 or p.state == "Z":
                    continue
                env = p.env or {}
                ours = env.get(MARK_VAR) == self.mark or p.pid in below_agents
                cwd = (p.cwd or "").removesuffix(" (deleted)")
                this_job = env.get("ALIEN_PROC_ID") == str(job_id) or cwd == workdir or cwd.startswith(workdir + "/")
                if this_job or not ours:
                    found.append(p.describe())
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def sweep(self) -> List[Dict[str, Any]]:
        """Everything left in the namespace but this process, once the runner has exited; then SIGKILL to it all."""
        time.sleep(0.5)
        self.witness.look()  # reaps what was handed to pid 1 meanwhile
        left = [p.describe() for p in processes().values() if p.pid != 1 and p.state != "Z"]
        for p in left:
            try:
                os.kill(p["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    # -- the cgroup of this case --
    def enter_cgroup(self) -> None:
        """Move this process into a fresh child of its cgroup v2, so the runner's slot tree (named after its pid,
        which is small and the same in every case's namespace) cannot collide with another case's run beside it."""
        try:
            own = cgroupfs.own_v2_dir()
            if not cgroupfs.can_make_children(own):
                return
            self.cgroup = cgroupfs.make_child(own, f"gridpilot-hostile-{self.spec['case']}-{self.mark[:8]}")
            cgroupfs.move_pid(self.cgroup, os.getpid())
        except GridpilotError as e:
            self.result["cgroup_note"] = f"no cgroup of its own for the case: {e}"
            self.cgroup = None
        # The same in the v1 hierarchies the job limits use on a hybrid host (a batch system gives each of its jobs
        # cgroups of its own as well).
        try:
            dirs, _ = cgroupv1.own_v1_dirs(list(limits.CONTROLLERS))
            self.v1_parent = cgroupv1.V1Cgroups({c: d for c, d in dirs.items() if not cgroupv1.delegation_problem(d)})
            if self.v1_parent:
                self.v1 = self.v1_parent.make_child(f"gridpilot-hostile-{self.spec['case']}-{self.mark[:8]}")
                self.v1.move(os.getpid())
        except GridpilotError as e:
            self.result["cgroup_note"] = f"no cgroup v1 of its own for the case: {e}"
            self.v1 = None

    def leave_cgroup(self) -> List[str]:
        """The cgroups left below the case's own (the runner's slot tree should be gone), then remove them all."""
        left: List[str] = []
        if self.v1 is not None:
            for d in self.v1.dirs.values():
                left += sorted(str(c) for c in Path(d).rglob("*") if c.is_dir())
            try:
                self.v1_parent.move(os.getpid())
                self.v1.remove()
            except GridpilotError as e:
                left.append(f"{self.v1} not removed: {e}")
        if self.cgroup is None:
            return left
        left += sorted(str(d) for d in self.cgroup.rglob("*") if d.is_dir())
        try:
            cgroupfs.move_pid(self.cgroup.parent, os.getpid())
            cgroupfs.remove(self.cgroup)
        except GridpilotError as e:
            left.append(f"{self.cgroup} not removed: {e}")
        return left

    # -- the run --
    def run(self) -> None:
        spec = self.spec
        self.enter_cgroup()
        self.result["core_pattern"] = (_read("/proc/sys/kernel/core_pattern") or b"").decode().strip()
        with LocalGrid(self.state_dir / "grid") as grid:
            self.grid = grid
            for lfn, path in spec["scripts"].items():
                grid.register_local_file(Path(path), lfn)
            runner = grid.start_runner(env={MARK_VAR: self.mark}, **{**FAST, **spec["pilot"]})
            self.witness.runner_pid = runner.pid
            self.witness.start()
            self.mark_time("runner_started")
            jobs: Dict[str, Optional[int]] = {"bystander": None, "hostile": None, "followup": None}
            try:
                jobs["bystander"] = bid = grid.user.submit(spec["bystander"], name="bystander")
                by = self.wait_for(bid, lambda j: j["state"] == "RUNNING" or JobStatus[j["state"]].is_final, 60)
                self.result["bystander_running_first"] = by["state"] == "RUNNING"
                self.mark_time("bystander_running")

                jobs["hostile"] = hid = grid.user.submit(spec["hostile"], name=spec["case"])
                workdir = str(grid.state_dir / "work" / f"alien-job-{hid}")
                self.witness.runner_log = grid.state_dir / "runner.log"
                self.witness.hostile_id = hid
                self.wait_final(hid, 150)
                self.mark_time("hostile_final")
                self.result["runner_alive_after_hostile"] = self.runner_alive
                self.result["agent_reported"] = self.agent_reported(hid, 15)
                self.result["leftovers_after_hostile"] = self.leftovers_of(hid, workdir, wait_s=5)
                self.mark_time("hostile_checked")

                if self.runner_alive:
                    jobs["followup"] = fid = grid.user.submit(spec["followup"], name="followup")
                    self.wait_final(fid, 60)
                    self.mark_time("followup_final")
                release = grid.state_dir / "work" / f"alien-job-{bid}" / "release"
                if release.parent.is_dir():
                    release.write_text("the hostile job has ended\n")
                self.wait_final(bid, 60)
                self.mark_time("bystander_final")
            finally:
                self.result["runner_alive_at_end"] = self.runner_alive
                self.result["runner_exit"] = grid.stop_runner(60)
                self.mark_time("runner_stopped")
                self.witness.stop_event.set()
                self.witness.join(5)
                self.result["leftovers_at_end"] = self.sweep()
                self.result["reached_init"] = list(self.witness.reached_init.values())
                self.result["witness"] = dict(self.witness.peak)
                self.result["timeline"] = self.witness.timeline
                self.result["jobs"] = {k: self.report(k, i) for k, i in jobs.items() if i is not None}
                log = (grid.state_dir / "runner.log").read_text(errors="replace")
                self.result["runner_log_tail"] = log[-6000:]
        self.result["cgroups_left"] = self.leave_cgroup()
        self.mark_time("total")

    def report(self, role: str, job_id: int) -> Dict[str, Any]:
        assert self.grid is not None
        job = self.grid.user.get_job(job_id)
        trace = self.grid.user.trace(job_id)
        out = {
            "id": job_id,
            "state": job["state"],
            "kill_reason": job.get("kill_reason") or "OK",
            "exit_code": job.get("exit_code"),
            "states": [s for e in trace if e["category"] == "state" and (s := state_of(e["text"])) is not None],
            "trace": [f"{e['category']}: {e['text']}" for e in trace],
            "outputs": {},
        }
        # What stage-out registered, as the catalogue has it: "stage-out NAME -> LFN: ..." in the trace.
        for e in trace:
            m = re.match(r"stage-out (\S+) -> (\S+): ", e["text"])
            if m:
                try:
                    out["outputs"][m[1]] = self.grid.user.lookup_file(m[2])["size"]
                except GridpilotError as err:
                    out["outputs"][m[1]] = f"not in the catalogue: {err}"
        return out


def main(argv: List[str]) -> int:
    if os.getpid() != 1:
        # The safety net: a payload's kill -9 -1 must only ever reach a namespace made for it.
        print("hostile_driver.py must run as pid 1 of its own PID namespace "
              "(unshare --pid --fork --mount-proc --kill-child)", file=sys.stderr)
        return 2
    spec = orjson.loads(Path(argv[1]).read_bytes())
    case = CaseRun(spec)
    try:
        case.run()
    except Exception:
        case.result["error"] = traceback.format_exc()
    Path(argv[2]).write_bytes(orjson.dumps(case.result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

"""A local grid for the pilot's integration tests: real central (SQLite), real `gridpilot runner` subprocess, real
JobAgents, JobWrappers and payloads. Every process the runner starts carries a marker in its environment, so a test
can prove that none of them is left once the job ended, whatever the job did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import psutil
import pytest

from gridpilot import exitcodes
from gridpilot.testing import LocalGrid
from gridpilot.tracefmt import state_of
from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs, cgroupv1
from gridpilot.states import JobStatus, KillReason

PAYLOAD = Path(__file__).with_name("pilot_payload.py")
#: Environment variable the runner is started with; agents, wrappers and payloads inherit it.
MARK_VAR = "GRIDPILOT_TEST_MARK"

#: Pilot settings that make the tests quick: the slow tier (PSS, disk) every second instead of every minute,
#: heartbeats (which carry kill commands) every second, short backoffs, and no 15-minute idle window to wait for.
FAST = dict(
    monitor_slow_s=1.0,
    heartbeat_interval=1.0,
    match_backoff=0.3,
    match_backoff_max=1.0,
    max_empty_matches=3,
)

#: How a runner that stop() sent SIGTERM ends: STOPPED, or OK when it had already left on its own (after its empty
#: matches) by the time the signal came.
STOPPED_OR_DONE = (exitcodes.STOPPED, exitcodes.OK)


def payload_jdl(mode: str, arg: Any = "", **keys: Any) -> str:
    """A JDL running tests/support/pilot_payload.py MODE ARG with the given keys (values written as JDL: str quoted)."""
    lines = [
        f'Executable = "{sys.executable}";',
        f'Arguments = "{PAYLOAD} {mode} {arg}";',
    ]
    keys.setdefault("TTL", 120)
    keys.setdefault("ForcedKillTimeout", 2)
    for key, value in keys.items():
        lines.append(f"{key} = {_jdl_value(value)};")
    return "\n".join(lines) + "\n"


def shell_jdl(script: str, **keys: Any) -> str:
    keys.setdefault("TTL", 120)
    keys.setdefault("ForcedKillTimeout", 2)
    body = ['Executable = "/bin/sh";', f"Arguments = \"-c '{script}'\";"]
    body += [f"{k} = {_jdl_value(v)};" for k, v in keys.items()]
    return "\n".join(body) + "\n"


def _jdl_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "{ " + ", ".join(_jdl_value(v) for v in value) + " }"
    return '"' + str(value).replace('"', '\\"') + '"'


@dataclass
class Pilot:
    """One LocalGrid and the runner a test starts on it."""

    grid: LocalGrid
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    runner_pids: List[int] = field(default_factory=list)
    #: The test has read the runner's exit status itself (stop, wait_runner_exit): pilot_grid leaves it to the test.
    exit_seen: bool = False
    _runner_gone_at: Optional[float] = None

    @property
    def workroot(self) -> Path:
        return self.grid.state_dir / "work"

    def submit(self, jdl: str, name: Optional[str] = None) -> int:
        return self.grid.user.submit(jdl, name=name)

    def start(self, env: Optional[Dict[str, str]] = None, **overrides: Any) -> psutil.Popen:
        """Start the runner with FAST settings and `overrides` (a None value: the field not set); `env`: more
        variables in its environment."""
        cfg = dict(FAST)
        cfg.update(overrides)
        proc = self.grid.start_runner(env={**(env or {}), MARK_VAR: self.mark}, **cfg)
        self._runner_gone_at = None
        self.runner_pids.append(proc.pid)
        return proc

    @property
    def runner(self) -> Any:
        assert self.grid.runner is not None, "no runner started"
        return self.grid.runner

    def job(self, job_id: int) -> Dict[str, Any]:
        return self.grid.user.get_job(job_id)

    def wait_state(self, job_id: int, states: Iterable[str], timeout: float = 60.0) -> Dict[str, Any]:
        """Poll central until the job is in one of `states` (or any final state, which fails the wait)."""
        want = set(states)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in want:
                return job
            if JobStatus[job["state"]].is_final:
                raise AssertionError(f"job {job_id} ended {job['state']} while waiting for {sorted(want)}:\n"
                                     + self.describe(job_id))
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']} after {timeout:.0f} s, waiting for "
                                     f"{sorted(want)}:\n" + self.describe(job_id))
            self._check_runner_alive()
            time.sleep(0.2)

    def wait_final(self, ids: Sequence[int], timeout: float = 90.0) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = [self.job(i) for i in ids]
            if all(JobStatus[j["state"]].is_final for j in jobs):
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not final after {timeout:.0f} s: "
                                     + ", ".join(f"{j['id']}={j['state']}" for j in jobs) + "\n"
                                     + "\n".join(self.describe(j["id"]) for j in jobs if not JobStatus[j["state"]].is_final))
            self._check_runner_alive()
            time.sleep(0.3)

    def _check_runner_alive(self) -> None:
        """Fail at once, with its log, when the runner is gone while the test still waits for it."""
        r = self.grid.runner
        if r is not None and r.poll() is not None:
            if self._runner_gone_at is None:
                # One more look first: the job's last report may land just after the runner exits.
                self._runner_gone_at = time.monotonic()
            elif time.monotonic() - self._runner_gone_at > 2.0:
                raise AssertionError(f"the runner exited with {r.returncode}:\n{self.runner_log()[-6000:]}")

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """SIGTERM to the runner, as the batch system sends it; its exit status (STOPPED_OR_DONE when all is well)."""
        self.exit_seen = True
        return self.grid.stop_runner(timeout)

    def wait_runner_exit(self, timeout: float = 60.0) -> int:
        self.exit_seen = True
        return self.runner.wait(timeout)

    def trace(self, job_id: int) -> List[Dict[str, Any]]:
        return self.grid.user.trace(job_id)

    def trace_text(self, job_id: int) -> str:
        return "\n".join(f"{e['ts']:.2f} {e['category']:<8} {e['text']}" for e in self.trace(job_id))

    def user_command(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`gridpilot ARGS...` as the jobs' owner runs it against this grid: the real command, in a process of its
        own (the grid's user token, none of this process's GRIDPILOT_* settings)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
        env["GRIDPILOT_TOKEN"] = self.grid.user_token
        return subprocess.run([sys.executable, "-m", "gridpilot", *args, "--url", self.grid.central.url],
                              capture_output=True, text=True, env=env, timeout=timeout)

    def job_command(self, job_id: int) -> str:
        """What `gridpilot job ID` prints for the job's owner."""
        out = self.user_command("job", str(job_id))
        assert out.returncode == 0, out.stderr
        return out.stdout

    def assert_kill_reason_shown(self, job_id: int, reason: str) -> None:
        """The job's kill reason with ALICE's text (states.KILL_REASON_TEXTS) where a user reads it: once in its
        trace (the pilot traces it when it decides it), in the job's JSON and in `gridpilot job ID`."""
        described = KillReason[reason].describe()
        lines = [e["text"] for e in self.trace(job_id) if e["text"] == f"Kill reason {described}"]
        assert len(lines) == 1, f"'Kill reason {described}' traced {len(lines)} times\n" + self.describe(job_id)
        job = self.job(job_id)
        assert (job["kill_reason"], job["kill_reason_code"], job["kill_reason_text"]) == \
            (reason, int(KillReason[reason]), KillReason[reason].text), job
        shown = self.job_command(job_id).splitlines()
        assert f"kill_reason     {described}" in shown, shown

    def states(self, job_id: int) -> List[Tuple[float, str]]:
        """The job's state changes from its trace, as (time, state name), oldest first: the time the reporter gave
        (when it changed on the node, as central accepted it), else central's."""
        out = []
        for e in self.trace(job_id):
            state = state_of(e["text"]) if e["category"] == "state" else None
            if state is not None:
                when = e["ts"] if e.get("reported_ts") is None else e["reported_ts"]
                out.append((when, state))
        return out

    def describe(self, job_id: int) -> str:
        return f"--- trace of job {job_id}:\n{self.trace_text(job_id)}\n--- runner log (tail):\n{self.runner_log()[-4000:]}"

    def runner_log(self) -> str:
        try:
            return (self.grid.state_dir / "runner.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- what must be gone ------------------------------------------------------------------------------------
    def marked_processes(self) -> List[psutil.Process]:
        """Live processes started by this test's runners (the marker in their environment), the runners too."""
        found = []
        for p in psutil.process_iter(["pid", "status"]):
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                if p.environ().get(MARK_VAR) == self.mark:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def job_processes(self, job_id: int) -> List[psutil.Process]:
        """The payload processes of one job (the wrapper sets ALIEN_PROC_ID for the payload only)."""
        out = []
        for p in self.marked_processes():
            try:
                if p.environ().get("ALIEN_PROC_ID") == str(job_id):
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    def leftovers(self, wait_s: float = 30.0) -> List[str]:
        """What the pilot left behind: processes, work directories, slot cgroups. Waits a little for stragglers that
        are already being killed (the agent reports first and verifies the cleanup right after), and for the runner
        to end after its last empty matches: generous, since a loaded 2-core machine once took over 5 s, and a clean
        pilot returns as soon as it is clean."""
        deadline = time.monotonic() + wait_s
        while True:
            found = [f"process {p.pid} {_cmdline(p)}" for p in self.marked_processes()]
            found += [f"work directory {d}" for d in sorted(self.workroot.glob("alien-job-*"))]
            found += [f"cgroup {c}" for c in slot_cgroups(self.runner_pids)]
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def assert_clean(self) -> None:
        left = self.leftovers()
        assert not left, "the pilot left behind:\n  " + "\n  ".join(left)

    def kill_leftovers(self) -> None:
        for p in self.marked_processes():
            try:
                os.killpg(p.pid, signal.SIGKILL) if p.pid == os.getpgid(p.pid) else p.kill()
            except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
                pass
        for c in slot_cgroups(self.runner_pids):
            try:
                if cgroupfs.is_v2_dir(c):
                    cgroupfs.remove(c)
                else:
                    cgroupv1.V1Cgroups({"leftover": c}).remove()
            except CgroupError:
                pass


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:200]
    except psutil.Error:
        return "?"


def slot_cgroups(runner_pids: Sequence[int]) -> List[Path]:
    """The slot cgroup trees (gridpilot-slot-<runner pid>) of these runners that still exist, in cgroup v2 and in
    the v1 hierarchies the runner uses for limits on hybrid hosts."""
    owns: List[Path] = []
    try:
        owns.append(cgroupfs.own_v2_dir())
    except CgroupError:
        pass
    try:
        owns += list(cgroupv1.own_v1_dirs()[0].values())
    except CgroupError:
        pass
    return [own / f"gridpilot-slot-{pid}" for own in owns for pid in runner_pids
            if (own / f"gridpilot-slot-{pid}").exists()]


@contextmanager
def pilot_grid(central: Optional[Dict[str, Any]] = None) -> Iterator[Pilot]:
    """A fresh local grid (`central`: CentralSettings fields for its central). Afterwards: the runner stopped, and
    nothing of the pilot left (else AssertionError, after cleaning up so the next test starts clean)."""
    with tempfile.TemporaryDirectory(prefix="gridpilot-test-") as tmp:
        with LocalGrid(Path(tmp) / "grid", central=central) as grid:
            p = Pilot(grid)
            try:
                yield p
            finally:
                rc = grid.stop_runner()
                left = p.leftovers(wait_s=10.0)
                if left:
                    p.kill_leftovers()
                assert not left, "the pilot left behind:\n  " + "\n  ".join(left)
                assert p.exit_seen or rc is None or rc in STOPPED_OR_DONE, \
                    f"the runner exited with {rc} ({exitcodes.reason(rc)}):\n{p.runner_log()[-4000:]}"


@pytest.fixture
def pilot() -> Iterator[Pilot]:
    """A fresh local grid per test, checked for leftovers afterwards (pilot_grid)."""
    with pilot_grid() as p:
        yield p

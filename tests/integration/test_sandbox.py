"""The job's sandbox (isolation/sandbox.py) with real processes, and the final-state decision (pilot/finalstate.py).

The sandbox runs in a process of its own: its destroy() ends every descendant of the calling process, which in the
test process would be pytest's other children too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gridpilot.pilot.finalstate import LOST_WRAPPER, outcome
from gridpilot.pilot.rules import Breach
from gridpilot.states import JobStatus as S
from gridpilot.states import KillReason as K

SANDBOX_SCRIPT = r"""
import json, os, signal, sys
from pathlib import Path
from gridpilot.config import PilotConfig
from gridpilot.isolation import containers
from gridpilot.isolation.runtimes import NoContainer
from gridpilot.isolation.sandbox import Sandbox

work = Path(sys.argv[1])
trace = []
box = Sandbox(None, {}, trace.append)
cfg = PilotConfig(cgroup_limits=False)
box.create(cfg, 1 << 30, 1)
# The "wrapper": starts a payload in a session of its own, says its pid on descriptor 3, then waits for it.
wrapper = ("import os, subprocess, time; p = subprocess.Popen(['sleep', '600'], start_new_session=True); "
           "os.write(3, b'%d ' % p.pid); os.close(3); p.wait(); time.sleep(600)")
r, w = os.pipe()
proc, spec = box.launch(containers.Isolation(NoContainer(False), None), [sys.executable, "-c", wrapper],
                        workdir=str(work), env=dict(os.environ), cfg=cfg, gpus=[], storage=None, name="job-1",
                        fds={containers.FIRST_PASSED_FD: w}, log_path=work / "wrapper.log")
os.close(w)
proc.stdin.close()
said = int(os.read(r, 100).split()[0])
payload = box.adopt_payload(said, None, proc.pid)
usage = box.usage()
box.kill_payload("limit exceeded (TEST)", grace=10)
box.kill_payload("again", grace=10)  # reaped by the wrapper by now, or a zombie: nothing to kill twice
wrapper_alive = proc.poll() is None
box.destroy(reap=lambda: proc.wait(timeout=60))
box.remove_workdir(work, keep=False)
print(json.dumps({"trace": trace, "said": said, "payload": payload, "usage": [usage.cgroup, usage.oom_counter,
                  usage.memory_counter, usage.v1_memory_dir], "spec_image": spec.image, "wrapper_alive": wrapper_alive,
                  "wrapper_rc": proc.returncode, "workdir_left": work.exists()}))
"""


def test_sandbox_without_cgroups_launches_kills_and_destroys(tmp_path: Path) -> None:
    """No slot cgroup (process groups and sessions only): the wrapper starts with its descriptor in place, the
    payload it names is killed once, and destroy() ends the wrapper, leaves nothing, and says so in the trace."""
    work = tmp_path / "alien-job-1"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", SANDBOX_SCRIPT, str(work)], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    trace = seen["trace"]
    assert trace[:2] == ["cgroup limits: disabled by configuration (cgroup_limits: false)",
                         "job cgroup: none (process groups and sessions only)"]
    assert seen["payload"] == seen["said"]  # the host's own PID namespace: the pid is the pid
    assert seen["usage"] == [None, None, None, None]
    assert seen["spec_image"] is None
    kills = [line for line in trace if "payload terminated" in line]
    assert kills[0] == "limit exceeded (TEST): payload terminated (1 exited on SIGTERM, 0 killed after 10 s, 0 survivors)"
    # Killed once: the second kill finds it reaped (no line), or, on a loaded machine, still a zombie the wrapper has
    # not reaped yet (same pid and start time): then it reports that nothing was left to end.
    assert kills[1:] in ([], ["again: payload terminated (0 exited on SIGTERM, 0 killed after 10 s, 0 survivors)"])
    assert seen["wrapper_alive"]
    assert seen["wrapper_rc"] == -15  # ended by destroy()'s SIGTERM
    assert "cleanup: no process of the job is left" in trace
    assert any(line.startswith("cleanup: ") and "leftover process(es) of the job ended" in line for line in trace)
    assert trace[-1].startswith("Deleting directory ") and not seen["workdir_left"]


def _breach() -> Breach:
    return Breach(K.MEMORY_USAGE, "memory over the limit")


@pytest.mark.parametrize("kwargs, current, expected", [
    (dict(gave_back=True, breach=_breach()), S.STARTED, (S.WAITING, K.OK, None)),
    (dict(breach=_breach(), killed_by_central=True), S.RUNNING, (S.ERROR_E, K.MEMORY_USAGE, None)),
    (dict(killed_by_central=True, final={"state": "DONE", "exit_code": 0}), S.RUNNING, (S.KILLED, K.KILLED, 0)),
    (dict(final={"state": "DONE", "exit_code": 0}), S.SAVING, (S.DONE, K.OK, 0)),
    (dict(final={"state": "ERROR_E", "kill_reason": "TTL", "exit_code": 9}), S.RUNNING, (S.ERROR_E, K.TTL, 9)),
    (dict(), S.RUNNING, (LOST_WRAPPER[S.RUNNING], K.OK, None)),
    (dict(), S.SAVING, (S.ERROR_SV, K.OK, None)),
    # Lost before it said STARTED: the wrapper never came up in its sandbox.
    (dict(), None, (S.ERROR_A, K.SANDBOX_CREATE, None)),
    (dict(), S.STARTED, (S.ERROR_E, K.OK, None)),
    (dict(stop_requested=True), S.RUNNING, (S.ERROR_E, K.KILLED, None)),
    (dict(stop_requested=True, final={"state": "ERROR_E", "exit_code": 1}), S.RUNNING, (S.ERROR_E, K.KILLED, 1)),
])
def test_final_state_from_what_happened(kwargs, current, expected) -> None:
    """Giving back wins over everything, then a broken rule, central's kill, the wrapper's result, and a wrapper
    lost without one; a payload that failed because the slot ended is reported KILLED."""
    args = dict(gave_back=False, breach=None, killed_by_central=False, final=None, stop_requested=False)
    args.update(kwargs)
    assert outcome(current, **args) == expected

"""Ending jobs from outside: a user's kill through the CLI, a JobWrapper that dies of SIGKILL, and SIGTERM to the
JobRunner from the batch system. Real runner, agents, wrappers and payloads against a real central on SQLite."""

from __future__ import annotations

import os
import re
import signal
import time

import psutil
import pytest

from gridpilot import exitcodes
from support.pilot import STOPPED_OR_DONE, Pilot, payload_jdl


def wrapper_process(pilot: Pilot) -> psutil.Process:
    # The wrapper itself, not the `unshare` (or container runtime) process whose arguments name it too.
    (w,) = [p for p in pilot.marked_processes() if p.cmdline()[1:3] == ["-m", "gridpilot.pilot.wrapper"]]
    return w


def test_kill_from_the_cli_ends_the_job_killed(pilot: Pilot):
    job_id = pilot.submit(payload_jdl("sleep", 120))
    pilot.start(cores=1)
    pilot.wait_state(job_id, ["RUNNING"])
    assert pilot.job_processes(job_id), "the payload should be running"
    t0 = time.monotonic()
    out = pilot.user_command("kill", str(job_id), timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"job {job_id} (RUNNING): kill requested" in out.stdout
    (job,) = pilot.wait_final([job_id], timeout=30)
    assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), pilot.describe(job_id)
    pilot.assert_kill_reason_shown(job_id, "KILLED")
    # At the next heartbeat (1 s here) the payload gets SIGTERM, which it honours: no ForcedKillTimeout wait.
    assert time.monotonic() - t0 < 15
    trace = [e["text"] for e in pilot.trace(job_id)]
    assert "kill requested by central (kill requested)" in trace, pilot.describe(job_id)
    assert any(t.startswith("killed on request: payload terminated (1 exited on SIGTERM") for t in trace)
    assert not pilot.job_processes(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_wrapper_killed_mid_run_gives_error_e(pilot: Pilot, cgroups: str):
    """With a job cgroup the agent empties it; without, the payload (orphaned to init by the wrapper's death) is
    still found through its own pid and killed."""
    job_id = pilot.submit(payload_jdl("sleep", 120))
    pilot.start(cores=1, cgroups=cgroups)
    pilot.wait_state(job_id, ["RUNNING"])
    payload = pilot.job_processes(job_id)
    assert payload, "the payload should be running"
    wrapper_process(pilot).send_signal(signal.SIGKILL)
    (job,) = pilot.wait_final([job_id], timeout=30)
    assert job["state"] == "ERROR_E", pilot.describe(job_id)
    trace = [e["text"] for e in pilot.trace(job_id)]
    # -9 when the agent started the wrapper itself; through `unshare` (its own PID namespace, the default without a
    # container) the status is unshare's, which reports a child killed by SIGKILL as 1.
    assert any(re.fullmatch(r"the JobWrapper ended \(exit status (-9|1)\) without a final state; the job was RUNNING", t)
               for t in trace), trace
    assert "cleanup: no process of the job is left" in trace, pilot.describe(job_id)
    for p in payload:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_agent_killed_mid_run_leaves_nothing(pilot: Pilot, cgroups: str):
    """An agent that dies of SIGKILL cannot clean up after its job. The runner is a child subreaper, so the agent's
    wrapper and payload are handed to it: it ends them and removes the job's work directory, and goes on running
    jobs."""
    job_id = pilot.submit(payload_jdl("sleep", 120))
    pilot.start(cores=1, cgroups=cgroups)
    pilot.wait_state(job_id, ["RUNNING"])
    payload = pilot.job_processes(job_id)
    assert payload, "the payload should be running"
    (agent,) = [p for p in pilot.marked_processes() if "gridpilot.pilot.agent" in " ".join(p.cmdline())]
    agent.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    ended = r"agent 0 exited with -9: [1-9]\d* process\(es\) it left were ended"
    while not re.search(ended, pilot.runner_log()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert re.search(ended, pilot.runner_log()), pilot.runner_log()[-4000:]
    assert not pilot.job_processes(job_id)
    assert not (pilot.workroot / f"alien-job-{job_id}").exists()
    # The runner is unharmed: it runs the next job.
    second = pilot.submit(payload_jdl("sleep", 0))
    (job,) = pilot.wait_final([second], timeout=60)
    assert job["state"] == "DONE", pilot.describe(second)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def _payload_ready(pilot: Pilot, job_id: int, mode: str) -> bool:
    """The job's payload runs tests/support/pilot_payload.py in `mode`, and, for ignore-term, ignores SIGTERM
    already (its SigIgn mask in /proc says so)."""
    for p in pilot.job_processes(job_id):
        try:
            if f"pilot_payload.py {mode}" not in " ".join(p.cmdline()):
                continue
            if mode != "ignore-term":
                return True
            with open(f"/proc/{p.pid}/status") as f:
                ignored = re.search(r"^SigIgn:\s*([0-9a-f]+)$", f.read(), re.M)
            return ignored is not None and bool(int(ignored.group(1), 16) & (1 << (signal.SIGTERM - 1)))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, FileNotFoundError):
            continue
    return False


@pytest.mark.parametrize("mode", ["sleep", "ignore-term"])
def test_sigterm_to_the_runner_winds_down(pilot: Pilot, mode: str):
    """The payload gets SIGTERM; one that ignores it is killed after its ForcedKillTimeout (2 s), not after the
    agent's whole wind-down grace."""
    running = pilot.submit(payload_jdl(mode, 120))
    pilot.start(cores=1)
    pilot.wait_state(running, ["RUNNING"])
    # RUNNING is reported as the payload starts, before it ran a line of its own: a SIGTERM then would end an
    # ignore-term payload before it ignores SIGTERM. Wait until the payload is what the case says it is.
    deadline = time.monotonic() + 60
    while not _payload_ready(pilot, running, mode):
        assert time.monotonic() < deadline, pilot.describe(running)
        time.sleep(0.1)
    # Submitted now, it waits for the one core; once the runner has SIGTERM it must never be matched.
    queued = pilot.submit(payload_jdl("sleep", 1))
    t0 = time.monotonic()
    os.kill(pilot.runner.pid, signal.SIGTERM)
    assert pilot.wait_runner_exit(timeout=60) == exitcodes.STOPPED, pilot.runner_log()[-4000:]
    assert time.monotonic() - t0 < 30
    job = pilot.job(running)
    # The payload ended of SIGTERM (or of SIGKILL after the grace), its logs were still saved, the end was reported.
    signal_seen = -15 if mode == "sleep" else -9
    assert (job["state"], job["kill_reason"], job["exit_code"]) == ("ERROR_E", "KILLED", signal_seen), \
        pilot.describe(running)
    trace = [e["text"] for e in pilot.trace(running)]
    assert "the slot is ending: the payload gets SIGTERM, outputs are still uploaded" in trace
    # (The wrapper passes the SIGTERM on too, so a payload that honours it may be gone before the agent looks.)
    killed = r"0 exited on SIGTERM, 1 killed after 2 s" if mode == "ignore-term" else r"[01] exited on SIGTERM, 0 killed"
    kills = [t for t in trace if t.startswith("the slot is ending: payload terminated")]
    if mode == "ignore-term":
        assert any(re.match(rf"the slot is ending: payload terminated \({killed}", t) for t in kills), pilot.describe(running)
    else:
        # A payload that honours SIGTERM may be gone and reaped before the agent looks: then nothing is left to kill.
        assert all(re.match(rf"the slot is ending: payload terminated \({killed}", t) for t in kills), pilot.describe(running)
    assert "stage-out: complete (DONE)" in trace, pilot.describe(running)
    assert pilot.job(queued)["state"] == "WAITING"
    assert "stopping: SIGTERM from the batch system" in pilot.runner_log()
    pilot.assert_clean()


@pytest.mark.parametrize("cgroups", ["auto", "off"])
def test_processes_the_payload_leaves_behind_are_ended(pilot: Pilot, cgroups: str):
    """A payload that exits 0 but leaves a child in its session and a double-forked daemon in a new session: the
    job is DONE and neither survives it (with a job cgroup, it is emptied; without, the pilot's processes are
    child subreapers, so the daemon stays in the pilot's process tree where the cleanup finds it)."""
    job_id = pilot.submit(payload_jdl("daemon", 120))
    pilot.start(cores=1, cgroups=cgroups)
    (job,) = pilot.wait_final([job_id], timeout=30)
    assert (job["state"], job["exit_code"]) == ("DONE", 0), pilot.describe(job_id)
    assert not pilot.job_processes(job_id), pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def test_sigterm_to_every_process_of_the_slot(pilot: Pilot):
    """Slurm ends a job step by signalling all of its processes at once: runner, agent, wrapper and payload get
    SIGTERM together. The job still ends with a reported state and the runner exits STOPPED."""
    job_id = pilot.submit(payload_jdl("sleep", 120))
    pilot.start(cores=1)
    pilot.wait_state(job_id, ["RUNNING"])
    for p in pilot.marked_processes():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass  # one that ended between the listing and the signal (a runtime's helper process, say)
    assert pilot.wait_runner_exit(timeout=60) == exitcodes.STOPPED, pilot.runner_log()[-4000:]
    job = pilot.job(job_id)
    assert (job["state"], job["exit_code"]) == ("ERROR_E", -15), pilot.describe(job_id)
    assert job["kill_reason"] == "KILLED"
    pilot.assert_clean()

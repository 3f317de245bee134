"""Each rule the pilot enforces ends a purpose-built payload with the right state and kill reason (DESIGN.md, "Rules
the pilot enforces"), through a real JobRunner, JobAgents and JobWrappers against a real central on SQLite.

The rule jobs run together in one runner (one slot with a core each): that is how a node runs them, and it keeps the
module quick. The idle rule gets its own runner, because its short window would end every other sleeping payload.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List

import pytest

from support.pilot import STOPPED_OR_DONE, Pilot, payload_jdl, pilot_grid

FATAL = "[FATAL]: Monitor has detected an error:"

RULE_JOBS = {
    # TTL: wall time since RUNNING above the JDL's TTL; the payload honours SIGTERM.
    "ttl": payload_jdl("sleep", 60, TTL=3),
    # Memory: PSS + swap above 1.2 x MemorySize (64 MB -> 77 MB) while it holds 200 MB.
    "memory": payload_jdl("hog", 200, MemorySize="64MB"),
    # Disk: a 64 MB file in a work directory allowed 16 MB.
    "disk": payload_jdl("fill", 64, WorkDirectorySize="16MB"),
    # A core file in the work directory ends the job...
    "core": payload_jdl("core", 60),
    # ...unless the JDL says AbortOnCore = false: then the job runs on and ends DONE.
    "core_allowed": payload_jdl("core", 3, AbortOnCore=False),
    # The payload succeeds, its validation command exits 3.
    "validation": payload_jdl("echo", ValidationCommand="/bin/sh -c 'exit 3'"),
    # The payload succeeds without writing the output file its JDL requires.
    "missing_output": payload_jdl("echo", OutputFile=["result.root@disk=1"]),
    # Ignores SIGTERM: after ForcedKillTimeout the pilot sends SIGKILL.
    "forced_kill": payload_jdl("ignore-term", 60, TTL=3, ForcedKillTimeout=4),
}


@pytest.fixture(scope="module")
def rule_runs() -> Iterator[Dict[str, Dict[str, Any]]]:
    """Runs every RULE_JOBS job in one runner; per name: the final job, its trace entries and state changes."""
    with pilot_grid() as p:
        ids = {name: p.submit(jdl, name=name) for name, jdl in RULE_JOBS.items()}
        # Without kernel limits: with them the memory job is the kernel's (OOM_SYSTEM, test_pilot_oom.py), and here
        # the pilot's own memory rule is under test.
        p.start(cores=len(ids), cgroup_limits=False)
        final = p.wait_final(list(ids.values()), timeout=120)
        # The batch system ends the slot: the runner must end well and leave nothing behind.
        assert p.stop() in STOPPED_OR_DONE, p.runner_log()[-4000:]
        p.assert_clean()
        yield {
            name: {"job": job, "trace": p.trace(job["id"]), "states": [s for _, s in p.states(job["id"])],
                   "describe": p.describe(job["id"]), "pilot": p}
            for name, job in zip(ids, final)
        }


def texts(run: Dict[str, Any], category: str = "trace") -> List[str]:
    return [e["text"] for e in run["trace"] if e["category"] == category]


def assert_ended(run: Dict[str, Any], state: str, reason: str = "OK") -> None:
    job = run["job"]
    assert (job["state"], job["kill_reason"] or "OK") == (state, reason), run["describe"]
    if reason != "OK":
        # ALICE's text for the reason: in the trace, the job's JSON and `gridpilot job ID` (docs/kill-reasons.md).
        run["pilot"].assert_kill_reason_shown(job["id"], reason)
    # It really ran, and the agent cleaned up after it (verified again by rule_runs with psutil).
    assert "RUNNING" in run["states"], run["describe"]
    assert "cleanup: no process of the job is left" in texts(run), run["describe"]
    assert "cleanup: work directory deleted" in texts(run), run["describe"]


def fatal(run: Dict[str, Any]) -> str:
    lines = [t for t in texts(run) if t.startswith(FATAL)]
    assert len(lines) == 1, run["describe"]
    return lines[0]


def test_ttl(rule_runs):
    run = rule_runs["ttl"]
    assert_ended(run, "ERROR_E", "TTL")
    assert "longer than its TTL of 3 s" in fatal(run)
    # It honoured SIGTERM, so no SIGKILL was needed.
    assert any(re.search(r"payload terminated \(1 exited on SIGTERM, 0 killed", t) for t in texts(run)), run["describe"]
    assert run["states"][-2:] == ["RUNNING", "ERROR_E"]


def test_memory(rule_runs):
    run = rule_runs["memory"]
    assert_ended(run, "ERROR_E", "MEMORY_USAGE")
    assert "exceeds 1.2 x MemorySize" in fatal(run)


def test_disk(rule_runs):
    run = rule_runs["disk"]
    assert_ended(run, "ERROR_E", "DISK_USAGE")
    assert "more than WorkDirectorySize" in fatal(run)


def test_core_file(rule_runs):
    run = rule_runs["core"]
    assert_ended(run, "ERROR_E", "CORE_DUMP")
    assert re.search(r"core file\(s\) in the work directory: core\.\d+", fatal(run))


def test_core_file_allowed_by_abort_on_core_false(rule_runs):
    run = rule_runs["core_allowed"]
    assert_ended(run, "DONE")
    assert run["job"]["exit_code"] == 0
    assert not any(t.startswith(FATAL) for t in texts(run)), run["describe"]
    assert run["states"][-3:] == ["RUNNING", "SAVING", "DONE"]


def test_validation_failure(rule_runs):
    run = rule_runs["validation"]
    assert_ended(run, "ERROR_V")
    assert "validation command exited with 3" in texts(run), run["describe"]


def test_missing_output(rule_runs):
    run = rule_runs["missing_output"]
    assert_ended(run, "ERROR_S")
    assert "[FATAL]: required output file(s) missing: result.root" in texts(run), run["describe"]
    assert run["states"][-3:] == ["RUNNING", "SAVING", "ERROR_S"]


def test_payload_ignoring_sigterm_is_killed_after_forced_kill_timeout(rule_runs):
    run = rule_runs["forced_kill"]
    assert_ended(run, "ERROR_E", "TTL")
    # When the agent wrote each line (central dates a line when it takes it, which may be in one batch with others).
    by_text = {e["text"]: e["reported_ts"] for e in run["trace"] if e["reported_ts"] is not None}
    fatal_ts = by_text[fatal(run)]
    (killed,) = [t for t in texts(run) if t.startswith("limit exceeded (TTL): payload terminated")]
    assert re.search(r"\(0 exited on SIGTERM, 1 killed after 4 s, 0 survivors\)", killed), killed
    # SIGKILL came after the grace, not before it (and not much later either).
    assert 3.8 <= by_text[killed] - fatal_ts < 15, run["describe"]


def test_idle_payload(pilot: Pilot):
    job_id = pilot.submit(payload_jdl("sleep", 60))
    pilot.start(cores=1, idle_window_s=3)
    (job,) = pilot.wait_final([job_id], timeout=60)
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "IDLE_CPU"), pilot.describe(job_id)
    pilot.assert_kill_reason_shown(job_id, "IDLE_CPU")
    trace = [e["text"] for e in pilot.trace(job_id)]
    assert any(t.startswith(FATAL) and "less than 10% of 1 core(s)" in t for t in trace), pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()

"""What the JobWrapper uploads after a limit kill, and when it stops starting uploads (pilot/killupload.py), and the
bounds of the grace it has for it (ttl_upload_grace)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest

from gridpilot.config import load_config
from gridpilot.errors import ConfigError
from gridpilot.pilot import killupload
from gridpilot.pilot.killupload import GRACE_OVER, MISSING, Outcome
from gridpilot.storage.transfers import OutputSpec

RESULT = OutputSpec("result.txt")
ABSENT = OutputSpec("absent.txt")
ARCHIVE = OutputSpec("out.zip", ("*.root",))
LOGS = OutputSpec("log_archive.zip", ("stdout", "stderr"))


def test_plan_puts_outputs_before_logs_marks_missing_files_and_takes_a_name_once() -> None:
    steps = killupload.plan([RESULT, ABSENT, ARCHIVE], [LOGS, OutputSpec("result.txt", ("x",))],
                            exists=lambda name: name == "result.txt")
    assert steps == [(RESULT, None), (ABSENT, MISSING), (ARCHIVE, None), (LOGS, None)]


class Clock:
    """Time advances only when an upload takes some."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_no_upload_starts_once_the_grace_is_over_and_the_agent_always_knows_what_is_left() -> None:
    clock = Clock()
    announced: List[Tuple[List[str], Optional[str]]] = []

    def upload(spec: OutputSpec) -> Optional[str]:
        clock.now += 6.0  # each upload takes 6 s of a 10 s grace: the second ends past it, the third never starts
        return killupload.FAILED if spec.name == "out.zip" else None

    steps = killupload.plan([RESULT, ABSENT, ARCHIVE], [LOGS], exists=lambda name: name != "absent.txt")
    outcomes = killupload.run(steps, deadline=10.0, clock=clock, upload=upload,
                              announce=lambda pending, current: announced.append((pending, current)))
    assert outcomes == [
        Outcome("result.txt", True),
        Outcome("absent.txt", False, MISSING),
        Outcome("out.zip", False, killupload.FAILED),
        Outcome("log_archive.zip", False, GRACE_OVER),
    ]
    assert announced == [
        (["result.txt", "out.zip", "log_archive.zip"], "result.txt"),
        (["out.zip", "log_archive.zip"], "out.zip"),
        ([], None),
    ]
    assert killupload.summary(outcomes) == (
        "After the kill: uploaded: result.txt; not uploaded: absent.txt (missing), out.zip (failed), log_archive.zip "
        "(upload grace over)")


def test_a_grace_over_before_the_first_upload_uploads_nothing() -> None:
    steps = killupload.plan([RESULT], [LOGS], exists=lambda name: True)
    outcomes = killupload.run(steps, deadline=5.0, clock=lambda: 5.0, upload=lambda spec: pytest.fail("uploaded"))
    assert killupload.summary(outcomes) == ("After the kill: uploaded: nothing; not uploaded: result.txt (upload "
                                            "grace over), log_archive.zip (upload grace over)")


def test_a_central_kill_during_the_grace_stops_the_uploads_not_started() -> None:
    steps = killupload.plan([RESULT], [LOGS], exists=lambda name: True)
    killed = {"now": False}

    def upload(spec: OutputSpec) -> Optional[str]:
        killed["now"] = True  # central's kill comes while the first upload runs
        return None

    outcomes = killupload.run(steps, deadline=100.0, clock=lambda: 0.0, upload=upload,
                              stop=lambda: killupload.KILLED if killed["now"] else None)
    assert outcomes == [Outcome("result.txt", True), Outcome("log_archive.zip", False, killupload.KILLED)]


def test_what_the_agent_says_when_it_kills_the_wrapper_at_the_end_of_the_grace() -> None:
    assert killupload.lost_at_kill(["result.txt", "log_archive.zip"], "result.txt") == (
        "not uploaded: result.txt (its upload was under way), log_archive.zip (not started)")
    assert killupload.lost_at_kill([], None) == "nothing was left to upload"


def test_upload_grace_defaults_to_alices_hour_and_is_bounded(tmp_path) -> None:
    env = {"GRIDPILOT_STATE_DIR": str(tmp_path)}
    assert load_config(environ=env).ttl_upload_grace == 3600
    assert load_config(environ={**env, "GRIDPILOT_TTL_UPLOAD_GRACE": "30"}).ttl_upload_grace == 30
    for bad in ("0", "21601"):
        with pytest.raises(ConfigError, match="GRIDPILOT_TTL_UPLOAD_GRACE"):
            load_config(environ={**env, "GRIDPILOT_TTL_UPLOAD_GRACE": bad})


def test_the_final_state_after_a_kill_is_the_limits_or_killed_whatever_the_wrapper_uploaded() -> None:
    """pilot/finalstate.py: a limit's breach wins over the wrapper's result (ERROR_E after its uploads, or even a
    central kill during the grace); a central kill ends the job KILLED, whatever the wrapper said."""
    from gridpilot.pilot.finalstate import outcome
    from gridpilot.pilot.rules import Breach
    from gridpilot.states import JobStatus, KillReason

    ttl = Breach(KillReason.TTL, "job ran 4 s, longer than its TTL of 3 s")
    after_uploads = {"state": "ERROR_E", "kill_reason": "OK", "exit_code": -15}
    assert outcome(JobStatus.RUNNING, gave_back=False, breach=ttl, killed_by_central=False, final=after_uploads,
                   stop_requested=False) == (JobStatus.ERROR_E, KillReason.TTL, -15)
    assert outcome(JobStatus.RUNNING, gave_back=False, breach=ttl, killed_by_central=True, final=None,
                   stop_requested=False)[:2] == (JobStatus.ERROR_E, KillReason.TTL)
    killed = {"state": "KILLED", "kill_reason": "KILLED", "exit_code": -15}
    assert outcome(JobStatus.RUNNING, gave_back=False, breach=None, killed_by_central=True, final=killed,
                   stop_requested=False) == (JobStatus.KILLED, KillReason.KILLED, -15)
    # A wrapper the agent had to kill after the central kill (no result) ends KILLED too.
    assert outcome(JobStatus.RUNNING, gave_back=False, breach=None, killed_by_central=True, final=None,
                   stop_requested=False)[:2] == (JobStatus.KILLED, KillReason.KILLED)

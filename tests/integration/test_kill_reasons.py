"""The kill reasons the pilot decides before the payload runs, each produced by a real failure through a real central,
runner, agent and wrapper (docs/kill-reasons.md has the whole table):

- SANDBOX_CREATE (201): the job's work directory exists but cannot be written to (chattr +i as root, mode 0555
  otherwise), so the agent cannot make its sandbox; or the JobWrapper cannot be launched in it (its log, wrapper.log,
  is a directory), after the job cgroups were made, which must go too;
- INPUT_FILES (202): the job's input file is in the catalogue, but its only replica is gone from the storage element;
- JOBBROKER (301): the JDL the broker hands out is not one the pilot can read (the queue's copy was damaged after
  central accepted it at submission).

Each case asserts the final state, the kill reason with ALICE's text in the trace, the job's JSON and `gridpilot job
ID`, and that the slot goes on: a healthy job submitted after the failure runs DONE on the same runner. Central is
told not to resubmit (max_auto_resubmits 0): these end states are ones central otherwise retries elsewhere.

The reasons decided while the payload runs are proven where their rules are: TTL, MEMORY_USAGE and DISK_USAGE in
test_pilot_rules.py, OOM_SYSTEM in test_pilot_oom.py; PACKAGES in the packages tests.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from sqlalchemy import update

from gridpilot import exitcodes
from gridpilot.central import schema
from gridpilot.states import JobStatus, KillReason
from support.pilot import STOPPED_OR_DONE, Pilot, pilot_grid, shell_jdl
from support.unwritable import make_unwritable

LFN = "/gridpilot/test/killreasons/in.txt"


@pytest.fixture
def pilot() -> Iterator[Pilot]:
    with pilot_grid(central={"max_auto_resubmits": 0}) as p:
        yield p


@dataclass
class Case:
    name: str
    reason: str
    state: str
    #: Makes the failure for the job just submitted (before the runner starts); returns the undo.
    make: Callable[[Pilot, int], Callable[[], None]]
    #: What one line of the trace must hold to say what failed.
    says: Callable[[Pilot, int], List[str]]
    jdl: str = shell_jdl("echo hello")


def _sandbox(p: Pilot, job_id: int) -> Callable[[], None]:
    workdir = p.workroot / f"alien-job-{job_id}"
    workdir.mkdir(parents=True)
    undo = make_unwritable(workdir)

    def cleanup() -> None:
        undo()
        shutil.rmtree(workdir)
    return cleanup


def _launch(p: Pilot, job_id: int) -> Callable[[], None]:
    # Only the wrapper's log is in the way: the work directory and the job cgroups are made, the launch fails.
    (p.workroot / f"alien-job-{job_id}" / "wrapper.log").mkdir(parents=True)
    return lambda: None


def _input_gone(p: Pilot, job_id: int) -> Callable[[], None]:
    se = p.grid.state_dir / "se"
    stored = [f for f in se.rglob("*") if f.is_file()]
    assert len(stored) == 1, stored
    stored[0].unlink()
    return lambda: None


def _damaged_jdl(p: Pilot, job_id: int) -> Callable[[], None]:
    with p.grid.central.db.write() as conn:
        conn.execute(update(schema.jobs).where(schema.jobs.c.id == job_id).values(jdl="Executable = ;\n"))
    return lambda: None


CASES: List[Case] = [
    Case("unwritable_workdir", "SANDBOX_CREATE", "ERROR_A", _sandbox,
         lambda p, i: ["Workdir for job could not be created", str(p.workroot / f"alien-job-{i}")]),
    Case("wrapper_launch", "SANDBOX_CREATE", "ERROR_A", _launch,
         lambda p, i: ["Error starting JobWrapper", str(p.workroot / f"alien-job-{i}" / "wrapper.log")]),
    Case("input_gone", "INPUT_FILES", "ERROR_IB", _input_gone,
         lambda p, i: ["input files could not be staged", LFN, "all 1 replicas failed", "no such file"],
         jdl=shell_jdl("cat in.txt", InputFile=[f"LF:{LFN}"])),
    # Central's state line carries the agent's message: the parser's complaint about the JDL.
    Case("damaged_jdl", "JOBBROKER", "ERROR_A", _damaged_jdl,
         lambda p, i: ["kill reason JOBBROKER", "expected a value for 'Executable'"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_real_failure_ends_the_job_with_its_kill_reason(pilot: Pilot, tmp_path: Path, case: Case) -> None:
    grid = pilot.grid
    data = tmp_path / "in.txt"
    data.write_text("input\n")
    grid.register_local_file(data, LFN)
    job_id = pilot.submit(case.jdl, name=case.name)
    undo = case.make(pilot, job_id)
    try:
        runner = pilot.start(cores=1)
        (job,) = pilot.wait_final([job_id], timeout=90)
        described = pilot.describe(job_id)
        assert (job["state"], job["kill_reason"]) == (case.state, case.reason), described
        # The pilot reported the end itself, at once: not the sweeper finding a silent job.
        states = [s for _, s in pilot.states(job_id) if s in JobStatus.__members__]
        assert states[-2:] == ["STARTED", case.state] and "ZOMBIE" not in states, described
        assert "RUNNING" not in states, described
        says = case.says(pilot, job_id)
        assert any(all(part in e["text"] for part in says) for e in pilot.trace(job_id)), \
            f"no line holding {says!r}\n{described}"
        pilot.assert_kill_reason_shown(job_id, case.reason)
        if case.reason == "SANDBOX_CREATE":
            # What failed is the job's message too, so `gridpilot job ID` says it.
            assert all(part in job["message"] for part in says), job
        # The agent ended well and the slot goes on: the next job runs on the same runner.
        assert f"job {job_id} ended {case.state}" in pilot.runner_log(), described
        next_id = pilot.submit(shell_jdl("echo after"), name="after")
        (after,) = pilot.wait_final([next_id], timeout=90)
        assert after["state"] == "DONE", pilot.describe(next_id)
        assert runner.poll() is None, pilot.runner_log()[-4000:]
        assert pilot.stop() in STOPPED_OR_DONE
    finally:
        undo()
    pilot.assert_clean()


def test_a_node_that_cannot_make_sandboxes_stops_matching() -> None:
    """Every job's work directory fails (the whole work root turned unwritable after the runner checked it at
    start-up): each attempt ends SANDBOX_CREATE at once, central gives the job back (ERROR_A before RUNNING, at most 3
    times), and after three such quick failures in a row the runner stops matching, exiting NODE_UNUSABLE, instead of
    draining the queue through a broken node."""
    with pilot_grid() as p:
        runner = p.start(cores=1, max_empty_matches=100)
        deadline = time.monotonic() + 60
        while "JobRunner on" not in p.runner_log():  # past its start-up check of the work root
            assert runner.poll() is None and time.monotonic() < deadline, p.runner_log()[-4000:]
            time.sleep(0.1)
        undo = make_unwritable(p.workroot)
        try:
            job_id = p.submit(shell_jdl("echo hello"))
            assert p.wait_runner_exit(timeout=90) == exitcodes.NODE_UNUSABLE, p.runner_log()[-4000:]
        finally:
            undo()
        assert "nodeBad: 3 jobs in a row failed" in p.runner_log(), p.runner_log()[-4000:]
        job = p.job(job_id)
        # Three attempts, each given back by central; the job waits for a healthy node.
        assert (job["state"], job["resubmission"]) == ("WAITING", 3), p.describe(job_id)
        texts = [e["text"] for e in p.trace(job_id)]
        assert texts.count(f"Kill reason {KillReason.SANDBOX_CREATE.describe()}") == 3, p.describe(job_id)
        assert sum(t.startswith("ERROR_A: reported by") and "kill reason SANDBOX_CREATE" in t for t in texts) == 3
        assert runner.returncode == exitcodes.NODE_UNUSABLE
        # Central counted them against the host too (issue 18 §5: nodeBad at central).
        (node,) = p.grid.admin.nodes()["nodes"]
        assert set(node["failures_by_kind"]) == {"sandbox_create"}, node

"""The computing element against a real single-node Slurm 22.05 (tests/support/slurm_cluster.py): jobs submitted to
central, pilots submitted by the CE through sbatch, jobs matched and run by those pilots, each job's trace naming the
Slurm job that ran it; a pilot cancelled mid-job ends its job and leaves no process."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from support.ce import CE, ce_grid, shell_jdl

from gridpilot.ce.backend import FAILED, HELD, PilotSubmission, Resources
from gridpilot.ce.factory import RECORD_NAME
from gridpilot.ce.slurm import SlurmBackend
from gridpilot.errors import BatchError


@pytest.fixture
def grid(slurm_cluster):
    # Under /tmp, world-readable: slurmd starts the pilots in their directories and they write their outputs there.
    with tempfile.TemporaryDirectory(prefix="gridpilot-ce-slurm-") as tmp:
        with ce_grid(Path(tmp)) as g:
            yield g


def test_pilots_through_slurm_run_the_jobs_and_each_trace_names_its_slurm_job(grid, slurm_cluster):
    ids = [grid.user.submit(shell_jdl(f"echo job {i}; sleep 1")) for i in range(3)]
    f = grid.factory("slurm")
    first = f.cycle()
    assert not first.errors, first.errors
    assert sum(first.waiting.values()) == 3
    assert len(first.submitted) == 3, first.summary()
    pilot_ids = {p.batch_id for p in first.submitted}
    assert all(re.fullmatch(r"\d+", b) for b in pilot_ids)
    # The pilots are real Slurm jobs of this CE, with the shape asked for.
    for b in pilot_ids:
        out = subprocess.run(["scontrol", "--oneliner", "show", "job", b], capture_output=True, text=True,
                             check=True).stdout
        assert f"JobName={f.backend.job_name}" in out and "NumCPUs=1" in out and "TimeLimit=00:15:00" in out, out
    jobs = grid.wait_jobs(f, ids, {"DONE"}, timeout=120)
    assert [j["state"] for j in jobs] == ["DONE"] * 3
    for j in jobs:
        trace = grid.trace_text(j["id"])
        m = re.search(r'BatchId SLURM_JOB_ID = "(\d+)"', trace)
        assert m, f"job {j['id']}'s trace names no Slurm job:\n{trace}"
        assert m.group(1) in pilot_ids, f"job {j['id']} ran in Slurm job {m.group(1)}, not one of {pilot_ids}"
    # The pilots end after a few empty matches; the CE sees them finish and says so to central.
    grid.drive(f, lambda: not f.pilots, 90, "pilots finished")
    last = f.cycle()
    assert last.counts["finished"] == 3 and last.counts["queued"] == last.counts["running"] == 0, last.summary()
    assert f.ended_reasons == {"ok": 3}, "each pilot's script recorded its runner's exit 0 in pilot.exit"
    assert 'gridpilot_ce_pilots{ce="%s",site="GRIDPILOT::CETEST",state="finished"} 3' % CE in grid.admin.metrics()
    # The token files went with the pilots.
    assert not list(Path(f.settings.pilot_dir).glob("*/agent.token"))
    assert not grid.leftovers()


def test_scancel_of_a_pilot_mid_job_ends_the_job_and_leaves_no_process(grid, slurm_cluster):
    job_id = grid.user.submit(shell_jdl("sleep 600"))
    f = grid.factory("slurm")
    grid.wait_jobs(f, [job_id], {"RUNNING"}, timeout=90)
    (pilot,) = f.pilots.values()
    assert grid.job(job_id)["state"] == "RUNNING"
    f.backend.remove(pilot.batch_id)  # scancel
    job = grid.wait_jobs(f, [job_id], {"ERROR_E", "WAITING"}, timeout=90)[0]
    assert job["state"] == "ERROR_E", grid.trace_text(job_id)  # it was RUNNING: it does not go back
    assert not grid.leftovers(wait_s=30), "processes of the cancelled pilot are left"
    grid.drive(f, lambda: not f.pilots, 60, "the cancelled pilot seen as ended")
    assert f.ended[FAILED] == 1
    assert sum(f.ended_reasons.values()) == 1 and "unknown" not in f.ended_reasons, f.ended_reasons


def wait_job_state(grid, f, job_id, states, timeout):
    """Poll central, without CE cycles (which would submit pilots for a job back in WAITING)."""
    deadline = time.monotonic() + timeout
    while True:
        job = grid.job(job_id)
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, (f"job {job_id} still {job['state']}:\n{grid.trace_text(job_id)}\n"
                                             f"{grid.pilot_outputs(f, tail=8000)}")
        time.sleep(0.3)


def test_scancel_of_a_pilot_before_its_payload_ran_puts_the_job_back_and_leaves_no_process(grid, slurm_cluster):
    """The job is matched and STARTED, but its wrapper is still staging its input in (from a FIFO no one writes:
    the copy blocks in open()), so the payload never ran: cancelling the pilot gives the job back to the queue."""
    se_dir = grid.base / "se-stall"
    se_dir.mkdir()
    fifo = se_dir / "never-written"
    os.mkfifo(fifo)
    grid.admin.add_storage_element("CETEST::STALL", se_dir.as_uri())
    grid.admin.register_file(lfn="/cetest/stall/input", size=5, se="CETEST::STALL", pfn=fifo.as_uri())
    job_id = grid.user.submit(shell_jdl("cat input") + 'InputFile = { "LF:/cetest/stall/input" };\n')
    f = grid.factory("slurm")
    grid.wait_jobs(f, [job_id], {"STARTED"}, timeout=90)
    (pilot,) = f.pilots.values()
    time.sleep(1)  # let the wrapper reach the blocking open
    assert grid.job(job_id)["state"] == "STARTED", grid.trace_text(job_id)
    f.backend.remove(pilot.batch_id)  # scancel
    job = wait_job_state(grid, f, job_id, {"WAITING", "ERROR_E", "ERROR_IB", "ZOMBIE"}, timeout=90)
    trace = grid.trace_text(job_id)
    assert job["state"] == "WAITING", trace
    assert "goes back to the queue" in trace and "RUNNING" not in trace, trace
    assert not grid.leftovers(wait_s=30), "processes of the cancelled pilot are left"
    grid.drive(f, lambda: pilot.batch_id not in f.pilots, 60, "the cancelled pilot seen as ended")
    for p in list(f.pilots.values()):  # pilots submitted meanwhile for the job back in WAITING
        f.backend.remove(p.batch_id)


def test_scancel_of_a_pilot_that_has_no_job_yet_leaves_no_process(grid, slurm_cluster):
    f = grid.factory("slurm", environment={"GRIDPILOT_MAX_EMPTY_MATCHES": "1000"})
    (shape,) = f.shapes
    pilot = f.submit_one(shape)  # no job waits: its runner keeps matching, in vain
    grid.drive(f, lambda: f.pilots[pilot.batch_id].state == "running", 60, "the pilot running")
    deadline = time.monotonic() + 30
    while not grid.marked_processes():
        assert time.monotonic() < deadline, "the pilot's runner did not start"
        time.sleep(0.2)
    # Its processes are in this cluster's own cgroups (slurm_<its node>), which no other test session's cluster on
    # this host shares, nor removes when it stops.
    mine = list(Path("/sys/fs/cgroup").glob(f"*/slurm_{slurm_cluster.node}/uid_*/job_{pilot.batch_id}"))
    assert mine and slurm_cluster.node != slurm_cluster.host, list(Path("/sys/fs/cgroup").glob("*/slurm_*"))
    f.backend.remove(pilot.batch_id)
    assert not grid.leftovers(wait_s=30), "processes of the cancelled pilot are left"
    grid.drive(f, lambda: not f.pilots, 60, "the cancelled pilot seen as ended")
    assert f.ended[FAILED] == 1
    assert not (pilot.directory / "agent.token").exists()


def test_a_pilot_stuck_in_the_queue_is_removed(grid, slurm_cluster):
    """A pilot Slurm may not start for an hour (--begin) stays PENDING; past max_queue_time the CE removes it."""
    grid.user.submit(shell_jdl("true"))
    f = grid.factory("slurm", slurm_args=["--begin=now+3600"], max_queue_time=2.0)
    first = f.cycle()
    assert len(first.submitted) == 1 and not first.errors, (first.summary(), first.errors)
    reports = grid.drive(f, lambda: bool(f.ended), 60, "the stuck pilot removed")
    removed = [b for r in reports for b in r.removed]
    assert removed == [first.submitted[0].batch_id]
    assert f.ended[FAILED] == 1  # CANCELLED
    # Work still waits: a new pilot took its place, and only one is queued at a time for the one job.
    later = [p.batch_id for r in reports for p in r.submitted]
    assert len(later) == 1 and later[0] != removed[0], [r.summary() for r in reports]
    f.backend.remove(later[0])


def test_a_held_pilot_is_removed_past_max_queue_time(grid, slurm_cluster):
    """Held (sbatch --hold: PENDING, reason JobHeldUser) is not queued, but as stuck: removed, with the reason."""
    grid.user.submit(shell_jdl("true"))
    f = grid.factory("slurm", slurm_args=["--hold"], max_queue_time=2.0)
    first = f.cycle()
    (held,) = first.submitted
    reports = grid.drive(f, lambda: held.batch_id not in f.pilots, 60, "the held pilot removed")
    assert reports[0].counts[HELD] == 1, reports[0].summary()
    # A held pilot is not on its way: each cycle submits another for the waiting job (held as well, here).
    (removal,) = [r for r in reports if held.batch_id in r.removed]
    why = removal.removal_reasons[held.batch_id]
    assert why.startswith("held ") and "after its submission, past max_queue_time 2 s" in why
    assert f"{held.batch_id}: held " in removal.summary()
    # The pilot never ran, so its script never deleted its token: the CE did.
    assert not (held.directory / "agent.token").exists()
    for p in list(f.pilots.values()):  # its replacement, held as well
        f.backend.remove(p.batch_id)


def test_a_restarted_ce_takes_back_its_queued_pilots_and_removes_them_when_stuck(grid, slurm_cluster):
    """Two CE processes in sequence on one pilot directory. The second counts the first one's pilots (still
    PENDING in Slurm) as on their way, so it submits none for the same jobs; it removes them once they are stuck,
    and deletes their tokens, which their scripts (never started) could not."""
    for _ in range(2):
        grid.user.submit(shell_jdl("true"))
    later = ["--begin=now+3600"]  # Slurm keeps them PENDING: a queue that does not move
    first = grid.factory("slurm", slurm_args=later)
    r1 = first.cycle()
    assert len(r1.submitted) == 2 and not r1.errors, (r1.summary(), r1.errors)
    earlier = {p.batch_id: p for p in r1.submitted}
    # The first CE process is gone (no close: Slurm's pilots are not the CE's to end); a new one starts.
    second = grid.factory("slurm", slurm_args=later, max_queue_time=4.0)
    r2 = second.cycle()
    assert {p.batch_id for p in r2.adopted} == set(earlier), r2.summary()
    assert not r2.submitted, f"submitted more pilots for jobs that have theirs: {r2.summary()}"
    assert {p.name for p in r2.adopted} == {p.name for p in earlier.values()}
    reports = grid.drive(second, lambda: all(b not in second.pilots for b in earlier), 60,
                         "the adopted pilots removed as stuck")
    removed = {b for r in reports for b in r.removed}
    assert set(earlier) <= removed, [r.summary() for r in reports]
    for p in earlier.values():
        assert not (p.directory / "agent.token").exists(), f"the token of {p.batch_id} outlived it"
        rec = json.loads((p.directory / RECORD_NAME).read_text())
        assert rec["state"] == FAILED and rec["ended"], rec
    for p in list(second.pilots.values()):  # the replacements, as stuck as the pilots they replaced
        second.backend.remove(p.batch_id)


def test_sbatch_refusing_is_a_clear_error(slurm_cluster, tmp_path):
    backend = SlurmBackend(CE, partition="no-such-partition")
    script = tmp_path / "pilot.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    pilot = PilotSubmission(script=script, resources=Resources(1, 100, 60), name="p1", output=tmp_path / "out",
                            workdir=tmp_path)
    with pytest.raises(BatchError) as e:
        backend.submit(pilot)
    text = str(e.value)
    assert "submitting pilot p1" in text and "sbatch" in text and "no-such-partition" in text


def test_a_pilot_slurm_no_longer_knows_has_no_state_without_accounting(slurm_cluster):
    # scontrol: "Invalid job id specified"; sacct: "Slurm accounting storage is disabled" (accounting is off here).
    backend = SlurmBackend(CE)
    assert backend.state_of("999999") is None
    assert backend._sacct is False, "sacct is not asked again once it said there is no accounting"


def test_a_gpu_pilot_is_not_started_where_slurm_has_no_gpus(slurm_cluster, tmp_path):
    """This cluster declares no GRES (no GresTypes, no Gres= on its node): sbatch refuses --gres=gpu:N at once,
    and the CE says so with Slurm's own words, rather than leaving a pilot pending for GPUs that do not exist."""
    backend = SlurmBackend(CE)
    script = tmp_path / "pilot.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    pilot = PilotSubmission(script=script, resources=Resources(1, 100, 60, gpus=1), name="gpu1",
                            output=tmp_path / "out", workdir=tmp_path)
    with pytest.raises(BatchError) as e:
        backend.submit(pilot)
    text = str(e.value)
    assert "submitting pilot gpu1" in text and "--gres=gpu:1" in text, text
    assert re.search(r"Invalid generic resource \(gres\) specification", text), text
    assert "gpu1" not in subprocess.run(["squeue", "--noheader", "--format=%k"], capture_output=True, text=True,
                                        check=True).stdout


@pytest.mark.parametrize("body, code", [("exit 7", 7), ("kill -9 $$", -9)])
def test_slurm_gives_the_exit_status_of_a_pilot_that_recorded_none(slurm_cluster, body, code):
    """What the CE falls back on when a pilot's script could not write pilot.exit: Slurm's ExitCode (status, or
    the signal that ended the batch script)."""
    with tempfile.TemporaryDirectory(prefix="gridpilot-ce-slurm-") as tmp:
        os.chmod(tmp, 0o755)
        backend = SlurmBackend(CE)
        script = Path(tmp) / "pilot.sh"
        script.write_text(f"#!/bin/sh\n{body}\n")
        pilot = PilotSubmission(script=script, resources=Resources(1, 100, 60), name="exit1", output=Path(tmp) / "out",
                                workdir=Path(tmp))
        bid = backend.submit(pilot)
        deadline = time.monotonic() + 90
        while backend.states().get(bid) not in ("finished", "failed"):
            assert time.monotonic() < deadline, backend.states()
            time.sleep(0.3)
        assert backend.exit_code(bid) == code


def test_a_per_arch_shape_goes_to_the_nodes_of_its_feature(slurm_cluster, tmp_path):
    """A mixed-arch site's per-arch shapes: this cluster's node has its arch as a feature; a pilot of this arch's
    shape is placed by --constraint (Slurm records it), one of another arch's is refused by Slurm (no such node),
    in Slurm's own words, rather than started on a node it cannot run on."""
    arch = platform.machine()
    other = "aarch64" if arch != "aarch64" else "x86_64"
    backend = SlurmBackend(CE)
    script = tmp_path / "pilot.sh"
    script.write_text("#!/bin/sh\ntrue\n")

    def pilot(name: str, shape: Resources) -> PilotSubmission:
        return PilotSubmission(script=script, resources=shape, name=name, output=tmp_path / f"{name}.out",
                               workdir=tmp_path)

    bid = backend.submit(pilot("here", Resources(1, 100, 60, arch=arch, constraint=arch)))
    try:
        out = subprocess.run(["scontrol", "--oneliner", "show", "job", bid], capture_output=True, text=True,
                             check=True).stdout
        assert f"Features={arch} " in out, out
    finally:
        backend.remove(bid)
    with pytest.raises(BatchError) as e:
        backend.submit(pilot("there", Resources(1, 100, 60, arch=other, constraint=other)))
    text = str(e.value)
    assert f"--constraint={other}" in text and "Invalid feature specification" in text, text


def test_a_ce_of_per_arch_shapes_runs_the_job_on_a_node_of_its_arch(grid, slurm_cluster):
    arch = platform.machine()
    job = grid.user.submit(shell_jdl("echo on my arch"))
    f = grid.factory("slurm", shapes=[{"arch": arch, "constraint": arch}])
    first = f.cycle()
    assert not first.errors and len(first.submitted) == 1, first.summary()
    (p,) = first.submitted
    assert p.shape.label().endswith(f"/{arch}[{arch}]")
    out = subprocess.run(["scontrol", "--oneliner", "show", "job", p.batch_id], capture_output=True, text=True,
                         check=True).stdout
    assert f"Features={arch} " in out, out
    (done,) = grid.wait_jobs(f, [job], {"DONE"}, timeout=120)
    assert done["state"] == "DONE"
    grid.drive(f, lambda: not f.pilots, 90, "pilot finished")

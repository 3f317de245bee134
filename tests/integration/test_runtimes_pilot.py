"""A real job end to end through the pilot in each runtime (Podman, bubblewrap, none with `unshare`): it reaches
DONE with its output, the trace names the runtime, the payload sees itself in its own PID namespace, the agent
token never reaches it, and nothing of the job is left. Also: a node that requires containers and has none refuses
to match."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

from support import runtimes
from support.require import require_or_skip
from gridpilot import exitcodes
from support.pilot import MARK_VAR, FAST, shell_jdl

#: The payload prints its own pid (a namespace pid: small), where it runs, whether the agent token variable reached
#: it, and whether it can see the runner (it cannot, in its own PID namespace).
SCRIPT = ('echo pid=$$; echo cwd=$(pwd); echo token=${GRIDPILOT_TOKEN:-none}; echo tmpdir=$TMPDIR; '
          'echo procs=$(ls /proc | grep -c -x -E [0-9]+)')
#: In a container, also: what the payload is told about the container it runs in (for a container it would start
#: itself), and a file written to /tmp/x, to be found in the work directory's tmp (only in a container: without one
#: /tmp is the node's).
IN_CONTAINER = SCRIPT + ('; echo image=${JOB_CONTAINER_PATH:-none}; echo runtime=${GRIDPILOT_CONTAINER_RUNTIME:-none}; '
                         'echo binary=${FORCE_BINPATH:-none}; echo nested=${DISABLE_NESTED_CONTAINERS-unset}; '
                         'echo hint=${SITE_HINT:-none}; echo data=$(cat /data/in.txt 2>/dev/null); '
                         'echo from-the-payload > /tmp/x')


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


def _run(pilot, env: Optional[Dict[str, str]] = None, script: str = SCRIPT, **cfg) -> tuple:
    job_id = pilot.submit(shell_jdl(script, OutputFile=["stdout@disk=1"]))
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


def _kept_workdir(pilot) -> Path:
    """The one work directory a job left (keep_workdir), for the test to look in; removed by _remove."""
    (workdir,) = pilot.workroot.glob("alien-job-*")
    return workdir


def _assert_tmp_in_workdir(pilot, trace: str, runtime: str, image: str) -> None:
    """/tmp/x written by the payload is <workdir>/tmp/x on the host, and the trace said /tmp would be that; then the
    kept work directory goes, so the pilot leaves nothing behind."""
    workdir = _kept_workdir(pilot)
    try:
        assert (workdir / "tmp" / "x").read_text() == "from-the-payload\n"
        assert f"Container runtime {runtime} (" in trace, trace
        assert f"), image {image}; /tmp inside is the job's {workdir}/tmp" in trace, trace
    finally:
        shutil.rmtree(workdir)


@pytest.mark.parametrize("runtime", ["podman", "bwrap"])
def test_job_runs_in_container(pilot, image_dir, runtime):
    if shutil.which(runtime) is None:
        require_or_skip(f"no {runtime} (Debian package {'podman runc' if runtime == 'podman' else 'bubblewrap'})")
    trace, out = _run(pilot, script=IN_CONTAINER, container_runtime=runtime, default_image=str(image_dir),
                      keep_workdir=True)
    assert f"Support for containers detected. Will use: {runtime}" in trace, trace
    assert out["cwd"] == "/workdir" and out["tmpdir"] == "/workdir/tmp", out
    # What a container the payload starts itself needs: the same image and runtime (no binary: not Apptainer).
    assert (out["image"], out["runtime"], out["binary"], out["nested"]) == (str(image_dir), runtime, "none", "unset")
    assert ("Nested containers get the same image and runtime: "
            f"JOB_CONTAINER_PATH={image_dir}, GRIDPILOT_CONTAINER_RUNTIME={runtime}") in trace, trace
    _assert_fenced(out)
    _assert_tmp_in_workdir(pilot, trace, runtime, str(image_dir))
    pilot.assert_clean()


def test_job_runs_in_apptainer(pilot, image_dir):
    """A real job through Apptainer, where it is installed (EL9: `dnf install epel-release && dnf install
    apptainer`, docs/pilot.md). Not packaged for Debian 12: a plain skip naming the missing binary, which CI accepts
    (as test_runtimes_real.test_apptainer_real_run); the command line and environment are tested exactly in
    tests/unit/test_containers_nesting.py."""
    binary = shutil.which("apptainer")
    if binary is None:
        pytest.skip("no apptainer in PATH: Apptainer is not packaged for Debian 12; its command line and the "
                    "environment it hands down are tested in tests/unit/test_containers_nesting.py")
    trace, out = _run(pilot, script=IN_CONTAINER, container_runtime="apptainer", default_image=str(image_dir),
                      keep_workdir=True)
    assert "Support for containers detected. Will use: apptainer" in trace, trace
    assert out["cwd"] == "/workdir" and out["tmpdir"] == "/workdir/tmp", out
    assert (out["image"], out["runtime"]) == (str(image_dir), "apptainer"), out
    assert os.path.samefile(out["binary"], binary), out  # FORCE_BINPATH: the binary the job's container runs
    _assert_fenced(out)
    _assert_tmp_in_workdir(pilot, trace, "apptainer", str(image_dir))
    pilot.assert_clean()


def test_pilot_inside_a_container_uses_its_image_and_runtime(pilot, image_dir):
    """A pilot whose environment says it runs in a container (what a job's container hands down: JOB_CONTAINER_PATH,
    GRIDPILOT_CONTAINER_RUNTIME) runs its jobs in that image with that runtime, though its own configuration names
    neither, and hands the same down again."""
    if shutil.which("bwrap") is None:
        require_or_skip("no bwrap (Debian package bubblewrap)")
    trace, out = _run(pilot, env={"JOB_CONTAINER_PATH": str(image_dir), "GRIDPILOT_CONTAINER_RUNTIME": "bwrap"},
                      script=IN_CONTAINER, keep_workdir=True)
    assert (f"JOB_CONTAINER_PATH={image_dir}, GRIDPILOT_CONTAINER_RUNTIME=bwrap in this pilot's environment (a "
            "container it runs in, or the site's choice): its jobs run in that image with that runtime") in trace, trace
    assert "Will use: bwrap" in trace and f"image {image_dir} from JOB_CONTAINER_PATH" in trace, trace
    assert (out["cwd"], out["image"], out["runtime"]) == ("/workdir", str(image_dir), "bwrap"), out
    _assert_tmp_in_workdir(pilot, trace, "bwrap", str(image_dir))
    pilot.assert_clean()


def test_disable_nested_containers(pilot, image_dir):
    """DISABLE_NESTED_CONTAINERS in the pilot's environment (its own container's wish, or the site's): no container
    for its jobs though one would work, said in the trace, and the payload is told the same."""
    if shutil.which("bwrap") is None:
        require_or_skip("no bwrap (Debian package bubblewrap)")
    trace, out = _run(pilot, env={"DISABLE_NESTED_CONTAINERS": "1"}, container_runtime="bwrap",
                      default_image=str(image_dir))
    assert ("No container: DISABLE_NESTED_CONTAINERS is set in this pilot's environment "
            "(DISABLE_NESTED_CONTAINERS='1'): it starts no container of its own") in trace, trace
    assert "Support for containers detected" not in trace
    assert out["cwd"].endswith("/alien-job-1"), out
    _assert_fenced(out)  # still its own PID namespace (unshare)
    job_id = pilot.submit(shell_jdl("echo nested=${DISABLE_NESTED_CONTAINERS-unset}", OutputFile=["stdout@disk=1"]))
    assert pilot.wait_final([job_id], timeout=120)[0]["state"] == "DONE", pilot.describe(job_id)
    assert _payload_stdout(pilot, job_id)["nested"] == "1"
    pilot.assert_clean()


@pytest.fixture
def image_with_properties(image_dir, tmp_path):
    """A copy of the test image (hard links beside it: quick, and the shared image is never written) with a
    container.properties at its root naming a runtime, a bind, a variable and no nesting."""
    copy = image_dir.parent / f".props-{os.getpid()}-{time.monotonic_ns()}"
    subprocess.run(["cp", "-al", str(image_dir), str(copy)], check=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from-the-site\n")
    (copy / "container.properties").write_text(
        "# what this image needs\n"
        "RUNTIMES = bwrap\n"
        f"ADDITIONAL_BINDS = {data}:/data\n"
        "DISABLE_NESTED_CONTAINERS = true\n"
        "env.SITE_HINT = from-the-image\n"
        "some.other.tool = ignored\n")
    try:
        yield copy
    finally:
        shutil.rmtree(copy)


def test_image_container_properties(pilot, image_with_properties, tmp_path):
    """The image's container.properties, read for real: Podman comes first in the order but the image allows only
    bubblewrap, its bind and variable are there, and nested containers are off for the job."""
    for rt in ("podman", "bwrap"):
        if shutil.which(rt) is None:
            require_or_skip(f"no {rt} (Debian package {'podman runc' if rt == 'podman' else 'bubblewrap'})")
    image = str(image_with_properties)
    trace, out = _run(pilot, script=IN_CONTAINER, container_order=["podman", "bwrap"], default_image=image,
                      keep_workdir=True)
    props = f"{image}/container.properties"
    assert (f"{props}: RUNTIMES=bwrap, ADDITIONAL_BINDS={tmp_path / 'data'}:/data:ro, DISABLE_NESTED_CONTAINERS=true, "
            "env.SITE_HINT=from-the-image") in trace, trace
    assert "Support for containers detected. Will use: bwrap" in trace, trace
    assert (out["hint"], out["data"], out["nested"]) == ("from-the-image", "from-the-site", "true"), out
    assert f"Nested containers disabled for the job (DISABLE_NESTED_CONTAINERS=true, from {props})" in trace, trace
    _assert_tmp_in_workdir(pilot, trace, "bwrap", image)
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
    cfg = runtimes.config_for(runtime, image_dir)
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
    cfg = runtimes.config_for(runtime, image_dir)
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

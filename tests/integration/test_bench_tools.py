"""The benchmarks' own tools measure what they say: benches/bench_pilot.py picks the JobWrapper itself, not the
runtime's process above it, and the C floor (benches/cfloor.c) sees every process of a real job, by tree and by
cgroup, as gridpilot's native sampler does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import orjson
import psutil
import pytest

from gridpilot import _native
from gridpilot.isolation import cgroupfs
from gridpilot.errors import CgroupError
from support import paths

BENCHES = paths.ROOT / "benches"
sys.path.insert(0, str(BENCHES))

import bench_pilot  # noqa: E402
import nodework  # noqa: E402

SLEEPER = "import time; time.sleep(120)"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_the_wrapper_is_the_python_below_its_runtime():
    # As the agent starts the wrapper without a container: the runtime's process names the module in its argv,
    # and the Python running it is the runtime's child.
    runtime = subprocess.Popen(["unshare", "--fork", sys.executable, "-m", "timeit", "-n", "1", "-r", "1", SLEEPER])
    try:
        found = bench_pilot.python_module_below(os.getpid(), "timeit", timeout=60)
        assert found.pid != runtime.pid
        assert found.ppid() == runtime.pid
        assert os.path.basename(found.exe()).startswith("python")
    finally:
        for p in psutil.Process(runtime.pid).children(recursive=True):
            p.kill()
        runtime.kill()
        runtime.wait()


def test_two_pythons_running_the_module_are_refused():
    procs = [subprocess.Popen([sys.executable, "-m", "timeit", "-n", "1", "-r", "1", SLEEPER]) for _ in range(2)]
    try:
        # Wait until both have exec'd: before that each is still a forked copy of this test.
        assert wait_until(lambda: sum(bench_pilot.runs_module(psutil.Process(p.pid), "timeit") for p in procs) == 2)
        with pytest.raises(RuntimeError, match="2 processes run timeit"):
            bench_pilot.python_module_below(os.getpid(), "timeit", timeout=5)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def wait_until(pred, timeout: float = 60.0) -> bool:
    import time
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("cbuild")
    try:
        return {"payload": nodework.build_c("node_payload", out), "cfloor": nodework.build_c("cfloor", out)}
    except nodework.Unavailable as e:
        pytest.skip(str(e))


def _can_make_job_cgroups() -> bool:
    try:
        return cgroupfs.can_make_children(cgroupfs.own_v2_dir())
    except CgroupError:
        return False


def test_the_c_floor_sees_every_process_of_a_job(built):
    # 250 processes, 25 of them with 4 threads: the floor must walk the children files of every thread of those.
    with nodework.Jobs(built["payload"], count=2, nprocs=250) as jobs:
        assert (jobs.no_cgroup is None) == _can_make_job_cgroups()
        for job in jobs.jobs:
            out = subprocess.run([str(built["cfloor"]), "time", "1", "2", str(job.root)], capture_output=True,
                                 text=True, check=True, timeout=120).stdout
            assert dict(kv.split("=") for kv in out.split())["nprocs"] == "250"
            assert _native.TreeSampler(job.root).sample().nprocs == 250
        modes = [("tree", [str(j.root) for j in jobs.jobs])]
        if jobs.no_cgroup is None:
            modes.append(("cgroup", [str(j.cgroup) for j in jobs.jobs]))
        for mode, targets in modes:
            loop = subprocess.Popen([str(built["cfloor"]), "loop", "1", mode, *targets], stdout=subprocess.PIPE,
                                    text=True)
            try:
                assert loop.stdout is not None
                assert loop.stdout.readline().strip() == "ready nprocs=500", mode
            finally:
                nodework.terminate([loop])
            last = loop.stdout.read().split()
            assert last[0] == "done" and "nprocs=500" in last, (mode, last)


def test_the_payload_says_what_is_wrong_with_its_arguments(built):
    res = subprocess.run([str(built["payload"]), "0", "10"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "NPROCS and FANOUT must be >= 1" in res.stderr
    res = subprocess.run([str(built["cfloor"]), "loop", "1", "tree", "not-a-pid"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and "not a pid: not-a-pid" in res.stderr


def test_the_kill_bench_measures_kills_learned_by_the_poll(tmp_path):
    """benches/bench_kill.py on two kills: each learned by the agent (its trace line found) through the control
    poll, well before the 60 s heartbeat, and ended KILLED after it learned it."""
    out = tmp_path / "kill.json"
    run = subprocess.run([sys.executable, str(BENCHES / "bench_kill.py"), "--kills", "2", "--polls", "10", "--json",
                          str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    got = orjson.loads(out.read_bytes())
    assert (got["heartbeat_interval"], got["kill_poll_interval"]) == (60.0, 3.0)
    assert len(got["kills"]) == 2 and got["poll_ms"]["n"] == 10
    for kill in got["kills"]:
        assert 0 < kill["learned"] <= kill["killed"] < 30, kill
    assert "kill -> agent learned it" in run.stdout

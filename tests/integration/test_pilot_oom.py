"""A job whose payload goes beyond its memory limit, through the real pilot: the kernel OOM-kills it in the job's
memory cgroup (v1 on this hybrid host, v2 where the controller is delegated), and the job ends ERROR_E with kill
reason OOM_SYSTEM at central. Then nothing of it is left: processes, work directory, v2 and v1 cgroups.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from support.require import require_or_skip
from support.pilot import STOPPED_OR_DONE, Pilot, payload_jdl

from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs, cgroupv1


def _memory_cgroup_or_skip() -> List[Path]:
    """Where the pilot will make the job's memory cgroup (v1 own dir, or nothing when v2 has memory), or skip."""
    try:
        own_v2 = cgroupfs.own_v2_dir()
        if "memory" in cgroupfs.available_controllers(own_v2):
            return []
    except CgroupError:
        pass
    try:
        dirs, missing = cgroupv1.own_v1_dirs(["memory"])
    except CgroupError as e:
        require_or_skip(f"no memory controller for the job: no v2 memory controller and no cgroup v1 ({e})")
    if "memory" in missing:
        require_or_skip(f"no memory controller for the job: not in cgroup v2, and {missing['memory']}")
    problem = cgroupv1.delegation_problem(dirs["memory"])
    if problem:
        require_or_skip(f"no memory controller for the job: {problem}")
    return [dirs["memory"]]


def test_a_payload_beyond_its_memory_is_oom_killed_and_ends_oom_system(pilot: Pilot) -> None:
    v1_memory = _memory_cgroup_or_skip()
    # 300 MB at once against a 64 MB job (memory.max 77 MB): the kernel is faster than any sample the pilot takes.
    job_id = pilot.submit(payload_jdl("hog", 300, MemorySize="64MB"))
    runner = pilot.start()
    job = pilot.wait_final([job_id], timeout=90)[0]
    trace = [e["text"] for e in pilot.trace(job_id) if e["category"] == "trace"]
    described = pilot.describe(job_id)
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "OOM_SYSTEM"), described
    pilot.assert_kill_reason_shown(job_id, "OOM_SYSTEM")
    assert any("the kernel killed a process of the job for lack of memory" in t for t in trace), described
    limit_lines = [t for t in trace if t.startswith("cgroup limits for")]
    assert len(limit_lines) == 1, described
    assert "memory.max 76 MB" in limit_lines[0]
    if v1_memory:
        assert f"v1 memory.limit_in_bytes={int(64 * (1 << 20) * 1.2)}" in limit_lines[0], described
    assert not any(t.startswith("cgroup limits not set") for t in trace), described
    assert "cleanup: no process of the job is left" in trace, described
    # A kernel OOM kill counts against the node at central (nodeBad: docs/central.md).
    (node,) = [n for n in pilot.grid.admin.nodes()["nodes"] if n["host"] == job["node"]]
    assert node["failures_by_kind"] == {"oom_system": 1}, node
    assert pilot.stop() in STOPPED_OR_DONE
    # The runner's v1 slot tree goes with it (the v2 one is checked by the pilot fixture).
    for d in v1_memory:
        assert not (d / f"gridpilot-slot-{runner.pid}").exists()
    pilot.assert_clean()


def test_with_limits_off_the_pilots_own_rule_ends_the_hog(pilot: Pilot) -> None:
    # cgroup_limits: false leaves memory to the pilot's rule (PSS + swap > 1.2 x MemorySize): MEMORY_USAGE.
    job_id = pilot.submit(payload_jdl("hog", 200, MemorySize="64MB"))
    pilot.start(cgroup_limits=False)
    job = pilot.wait_final([job_id], timeout=90)[0]
    assert (job["state"], job["kill_reason"]) == ("ERROR_E", "MEMORY_USAGE"), pilot.describe(job_id)
    pilot.assert_kill_reason_shown(job_id, "MEMORY_USAGE")
    trace = [e["text"] for e in pilot.trace(job_id)]
    assert "cgroup limits: disabled by configuration (cgroup_limits: false)" in trace

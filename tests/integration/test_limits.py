"""The job's cgroup limits: the numbers (pure), and writing them into cgroup v2 directories laid out as on EL9 nodes.

This build machine's cgroup v2 has no memory, pids or cpu controller (ENVIRONMENT.md), so v2 limits and
memory.events are tested on the fixture trees in tests/fixtures/cgroup, copied to a temporary directory first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gridpilot.errors import CgroupError
from gridpilot.isolation import jobcgroup, limits
from gridpilot.isolation.cgroupv1 import V1Cgroups
from gridpilot.pilot import rules
from test_cgroupfs import fake_cgroup

MB = 1 << 20
GB = 1 << 30


def test_memory_margin_is_the_pilots_rule() -> None:
    # The hard limit must sit where the pilot's own memory rule kills, or one of them never acts.
    assert limits.MEMORY_MARGIN == rules.MEMORY_MARGIN


def test_numbers_from_memory_size_and_cores() -> None:
    lim = limits.job_limits(2 * GB, 2, swap_mb=0, pids_max=4096)
    assert lim.memory_high == 2 * GB
    assert lim.memory_max == int(2 * GB * 1.2)
    assert lim.swap_max == 0
    assert (lim.cpu_quota_us, lim.cpu_period_us) == (200_000, 100_000)
    assert lim.pids_max == 4096
    assert dict((f, v) for _, f, v in limits.v2_settings(lim)) == {
        "memory.high": str(2 * GB),
        "memory.max": str(int(2 * GB * 1.2)),
        "memory.swap.max": "0",
        "memory.oom.group": "1",
        "cpu.max": "200000 100000",
        "pids.max": "4096",
    }


def test_v1_numbers_and_order() -> None:
    lim = limits.job_limits(1 * GB, 4, swap_mb=512, pids_max=0)
    settings = limits.v1_settings(lim)
    files = [f for _, f, _ in settings]
    # The kernel refuses a memsw limit below the memory limit, and a quota checked against an old period.
    assert files.index("memory.limit_in_bytes") < files.index("memory.memsw.limit_in_bytes")
    assert files.index("cpu.cfs_period_us") < files.index("cpu.cfs_quota_us")
    values = {f: v for _, f, v in settings}
    assert values["memory.limit_in_bytes"] == str(int(GB * 1.2))
    assert values["memory.memsw.limit_in_bytes"] == str(int(GB * 1.2) + 512 * MB)
    assert values["memory.soft_limit_in_bytes"] == str(GB)
    assert values["cpu.cfs_quota_us"] == "400000"
    assert values["pids.max"] == "max"  # pids_max 0: no limit
    assert "memory.memsw.limit_in_bytes" not in {f for _, f, _ in limits.v1_settings(lim, memsw=False)}


@pytest.mark.parametrize(
    "args, kwargs, words",
    [
        ((0, 1), {}, "MemorySize"),
        ((GB, 0), {}, "CPUCores"),
        ((GB, 1), {"swap_mb": -1}, "swap_mb"),
        ((GB, 1), {"pids_max": -5}, "pids_max"),
    ],
)
def test_bad_input_names_what(args, kwargs, words) -> None:
    with pytest.raises(CgroupError, match=words):
        limits.job_limits(*args, **kwargs)


def test_oom_kills_from_memory_events_and_oom_control(cgroup_fixtures: Path) -> None:
    assert jobcgroup.v2_oom_kills(cgroup_fixtures / "el9-oom") == 1
    assert jobcgroup.v2_oom_kills(cgroup_fixtures / "el9-job") == 0
    # No memory controller (this machine's v2): nothing to count, not an error.
    assert jobcgroup.v2_oom_kills(cgroup_fixtures / "minimal-delegation") == 0
    assert limits.oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "memory.oom_control") == 3
    # Kernels before 4.13 have no oom_kill line.
    assert limits.oom_kills("oom_kill_disable 0\nunder_oom 0\n", "memory.oom_control") == 0


def test_malformed_counter_file_names_file_and_line() -> None:
    with pytest.raises(CgroupError, match=r"memory.events line 2: .*'oom'"):
        limits.oom_kills("low 0\noom x\n", "memory.events")
    with pytest.raises(CgroupError, match=r"x/memory.oom_control line 1: expected 'key value'"):
        limits.oom_kills("oom_kill\n", "x/memory.oom_control")


@pytest.fixture
def el9_agent(tmp_path: Path, cgroup_fixtures: Path) -> Path:
    """JobAgent_0 on EL9 right after the mkdirs: controllers it could hand down, none handed down yet."""
    dst = tmp_path / "JobAgent_0"
    shutil.copytree(cgroup_fixtures / "el9-delegated" / "JobAgent_0", dst)
    return dst


@pytest.fixture
def el9_job(tmp_path: Path, cgroup_fixtures: Path) -> Path:
    """A job cgroup on EL9 whose parent enabled cpu, io, memory and pids for it: the kernel's default values."""
    dst = tmp_path / "job"
    shutil.copytree(cgroup_fixtures / "el9-delegated" / "job-controllers-on", dst)
    return dst


def as_the_kernel_would(parent: Path, child: Path, cgroup_fixtures: Path) -> None:
    """Stand in for the kernel, which this host's v2 cannot show (no memory, cpu or pids controller): the
    controllers named in the parent's cgroup.subtree_control (here a regular file holding the pilot's last request,
    e.g. "+cpu +memory") appear in the child, with their interface files at the defaults EL9 gives them."""
    request = (parent / "cgroup.subtree_control").read_text().split()
    enabled = [w[1:] for w in request if w.startswith("+")]
    for f in (cgroup_fixtures / "el9-delegated" / "job-controllers-on").iterdir():
        if f.name.split(".")[0] in enabled:
            shutil.copy(f, child / f.name)
    (child / "cgroup.controllers").write_text(" ".join(enabled) + "\n")


def test_agent_hands_its_controllers_down_before_the_job_has_processes(el9_agent: Path) -> None:
    # The issue-6 audit's gap: nothing wrote JobAgent_<n>/cgroup.subtree_control, so job/ never got a controller.
    pid = os.getpid()
    job, notes = jobcgroup.make_agent_tree(el9_agent, pid)
    assert notes == []
    assert job == el9_agent / "job"
    assert (el9_agent / "cgroup.subtree_control").read_text() == "+cpu +io +memory +pids"
    assert (el9_agent / "agent" / "cgroup.procs").read_text() == str(pid)
    assert (job / "cgroup.procs").read_text() == ""  # the wrapper joins later, into a job/ that has the controllers


def test_job_limits_on_el9_follow_from_the_agents_subtree_control(el9_agent: Path, cgroup_fixtures: Path) -> None:
    job, _ = jobcgroup.make_agent_tree(el9_agent, os.getpid())
    as_the_kernel_would(el9_agent, job, cgroup_fixtures)
    lim = limits.job_limits(4 * GB, 2, swap_mb=0, pids_max=1000)
    got = jobcgroup.setup(job, {}, lim)
    assert len(got.notes) == 1, got.notes  # the limits set, and no "cgroup limits not set" line
    assert (job / "memory.max").read_text() == str(int(4 * GB * 1.2))
    assert (job / "cpu.max").read_text() == "200000 100000"
    assert (job / "pids.max").read_text() == "1000"


def test_agent_tree_goes_on_without_controllers_and_says_why(el9_agent: Path) -> None:
    # Where JobAgent_0's subtree_control cannot be written (the kernel's EBUSY while it holds a process; here a
    # directory in place of the file), the job cgroup is still made, for process control, and the note says why.
    (el9_agent / "cgroup.subtree_control").unlink()
    (el9_agent / "cgroup.subtree_control").mkdir()
    job, notes = jobcgroup.make_agent_tree(el9_agent, os.getpid())
    assert job == el9_agent / "job"
    assert len(notes) == 1 and notes[0].startswith("controllers not handed down to the job cgroup: cannot read "), notes
    assert str(el9_agent / "cgroup.subtree_control") in notes[0]


def test_v2_limits_written_where_delegated(el9_job: Path) -> None:
    job = el9_job
    lim = limits.job_limits(4 * GB, 2, swap_mb=0, pids_max=1000)
    done, skipped = jobcgroup.apply_v2_limits(job, lim)
    assert skipped == []
    assert len(done) == 6
    assert (job / "memory.high").read_text() == str(4 * GB)
    assert (job / "memory.max").read_text() == str(int(4 * GB * 1.2))
    assert (job / "memory.swap.max").read_text() == "0"
    assert (job / "memory.oom.group").read_text() == "1"
    assert (job / "cpu.max").read_text() == "200000 100000"
    assert (job / "pids.max").read_text() == "1000"


def test_v2_limits_skip_what_is_not_delegated_and_say_so(tmp_path: Path, cgroup_fixtures: Path) -> None:
    job = tmp_path / "step"
    shutil.copytree(cgroup_fixtures / "el9-memory-only", job)
    done, skipped = jobcgroup.apply_v2_limits(job, limits.job_limits(GB, 1))
    assert sorted(done) == sorted([f"memory.high={GB}", f"memory.max={int(GB * 1.2)}", "memory.oom.group=1"])
    # cpu and pids: not delegated; swap: no swap accounting on this kernel. No file was created for them.
    assert any(s.startswith("cpu (not delegated") for s in skipped)
    assert any(s.startswith("pids (not delegated") for s in skipped)
    assert any(s.startswith("memory.swap.max (no such file") for s in skipped)
    assert not (job / "cpu.max").exists() and not (job / "pids.max").exists() and not (job / "memory.swap.max").exists()


def test_setup_traces_once_and_uses_no_v1_where_v2_has_it(el9_job: Path, tmp_path: Path) -> None:
    v1_agent = {"memory": str(tmp_path / "v1-would-be-memory")}
    job = jobcgroup.setup(el9_job, v1_agent, limits.job_limits(GB, 1))
    # v2 has memory here, so no v1 cgroup is made for it, and nothing was left unset.
    assert not job.v1 and not (tmp_path / "v1-would-be-memory").exists()
    assert len(job.notes) == 1 and "memory.max=" in job.notes[0] and "cpu.max=100000 100000" in job.notes[0]
    assert job.oom_kills() == 0


def test_setup_with_limits_off_writes_nothing(el9_job: Path) -> None:
    job = jobcgroup.setup(el9_job, {}, None)
    assert job.notes == ["cgroup limits: disabled by configuration (cgroup_limits: false)"]
    assert (el9_job / "memory.max").read_text() == "max\n"


def test_setup_without_any_cgroup_says_what_is_missing() -> None:
    job = jobcgroup.setup(None, {}, limits.job_limits(GB, 1))
    assert job.notes[0].endswith("none set")
    assert "memory (no job cgroup" in job.notes[1] and "pids (no job cgroup" in job.notes[1]
    assert job.remove() == []
    job.join()  # nothing to join: a no-op, not an error


def test_v2_delegation_check_on_fixtures(el9_agent: Path, cgroup_fixtures: Path, tmp_path: Path) -> None:
    assert jobcgroup.delegation_problem(el9_agent) is None
    assert "not a cgroup v2 directory" in (jobcgroup.delegation_problem(tmp_path) or "")
    assert V1Cgroups({}).procs() == []


def test_config_fields_and_bad_values_named(tmp_path: Path) -> None:
    from gridpilot.config import load_config
    from gridpilot.errors import ConfigError

    cfg = load_config(environ={})
    assert (cfg.cgroup_limits, cfg.pids_max, cfg.swap_mb) == (True, limits.DEFAULT_PIDS_MAX, 0)
    conf = tmp_path / "pilot.yaml"
    conf.write_text("cgroup_limits: false\npids_max: 100\nswap_mb: 512\n")
    cfg = load_config(conf, environ={})
    assert (cfg.cgroup_limits, cfg.pids_max, cfg.swap_mb) == (False, 100, 512)
    with pytest.raises(ConfigError, match="pids_max' must be >= 0"):
        load_config(environ={"GRIDPILOT_PIDS_MAX": "-1"})
    with pytest.raises(ConfigError, match=r"pilot.yaml:1: field 'swap_mb' must be an integer"):
        conf.write_text("swap_mb: lots\n")
        load_config(conf, environ={})


# --- controllers down the slot tree: the runner's own cgroup ---------------------------------------------------


def test_runner_enables_the_limits_controllers_in_its_own_cgroup_when_it_is_alone_there(tmp_path: Path) -> None:
    own = fake_cgroup(tmp_path / "own", controllers="cpuset cpu io memory pids\n")
    enabled, note = jobcgroup.enable_in_own(own, limits.CONTROLLERS)
    # Only what the limits need (not cpuset, not io): the siblings of the slot see the change too.
    assert enabled == ["cpu", "memory", "pids"]
    assert (own / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert note == f"cpu, memory, pids enabled in {own} for the slot"


def test_runner_leaves_its_own_cgroup_alone_when_others_live_there(tmp_path: Path) -> None:
    own = fake_cgroup(tmp_path / "own", controllers="memory pids\n", procs="4242\n")
    enabled, note = jobcgroup.enable_in_own(own, limits.CONTROLLERS)
    assert enabled == [] and (own / "cgroup.subtree_control").read_text() == ""
    assert note.startswith(f"memory, pids not enabled in {own}: it holds 1 process(es) besides the slot (pid 4242)")


def test_runner_leaves_the_hierarchy_root_alone(tmp_path: Path) -> None:
    root = fake_cgroup(tmp_path / "root", controllers="memory pids\n")
    (root / "cgroup.events").unlink()  # the root cgroup has none
    enabled, note = jobcgroup.enable_in_own(root, limits.CONTROLLERS)
    assert enabled == [] and (root / "cgroup.subtree_control").read_text() == ""
    assert "the hierarchy's root: its controllers are the node's to enable" in note


def test_runner_writes_nothing_when_its_own_cgroup_already_hands_them_down(tmp_path: Path) -> None:
    own = fake_cgroup(tmp_path / "own", controllers="io memory pids\n")
    (own / "cgroup.subtree_control").write_text("memory pids\n")
    assert jobcgroup.enable_in_own(own, limits.CONTROLLERS) == ([], "")
    assert (own / "cgroup.subtree_control").read_text() == "memory pids\n"


def test_runner_turns_its_controllers_off_bottom_up_before_going_back(tmp_path: Path) -> None:
    own = fake_cgroup(tmp_path / "own", controllers="memory pids\n")
    (own / "cgroup.subtree_control").write_text("memory pids\n")
    slot = fake_cgroup(own / "slot", controllers="memory pids\n")
    (slot / "cgroup.subtree_control").write_text("memory pids\n")
    jobcgroup.disable_in_own(own, slot, ["memory"])
    assert (slot / "cgroup.subtree_control").read_text() == "-memory -pids"
    assert (own / "cgroup.subtree_control").read_text() == "-memory"  # pids was not ours: it stays
    jobcgroup.disable_in_own(own, slot, [])  # nothing enabled by us: nothing written
    assert (own / "cgroup.subtree_control").read_text() == "-memory"


SLOT_SCRIPT = """
import json, os, sys
from pathlib import Path
from gridpilot.isolation import cgroupfs, jobcgroup
from gridpilot.isolation.slot import Slot
own, agent_pid = Path(sys.argv[1]), int(sys.argv[2])
cgroupfs.move_pid(own, os.getpid())
slots = Slot("auto", limits=True)
agent_cg = slots.for_agent(0)
job, notes = jobcgroup.make_agent_tree(agent_cg, agent_pid)
seen = {
    "reason": slots.reason, "slot": str(slots.slot), "own_procs": cgroupfs.procs(own),
    "runner_procs": cgroupfs.procs(slots.slot / "runner"), "agent_procs": cgroupfs.procs(agent_cg / "agent"),
    "agent_has": cgroupfs.available_controllers(agent_cg), "agent_gives": cgroupfs.enabled_controllers(agent_cg),
    "job_has": cgroupfs.available_controllers(job), "notes": notes,
}
slots.release_agent(agent_cg, 0)
slots.close()
seen["own_procs_after"] = cgroupfs.procs(own)
print(json.dumps(seen))
"""


@pytest.mark.cgroup
def test_slot_tree_below_a_delegated_cgroup_for_real(cgroup_dir: Path) -> None:
    """The runner in a cgroup of its own below ours (as a batch system delegates one), an agent (a sleeper here) in
    its JobAgent_0: the kernel takes the tree in this order, job/ gets every controller JobAgent_0 has (on this
    host: whatever the root hands down, nothing of memory, cpu or pids), and at the end the runner is back in its
    cgroup with nothing left below it."""
    agent = subprocess.Popen(["sleep", "600"])
    try:
        out = subprocess.run([sys.executable, "-c", SLOT_SCRIPT, str(cgroup_dir), str(agent.pid)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout)
        assert agent.wait(timeout=30) == -signal.SIGKILL  # release_agent ended what was left in JobAgent_0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    slot = Path(seen["slot"])
    assert slot.parent == cgroup_dir and seen["reason"].startswith(f"slot cgroup {slot} "), seen
    assert seen["own_procs"] == [] and len(seen["runner_procs"]) == 1 and seen["agent_procs"] == [agent.pid], seen
    assert seen["notes"] == [] and set(seen["agent_gives"]) == set(seen["agent_has"]), seen
    assert set(seen["job_has"]) == set(seen["agent_has"]), seen
    assert seen["own_procs_after"] == seen["runner_procs"], seen
    assert not slot.exists() and [p.name for p in cgroup_dir.iterdir() if p.is_dir()] == []

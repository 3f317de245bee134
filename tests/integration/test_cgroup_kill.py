"""TreeSampler and terminate_tree on a job cgroup: discovery from cgroup.procs, freeze + cgroup.kill."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import psutil

from gridpilot import _native
from gridpilot.isolation import cgroupfs

from support import proctree


def _into(cgroup, tree: proctree.Tree) -> None:
    for pid in sorted(tree.pids):
        cgroupfs.move_pid(cgroup, pid)


def test_cgroup_discovery_finds_what_the_tree_walk_loses(cgroup_dir):
    # A daemonised process (its parent exited) is outside the tree but still inside the job's cgroup.
    script = (
        "import os, sys, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    if os.fork() == 0:\n"
        "        os.write(w, b'%d\\n' % os.getpid()); time.sleep(60); os._exit(0)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "sys.stdout.write(os.read(r, 64).decode()); sys.stdout.flush(); time.sleep(60)\n"
    )
    cg = cgroup_dir / "job"
    cg.mkdir()
    # Start the payload already inside the cgroup, as the JobAgent will.
    p = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: (cg / "cgroup.procs").write_text("0"),
    )
    try:
        daemon = int(p.stdout.readline())
        assert psutil.Process(daemon).ppid() != p.pid
        by_tree = _native.TreeSampler(p.pid).sample()
        by_cgroup = _native.TreeSampler(p.pid, cgroup=str(cgroup_dir)).sample()
        assert daemon not in by_tree.pids
        assert by_cgroup.pids == sorted([p.pid, daemon])
        report = _native.terminate_tree(p.pid, cgroup=str(cgroup_dir), grace_s=2)
        assert report.survivors == [] and report.refused == []
        assert set(report.terminated) == {p.pid, daemon}
        assert cgroupfs.wait_event(cgroup_dir, "populated", 0)
    finally:
        p.kill()
        p.wait()


def test_cgroup_kill_ends_a_forking_sigterm_ignoring_job(cgroup_dir):
    tree = proctree.spawn({"fork_on_term": 4, "children": [{"ignore_term": True}, {"fork_on_term": 2}]})
    try:
        _into(cgroup_dir, tree)
        assert sorted(cgroupfs.procs(cgroup_dir)) == sorted(tree.pids)
        sampler = _native.CgroupSampler(str(cgroup_dir))
        assert sampler.sample().populated is True
        report = _native.terminate_tree(tree.root, cgroup=str(cgroup_dir), grace_s=0.5)
        assert report.survivors == []
        assert set(tree.pids) <= set(report.killed) | set(report.terminated)
        assert len(report.killed) > len(tree.pids) - 1, "late forks are killed too"
        assert cgroupfs.wait_event(cgroup_dir, "populated", 0)
        assert sampler.sample().populated is False
        assert sampler.sample().frozen is False, "the cgroup is thawed after the kill"
    finally:
        tree.cleanup()


def test_members_of_a_cgroup_holding_the_caller_are_killed_one_by_one(cgroup_dir):
    # The caller sits in the job's cgroup: cgroup.kill would hit it, so each other member is SIGKILLed instead.
    # It runs in a process of its own, so a guard that failed would kill that process, not the test runner.
    script = textwrap.dedent(
        f"""
        import json, os, subprocess, sys
        from gridpilot import _native
        cg = {str(cgroup_dir)!r}
        open(cg + "/cgroup.procs", "w").write("0")
        victim = subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
                                  stdout=subprocess.PIPE, start_new_session=True)
        victim.stdout.readline()  # the trap is set: SIGTERM can no longer end it
        r = _native.terminate_tree(cgroup=cg, grace_s=0.3)
        victim.wait(timeout=10)
        print(json.dumps({{"me": os.getpid(), "victim": victim.pid, "report": r.to_dict()}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    report = res["report"]
    assert [res["me"], "the caller itself"] in report["refused"]
    assert res["victim"] in report["killed"]
    assert report["survivors"] == []


def test_a_root_left_out_is_spared_by_the_cgroup_kill(cgroup_dir):
    # include_root=False keeps the root alive: cgroup.kill would take it with the others, so the members are
    # SIGKILLed one by one (before, the whole cgroup went, root included).
    tree = proctree.spawn({"children": [{"ignore_term": True}, {}]})
    try:
        _into(cgroup_dir, tree)
        others = sorted(set(tree.pids) - {tree.root})
        report = _native.terminate_tree(tree.root, cgroup=str(cgroup_dir), grace_s=0, include_root=False)
        assert report.survivors == []
        assert sorted(report.killed) == others
        assert psutil.Process(tree.root).status() != psutil.STATUS_ZOMBIE
        assert cgroupfs.procs(cgroup_dir) == [tree.root]
    finally:
        tree.cleanup()

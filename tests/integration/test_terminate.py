"""terminate_tree and signal_tree against real process trees, and their guards inside a PID namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from support.require import require_or_skip

from gridpilot import _native

from support import proctree


def test_whole_tree_exits_on_sigterm(tree_factory):
    tree = tree_factory(proctree.balanced(30))
    report = _native.terminate_tree(tree.root, grace_s=10)
    tree.proc.wait(timeout=5)
    assert not tree.alive()
    assert set(report.signalled) == tree.pids
    assert set(report.terminated) == tree.pids
    assert report.killed == [] and report.survivors == [] and report.refused == []
    assert report.rounds >= 1


def test_sigterm_ignoring_child_is_killed_after_the_grace(tree_factory):
    tree = tree_factory({"children": [{"ignore_term": True}, {}]})
    stubborn = next(p for p in tree.pids if p != tree.root and _ignores_term(p))
    report = _native.terminate_tree(tree.root, grace_s=0.5)
    assert not tree.alive()
    assert report.killed == [stubborn]
    assert set(report.terminated) == tree.pids - {stubborn}
    assert report.survivors == []
    assert report.elapsed_s >= 0.5


def test_stopped_process_ends_on_sigterm_within_the_grace(tree_factory):
    """A SIGSTOPped process acts on SIGTERM only once continued: terminate_tree sends SIGCONT after SIGTERM, so it ends
    on the SIGTERM (its own cleanup) and is not left for SIGKILL after the grace."""
    tree = tree_factory({"children": [{}]})
    (child,) = tree.pids - {tree.root}
    os.kill(child, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while _state(child) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _state(child) == "T"
    report = _native.terminate_tree(tree.root, grace_s=30)
    assert not tree.alive()
    assert set(report.terminated) == tree.pids
    assert report.killed == [] and report.survivors == []


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _ignores_term(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ign = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(ign & (1 << (signal.SIGTERM - 1)))


def test_job_that_forks_while_terminated_leaves_no_survivor(tree_factory):
    # Each SIGTERMed process forks SIGTERM-ignoring children: new processes appear during the kill.
    tree = tree_factory({"fork_on_term": 3, "children": [{"fork_on_term": 3} for _ in range(4)]})
    before = _native.TreeSampler(tree.root).pids()
    report = _native.terminate_tree(tree.root, grace_s=0.5, rounds=10)
    assert report.survivors == []
    late = set(report.killed) - set(before)
    assert late, "the late forks must have been found and killed"
    assert not any(proctree._alive(p) for p in set(report.killed) | set(report.terminated))


def test_root_excluded_when_asked(tree_factory):
    tree = tree_factory(proctree.flat(3))
    report = _native.terminate_tree(tree.root, grace_s=5, include_root=False)
    assert tree.root not in report.signalled
    assert proctree._alive(tree.root)
    assert tree.alive() == {tree.root}


def test_signal_tree_sends_one_signal(tree_factory):
    tree = tree_factory(proctree.flat(4))
    report = _native.signal_tree(tree.root, signal.SIGSTOP)
    assert set(report.signalled) == tree.pids
    assert proctree.wait_until(lambda: all(_state(p) == "T" for p in tree.pids))
    _native.signal_tree(tree.root, signal.SIGCONT)
    assert proctree.wait_until(lambda: all(_state(p) == "S" for p in tree.pids))
    with pytest.raises(ValueError, match="signal number"):
        _native.signal_tree(tree.root, 0)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def test_gone_root_is_an_empty_report():
    p = subprocess.Popen(["true"])
    p.wait()
    report = _native.terminate_tree(p.pid, grace_s=1)
    assert report.signalled == [] and report.survivors == [] and report.rounds == 0


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="root_pid, cgroup"):
        _native.terminate_tree()
    with pytest.raises(ValueError, match="grace_s"):
        _native.terminate_tree(12345, grace_s=-1)
    with pytest.raises(ValueError, match="rounds"):
        _native.terminate_tree(12345, rounds=0)


def test_interrupt_during_grace_kills_at_once_then_raises(tmp_path):
    # Python signal handlers run only in the main thread, so the waiting is tested in a process of its own.
    script = textwrap.dedent(
        """
        import json, signal, subprocess, sys, time
        from gridpilot import _native
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, start_new_session=True)
        child.stdout.readline()
        def on_alarm(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        t0 = time.monotonic()
        try:
            _native.terminate_tree(child.pid, grace_s=60)
            outcome = "returned"
        except KeyboardInterrupt:
            outcome = "interrupted"
        child.wait(timeout=10)
        print(json.dumps({"outcome": outcome, "elapsed": time.monotonic() - t0, "rc": child.returncode}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["outcome"] == "interrupted"
    assert res["rc"] == -signal.SIGKILL
    assert res["elapsed"] < 30  # far below the 60 s grace: the interrupt cut it short


# The guard tests call terminate_tree on processes that must never be signalled. They run inside a PID namespace
# made for them, so a guard that failed could only hit the namespace's own processes, never the real pid 1 or the
# test runner.
_GUARD_SCRIPT = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from gridpilot import _native
    # Join the process group of a child, so our group's leader is neither us nor an ancestor.
    leader = subprocess.Popen(["sleep", "30"], process_group=0)
    os.setpgid(0, leader.pid)
    res = {"me": os.getpid(), "parent": os.getppid(), "pgrp": os.getpgrp(), "leader": leader.pid}
    same_group = subprocess.Popen(["sleep", "30"])  # shares our process group and session
    for name, pid in [("self", os.getpid()), ("parent", os.getppid()), ("init", 1), ("pgrp", os.getpgrp()),
                      ("same_group_child", same_group.pid)]:
        r = _native.terminate_tree(pid, grace_s=0.2)
        s = _native.signal_tree(pid, 9)
        res["case_" + name] = {"refused": r.refused, "signalled": r.signalled + s.signalled, "killed": r.killed}
    res["same_group_alive"] = same_group.poll() is None
    res["leader_alive"] = leader.poll() is None
    same_group.kill()
    leader.kill()
    print(json.dumps(res))
    """
)


@pytest.fixture(scope="module")
def guard_results() -> dict:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        require_or_skip("PID namespace guard tests need root and unshare (util-linux)")
    # sh is pid 1 of the namespace; python is its child, so "parent" and "init" are both the namespace's sh.
    cmd = [unshare, "--pid", "--fork", "--mount-proc", "sh", "-c", f'"{sys.executable}" -c "$0"; echo rc=$?', _GUARD_SCRIPT]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "rc=0", out.stdout + out.stderr
    return json.loads(lines[-2])


@pytest.mark.parametrize(
    "case,reason",
    [
        ("self", "caller itself"),
        ("parent", "init"),
        ("init", "init"),
        ("pgrp", "process group"),
        ("same_group_child", "process group"),
    ],
)
def test_guards_refuse_inside_a_pid_namespace(guard_results, case, reason):
    r = guard_results["case_" + case]
    assert r["signalled"] == [] and r["killed"] == []
    assert r["refused"], f"{case}: nothing refused"
    assert any(reason in why for _, why in r["refused"]), r["refused"]


def test_guarded_processes_survive(guard_results):
    assert guard_results["me"] == 2 and guard_results["parent"] == 1
    assert guard_results["pgrp"] == guard_results["leader"] > 2
    assert guard_results["same_group_alive"] is True
    assert guard_results["leader_alive"] is True


def test_ancestor_is_refused_outside_init(tmp_path):
    # An ancestor that is not pid 1: run a tiny shell between pytest and the caller, inside a namespace.
    if shutil.which("unshare") is None or os.geteuid() != 0:
        require_or_skip("needs root and unshare (util-linux)")
    script = (
        "import json, os; from gridpilot import _native; "
        "gp = int(open('/proc/%d/stat' % os.getppid()).read().rsplit(')', 1)[1].split()[1]); "
        "r = _native.terminate_tree(os.getppid(), grace_s=0.1); print(json.dumps([os.getppid(), r.refused, r.signalled]))"
    )
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", f'sh -c \'"{sys.executable}" -c "$0"; true\' "$0"; true', script]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ppid, refused, signalled = json.loads(out.stdout.strip().splitlines()[-1])
    assert ppid > 1
    assert signalled == []
    assert any(p == ppid for p, _ in refused)

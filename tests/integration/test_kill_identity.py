"""The one kill path's identity check: a process is its pid and its start time, and the native calls refuse a pid
that names another process than the caller's (a reused pid looks like a start-time mismatch), and the native
readers the Python side uses instead of its own /proc parsing (start_time, children, descendants, kill_cgroup)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridpilot import _native
from gridpilot.errors import CgroupError
from gridpilot.isolation import cgroupfs

from support import proctree


def _wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _stat_field_22(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[19])


def test_a_root_with_another_start_time_is_refused_and_its_tree_left_alone(tree_factory):
    tree = tree_factory(proctree.balanced(5))
    start = _native.start_time(tree.root)
    assert start is not None
    # As if the root had been reaped and its pid given to a new process: the start time we hold is not its.
    report = _native.terminate_tree(tree.root, grace_s=5, start_time=start - 1)
    assert report.signalled == [] and report.killed == [] and report.terminated == []
    assert [pid for pid, _ in report.refused] == [tree.root]
    assert "another process" in report.refused[0][1]
    assert tree.alive() == tree.pids
    one = _native.signal_tree(tree.root, signal.SIGTERM, start_time=start + 1)
    assert one.signalled == [] and [pid for pid, _ in one.refused] == [tree.root]
    assert tree.alive() == tree.pids
    # The right identity: the whole tree goes, as without one.
    report = _native.terminate_tree(tree.root, grace_s=10, start_time=start)
    tree.proc.wait(timeout=30)
    assert not tree.alive()
    assert set(report.signalled) == tree.pids and report.refused == []


def test_start_time_needs_a_root():
    with pytest.raises(ValueError, match="root_pid"):
        _native.terminate_tree(cgroup="/nonexistent", start_time=5)


def test_signal_process_refuses_another_start_time():
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        start = _native.start_time(p.pid)
        assert start is not None
        assert _native.signal_process(p.pid, signal.SIGKILL, start_time=start + 1) is False
        assert _native.signal_process(p.pid, signal.SIGKILL, start_time=start + 1, group=True) is False
        assert p.poll() is None
        assert _native.signal_process(p.pid, signal.SIGKILL, start_time=start) is True
        assert p.wait(timeout=30) == -signal.SIGKILL
        # Reaped: its pid names nothing (or someone else); not an error.
        assert _native.signal_process(p.pid, signal.SIGKILL, start_time=start) is False
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_signal_process_refuses_init_and_the_caller():
    for pid in (0, 1, -1, os.getpid()):
        with pytest.raises(ValueError):
            _native.signal_process(pid, signal.SIGTERM)
    with pytest.raises(ValueError):
        _native.signal_process(os.getpgrp(), signal.SIGTERM, group=True)


def test_signal_process_group_reaches_the_group_a_leader_leads():
    p = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        assert _wait_for(lambda: len(_native.children(p.pid)) == 1)
        (sleep,) = _native.children(p.pid)
        # The sleep is in the group but leads none.
        assert _native.signal_process(sleep, signal.SIGKILL, group=True) is False
        assert _native.start_time(sleep, live_only=True) is not None
        assert _native.signal_process(p.pid, signal.SIGKILL, group=True) is True
        assert p.wait(timeout=30) == -signal.SIGKILL
        assert _wait_for(lambda: _native.start_time(sleep, live_only=True) is None)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_start_time_is_field_22_and_live_only_skips_zombies():
    assert _native.start_time(os.getpid()) == _stat_field_22(os.getpid())
    # A command name with spaces and parentheses does not shift the fields.
    script = "import sys; open('/proc/self/comm', 'w').write('a) b (c'); print(flush=True); sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdin is not None
        p.stdout.readline()
        with open(f"/proc/{p.pid}/comm") as f:
            assert f.read() == "a) b (c\n"
        assert _native.start_time(p.pid) == _stat_field_22(p.pid)
        p.stdin.close()
        # Exited, not reaped: a zombie still has its start time, but is not live.
        assert _wait_for(lambda: _native.start_time(p.pid, live_only=True) is None)
        assert _native.start_time(p.pid) == _stat_field_22(p.pid)
    finally:
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def test_children_and_descendants_in_order():
    # Its own session: terminate_tree, which ends it below, spares the caller's.
    p = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        assert _wait_for(lambda: len(_native.children(p.pid)) == 1)
        (sleep,) = _native.children(p.pid)
        assert p.pid in _native.children(os.getpid())
        below = _native.descendants(os.getpid())
        assert below.index(p.pid) < below.index(sleep)
        assert os.getpid() not in below
        assert _native.descendants(p.pid) == [sleep]
    finally:
        _native.terminate_tree(p.pid, grace_s=5)
        p.wait()
    assert _native.children(p.pid) == [] and _native.descendants(p.pid) == []


def test_kill_cgroup_refuses_a_cgroup_holding_the_caller(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "sub" / "cgroup.procs").write_text(f"{os.getpid()}\n")
    (tmp_path / "cgroup.kill").write_text("")
    with pytest.raises(CgroupError, match="this process"):
        _native.kill_cgroup(str(tmp_path))
    assert (tmp_path / "cgroup.kill").read_text() == ""


def test_kill_members_kills_every_member_also_in_the_callers_session(cgroup_dir):
    # terminate_tree spares the caller's session; the cgroup's own kill takes every member, as before.
    job = cgroup_dir / "job"
    job.mkdir()
    p = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"],
                         preexec_fn=lambda: cgroupfs.move_pid(job, os.getpid()))
    try:
        assert _wait_for(lambda: len(cgroupfs.procs(job, recursive=True)) == 3)
        cgroupfs.kill_members(job)
        assert p.wait(timeout=30) == -signal.SIGKILL
        assert cgroupfs.wait_event(job, "populated", 0, timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()

"""Keeping a job's processes in the pilot's process tree when there is no job cgroup to hold them.

A payload's child that double-forks into a session of its own, or whose parent exits, is reparented to the nearest
ancestor marked as a child subreaper (PR_SET_CHILD_SUBREAPER, Linux >= 3.4) instead of to init. The JobAgent and
the JobWrapper mark themselves so, which makes "every descendant of this process" a complete list of the job's
processes for `terminate_tree`, and a pid the pilot still holds (a child not yet reaped) one no other process can
take over. Where a job cgroup exists, it is the better list; this is what remains without one. The children of a
process are read natively (`_native.children`), by the walk terminate_tree uses.
"""

from __future__ import annotations

import ctypes
import os
from typing import List

from gridpilot import _native


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Mark this process as a child subreaper. False where the kernel or libc does not allow it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def reap_zombies() -> List[int]:
    """Reap every child that has exited (orphans handed to us and killed). Call only once the children this process
    waits for through subprocess.Popen have been waited for, or Popen would lose their exit status."""
    reaped: List[int] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)


def reap_zombies_except(keep: int) -> List[int]:
    """Reap the exited children other than `keep` (whose exit status its waiter still wants), one pid at a time."""
    reaped = []
    for pid in _native.children(os.getpid()):
        if pid == keep:
            continue
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if got:
            reaped.append(got)
    return reaped

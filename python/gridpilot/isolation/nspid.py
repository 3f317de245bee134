"""Finding a process's host pid from the pid it has in its own PID namespace.

Inside a container (or `unshare --pid`) the JobWrapper sees the payload under a namespace pid; the JobAgent watches
and kills by the pid it has in its own namespace. The wrapper reports the namespace's identity (the inode of
/proc/self/ns/pid) and the namespace pid; the agent looks among its own descendants (and the job cgroup's members)
for the process whose /proc/<pid>/status NSpid line ends with that pid and whose ns/pid link is that inode.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional


def pid_namespace_inode(pid: str = "self", proc: str = "/proc") -> int:
    """The inode that names the PID namespace `pid` is in."""
    return os.stat(f"{proc}/{pid}/ns/pid").st_ino


def ns_pids(pid: int, proc: str = "/proc") -> Optional[List[int]]:
    """The NSpid line of the process: its pid in our namespace first, in its innermost namespace last."""
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        return None
    return None


def children(pid: int, proc: str = "/proc") -> List[int]:
    """The direct children of `pid`, from each of its threads' children file."""
    out: List[int] = []
    try:
        tids = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{proc}/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue
    return out


def descendants(root: int, proc: str = "/proc") -> List[int]:
    """Every descendant of `root`, from each thread's children file (read to EOF); vanished processes skipped."""
    out: List[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tids = os.listdir(f"{proc}/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"{proc}/{pid}/task/{tid}/children", "rb") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def host_pid(ns_inode: int, ns_pid: int, candidates: Iterable[int], proc: str = "/proc") -> Optional[int]:
    """The pid (in our namespace) of the candidate that is `ns_pid` in the namespace `ns_inode`, or None."""
    for pid in candidates:
        chain = ns_pids(pid, proc)
        if not chain or chain[-1] != ns_pid:
            continue
        try:
            if pid_namespace_inode(str(pid), proc) == ns_inode:
                return pid
        except OSError:
            continue
    return None


def namespace_init(candidates: Iterable[int], proc: str = "/proc") -> Optional[int]:
    """The first candidate that is pid 1 of a PID namespace below ours (a container's or unshare's first process)."""
    for pid in candidates:
        chain = ns_pids(pid, proc)
        if chain and len(chain) > 1 and chain[-1] == 1:
            return pid
    return None

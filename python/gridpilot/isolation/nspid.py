"""Finding a process's host pid from the pid it has in its own PID namespace.

Inside a container (or `unshare --pid`) the JobWrapper sees the payload under a namespace pid; the JobAgent watches
and kills by the pid it has in its own namespace. The wrapper reports the namespace's identity (the inode of
/proc/self/ns/pid) and the namespace pid; the agent looks among its own descendants (and the job cgroup's members)
for the process whose /proc/<pid>/status NSpid line ends with that pid and whose ns/pid link is that inode.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional

from gridpilot import _native


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


def descendants(root: int, proc: str = "/proc") -> List[int]:
    """The candidates below `root`: every descendant, each after its parent (so `namespace_init` finds the outermost
    namespace first), read by the native tree walk that terminate_tree uses."""
    return _native.descendants(root, proc=proc)


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

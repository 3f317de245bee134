"""No container: the JobWrapper still gets its own PID namespace through util-linux `unshare`.

As root a PID namespace alone; unprivileged, a user namespace first (mapping us to root inside), which is what lets
an ordinary user make the PID namespace. `--fork` makes the wrapper pid 1 of the namespace: a payload's `kill -9 -1`
reaches every process of the namespace but its pid 1, and nothing outside it. `--mount-proc` gives it a /proc that
shows the namespace's processes, which is what the wrapper's own terminate_tree reads. `--kill-child`: when unshare
dies, the kernel sends SIGKILL to the wrapper (and so to the whole namespace, whose init it is).
"""

from __future__ import annotations

import os
from typing import List, Optional

from gridpilot.isolation.runtimes.base import ContainerRuntime, Launch, LaunchSpec, find_binary


class NoContainer(ContainerRuntime):
    """The "none" runtime: the argv on the host, in its own PID namespace unless `pid_namespace` is off."""

    name = "none"

    def __init__(self, pid_namespace: bool = True, path: Optional[str] = None, uid: Optional[int] = None) -> None:
        self.pid_namespace = pid_namespace
        self.path = path
        self.uid = os.geteuid() if uid is None else uid

    def binary(self) -> Optional[str]:
        return find_binary(["unshare"], self.path)

    def missing(self) -> Optional[str]:
        if self.pid_namespace and self.binary() is None:
            return "no unshare in PATH (util-linux)"
        return None

    def command(self, spec: LaunchSpec) -> Launch:
        if not self.pid_namespace:
            return Launch(list(spec.argv), dict(spec.env))
        argv: List[str] = [self.binary() or "unshare"]
        if self.uid != 0:
            argv += ["--user", "--map-root-user"]
        argv += ["--pid", "--fork", "--mount-proc", "--kill-child", "--", *spec.argv]
        return Launch(argv, dict(spec.env))

"""No container: the JobWrapper still gets its own PID namespace through util-linux `unshare`.

As root a PID namespace alone; unprivileged, a user namespace first (mapping us to root inside), which is what lets
an ordinary user make the PID namespace. `--fork` makes the wrapper pid 1 of the namespace: a payload's `kill -9 -1`
reaches every process of the namespace but its pid 1, and nothing outside it. `--mount-proc` gives it a /proc that
shows the namespace's processes, which is what the wrapper's own terminate_tree reads. `--kill-child`: when unshare
dies, the kernel sends SIGKILL to the wrapper (and so to the whole namespace, whose init it is).

Whether the namespaces can be made is a property of the node, not of the job: unprivileged user namespaces may be
disabled (`user.max_user_namespaces = 0`, Debian's `kernel.unprivileged_userns_clone = 0`, EL7's default of 0, or a
seccomp/AppArmor policy), and unshare then fails at once ("unshare failed: No space left on device" or "Operation
not permitted"), which would fail every job's wrapper before it started. `namespace_problem` finds that out by
really running `unshare ... true` once per process, so the agent can go on without the namespace and say why.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from gridpilot.isolation.runtimes.base import ContainerRuntime, Launch, LaunchSpec, find_binary

#: The namespace probe's answers in this process, by the probe's command line (which unshare, as root or not):
#: whether the node lets us make the namespaces does not change while a pilot runs.
_probed: Dict[Tuple[str, ...], Optional[str]] = {}


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

    def namespace_problem(self, timeout: float) -> Optional[str]:
        """Why the wrapper cannot get its own PID namespace here, found by running `unshare ... true` (the same
        namespaces the wrapper would get) within `timeout` seconds; None when it can, or when pid_namespace is off.
        Asked once per process: later calls return the first answer."""
        if not self.pid_namespace:
            return None
        spec = LaunchSpec([find_binary(["true"]) or "/bin/true"], None, stdin=False)
        key = tuple(self.command(spec).argv)
        if key not in _probed:
            _probed[key] = self.probe(spec, timeout)
        return _probed[key]

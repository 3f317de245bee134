"""Podman, with runc, on an image directory (--rootfs).

Quirks of the hosts this runs on (../shared/ENVIRONMENT.md):
- crun, Podman's default OCI runtime, refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported"): --runtime
  runc.
- Podman raises nofile and nproc to its own defaults and fails where the host caps them lower: explicit --ulimit, by
  default the caller's own limits (resource.getrlimit), which are always allowed.
- --cgroups=disabled: Podman makes no cgroup of its own, so conmon and the container stay in the cgroups of the
  process that ran `podman run`, which the agent put in the job cgroup (v2, and v1 where the limits are): the job's
  kill, freeze and limits reach what runs in the container.
- --rootfs DIR:O: an overlay over the image directory, so the mount points of the binds are made in the overlay,
  not in the image (which may be read-only, and is shared by every job).
- --log-driver passthrough: the container writes to the stdout/stderr podman was given (the wrapper's log file)
  without conmon copying every byte, and without a second copy in Podman's log store.
- --network host: the JobWrapper must reach central on the node's own addresses, as the pilot does.
"""

from __future__ import annotations

import resource
from typing import List, Optional, Sequence, Tuple

from gridpilot.isolation.runtimes.base import (
    ContainerRuntime,
    Launch,
    LaunchSpec,
    device_nodes,
    find_binary,
    host_env,
)


def own_ulimits() -> List[Tuple[str, int, int]]:
    """(name, soft, hard) of this process for nofile and nproc, as --ulimit takes them; unlimited as -1."""
    out = []
    for name, res in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, hard = resource.getrlimit(res)
        out.append((name, -1 if soft == resource.RLIM_INFINITY else soft, -1 if hard == resource.RLIM_INFINITY else hard))
    return out


class Podman(ContainerRuntime):
    name = "podman"

    def __init__(self, path: Optional[str] = None, ulimits: Optional[Sequence[Tuple[str, int, int]]] = None,
                 oci_runtime: str = "runc") -> None:
        self.path = path
        self.ulimits = list(ulimits) if ulimits is not None else own_ulimits()
        self.oci_runtime = oci_runtime

    def binary(self) -> Optional[str]:
        return find_binary(["podman"], self.path)

    def missing(self) -> Optional[str]:
        if self.binary() is None:
            return "no podman in PATH"
        if find_binary([self.oci_runtime], self.path) is None and find_binary([self.oci_runtime], "/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"podman is there but not {self.oci_runtime} (crun refuses hybrid cgroup hosts)"
        return None

    def command(self, spec: LaunchSpec) -> Launch:
        if spec.image is None:
            raise ValueError("podman needs an image directory")
        argv: List[str] = [self.binary() or "podman", "run", "--rm"]
        if spec.stdin:
            argv.append("--interactive")
        if spec.name:
            argv += ["--name", spec.name]
        argv += [
            "--runtime", self.oci_runtime,
            "--network", "host",
            "--cgroups", "disabled",
            "--log-driver", "passthrough",
        ]
        for name, soft, hard in self.ulimits:
            argv += ["--ulimit", f"{name}={soft}:{hard}"]
        if spec.pass_fds:
            argv += ["--preserve-fds", str(spec.pass_fds)]
        argv += ["--rootfs", f"{spec.image}:O"]
        for b in spec.binds:
            argv += ["--volume", b.spec()]
        for dev in device_nodes(spec.gpus):
            argv += ["--device", dev]
        argv += ["--workdir", spec.workdir]
        for k, v in spec.env.items():
            argv += ["--env", f"{k}={v}"]
        argv += spec.argv
        return Launch(argv, host_env())

    def cleanup(self, spec: LaunchSpec) -> Optional[List[str]]:
        if not spec.name:
            return None
        # Removes the container Podman still records when its process was killed before it could clean up itself.
        return [self.binary() or "podman", "rm", "--force", "--ignore", "--time", "0", spec.name]

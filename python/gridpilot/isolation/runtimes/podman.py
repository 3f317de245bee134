"""Podman, with runc, on an image directory (--rootfs).

Quirks of the hosts this runs on (../shared/ENVIRONMENT.md):
- crun, Podman's default OCI runtime, refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported"): --runtime
  runc.
- Podman raises nofile and nproc to its own defaults and fails where the host caps them lower: explicit --ulimit
  (own_ulimits).
- Cgroups: runc refuses --cgroups=disabled ("not compatible with NoCgroups"), and crun, which accepts it, refuses
  hybrid hosts even then. On a hybrid host runc puts the container in libpod-<id> cgroups at the roots of the
  hierarchies (v2 included) whatever --cgroup-parent says, so the job cgroup the agent made would not hold it.
  --cgroups no-conmon keeps conmon in the caller's (the job's) cgroups; the container's first process (the JobWrapper,
  alone in there) moves itself into the job's cgroups through their cgroup.procs, opened by the agent and passed as
  descriptors after the pipes, never mounted (isolation/containers.py, wrapper.join_cgroups), before it starts
  anything, so the job's kill, freeze and limits reach everything that runs in the container.
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


#: The --ulimit values Podman is given: what works on the hosts this runs on (ENVIRONMENT.md), lowered to this
#: process's own limits where those are lower. Not simply our own limits: runc is refused an nproc hard limit equal
#: to ours (96364 here, "error setting rlimit type 6: operation not permitted") while 4096 is accepted.
DEFAULT_ULIMITS = (("nofile", 1024, 20000), ("nproc", 1024, 4096))


def own_ulimits() -> List[Tuple[str, int, int]]:
    """(name, soft, hard) for nofile and nproc, as --ulimit takes them: DEFAULT_ULIMITS capped by our own."""
    out = []
    for name, soft, hard in DEFAULT_ULIMITS:
        own_soft, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE if name == "nofile" else resource.RLIMIT_NPROC)
        if own_hard != resource.RLIM_INFINITY:
            hard = min(hard, own_hard)
        if own_soft != resource.RLIM_INFINITY:
            soft = min(soft, own_soft)
        out.append((name, min(soft, hard), hard))
    return out


class Podman(ContainerRuntime):
    name = "podman"
    shows_only_job_gpus = True  # --device with the job's device nodes only

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
            "--cgroups", "no-conmon",
            "--log-driver", "passthrough",
        ]
        for name, soft, hard in self.ulimits:
            argv += ["--ulimit", f"{name}={soft}:{hard}"]
        if spec.pass_fds:
            argv += ["--preserve-fds", str(spec.pass_fds)]
        argv.append("--rootfs")  # a flag: the first positional argument below is a root directory, not an image
        for b in spec.binds:
            argv += ["--volume", b.spec()]
        for dev in device_nodes(spec.gpus):
            argv += ["--device", dev]
        argv += ["--workdir", spec.workdir]
        for k, v in spec.env.items():
            argv += ["--env", f"{k}={v}"]
        argv += [f"{spec.image}:O", *spec.argv]
        return Launch(argv, host_env())

    def cleanup(self, spec: LaunchSpec) -> Optional[List[str]]:
        if not spec.name:
            return None
        # Removes the container Podman still records when its process was killed before it could clean up itself.
        return [self.binary() or "podman", "rm", "--force", "--ignore", "--time", "0", spec.name]

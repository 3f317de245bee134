"""bubblewrap on an image directory.

bubblewrap 0.8 (Debian 12) has no overlay, and the image may be read-only (CVMFS, or shared by every job), so the
mount points of binds the image lacks (/root/.pyenv/..., /work/...) cannot be made inside it. The root is a tmpfs
instead, each top-level entry of the image is bound into it read-only (symlinks made again as symlinks), and a
directory on the way to a missing mount point is made in the tmpfs with its entries bound one by one, recursively.

--as-pid-1: without it bwrap's own reaper is pid 1 and the JobWrapper pid 2, and a payload's `kill -9 -1` would reach
the wrapper; as pid 1 of the namespace the wrapper is the one process `kill -1` spares (and it reaps orphans).
"""

from __future__ import annotations

import os
from typing import List, Optional, Set

from gridpilot.isolation.runtimes.base import (
    ContainerRuntime,
    Launch,
    LaunchSpec,
    device_nodes,
    find_binary,
    host_env,
)

#: Made fresh by bwrap itself, never taken from the image.
_OWN_MOUNTS = ("/proc", "/dev", "/tmp", "/sys")


class Bubblewrap(ContainerRuntime):
    name = "bwrap"
    shows_only_job_gpus = True  # --dev-bind of the job's device nodes only

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path

    def binary(self) -> Optional[str]:
        return find_binary(["bwrap"], self.path)

    def missing(self) -> Optional[str]:
        return None if self.binary() else "no bwrap in PATH"

    def command(self, spec: LaunchSpec) -> Launch:
        if spec.image is None:
            raise ValueError("bwrap needs an image directory")
        argv: List[str] = [
            self.binary() or "bwrap",
            "--die-with-parent", "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts",
            "--tmpfs", "/",
        ]
        binds = sorted(spec.binds, key=lambda b: b.dst.count("/"))
        missing = {b.dst for b in binds if not os.path.lexists(spec.image + b.dst)}
        missing.add(spec.workdir)
        argv += root_layout(spec.image, missing)
        argv += ["--proc", "/proc", "--dev", "/dev"]
        if not any(b.dst == "/tmp" for b in binds):
            argv += ["--tmpfs", "/tmp"]  # a fresh one, unless a bind puts something there (the job's tmp)
        argv += ["--ro-bind", "/sys", "/sys"]
        for b in binds:
            argv += ["--ro-bind" if b.read_only else "--bind", b.src, b.dst]
        for dev in device_nodes(spec.gpus):
            argv += ["--dev-bind", dev, dev]
        if not any(b.dst == spec.workdir for b in binds) and not os.path.isdir(spec.image + spec.workdir):
            argv += ["--dir", spec.workdir]  # made in the tmpfs root when the image lacks it and nothing is bound there
        argv += ["--chdir", spec.workdir, "--clearenv"]
        for k, v in spec.env.items():
            argv += ["--setenv", k, v]
        argv += ["--", *spec.argv]
        return Launch(argv, host_env())


def root_layout(image: str, mount_points: Set[str]) -> List[str]:
    """bwrap arguments that rebuild `image` read-only on a tmpfs root, with the directories leading to the given
    mount points made writable-for-mounting (tmpfs) and their other entries bound one by one."""
    below = {os.path.dirname(m) for m in mount_points}
    ancestors: Set[str] = set()
    for d in below:
        while d not in ("/", ""):
            ancestors.add(d)
            d = os.path.dirname(d)
    args: List[str] = []

    def walk(host_dir: str, inside: str) -> None:
        for entry in sorted(os.scandir(host_dir), key=lambda e: e.name):
            path = os.path.join(inside, entry.name)
            if path in _OWN_MOUNTS:
                args.extend(["--dir", path])
            elif entry.is_symlink():
                args.extend(["--symlink", os.readlink(entry.path), path])
            elif entry.is_dir() and path in ancestors:
                args.extend(["--dir", path])
                walk(entry.path, path)
            else:
                args.extend(["--ro-bind", entry.path, path])

    walk(image, "/")
    return args

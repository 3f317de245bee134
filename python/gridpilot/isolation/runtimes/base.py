"""What every container runtime offers the JobAgent: is it there, does it work with this image, and the command
that runs an argv inside it (binds, environment, work directory, GPUs, the descriptors to pass).

The command is pure (a function of the spec), so each runtime's command line is tested exactly; only `available`
and `probe` touch the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from gridpilot.errors import ConfigError

#: Where the job's work directory appears inside a container (as in the ALICE pilot's Containerizer).
CONTAINER_WORKDIR = "/workdir"
#: The descriptors a launched process receives its pipes on: 3, 4, ... (Podman passes exactly fds 3.. with
#: --preserve-fds N, so every runtime gets them there, and the JobWrapper's --msg-fd/--ack-fd name them).
FIRST_PASSED_FD = 3


@dataclass(frozen=True)
class Bind:
    """A host path made visible inside the container at `dst`."""

    src: str
    dst: str
    read_only: bool = True

    @classmethod
    def parse(cls, text: str, where: str = "container_binds") -> Bind:
        """"src[:dst[:ro|rw]]"; dst defaults to src, the mode to ro. ConfigError naming `where` when malformed."""
        parts = text.split(":")
        bad = (
            len(parts) > 3
            or not parts[0].startswith("/")
            or (len(parts) > 1 and not parts[1].startswith("/"))
            or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
        )
        if bad:
            raise ConfigError(f"{where}: {text!r} is not \"src[:dst[:ro|rw]]\" with absolute paths")
        src = os.path.normpath(parts[0])
        dst = os.path.normpath(parts[1]) if len(parts) > 1 else src
        return cls(src, dst, read_only=len(parts) < 3 or parts[2] == "ro")

    def spec(self) -> str:
        return f"{self.src}:{self.dst}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class Gpu:
    """A GPU given to the job: its vendor ("NVIDIA", "AMD"), PCI address, and the device nodes that expose it."""

    vendor: str
    pci_address: str
    devices: Tuple[str, ...] = ()


@dataclass
class LaunchSpec:
    """What to run inside the container, and with what."""

    argv: List[str]
    #: An image directory (or a .sif file for Apptainer); None for the runtimes that need none (bwrap without an
    #: image runs on the host's root, "none" never has one).
    image: Optional[str]
    binds: List[Bind] = field(default_factory=list)
    #: The whole environment inside; nothing of the caller's leaks in unless listed here.
    env: Dict[str, str] = field(default_factory=dict)
    workdir: str = CONTAINER_WORKDIR
    gpus: List[Gpu] = field(default_factory=list)
    #: How many descriptors, from FIRST_PASSED_FD on, the process inside must receive.
    pass_fds: int = 0
    #: cgroup.procs files the launcher opens for writing and passes at these descriptor numbers (counted in
    #: pass_fds), for the process inside to join those cgroups through: Podman (isolation/containers.py).
    cgroup_procs: Dict[int, str] = field(default_factory=dict)
    #: A name for the container where the runtime keeps one (Podman), so a leftover can be removed by name.
    name: Optional[str] = None
    #: Keep stdin open and attached (the JobWrapper reads its hand-over there).
    stdin: bool = True


@dataclass
class Launch:
    """The runtime's process: its argv and its own environment (not the one inside, which the argv carries)."""

    argv: List[str]
    env: Dict[str, str]


class ContainerRuntime:
    """One runtime. Subclasses set `name` and implement `missing` and `command`."""

    name = "?"
    #: True where only the job's GPU device nodes are inside (--device): CUDA and ROCm then enumerate only those,
    #: so device indices count the job's GPUs from 0 (see gridpilot.isolation.gpus). False where every GPU of the
    #: node is reachable (Apptainer --nv/--rocm, no container) and only the visible-devices variables select.
    shows_only_job_gpus = False

    def missing(self) -> Optional[str]:
        """Why this runtime cannot be used on this node, or None when its binary is there."""
        raise NotImplementedError

    def command(self, spec: LaunchSpec) -> Launch:
        raise NotImplementedError

    def cleanup(self, spec: LaunchSpec) -> Optional[List[str]]:
        """A command that removes what the runtime keeps of a container after its process was killed, or None."""
        return None

    def probe(self, spec: LaunchSpec, timeout: float) -> Optional[str]:
        """Really run `spec` (a short command) in the image: None when it exited 0, else why not."""
        why = self.missing()
        if why is not None:
            return why
        launch = self.command(spec)
        try:
            out = subprocess.run(
                launch.argv, env=launch.env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            self._cleanup_quietly(spec)
            return f"the probe did not finish within {timeout:.0f} s"
        except OSError as e:
            return f"{launch.argv[0]} could not start: {e.strerror}"
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).decode(errors="replace").strip().splitlines()[-3:]
            return f"the probe exited with {out.returncode}: {' | '.join(tail) or 'no output'}"
        return None

    def _cleanup_quietly(self, spec: LaunchSpec) -> None:
        argv = self.cleanup(spec)
        if argv:
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


def find_binary(names: Sequence[str], path: Optional[str] = None) -> Optional[str]:
    """The first of `names` on `path` (PATH when None), as an absolute path."""
    for n in names:
        found = shutil.which(n, path=path)
        if found:
            return os.path.abspath(found)
    return None


def host_env(extra: Mapping[str, str] = {}) -> Dict[str, str]:
    """A small environment for a runtime's own process (not the job's): enough to find its helpers."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "XDG_RUNTIME_DIR", "TMPDIR", "HOME")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
    env.update(extra)
    return env


def device_nodes(gpus: Sequence[Gpu]) -> List[str]:
    """The device nodes of these GPUs plus the vendor's control nodes, those that exist being the caller's check."""
    out: List[str] = []
    for g in gpus:
        out += list(g.devices)
    if any(g.vendor == "NVIDIA" for g in gpus):
        out += ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    if any(g.vendor == "AMD" for g in gpus):
        out += ["/dev/kfd"]
    seen: Dict[str, None] = {}
    for d in out:
        seen.setdefault(d, None)
    return list(seen)

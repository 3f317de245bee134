"""The container runtimes, one module each, behind one interface (base.ContainerRuntime), and their names."""

from __future__ import annotations

from typing import Optional

from gridpilot.isolation.runtimes.apptainer import Apptainer, ApptainerCvmfs, Singularity
from gridpilot.isolation.runtimes.base import (
    CONTAINER_WORKDIR,
    FIRST_PASSED_FD,
    Bind,
    ContainerRuntime,
    Gpu,
    Launch,
    LaunchSpec,
)
from gridpilot.isolation.runtimes.bwrap import Bubblewrap
from gridpilot.isolation.runtimes.podman import Podman
from gridpilot.isolation.runtimes.unshare import NoContainer

__all__ = [
    "CONTAINER_WORKDIR", "FIRST_PASSED_FD", "Apptainer", "ApptainerCvmfs", "Bind", "Bubblewrap", "ContainerRuntime",
    "Gpu", "Launch", "LaunchSpec", "NoContainer", "Podman", "Singularity", "make_runtime",
]


def make_runtime(name: str, *, apptainer_cvmfs_path: str = "", path: Optional[str] = None,
                 forced_binary: Optional[str] = None) -> ContainerRuntime:
    """The runtime of that name (config.CONTAINER_RUNTIMES); `path` replaces PATH when looking for its binary;
    `forced_binary` (FORCE_BINPATH) is the binary Apptainer and Singularity run, wherever it is."""
    if name == "apptainer-cvmfs":
        return ApptainerCvmfs(apptainer_cvmfs_path, forced_binary)
    if name == "apptainer":
        return Apptainer(path, forced_binary)
    if name == "singularity":
        return Singularity(path, forced_binary)
    if name == "podman":
        return Podman(path)
    if name == "bwrap":
        return Bubblewrap(path)
    raise ValueError(f"unknown container runtime {name!r}")

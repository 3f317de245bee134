"""Apptainer (from the experiment's CVMFS, or on PATH) and Singularity, its predecessor: the same command line.

The environment goes through APPTAINERENV_<NAME> (SINGULARITYENV_ for Singularity) in the runtime's own process
with --cleanenv, not through --env: `--env A=x,y` splits at the comma, which would cut CUDA_VISIBLE_DEVICES=0,1.

--pid with --no-init: with --pid alone, Apptainer (and Singularity 3.x) starts its own shim, sinit, as pid 1 of the
new namespace and runs the command as pid 2. The JobWrapper would then be an ordinary process of its namespace: a
payload's `kill -9 -1` reaches it (the kernel spares only the namespace's init), and the agent's signals for "pid 1
of the wrapper's namespace" would go to the shim. `--no-init` ("do NOT start shim process with --pid", in
`apptainer exec --help` and the apptainer-exec(1)/singularity-exec(1) man pages; the flag is declared in
cmd/internal/cli/action_flags.go of both apptainer/apptainer and apptainer/singularity, environment key
NOSHIMINIT) makes the command itself pid 1, as bwrap's --as-pid-1 does; the wrapper then reaps the orphans of its
namespace itself, which is what sinit was there for.
"""

from __future__ import annotations

import os
from typing import List, Optional

from gridpilot.isolation.runtimes.base import ContainerRuntime, Launch, LaunchSpec, find_binary, host_env


class Apptainer(ContainerRuntime):
    name = "apptainer"
    binaries = ("apptainer",)
    env_prefix = "APPTAINERENV_"

    def __init__(self, path: Optional[str] = None, forced_binary: Optional[str] = None) -> None:
        #: Where to look for the binary; None: PATH.
        self.path = path
        #: The binary to run whatever `path` says (FORCE_BINPATH, as in JAliEn; see isolation/nesting.py).
        self.forced_binary = forced_binary

    def binary(self) -> Optional[str]:
        if self.forced_binary:
            ok = os.path.isfile(self.forced_binary) and os.access(self.forced_binary, os.X_OK)
            return os.path.abspath(self.forced_binary) if ok else None
        return find_binary(self.binaries, self.path)

    def missing(self) -> Optional[str]:
        if self.forced_binary and self.binary() is None:
            return f"FORCE_BINPATH {self.forced_binary} is not an executable file"
        if self.binary() is None:
            where = self.path if self.path is not None else "PATH"
            return f"no {' or '.join(self.binaries)} in {where}"
        return None

    def command(self, spec: LaunchSpec) -> Launch:
        if spec.image is None:
            raise ValueError(f"{self.name} needs an image")
        exe = self.binary() or self.binaries[0]
        argv: List[str] = [
            exe, "exec",
            # Own PID and IPC namespaces, no host /home, /tmp or $PWD inside: the image, the binds, nothing else.
            # --no-init: the wrapper is pid 1 of its namespace, not sinit (see the module docstring).
            "--contain", "--ipc", "--pid", "--no-init", "--cleanenv", "--no-home",
        ]
        for b in spec.binds:
            argv += ["--bind", b.spec()]
        if any(g.vendor == "NVIDIA" for g in spec.gpus):
            argv.append("--nv")
        if any(g.vendor == "AMD" for g in spec.gpus):
            argv.append("--rocm")
        if any(b.dst == "/tmp" for b in spec.binds):
            # The job's tmp is bound there: not Apptainer's own /tmp first ("mount tmp" of apptainer.conf), as JAliEn.
            argv += ["--no-mount", "tmp"]
        argv += ["--pwd", spec.workdir, spec.image, *spec.argv]
        env = host_env({self.env_prefix + k: v for k, v in spec.env.items()})
        return Launch(argv, env)


class ApptainerCvmfs(Apptainer):
    """Apptainer as the experiment ships it on CVMFS (apptainer_cvmfs_path), tried before any local one."""

    name = "apptainer-cvmfs"

    def __init__(self, path: str, forced_binary: Optional[str] = None) -> None:
        super().__init__(path, forced_binary)

    def missing(self) -> Optional[str]:
        assert self.path is not None
        if not self.forced_binary and not os.path.isdir(self.path):
            return f"{self.path} does not exist (no CVMFS, or the repository is not mounted)"
        return super().missing()


class Singularity(Apptainer):
    name = "singularity"
    binaries = ("singularity",)
    env_prefix = "SINGULARITYENV_"

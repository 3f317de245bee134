"""The JobAgent's container decisions: which image, which runtime (probed for real), and the launch spec that runs
the JobWrapper inside it with the pilot's own Python bind-mounted read-only at the same paths.

Traced lines, for the job and for the site admin: "Support for containers detected. Will use: <name>", or why no
runtime was used; the image's container.properties options (isolation/container_properties.py); and at launch the
runtime, its binary and the image, what /tmp is inside, and what nested containers are told (isolation/nesting.py).

Inside every container /tmp is the job's own <workdir>/tmp (bound read-write, as JAliEn binds <workdir>/tmp:/tmp),
not the runtime's tmpfs nor the node's /tmp: what a payload leaves there counts in the work directory's size and
goes with it, and nothing of it is shared with other jobs.
"""

from __future__ import annotations

import fcntl
import glob
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from gridpilot import _native
from gridpilot.config import PilotConfig
from gridpilot.errors import CgroupError, ConfigError
from gridpilot.isolation import JOIN_CGROUP_FDS_ENV, nesting
from gridpilot.isolation.container_properties import ContainerProperties, read_properties
from gridpilot.isolation.images import ImageChoice, choose_image
from gridpilot.isolation.runtimes import (
    CONTAINER_WORKDIR,
    FIRST_PASSED_FD,
    Apptainer,
    Bind,
    ContainerRuntime,
    Gpu,
    LaunchSpec,
    NoContainer,
    make_runtime,
)
from gridpilot.jdl import JobDescription
from gridpilot.jdl.platform import platform_from_packages

__all__ = ["FIRST_PASSED_FD", "Isolation", "NoContainer", "choose", "close_fds", "handed_down", "job_image", "launch_notes",
           "launch_spec", "node_check", "open_cgroup_procs", "place_fds", "without_container"]

#: Variables the JobWrapper inside a container gets from the agent's environment (the rest is set explicitly).
#: GRIDPILOT_* settings pass (the log level, the tests' process marker), never GRIDPILOT_TOKEN* or the config file.
_KEEP_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
_PRIVATE_ENV = ("GRIDPILOT_TOKEN", "GRIDPILOT_CONFIG")
_CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the job's <workdir>/tmp is inside a container.
CONTAINER_TMP = "/tmp"


@dataclass
class Isolation:
    """What the job runs in: a runtime (NoContainer for none) and the image (None without a container)."""

    runtime: ContainerRuntime
    image: Optional[str]
    #: What the image's container.properties asks for (none without a container, or without the file).
    properties: ContainerProperties = field(default_factory=ContainerProperties)

    @property
    def contained(self) -> bool:
        return self.image is not None

    @property
    def own_pid_namespace(self) -> bool:
        """Whether the wrapper is pid 1 of a PID namespace of its own (every container; `unshare` without one)."""
        return self.contained or (isinstance(self.runtime, NoContainer) and self.runtime.pid_namespace)


def python_binds() -> List[Bind]:
    """The pilot's Python, read-only at the same paths: the interpreter's prefix (its python links libpython from
    its own lib directory), the virtual environment, and every sys.path directory outside both (an editable
    install's source tree)."""
    roots: List[str] = []
    for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)),
              *[p for p in sys.path if p and os.path.isdir(p)]):
        p = os.path.realpath(p)
        if not any(p == r or p.startswith(r + "/") for r in roots):
            roots = [r for r in roots if not r.startswith(p + "/")] + [p]
    return [Bind(r, r) for r in sorted(roots)]


def container_env(extra: Dict[str, str], environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The JobWrapper's whole environment inside a container: nothing of the agent's but what is listed here."""
    src = os.environ if environ is None else environ
    env = {k: v for k, v in src.items() if k in _KEEP_ENV or (k.startswith("GRIDPILOT_") and not k.startswith(_PRIVATE_ENV))}
    env.update({
        "PATH": _CONTAINER_PATH,
        "HOME": CONTAINER_WORKDIR,
        "TMPDIR": CONTAINER_WORKDIR + "/tmp",
        "PYTHONNOUSERSITE": "1",
    })
    env.update(extra)
    return env


def storage_binds(storage: Optional[Sequence[Dict[str, Any]]]) -> List[Bind]:
    """file:// storage elements are directories of this node: the wrapper inside must reach them at the same path."""
    out = []
    for se in storage or ():
        url = str(se.get("url", ""))
        if url.startswith("file://") and os.path.isdir(url[len("file://"):]):
            path = os.path.realpath(url[len("file://"):])
            out.append(Bind(path, path, read_only=False))
    return out


def gpu_devices(gpus: Sequence[_native.Gpu], sysfs: str = "/sys", procfs: str = "/proc") -> List[Gpu]:
    """The device nodes of each GPU: /dev/nvidia<minor> from the NVIDIA driver's /proc entry, /dev/dri/* from sysfs."""
    out = []
    for g in gpus:
        devs: List[str] = []
        if g.vendor == "NVIDIA":
            try:
                with open(f"{procfs}/driver/nvidia/gpus/{g.pci_address}/information") as f:
                    for line in f:
                        if line.startswith("Device Minor:"):
                            devs.append(f"/dev/nvidia{int(line.split(':')[1])}")
            except (OSError, ValueError):
                pass
        for node in sorted(glob.glob(f"{sysfs}/bus/pci/devices/{g.pci_address}/drm/*")):
            name = os.path.basename(node)
            if name.startswith(("card", "renderD")):
                devs.append(f"/dev/dri/{name}")
        out.append(Gpu(g.vendor, g.pci_address, tuple(devs)))
    return out


def job_image(cfg: PilotConfig, job: Optional[JobDescription], host_arch: str,
              environ: Optional[Mapping[str, str]] = None) -> ImageChoice:
    """The job's image; in a pilot that itself runs in a container (JOB_CONTAINER_PATH), that container's image."""
    environ = os.environ if environ is None else environ
    platform = None
    if job is not None:
        platform = job.platform or platform_from_packages(job.packages)
    listing: List[str] = []
    if cfg.images_dir and os.path.isdir(cfg.images_dir):
        listing = sorted(os.listdir(cfg.images_dir))
    return choose_image(listing, images_dir=cfg.images_dir, platform=platform, host_arch=host_arch,
                        default_image=cfg.default_image, site_image=cfg.site_image,
                        inherited_image=environ.get(nesting.IMAGE_ENV))


def container_name(job_id: int) -> str:
    """A name for the job's container, unique on the node. Not the job id and our pid alone: Podman keeps one store
    per node (per user), while job ids are unique only within one central and pids only within one PID namespace, so
    two pilots on a node (two batch jobs, two VOs) can hold the same pair, and the cleanup's `podman rm --force
    <name>` would then remove the other pilot's running container (seen in the hostile battery's parallel cases)."""
    return f"gridpilot-job-{job_id}-{uuid.uuid4().hex[:16]}"


def probe_spec(image: str, binds: List[Bind]) -> LaunchSpec:
    """The probe: the pilot's own Python, from its binds, imports the native module inside the image."""
    return LaunchSpec([sys.executable, "-c", "import gridpilot._native"], image, binds=binds,
                      env=container_env({}), workdir="/", stdin=False)


def without_container(cfg: PilotConfig, trace: Callable[[str], None]) -> Isolation:
    """No container: the wrapper in its own PID namespace through `unshare` when the node allows it (probed, see
    NoContainer.namespace_problem), else on the host's pids, traced with what that exposes."""
    runtime = NoContainer(cfg.pid_namespace)
    problem = runtime.namespace_problem(cfg.container_probe_timeout)
    if problem is not None:
        who = "every process on this node (the pilot runs as root)" if runtime.uid == 0 else \
            f"every process of user {runtime.uid} outside the job, the pilot's own among them"
        trace(f"No PID namespace for the JobWrapper: unshare cannot make one here ({problem}); it runs on the "
              f"host's pids, so a payload's kill -9 -1 can reach {who}")
        runtime = NoContainer(False)
    return Isolation(runtime, None)


def choose(cfg: PilotConfig, image: ImageChoice, trace: Callable[[str], None],
           environ: Optional[Mapping[str, str]] = None) -> Tuple[Optional[Isolation], List[str]]:
    """The isolation to use, and the reasons each runtime was not used. None (with reasons) when containers are
    required and none works. Traces what it decided. `environ`: this pilot's environment (os.environ), where a
    container it runs in says so (isolation/nesting.py)."""
    environ = os.environ if environ is None else environ

    def no_container(why: str) -> Tuple[Optional[Isolation], List[str]]:
        trace(f"No container: {why}")
        return (None if cfg.require_container else without_container(cfg, trace)), [why]

    if cfg.container_runtime == "none":
        return no_container("containers disabled by configuration (container_runtime: none)")
    # JOB_CONTAINER_PATH says this pilot runs in that container (or, as in JAliEn, that the site wants that image);
    # GRIDPILOT_CONTAINER_RUNTIME alone says nothing of the kind: it is also a plain setting.
    outer = [f"{k}={environ[k]}" for k in (nesting.IMAGE_ENV, nesting.RUNTIME_ENV) if environ.get(k)] \
        if environ.get(nesting.IMAGE_ENV) else []
    if nesting.disabled_in(environ):
        return no_container(f"{nesting.DISABLE_ENV} is set in this pilot's environment "
                            f"({nesting.DISABLE_ENV}={environ[nesting.DISABLE_ENV]!r}"
                            + "".join(f", {o}" for o in outer) + "): it starts no container of its own")
    if outer:
        trace(", ".join(outer) + " in this pilot's environment (a container it runs in, or the site's choice): its "
              "jobs run in that image" + (" with that runtime" if len(outer) > 1 else ""))
    if image.path is None:
        return no_container(image.why)
    try:
        props = read_properties(image.path)
    except ConfigError as e:
        return no_container(f"the image's container.properties is invalid: {e}")
    if props.path is not None:
        trace(f"{props.path}: {props.describe()}")
    order = [cfg.container_runtime] if cfg.container_runtime != "auto" else list(cfg.container_order)
    reasons: List[str] = []
    if props.runtimes is not None:
        reasons += [f"{n}: not among the RUNTIMES of {props.path}" for n in order if n not in props.runtimes]
        order = [n for n in order if n in props.runtimes]
    # The probe gets a /tmp bound as the job's will be, so it runs the job's command line (Apptainer's --no-mount tmp,
    # which Singularity before 3.7 lacks; bubblewrap without its tmpfs): a runtime that cannot is not chosen.
    with tempfile.TemporaryDirectory(prefix="gridpilot-probe-tmp-") as probe_tmp:
        binds = [*python_binds(), Bind(probe_tmp, CONTAINER_TMP, read_only=False)]
        for name in order:
            rt = make_runtime(name, apptainer_cvmfs_path=cfg.apptainer_cvmfs_path,
                              forced_binary=environ.get(nesting.BINARY_ENV) or None)
            problem = rt.probe(probe_spec(image.path, binds), cfg.container_probe_timeout)
            if problem is None:
                trace(f"Support for containers detected. Will use: {name} ({image.why})")
                return Isolation(rt, image.path, props), reasons
            reasons.append(f"{name}: {problem}")
    trace(f"No container runtime works with {image.path}: " + "; ".join(reasons))
    return (None if cfg.require_container else without_container(cfg, trace)), reasons


def node_check(cfg: PilotConfig, host_arch: str, trace: Callable[[str], None]) -> Optional[str]:
    """Before matching anything: why this node must not take jobs (require_container and no runtime works with
    the site's or default image), or None."""
    if not cfg.require_container:
        return None
    got, reasons = choose(cfg, job_image(cfg, None, host_arch), trace)
    if got is None:
        return "require_container is set and no container runtime works: " + "; ".join(reasons)
    return None


def handed_down(iso: Isolation, environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """What the environment inside the job's container says about it, for containers started in there
    (isolation/nesting.py): its image and runtime (and Apptainer's binary), or that none may be started."""
    environ = os.environ if environ is None else environ
    assert iso.image is not None
    out = {nesting.IMAGE_ENV: iso.image, nesting.RUNTIME_ENV: iso.runtime.name}
    if isinstance(iso.runtime, Apptainer):
        binary = iso.runtime.binary()
        if binary:
            out[nesting.BINARY_ENV] = binary
    if nesting.disabled_in(environ):
        out[nesting.DISABLE_ENV] = environ[nesting.DISABLE_ENV]
    elif iso.properties.disable_nested:
        out[nesting.DISABLE_ENV] = "true"
    return out


def launch_spec(iso: Isolation, argv: List[str], *, workdir: str, env: Dict[str, str], cfg: PilotConfig,
                gpus: Sequence[Gpu], storage: Optional[Sequence[Dict[str, Any]]], job_cgroups: Sequence[str],
                name: str, pass_fds: int, environ: Optional[Mapping[str, str]] = None) -> LaunchSpec:
    """How the JobWrapper is started: inside the container, the work directory at /workdir and its tmp at /tmp;
    without one, as is. `environ`: the agent's environment (os.environ)."""
    if not iso.contained:
        return LaunchSpec(argv, None, env=env, workdir=workdir, pass_fds=pass_fds)
    binds = [*python_binds(), Bind(workdir, CONTAINER_WORKDIR, read_only=False),
             Bind(os.path.join(workdir, "tmp"), CONTAINER_TMP, read_only=False)]
    if os.path.isdir("/cvmfs"):
        binds.append(Bind("/cvmfs", "/cvmfs"))
    binds += [Bind.parse(b) for b in cfg.container_binds]
    binds += iso.properties.binds
    binds += storage_binds(storage)
    # The image's variables first: what the agent hands over (GPUs) and the pilot's own settle any overlap.
    inside_env = container_env({**iso.properties.env, **env}, None if environ is None else dict(environ))
    inside_env.update(handed_down(iso, environ))
    cgroup_procs: Dict[int, str] = {}
    if iso.runtime.name == "podman" and job_cgroups:
        # Podman (runc) puts the container in cgroups of its own at the hierarchies' roots on hybrid hosts, whatever
        # --cgroup-parent says for v2: the wrapper, pid 1 and alone in there, joins the job's cgroups first thing.
        # It does so through descriptors, not mounts: each job cgroup's cgroup.procs, opened by the agent, passed
        # after the pipes, written "0" (move the writer) and closed by the wrapper before anything else runs.
        # Bind-mounting the directories (as before) let a payload running as root in the container raise its own
        # memory.limit_in_bytes, pids.max or memory.max, or write cgroup.kill and cgroup.freeze; now nothing of the
        # job's cgroups is mounted inside. Since Linux 5.16 (the fix for CVE-2021-4197, backported to stable
        # kernels) a cgroup.procs write is checked against the credentials of whoever opened the file, so the
        # agent's open is what counts; before it, the writer's: root in a rootful Podman container, also enough.
        first = FIRST_PASSED_FD + pass_fds
        cgroup_procs = {first + i: os.path.join(d, "cgroup.procs") for i, d in enumerate(job_cgroups)}
        inside_env[JOIN_CGROUP_FDS_ENV] = ":".join(str(fd) for fd in cgroup_procs)
        pass_fds += len(cgroup_procs)
    return LaunchSpec(argv, iso.image, binds=binds, env=inside_env, workdir=CONTAINER_WORKDIR, gpus=list(gpus),
                      pass_fds=pass_fds, name=name, cgroup_procs=cgroup_procs)


def launch_notes(iso: Isolation, spec: LaunchSpec, workdir: str,
                 environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Trace lines on what the wrapper is launched in: the runtime and its binary, the image, /tmp, and what
    containers started inside are told. None without a container."""
    environ = os.environ if environ is None else environ
    if not iso.contained:
        return []
    binary = getattr(iso.runtime, "binary", lambda: None)()
    notes = [f"Container runtime {iso.runtime.name} ({binary or 'no binary found'}), image {iso.image}; /tmp inside "
             f"is the job's {os.path.join(workdir, 'tmp')}"]
    handed = {k: spec.env[k] for k in nesting.HANDED_DOWN if k in spec.env}
    if nesting.DISABLE_ENV in handed:
        source = "from this pilot's environment" if nesting.disabled_in(environ) else \
            f"from {iso.properties.path}"
        notes.append(f"Nested containers disabled for the job ({nesting.DISABLE_ENV}={handed[nesting.DISABLE_ENV]}, "
                     f"{source})")
    else:
        notes.append("Nested containers get the same image and runtime: "
                     + ", ".join(f"{k}={v}" for k, v in handed.items()))
    return notes


def open_cgroup_procs(spec: LaunchSpec) -> Dict[int, int]:
    """Open, here, the cgroup.procs files `spec` passes into the container: {descriptor number inside: descriptor
    here}, write-only and close-on-exec, for place_fds to put in place in the child. The caller closes them after
    the launch. CgroupError naming the file when one cannot be opened (then none stays open)."""
    opened: Dict[int, int] = {}
    try:
        for target, path in spec.cgroup_procs.items():
            opened[target] = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        close_fds(opened)
        raise CgroupError(f"cannot open {e.filename} to pass into the container: {e.strerror}") from e
    return opened


def close_fds(fds: Dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)


def place_fds(fds: Dict[int, int]) -> None:
    """In the child between fork and exec: give descriptor `here` the number `target`, for each {target: here}.

    Through high copies first, so no dup2 overwrites a descriptor another one still has to be copied from (the pipes
    and cgroup.procs files were opened at low numbers too); dup2 clears close-on-exec on the copy it makes (a dup2
    onto the same number would not, hence the copies)."""
    above = max(fds, default=0) + 1
    high = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for target, fd in fds.items()}
    for target, fd in high.items():
        os.dup2(fd, target)

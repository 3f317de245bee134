"""The GPUs a payload may use: which of the slot's free GPUs a job gets (claim), whether they answer (sanity_check),
and the variables naming them the way CUDA and ROCm accept them in CUDA_VISIBLE_DEVICES and ROCR_VISIBLE_DEVICES
(environment).

Neither takes a PCI address. CUDA takes integer indices or GPU UUIDs as nvidia-smi prints them
(`GPU-8932f937-d72c-4106-c12f-20bd9faed9f6`; CUDA Programming Guide, appendix "CUDA Environment Variables",
https://docs.nvidia.com/cuda/cuda-programming-guide/05-appendices/environment-variables.html). ROCm's runtime takes
"a list of device indices or UUIDs" (`GPU-DEADBEEFDEADBEEF`; ROCm docs, "GPU isolation techniques",
https://rocm.docs.amd.com/en/latest/conceptual/gpu-isolation.html). UUIDs are preferred: an index means a position in
whatever the runtime enumerates, which depends on what the container shows (below); a UUID names one GPU everywhere.

Where the UUIDs come from:
- NVIDIA: the `GPU UUID:` line of /proc/driver/nvidia/gpus/<pci address>/information. Until the driver has
  initialised the GPU (no persistence mode, nothing opened it yet) that line reads `GPU-????????-????-...`, which is
  no UUID: such a GPU falls back to its index.
- AMD: the KFD topology, /sys/class/kfd/kfd/topology/nodes/<n>/properties, one `name value` line each with decimal
  values (the kernel's kfd_topology.c prints them with %u/%llu; libhsakmt's topology.c reads them back with
  "%s %llu"). A GPU node (simd_count > 0) names its PCI function by `domain` and `location_id` = bus << 8 | devfn
  (pci_dev_id()); on partitioned GPUs (MI300) the kernel puts the partition's number in location_id bits 31-28, so
  one PCI function has several nodes. ROCr's UUID of a node is "GPU-" and `unique_id` as 16 lower-case hex digits
  (ROCR-Runtime amd_gpu_agent.cpp, HSA_AMD_AGENT_INFO_UUID); unique_id 0, or none, means the GPU has no UUID (gfx8).

What the payload sees, so what an index means:
- Apptainer `--nv`/`--rocm` and no container: every GPU of the node is there, so the variable is what selects, and
  an index is the GPU's place among all of the node's: for CUDA in PCI bus order, which CUDA_DEVICE_ORDER=PCI_BUS_ID
  makes CUDA use (its default, FASTEST_FIRST, may put another GPU first); for ROCm in KFD node order (ROCr's order).
- Podman and bubblewrap `--device`: only the job's device nodes are inside. CUDA then enumerates only the GPUs whose
  /dev/nvidia<minor> it can open, and libhsakmt skips every KFD node whose render node is missing (topology.c:
  "open_drm_render_device ... -ENOENT" leaves the node unsupported), so indices start again at 0 over the job's
  GPUs, in the same orders; UUIDs stay valid.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from gridpilot import _native
from gridpilot.isolation.runtimes import ContainerRuntime
from gridpilot.jdl import JobDescription
from gridpilot.jdl import gpus as gpu_terms

#: nvidia-smi's form: GPU- and 8-4-4-4-12 hex digits. Anything else on the line (question marks) is no UUID.
_NVIDIA_UUID = re.compile(r"GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PCI_ADDRESS = re.compile(r"([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")
#: The GPU vendors whose runtimes read a visible-devices variable, and the kernel driver they need bound.
_COMPUTE_DRIVER = {"NVIDIA": "nvidia", "AMD": "amdgpu"}
#: location_id bits 31-28 hold the partition number on partitioned AMD GPUs (kfd_topology.c); bits 15-0 the devid.
_KFD_DEVID_MASK = 0xFFFF


def procfs_beside(sysfs: str) -> str:
    """The /proc that goes with a sysfs root, paired as the native list_gpus pairs them: /sys with /proc, and a test
    tree's <root>/sys with <root>/proc."""
    return os.path.join(os.path.dirname(os.path.normpath(sysfs)), "proc")


def pci_key(address: str) -> Tuple[int, int, int, int]:
    """(domain, bus, device, function) of `dddd:bb:dd.f`, the order PCI_BUS_ID sorts by. ValueError when it is not
    such an address (domains above 0xffff, as Intel VMD makes, have more than four digits)."""
    m = _PCI_ADDRESS.fullmatch(address)
    if m is None:
        raise ValueError(f"{address!r} is not a PCI address of the form dddd:bb:dd.f")
    domain, bus, device, function = (int(x, 16) for x in m.groups())
    return domain, bus, device, function


def nvidia_uuid(pci_address: str, procfs: str = "/proc") -> Optional[str]:
    """The GPU's UUID from the NVIDIA driver's information file, or None (no driver, no file, not initialised)."""
    pci_key(pci_address)
    try:
        with open(f"{procfs}/driver/nvidia/gpus/{pci_address.lower()}/information") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "GPU UUID":
                    m = _NVIDIA_UUID.fullmatch(value.strip())
                    return m.group(0) if m else None
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class KfdNode:
    """A GPU node of the KFD topology: its number, the PCI function it belongs to, and ROCr's UUID for it."""

    node: int
    pci: Tuple[int, int, int, int]
    uuid: Optional[str]
    #: The ISA the node runs (major*10000 + minor*100 + stepping, e.g. 90006 for gfx906): pilot/gpuarch.py; 0 unsaid.
    gfx_target_version: int = 0


def kfd_properties(text: str) -> Dict[str, int]:
    """The `name value` lines of a KFD properties file; lines that are not a name and a decimal number are skipped."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def kfd_gpu_nodes(sysfs: str = "/sys") -> List[KfdNode]:
    """The KFD topology's GPU nodes in node order (ROCr enumerates its GPU agents in this order); [] without KFD."""
    base = f"{sysfs}/class/kfd/kfd/topology/nodes"
    try:
        names = sorted((n for n in os.listdir(base) if n.isdigit()), key=int)
    except OSError:
        return []
    nodes = []
    for name in names:
        try:
            with open(f"{base}/{name}/properties") as f:
                props = kfd_properties(f.read())
        except OSError:
            continue
        if props.get("simd_count", 0) == 0:
            continue  # a CPU node
        devid = props.get("location_id", 0) & _KFD_DEVID_MASK
        pci = (props.get("domain", 0), devid >> 8, (devid >> 3) & 0x1F, devid & 0x7)
        unique = props.get("unique_id", 0)
        nodes.append(KfdNode(int(name), pci, f"GPU-{unique:016x}" if unique else None,
                             props.get("gfx_target_version", 0)))
    return nodes


def _uses(gpu: _native.Gpu, vendor: str) -> bool:
    """Whether the vendor's runtime can use this GPU: its vendor, and its compute driver bound where that is known
    (a GPU handed to vfio-pci or left without a driver is not enumerated by CUDA or ROCm)."""
    driver = getattr(gpu, "driver", None)
    return gpu.vendor == vendor and driver in (None, _COMPUTE_DRIVER[vendor])


def _nvidia_names(job: Sequence[_native.Gpu], enumerated: Sequence[_native.Gpu], procfs: str) -> List[str]:
    order = sorted({pci_key(g.pci_address): g for g in enumerated}.items())
    position = {k: i for i, (k, _) in enumerate(order)}
    names = []
    for g in sorted(job, key=lambda g: pci_key(g.pci_address)):
        uuid = nvidia_uuid(g.pci_address, procfs)
        names.append(uuid if uuid is not None else str(position[pci_key(g.pci_address)]))
    return names


def _amd_names(job: Sequence[_native.Gpu], enumerated: Sequence[_native.Gpu], nodes: Sequence[KfdNode]) -> List[str]:
    """One name per KFD node of each job GPU (a partitioned GPU has several). Indices count the KFD nodes of the
    enumerated GPUs in node order; a GPU KFD does not list (no amdkfd) comes after them, in PCI order."""
    def devices(gpus: Sequence[_native.Gpu]) -> List[Tuple[Tuple[int, ...], Optional[str]]]:
        out: List[Tuple[Tuple[int, ...], Optional[str]]] = []
        for g in gpus:
            key = pci_key(g.pci_address)
            mine = [n for n in nodes if n.pci == key]
            out += [((0, n.node), n.uuid) for n in mine] if mine else [((1, *key), None)]
        return sorted(set(out), key=lambda d: d[0])

    position = {key: i for i, (key, _) in enumerate(devices(enumerated))}
    return [uuid if uuid is not None else str(position[key]) for key, uuid in devices(job)]


def visible_devices(job_gpus: Sequence[_native.Gpu], node_gpus: Sequence[_native.Gpu], *, only_job_devices: bool,
                    sysfs: str = "/sys", procfs: str = "/proc") -> Dict[str, str]:
    """CUDA_VISIBLE_DEVICES and ROCR_VISIBLE_DEVICES for the job's GPUs: UUIDs where the driver gives one, else
    indices. CUDA_DEVICE_ORDER=PCI_BUS_ID comes with NVIDIA GPUs, UUIDs or not: the indices here count in that order,
    and the payload's own device numbers (cudaSetDevice(0)) then follow it too, as nvidia-smi's do.
    `only_job_devices`: the runtime shows only the job's device nodes (Podman, bubblewrap), so indices count the
    job's GPUs; else all of the node's GPUs are there and indices count `node_gpus` (the job's GPUs are added to
    them if missing)."""
    env: Dict[str, str] = {}
    for vendor, variable in (("NVIDIA", "CUDA_VISIBLE_DEVICES"), ("AMD", "ROCR_VISIBLE_DEVICES")):
        job = [g for g in job_gpus if g.vendor == vendor]
        if not job:
            continue
        enumerated = job if only_job_devices else [*job, *(g for g in node_gpus if _uses(g, vendor))]
        if vendor == "NVIDIA":
            env[variable] = ",".join(_nvidia_names(job, enumerated, procfs))
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        else:
            env[variable] = ",".join(_amd_names(job, enumerated, kfd_gpu_nodes(sysfs)))
    return env


def claim(job: JobDescription, free: List[_native.Gpu],
          arch_of: Callable[[_native.Gpu], Optional[str]] = lambda g: None) -> Optional[List[_native.Gpu]]:
    """The GPUs this job gets from the free ones, or None when they cannot satisfy its request: the GPUs answering
    to its terms as the broker counted them (jdl/gpus.py), `arch_of` giving a GPU's architecture as the site map
    said it (pilot/gpuarch.py)."""
    if job.gpu is None:
        return []
    r = job.gpu
    return gpu_terms.pick(free, r.count, arch_of, name=r.name, model=r.model, vendor=r.vendor, arch=r.arch)


def environment(gpus: List[_native.Gpu], runtime: ContainerRuntime, sysfs: str = "/sys",
                node_gpus: Optional[List[_native.Gpu]] = None) -> Dict[str, str]:
    """Visible-device variables so the payload sees only the GPUs it was given, named as CUDA and ROCm take them in
    this runtime (UUIDs, else indices: visible_devices), and GRIDPILOT_GPUS, their PCI addresses.
    `node_gpus`: every GPU of the node (what the indices count where all are visible); read from `sysfs` if None."""
    if not gpus:
        return {}
    if node_gpus is None:
        # Only where every GPU of the node is reachable do the indices count them all.
        node_gpus = [] if runtime.shows_only_job_gpus else _native.list_gpus(sysfs=sysfs)
    env = visible_devices(gpus, node_gpus, only_job_devices=runtime.shows_only_job_gpus, sysfs=sysfs,
                          procfs=procfs_beside(sysfs))
    env["GRIDPILOT_GPUS"] = ",".join(g.pci_address for g in gpus)
    return env


def sanity_check(gpus: List[_native.Gpu]) -> Optional[str]:
    """Run the vendor's tool where it exists; the reason it failed, or None."""
    for vendor, tool in (("NVIDIA", "nvidia-smi"), ("AMD", "rocminfo")):
        if any(g.vendor == vendor for g in gpus) and shutil.which(tool):
            try:
                out = subprocess.run([tool], capture_output=True, timeout=60)
            except subprocess.TimeoutExpired:
                return f"{tool} did not answer within 60 s"
            if out.returncode != 0:
                return f"{tool} failed with exit code {out.returncode}: {out.stderr.decode(errors='replace')[-300:]}"
    return None

"""What this slot offers: resources from the batch system, and the site map an agent sends to the broker."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from gridpilot import __version__, _native
from gridpilot.pilot import gpuarch, nodecpu


_AD_LINE = re.compile(r"^\s*(\w+)\s*=\s*(.+?)\s*$")


def _classad(path: Optional[str]) -> Dict[str, str]:
    """Attributes of an HTCondor machine or job ad file (`Key = value` lines), keys lower-cased."""
    if not path:
        return {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = _AD_LINE.match(line)
        if m:
            out[m.group(1).lower()] = m.group(2).strip('"')
    return out


def _positive_int(text: Optional[str]) -> Optional[int]:
    try:
        n = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def slot_cores(env: Mapping[str, str] = os.environ) -> int:
    """Cores of this batch slot: Slurm, then HTCondor's ads, then OMP_NUM_THREADS, then the CPUs we may run on."""
    for candidate in (
        env.get("SLURM_CPUS_ON_NODE"),
        _classad(env.get("_CONDOR_MACHINE_AD")).get("cpus"),
        _classad(env.get("_CONDOR_JOB_AD")).get("requestcpus"),
        env.get("OMP_NUM_THREADS"),
    ):
        n = _positive_int(candidate)
        if n:
            return n
    return len(os.sched_getaffinity(0))


def node_memory_mb(proc: str = "/proc") -> int:
    with open(os.path.join(proc, "meminfo")) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def slot_memory_mb(env: Mapping[str, str] = os.environ, proc: str = "/proc") -> int:
    """Memory of this slot in MB: Slurm's per-node or per-CPU grant, HTCondor's ad, else the node's."""
    if _positive_int(env.get("SLURM_MEM_PER_NODE")):
        return int(env["SLURM_MEM_PER_NODE"])
    per_cpu = _positive_int(env.get("SLURM_MEM_PER_CPU"))
    if per_cpu:
        return per_cpu * slot_cores(env)
    for ad in (_classad(env.get("_CONDOR_MACHINE_AD")).get("memory"), _classad(env.get("_CONDOR_JOB_AD")).get("requestmemory")):
        n = _positive_int(ad)
        if n:
            return n
    return node_memory_mb(proc)


def batch_job_id(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The batch system's id of the job this pilot runs in, for the traces."""
    # Set by the CE's local backend (ce/local.py), which has no batch system to name the pilot.
    if env.get("GRIDPILOT_BATCH_ID"):
        return env["GRIDPILOT_BATCH_ID"]
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}"
    gid = _classad(env.get("_CONDOR_JOB_AD")).get("globaljobid")
    if gid:
        return f"htcondor:{gid}"
    for var, name in (("PBS_JOBID", "pbs"), ("LSB_JOBID", "lsf"), ("JOB_ID", "sge")):
        if env.get(var):
            return f"{name}:{env[var]}"
    return None


def disk_free_mb(path: str) -> int:
    """Free space where jobs will really write (the work directory root), not where the pilot was started."""
    os.makedirs(path, exist_ok=True)
    return shutil.disk_usage(path).free // (1 << 20)


#: What the native enumeration puts where the source gave no id (plain lspci text); never a real vendor or device.
UNKNOWN_PCI_ID = 0xFFFF


def node_gpus(sysfs: str, pci_ids: Optional[str]) -> List[Any]:
    """The node's GPUs (gridpilot._native.Gpu), named through the configured pci.ids (PilotConfig.pci_ids; None:
    the usual places). Every enumeration of the pilot goes through here, so all of them name the GPUs alike."""
    return _native.list_gpus(sysfs=sysfs, pci_ids=pci_ids)


def pci_id(gpu: Any) -> Optional[str]:
    """`vendor:device` in hex, as `lspci -nn` prints it; None where the source did not give both ids."""
    if gpu.vendor_id == UNKNOWN_PCI_ID or gpu.device_id == UNKNOWN_PCI_ID:
        return None
    return f"{gpu.vendor_id:04x}:{gpu.device_id:04x}"


def gpu_name(gpu: Any) -> str:
    """Vendor and model, or vendor and PCI id where pci.ids did not name the model: for traces and logs."""
    if gpu.model is not None:
        return f"{gpu.vendor} {gpu.model}"
    return f"{gpu.vendor} {pci_id(gpu) or 'device'}, model unknown"


def site_map_gpu(gpu: Any, sysfs: str = "/sys") -> Dict[str, Any]:
    """One GPU as the site map lists it: what the node knows of it. Without a pci.ids the model has no name: it is
    left out (central takes such a GPU for a job asking a count or a vendor, never one asking a model), and the PCI
    id stands in for it, so the broker's refusals and an operator can still tell which device it is. `arch` and
    `memory_mb` are null where the node does not know them (pilot/gpuarch.py; docs/gpus.md)."""
    out: Dict[str, Any] = {"vendor": gpu.vendor, "pci_address": gpu.pci_address}
    if gpu.model is not None:
        out["model"] = gpu.model
    else:
        ids = pci_id(gpu)
        if ids is not None:
            out["pci_id"] = ids
    out["arch"] = gpuarch.gpu_arch(gpu, sysfs)
    out["memory_mb"] = gpuarch.gpu_memory_mb(gpu, sysfs)
    return out


def describe_gpus(gpus: Sequence[Any], pci_ids: Optional[str]) -> str:
    """The node's GPUs for the runner's start-up line: how many, and what names they go by in the site map."""
    if not gpus:
        return "0 GPU(s)"
    counts: Dict[str, int] = {}
    for g in gpus:
        name = gpu_name(g)
        counts[name] = counts.get(name, 0) + 1
    text = f"{len(gpus)} GPU(s): " + "; ".join(f"{c}x {n}" if c > 1 else n for n, c in counts.items())
    unknown = sum(1 for g in gpus if g.model is None)
    if unknown:
        where = f"pci_ids {pci_ids}" if pci_ids else "a pci.ids of the node (from pciutils or hwdata; or set pci_ids)"
        text += (f"; {unknown} without a model name, not found in {where}: jobs asking for a GPU model do not match "
                 "them")
    return text


def platform_name(cpu: Any) -> str:
    return f"Linux-{cpu.arch}"


def build_site_map(
    *,
    site: str,
    ce: str,
    partition: str,
    node: str,
    ttl_left: float,
    free_cores: int,
    memory_mb: int,
    disk_mb: int,
    cpu: Any,
    gpus: Sequence[Any],
    close_se: Sequence[str] = (),
    users: Sequence[str] = (),
    nousers: Sequence[str] = (),
    cvmfs_revision: Optional[str] = None,
    sysfs: str = "/sys",
    arch: Optional[str] = None,
    offer: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The site map the broker matches against (keys as central's /match expects). `arch`: the node's architecture
    when the configuration overrides the CPU's (arch_override); `offer`: what the runner's node probe found that the
    broker matches on (node_offer)."""
    sm = {
        "site": site,
        "ce": ce,
        "partition": partition,
        "node": node,
        "ttl": int(ttl_left),
        "cores": free_cores,
        "memory_mb": memory_mb,
        "disk_mb": disk_mb,
        "platform": platform_name(cpu),
        "arch": cpu.arch,
        # A non-AVX x86 node says so, so the broker can keep production jobs that need AVX away from it.
        "avx": bool(cpu.has_avx),
        "cpu_model": cpu.model,
        "gpus": [site_map_gpu(g, sysfs) for g in gpus],
        "close_se": list(close_se),
        "users": list(users),
        "nousers": list(nousers),
        "cvmfs_revision": cvmfs_revision,
    }
    if arch is not None and arch != cpu.arch:
        sm.update(arch=arch, platform=f"Linux-{arch}", avx=False)
    sm["pilot_version"] = __version__
    sm.update(offer or {})
    return sm


#: What the site map lists of the CPU's features (the broker's bound is 256, each of at most 64 characters).
MAX_OFFERED_FEATURES = 256


def node_offer(probe: Optional[Mapping[str, Any]], cpu: Any, arch_override: Optional[str]) -> Dict[str, Any]:
    """The site map keys the runner's node probe (nodeprobe.at_pilot_start) gives every agent's match: the x86-64
    level, the CPU's features (x86: its AVX flags; aarch64: Features; riscv64: ISA and extensions) and the container
    runtimes that started a container. Without a probe (it broke) the CPU is described from /proc/cpuinfo and no
    runtime is said (the broker then does not check). Under an arch_override naming another architecture, nothing
    of the CPU is offered: it describes a CPU the jobs are not built for."""
    out: Dict[str, Any] = {}
    section = probe.get("cpu") if isinstance(probe, Mapping) else None
    if not isinstance(section, Mapping):
        section = nodecpu.describe(cpu, "")
    if arch_override is None or arch_override == section.get("arch"):
        features: List[str] = []
        if section.get("x86_64_level"):
            level = str(section["x86_64_level"])
            out["x86_64_level"] = level if level != "x86-64" else "x86-64-v1"
            features += [f for f in ("avx", "avx2") if section.get(f)] + list(section.get("avx512") or [])
        if section.get("isa"):
            features.append(str(section["isa"]))
        features += [str(f) for f in (section.get("features") or section.get("extensions") or [])]
        out["cpu_features"] = [f[:64] for f in features if f][:MAX_OFFERED_FEATURES]
    runtimes = ((probe or {}).get("runtimes") or {}).get("found") if isinstance(probe, Mapping) else None
    if isinstance(runtimes, Mapping):
        out["containers"] = sorted(n for n, r in runtimes.items() if isinstance(r, Mapping) and r.get("starts"))
    return out


def arch_override_line(arch_override: Optional[str], cpu_arch: str) -> Optional[str]:
    """The pilot log's and the job trace's line when the configuration overrides the node's architecture."""
    if arch_override is None:
        return None
    same = " (the CPU's own)" if arch_override == cpu_arch else f", not the CPU's {cpu_arch}"
    return f"Node architecture set by arch_override: {arch_override}{same}; the broker matches jobs of {arch_override}"


def cvmfs_revision(repo: str = "/cvmfs/alice.cern.ch") -> Optional[str]:
    """The CVMFS revision of the software repository, when it is mounted (xattr user.revision)."""
    try:
        return os.getxattr(repo, "user.revision").decode().strip()
    except (OSError, AttributeError):
        return None


"""A GPU's architecture and memory, as the site map gives them to the broker (docs/gpus.md).

Architecture, in this order:
1. AMD: the KFD topology's gfx_target_version for the GPU's PCI function (/sys/class/kfd/kfd/topology/nodes/<n>/
   properties; the kernel writes major*10000 + minor*100 + stepping, minor and stepping being the hex digits of the
   LLVM processor name: 90006 is gfx906, 90010 gfx90a, 120001 gfx1201).
2. The table of PCI ids in gridpilot/data/gpu_archs.py (public facts, sources there): NVIDIA's compute capability
   is not in sysfs, and an AMD GPU without amdkfd has no KFD node.
3. Otherwise None: unknown, and such a GPU answers to no GPUArch. (nvidia-smi would know NVIDIA's compute
   capability, but starting it at every match costs a driver initialisation; the table covers the data-centre
   GPUs, and a site with another one adds it there.)

Memory: AMD's amdgpu driver gives it in the device's sysfs directory (mem_info_vram_total, bytes); None elsewhere.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from gridpilot.data.gpu_archs import GPU_ARCHS
from gridpilot.isolation.gpus import kfd_gpu_nodes, pci_key

MB = 1 << 20
#: What the native enumeration puts where the source gave no id (sitemap.UNKNOWN_PCI_ID).
_UNKNOWN_ID = 0xFFFF


def gfx_name(target_version: int) -> Optional[str]:
    """LLVM's processor name of a KFD gfx_target_version (90010 -> gfx90a); None for 0 (a CPU node, or unsaid)."""
    if target_version <= 0:
        return None
    major, minor, stepping = target_version // 10000, (target_version // 100) % 100, target_version % 100
    if minor > 15 or stepping > 15:
        return None  # not a version the kernel writes: each of them is one hex digit of the name
    return f"gfx{major}{minor:x}{stepping:x}"


def kfd_arch(pci_address: str, sysfs: str) -> Optional[str]:
    try:
        key = pci_key(pci_address)
    except ValueError:
        return None
    for node in kfd_gpu_nodes(sysfs):
        if node.pci == key:
            return gfx_name(node.gfx_target_version)
    return None


def gpu_arch(gpu: Any, sysfs: str = "/sys") -> Optional[str]:
    """The architecture of a GPU (gridpilot._native.Gpu): the driver's word first, then the table; None unknown."""
    if gpu.vendor == "AMD" and gpu.pci_address:
        found = kfd_arch(gpu.pci_address, sysfs)
        if found is not None:
            return found
    if gpu.vendor_id == _UNKNOWN_ID or gpu.device_id == _UNKNOWN_ID:
        return None
    return GPU_ARCHS.get((gpu.vendor_id, gpu.device_id))


def gpu_memory_mb(gpu: Any, sysfs: str = "/sys") -> Optional[int]:
    """The GPU's own memory in MB where its driver says it in sysfs (amdgpu), else None."""
    if not gpu.pci_address:
        return None
    try:
        with open(os.path.join(sysfs, "bus", "pci", "devices", gpu.pci_address.lower(), "mem_info_vram_total")) as f:
            total = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return total // MB if total > 0 else None


__all__ = ["gfx_name", "gpu_arch", "gpu_memory_mb", "kfd_arch"]

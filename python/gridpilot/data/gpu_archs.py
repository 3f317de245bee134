"""GPU architecture by PCI id, for GPUs whose driver does not say it where the pilot can read it (NVIDIA's compute
capability is not in sysfs; an AMD GPU without amdkfd has no KFD topology). pilot/gpuarch.py asks the driver first
and this table second; a device in neither has arch null, and answers to no GPUArch (docs/gpus.md).

Written from public facts, one device id per line; only the data-centre and common compute devices a grid site
runs, not every id of a family:
- NVIDIA: device ids from pci.ids (https://pci-ids.ucw.cz/read/PC/10de); compute capability from NVIDIA's
  "CUDA GPUs" list (https://developer.nvidia.com/cuda-gpus), written as CUDA's compilers name it (8.0 -> sm_80).
- AMD: device ids from pci.ids (https://pci-ids.ucw.cz/read/PC/1002) and the amdgpu driver's table
  (linux drivers/gpu/drm/amd/amdgpu/amdgpu_drv.c, pciidlist); processor names from LLVM's AMDGPU back end
  (https://llvm.org/docs/AMDGPUUsage.html, "AMDGPU Processors"), as KFD's gfx_target_version gives them.
- Intel: device ids and generations from Intel's compute runtime (github.com/intel/compute-runtime,
  shared/source/dll/devices: PVC ids under SUPPORT_XE_HPC_CORE, DG2 ids under SUPPORT_XE_HPG_CORE) and Intel's
  GPU driver documentation (https://dgpu-docs.intel.com/devices/hardware-table.html); named as Intel names the
  generations: Xe-HPC (Ponte Vecchio, Data Center GPU Max), Xe-HPG (Alchemist: Arc A, Data Center GPU Flex),
  Xe-LPG (Meteor Lake's integrated graphics).
The ids newer than Debian 12's pci.ids (2023-04-10: L40S 26b9, H200 2335, GH200 2342, MI300A/X 74a0/74a1, W7900
7448, RX 9070 7550, Meteor Lake 7d55) were checked on 5 December 2026 against `lspci -nn` lines of real machines
published in public repositories (device name and [vendor:device] printed together).
"""

from __future__ import annotations

from typing import Dict, Tuple

#: (vendor id, device id) -> architecture.
GPU_ARCHS: Dict[Tuple[int, int], str] = {
    # NVIDIA Volta (7.0)
    (0x10DE, 0x1DB1): "sm_70",  # GV100GL [Tesla V100 SXM2 16GB]
    (0x10DE, 0x1DB4): "sm_70",  # GV100GL [Tesla V100 PCIe 16GB]
    (0x10DE, 0x1DB5): "sm_70",  # GV100GL [Tesla V100 SXM2 32GB]
    (0x10DE, 0x1DB6): "sm_70",  # GV100GL [Tesla V100 PCIe 32GB]
    # NVIDIA Turing (7.5)
    (0x10DE, 0x1EB8): "sm_75",  # TU104GL [Tesla T4]
    # NVIDIA Ampere (8.0 data centre, 8.6 the rest)
    (0x10DE, 0x20B0): "sm_80",  # GA100 [A100 SXM4 40GB]
    (0x10DE, 0x20B2): "sm_80",  # GA100 [A100 SXM4 80GB]
    (0x10DE, 0x20B5): "sm_80",  # GA100 [A100 PCIe 80GB]
    (0x10DE, 0x20F1): "sm_80",  # GA100 [A100 PCIe 40GB]
    (0x10DE, 0x20B7): "sm_80",  # GA100GL [A30 PCIe]
    (0x10DE, 0x2204): "sm_86",  # GA102 [GeForce RTX 3090]
    (0x10DE, 0x2206): "sm_86",  # GA102 [GeForce RTX 3080]
    (0x10DE, 0x2236): "sm_86",  # GA102GL [A10]
    (0x10DE, 0x2235): "sm_86",  # GA102GL [A40]
    # NVIDIA Ada Lovelace (8.9)
    (0x10DE, 0x2684): "sm_89",  # AD102 [GeForce RTX 4090]
    (0x10DE, 0x26B5): "sm_89",  # AD102GL [L40]
    (0x10DE, 0x26B9): "sm_89",  # AD102GL [L40S]
    (0x10DE, 0x27B8): "sm_89",  # AD104GL [L4]
    (0x10DE, 0x27B0): "sm_89",  # AD104GL [RTX 4000 SFF Ada Generation]
    # NVIDIA Hopper (9.0)
    (0x10DE, 0x2330): "sm_90",  # GH100 [H100 SXM5 80GB]
    (0x10DE, 0x2331): "sm_90",  # GH100 [H100 PCIe]
    (0x10DE, 0x2321): "sm_90",  # GH100 [H100 NVL]
    (0x10DE, 0x2335): "sm_90",  # GH100 [H200 SXM 141GB]
    (0x10DE, 0x2342): "sm_90",  # GH100 [GH200 120GB / 480GB], the GPU of Grace Hopper
    # AMD GCN 5 Vega 20 (gfx906): Radeon Instinct MI50/MI60, Radeon Pro VII, Radeon VII
    (0x1002, 0x66A0): "gfx906",  # Vega 20 [Radeon Instinct MI60 / Radeon Pro VII]
    (0x1002, 0x66A1): "gfx906",  # Vega 20 [Radeon Pro VII/Radeon Instinct MI50 32GB]
    (0x1002, 0x66A2): "gfx906",  # Vega 20
    (0x1002, 0x66A3): "gfx906",  # Vega 20 [Radeon Pro Vega II/Radeon Pro Vega II Duo]
    (0x1002, 0x66AF): "gfx906",  # Vega 20 [Radeon VII]
    # AMD CDNA
    (0x1002, 0x738C): "gfx908",  # Arcturus GL-XL [Instinct MI100]
    (0x1002, 0x738E): "gfx908",  # Arcturus GL-XL [Instinct MI100]
    (0x1002, 0x7408): "gfx90a",  # Aldebaran/MI200 [Instinct MI250X]
    (0x1002, 0x740C): "gfx90a",  # Aldebaran/MI200 [Instinct MI250X/MI250]
    (0x1002, 0x740F): "gfx90a",  # Aldebaran/MI200 [Instinct MI210]
    (0x1002, 0x74A0): "gfx942",  # Aqua Vanjaram [Instinct MI300A]
    (0x1002, 0x74A1): "gfx942",  # Aqua Vanjaram [Instinct MI300X]
    # AMD RDNA 3 and 4
    (0x1002, 0x744C): "gfx1100",  # Navi 31 [Radeon RX 7900 XT/7900 XTX/7900 GRE/7900M]
    (0x1002, 0x7448): "gfx1100",  # Navi 31 [Radeon Pro W7900]
    (0x1002, 0x7550): "gfx1201",  # Navi 48 [Radeon RX 9070/9070 XT/9070 GRE]
    # Intel Xe-HPC: Ponte Vecchio, Data Center GPU Max
    (0x8086, 0x0BD5): "Xe-HPC",  # Ponte Vecchio XT (2 Tile) [Data Center GPU Max 1550]
    (0x8086, 0x0BD6): "Xe-HPC",  # Ponte Vecchio XT (2 Tile) [Data Center GPU Max 1550]
    (0x8086, 0x0BDA): "Xe-HPC",  # Ponte Vecchio XT (1 Tile) [Data Center GPU Max 1100]
    # Intel Xe-HPG: Alchemist, Data Center GPU Flex
    (0x8086, 0x56A0): "Xe-HPG",  # DG2 [Arc A770]
    (0x8086, 0x56A1): "Xe-HPG",  # DG2 [Arc A750]
    (0x8086, 0x56A5): "Xe-HPG",  # DG2 [Arc A380]
    (0x8086, 0x56C0): "Xe-HPG",  # ATS-M [Data Center GPU Flex 170]
    (0x8086, 0x56C1): "Xe-HPG",  # ATS-M [Data Center GPU Flex 140]
    # Intel Xe-LPG: Meteor Lake's integrated graphics
    (0x8086, 0x7D55): "Xe-LPG",  # Meteor Lake-P [Intel Graphics]
}

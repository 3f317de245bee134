"""A fake sysfs/procfs laid out as the kernel and the GPU drivers do, for the hardware discovery tests, and the
captured pci.ids excerpt they name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from support.paths import FIXTURES

ARCH_FIXTURES = FIXTURES / "arch"
PCI_IDS = ARCH_FIXTURES / "pciids-gpu-accelerator-excerpt.txt"
NO_PCI_IDS = "/nonexistent/pci.ids"
H100_UUID = "GPU-eaf23aa1-4d3d-596c-da66-b86b0e5db584"
#: What the NVIDIA driver prints for a GPU it has not initialised yet (no persistence mode, nothing opened it).
UUID_NOT_YET = "GPU-????????-????-????-????-????????????"


def add_device(
    root: Path, address: str, cls: str, vendor: str, device: str, numa: str = "-1", driver: Optional[str] = None
) -> Path:
    """A PCI function laid out as the kernel does: bus/pci/devices/<address> links into devices/pci..., and
    `driver` links to bus/pci/drivers/<name>."""
    real = root / "sys/devices" / f"pci{address[:7]}" / address
    real.mkdir(parents=True)
    for name, value in (("class", cls), ("vendor", vendor), ("device", device), ("numa_node", numa)):
        (real / name).write_text(value + "\n")
    link_dir = root / "sys/bus/pci/devices"
    link_dir.mkdir(parents=True, exist_ok=True)
    (link_dir / address).symlink_to(os.path.relpath(real, link_dir))
    if driver:
        drv = root / "sys/bus/pci/drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        (real / "driver").symlink_to(os.path.relpath(drv, real))
    return real


def nvidia_information(root: Path, address: str, uuid: str, minor: int) -> None:
    """/proc/driver/nvidia/gpus/<address>/information as the driver writes it (tab-separated "Name: \t value")."""
    info = root / "proc/driver/nvidia/gpus" / address / "information"
    info.parent.mkdir(parents=True)
    info.write_text(f"Model: \t\t NVIDIA H100 NVL\nIRQ:   \t\t 77\nGPU UUID: \t {uuid}\nVideo BIOS: \t 96.00.74.00.01\n"
                    f"Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\n"
                    f"Bus Location: \t {address}\nDevice Minor: \t {minor}\nGPU Excluded: \t No\n")

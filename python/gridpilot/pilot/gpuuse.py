"""How much of its GPUs a job uses: NVIDIA through NVML, AMD through the amdgpu driver's sysfs files.

Only the GPUs the job was given are read (the agent knows them: isolation.gpus.claim), so a job without GPUs costs
nothing here: no sampler is made, no file is walked. Sampled in the monitor's medium tier (every 15 s by default),
never in the 1 Hz fast tier: NVML calls take a driver round trip each, and GPU utilisation is itself an average the
driver keeps over its own sampling period.

- NVIDIA: the `nvidia-ml-py` package (the `gpu` extra; module `pynvml`), imported on the first sample. It loads
  libnvidia-ml.so.1 through the dynamic loader's path. No package or no library (no driver on this node) means no
  NVIDIA sampling, said once; the AMD GPUs of the job are still read.
- AMD: /sys/class/drm/cardN/device/gpu_busy_percent and mem_info_vram_used (mem_info_vram_total once), found by the
  PCI address of cardN's device (PCI_SLOT_NAME in its uevent). A GPU whose files are missing (another driver, an
  older kernel) is reported with `error` and no numbers.

Each GPU becomes one record: pci_address, vendor, source ("nvml" or "sysfs"), util_percent, memory_used_bytes,
memory_total_bytes, and for NVML job_memory_bytes and job_processes, the sum and count of the job's processes in
the GPU's list of compute processes (NVML gives per-process memory; amdgpu's sysfs does not).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence

log = logging.getLogger("gridpilot.pilot")

#: The longest error text a record carries (central bounds text in a sample; the full text goes to the log).
MAX_ERROR_TEXT = 200


def _read_int(path: str) -> int:
    with open(path, "rb") as f:
        return int(f.read().strip())


def amd_cards(sysfs: str = "/sys") -> Dict[str, str]:
    """PCI address (lower case, with domain) -> device directory of every DRM card under sysfs/class/drm.

    Connector entries (card0-DP-1) and render nodes (renderD128, same device as a card) are skipped."""
    base = os.path.join(sysfs, "class", "drm")
    try:
        names = os.listdir(base)
    except OSError:
        return {}
    cards: Dict[str, str] = {}
    for name in sorted(names):
        if not name.startswith("card") or not name[4:].isdigit():
            continue
        device = os.path.join(base, name, "device")
        try:
            with open(os.path.join(device, "uevent")) as f:
                slot = next((ln.split("=", 1)[1].strip() for ln in f if ln.startswith("PCI_SLOT_NAME=")), None)
        except OSError:
            continue
        if slot:
            cards.setdefault(slot.lower(), device)
    return cards


class AmdGpu:
    """One AMD GPU's use from its sysfs device directory."""

    def __init__(self, pci_address: str, device: Optional[str]) -> None:
        self.pci_address = pci_address
        self.device = device
        self.total: Optional[int] = None
        if device is not None:
            try:
                self.total = _read_int(os.path.join(device, "mem_info_vram_total"))
            except (OSError, ValueError):
                pass

    def sample(self) -> Dict[str, Any]:
        rec: Dict[str, Any] = {"pci_address": self.pci_address, "vendor": "AMD", "source": "sysfs"}
        if self.device is None:
            rec["error"] = "no DRM card with this PCI address under class/drm"
            return rec
        try:
            rec["util_percent"] = float(_read_int(os.path.join(self.device, "gpu_busy_percent")))
            rec["memory_used_bytes"] = _read_int(os.path.join(self.device, "mem_info_vram_used"))
        except (OSError, ValueError) as e:
            rec.pop("util_percent", None)
            rec["error"] = f"{type(e).__name__}: {e}"[:MAX_ERROR_TEXT]
            return rec
        if self.total is not None:
            rec["memory_total_bytes"] = self.total
        return rec


class Nvml:
    """NVML through nvidia-ml-py, initialised on first use; `available` is False when it cannot be."""

    def __init__(self, note: Callable[[str], None]) -> None:
        self.note = note
        self.nv: Any = None
        self.available: Optional[bool] = None  # None: not tried yet
        self.handles: Dict[str, Any] = {}

    def start(self) -> bool:
        if self.available is not None:
            return self.available
        self.available = False
        try:
            # The `gpu` extra: absent on most worker nodes, so imported only for a job with an NVIDIA GPU.
            import pynvml  # type: ignore[import-untyped]
        except ImportError:
            self.note("NVIDIA GPU use not sampled: the nvidia-ml-py package is not installed "
                      "(pip install 'gridpilot[gpu]')")
            return False
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            # NVML_ERROR_LIBRARY_NOT_FOUND: no libnvidia-ml.so.1 on the loader's path (no driver installed).
            self.note(f"NVIDIA GPU use not sampled: NVML did not start ({e})")
            return False
        self.nv = pynvml
        self.available = True
        return True

    def sample(self, pci_address: str, pids: Collection[int]) -> Dict[str, Any]:
        rec: Dict[str, Any] = {"pci_address": pci_address, "vendor": "NVIDIA", "source": "nvml"}
        nv = self.nv
        try:
            handle = self.handles.get(pci_address)
            if handle is None:
                handle = self.handles[pci_address] = nv.nvmlDeviceGetHandleByPciBusId(pci_address)
            util = nv.nvmlDeviceGetUtilizationRates(handle)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            rec["util_percent"] = float(util.gpu)
            rec["memory_used_bytes"] = int(mem.used)
            rec["memory_total_bytes"] = int(mem.total)
            mine = [p for p in nv.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid in pids]
        except nv.NVMLError as e:
            for k in ("util_percent", "memory_used_bytes", "memory_total_bytes"):
                rec.pop(k, None)
            rec["error"] = f"NVML: {e}"[:MAX_ERROR_TEXT]
            return rec
        rec["job_processes"] = len(mine)
        # usedGpuMemory is None where the driver cannot tell (Windows WDDM; MIG without privileges).
        known = [p.usedGpuMemory for p in mine if p.usedGpuMemory is not None]
        if known or not mine:
            rec["job_memory_bytes"] = sum(known)
        return rec


class GpuUseSampler:
    """The use of a job's GPUs. Objects in `gpus` have `vendor` and `pci_address` (gridpilot._native.Gpu)."""

    def __init__(self, gpus: Sequence[Any], *, sysfs: str = "/sys",
                 note: Callable[[str], None] = log.info) -> None:
        self.nvidia = [g.pci_address for g in gpus if g.vendor == "NVIDIA"]
        amd = [g.pci_address for g in gpus if g.vendor == "AMD"]
        cards = amd_cards(sysfs) if amd else {}
        self.amd = [AmdGpu(a, cards.get(a.lower())) for a in amd]
        self.nvml = Nvml(note) if self.nvidia else None
        self._errors_said: set = set()
        self.note = note

    def sample(self, pids: Collection[int]) -> List[Dict[str, Any]]:
        """One record per GPU of the job that can be read now (`pids`: the job's processes, for NVML's
        per-process memory)."""
        out: List[Dict[str, Any]] = []
        if self.nvml is not None and self.nvml.start():
            pidset = set(pids)
            out += [self.nvml.sample(a, pidset) for a in self.nvidia]
        out += [g.sample() for g in self.amd]
        for rec in out:
            if "error" in rec and rec["pci_address"] not in self._errors_said:
                self._errors_said.add(rec["pci_address"])  # said once per GPU, not every 15 s
                self.note(f"GPU {rec['pci_address']} use not read: {rec['error']}")
        return out

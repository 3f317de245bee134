"""The GPU broker table (issue 20, section 3; docs/gpus.md): per case, a job's GPU request (JDL keys), the free GPUs
a slot's site map lists, whether the broker matches them, and words of the `gpus` clause `why` gives when not.
Run pure (tests/unit/test_broker_gpus.py) and through HTTP on SQLite and PostgreSQL
(tests/integration/test_central_gpus.py), so both places agree.

The GPUs are as real nodes name them: models as pci.ids writes them (the captures in tests/fixtures/nodes and
tests/fixtures/arch), archs as pilot/gpuarch.py finds them. The agent lists only the GPUs no running job holds
(pilot/runner.py: free_gpus), so "one of two MI50 taken" is a site map listing one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

MI50 = {"vendor": "AMD", "model": "Vega 20 [Radeon Pro VII/Radeon Instinct MI50 32GB]", "pci_address": "0000:07:00.0",
        "arch": "gfx906", "memory_mb": 32768}
MI50_B = dict(MI50, pci_address="0000:0a:00.0")
H100 = {"vendor": "NVIDIA", "model": "GH100 [H100L 94GB]", "pci_address": "0000:c1:00.0", "arch": "sm_90",
        "memory_mb": None}
RTX3090 = {"vendor": "NVIDIA", "model": "GA102 [GeForce RTX 3090]", "pci_address": "0000:01:00.0", "arch": "sm_86"}
ARC = {"vendor": "Intel", "model": "DG2 [Arc A770]", "pci_address": "0000:03:00.0", "arch": "Xe-HPG"}
#: A node without pci.ids: the model unnamed, the PCI id in its place; the table still knows its arch.
H100_UNNAMED = {"vendor": "NVIDIA", "pci_address": "0000:41:00.0", "pci_id": "10de:2330", "arch": "sm_90"}
#: A card no table knows the arch of (the riscv64 Pioneer's Caicos: no ROCm target).
CAICOS = {"vendor": "AMD", "model": "Caicos [Radeon HD 6450/7450/8450 / R5 230 OEM]", "pci_address": "0000:01:00.0",
          "arch": None}


@dataclass(frozen=True)
class GpuCase:
    name: str
    jdl: Dict[str, Any]
    gpus: List[Dict[str, Any]]
    matches: bool
    #: Words the `gpus` clause's reason must hold when it does not match.
    why: List[str] = field(default_factory=list)


CASES = [
    GpuCase("vendor", {"GPUVendor": "AMD"}, [H100, MI50], True),
    GpuCase("vendor-absent", {"GPUVendor": "AMD"}, [H100, ARC], False,
            ["needs 1 GPU(s) of vendor AMD, slot has 0", "free: 1x Intel DG2 [Arc A770] (Xe-HPG), "
                                                          "1x NVIDIA GH100 [H100L 94GB] (sm_90)"]),
    GpuCase("vendor-case", {"GPUVendor": "intel"}, [ARC], True),
    GpuCase("substring", {"GPU": "MI50"}, [H100, MI50], True),
    GpuCase("substring-case", {"GPU": "h100l"}, [H100], True),
    GpuCase("substring-absent", {"GPU": "MI100"}, [MI50], False, ["needs 1 GPU(s) matching 'MI100', slot has 0"]),
    GpuCase("exact-alternative", {"GPU": "=Radeon Instinct MI50 32GB"}, [MI50], True),
    GpuCase("exact-full", {"GPU": "=vega 20 [radeon pro vii/radeon instinct mi50 32gb]"}, [MI50], True),
    GpuCase("exact-is-not-substring", {"GPU": "=MI50"}, [MI50], False,
            ["model = 'MI50'", "slot has 0"]),
    GpuCase("arch-amd", {"GPUArch": "gfx906"}, [H100, MI50], True),
    GpuCase("arch-other", {"GPUArch": "gfx90a"}, [MI50], False, ["of arch gfx90a, slot has 0",
                                                                 "free: 1x AMD Vega 20"]),
    GpuCase("arch-nvidia", {"GPUArch": "sm_90", "GPUVendor": "NVIDIA"}, [RTX3090, H100], True),
    GpuCase("arch-intel", {"GPUArch": "Xe-HPG"}, [ARC], True),
    GpuCase("arch-nobody-has", {"GPUArch": "sm_100"}, [H100, RTX3090], False, ["arch sm_100", "slot has 0"]),
    GpuCase("arch-unknown-on-node", {"GPUArch": "gfx906"}, [CAICOS], False,
            ["slot has 0", "1 of unknown architecture"]),
    GpuCase("unknown-arch-takes-vendor", {"GPUVendor": "AMD"}, [CAICOS], True),
    GpuCase("unknown-model-takes-vendor", {"GPU": "NVIDIA", "GPUCount": 2}, [H100_UNNAMED, H100], True),
    GpuCase("unknown-model-not-model", {"GPU": "H100"}, [H100_UNNAMED], False,
            ["slot has 0", "1 of unknown model, NVIDIA 10de:2330"]),
    GpuCase("unknown-model-arch", {"GPUArch": "sm_90"}, [H100_UNNAMED], True),
    GpuCase("count-free", {"GPU": "MI50", "GPUCount": 2}, [MI50, MI50_B], True),
    GpuCase("count-over-free", {"GPU": "MI50", "GPUCount": 2}, [MI50], False,
            ["needs 2 GPU(s) matching 'MI50', slot has 1"]),
    GpuCase("count-plain", {"GPU": 3}, [MI50, H100], False, ["needs 3 GPU(s), slot has 2"]),
    GpuCase("all-terms", {"GPU": "MI50", "GPUVendor": "AMD", "GPUArch": "gfx906", "GPUCount": 2},
            [MI50, H100, MI50_B], True),
    GpuCase("terms-disagree", {"GPU": "MI50", "GPUVendor": "NVIDIA"}, [MI50, H100], False,
            ["vendor NVIDIA", "slot has 0"]),
    GpuCase("none-asked", {}, [], True),
    GpuCase("none-free", {"GPUVendor": "NVIDIA"}, [], False, ["slot has 0; free: none"]),
]


def case_ids() -> List[str]:
    return [c.name for c in CASES]


def by_name(name: str) -> Optional[GpuCase]:
    return next((c for c in CASES if c.name == name), None)

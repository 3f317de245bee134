"""The pilot's side of GPU brokering on captured nodes (issue 20, section 3; docs/gpus.md): NVIDIA, AMD and Intel
devices from the lspci captures of x86_64, aarch64 and riscv64 nodes in tests/fixtures (sources in their READMEs)
go through the node probe's GPU section and the site map with the vendor, model and architecture the broker then
matches on; an AMD GPU's architecture comes from the KFD topology before the table, and its memory from amdgpu's
sysfs file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from support.central import jdl, site_map
from support.sysfs import ARCH_FIXTURES, PCI_IDS, add_device

from gridpilot import _native
from gridpilot.central import broker
from gridpilot.jdl import parse_job
from gridpilot.nodecheck import gpu_rows
from gridpilot.pilot import gpuarch
from gridpilot.pilot.nodeprobe import NodePaths, gpus
from gridpilot.pilot.sitemap import site_map_gpu

NODES = ARCH_FIXTURES.parent / "nodes"
VERBATIM = "---- BEGIN CAPTURE (everything below this line is verbatim) ----\n"

#: Per captured node: the lspci file, and per GPU-class function (address, vendor, model, arch) as the probe gives.
CAPTURES: Dict[str, Tuple[Path, List[Tuple[str, str, Optional[str], Optional[str]]]]] = {
    "x86_64-intel": (NODES / "x86_64-intel-meteorlake-lspci-vvnn-headerlines.txt", [
        ("0000:00:02.0", "Intel", "Meteor Lake-P [Intel Graphics]", "Xe-LPG"),
        # The NPU (class 1200, processing accelerator) is enumerated as an accelerator; no table names its arch.
        ("0000:00:0b.0", "Intel", None, None)]),
    "x86_64-amd": (ARCH_FIXTURES / "x86_64-asrock-b850-rx9070-lspci-mm-nn.txt", [
        ("0000:03:00.0", "AMD", "Navi 48 [Radeon RX 9070/9070 XT/9070 GRE]", "gfx1201")]),
    "aarch64-nvidia": (NODES / "aarch64-ampere-altra-devkit-lspci-mm-nn-D.txt", [
        ("0000:01:00.0", "NVIDIA", "GA102 [GeForce RTX 3090]", "sm_86"),
        ("0004:02:00.0", "other", "ASPEED Graphics Family", None),
        ("000c:01:00.0", "NVIDIA", "AD104GL [RTX 4000 SFF Ada Generation]", "sm_89")]),
    "aarch64-nvidia-vvnn": (ARCH_FIXTURES / "aarch64-ampere-altra-devkit-rtx3090-rtx4000ada-lspci-vvnn-headerlines.txt", [
        ("0000:01:00.0", "NVIDIA", "GA102 [GeForce RTX 3090]", "sm_86"),
        ("0004:02:00.0", "other", "ASPEED Graphics Family", None),
        ("000c:01:00.0", "NVIDIA", "AD104GL [RTX 4000 SFF Ada Generation]", "sm_89")]),
    "riscv64-amd": (NODES / "riscv64-milkv-pioneer-sg2042-lspci-mm-nn-D.txt", [
        ("0000:01:00.0", "AMD", "Caicos [Radeon HD 6450/7450/8450 / R5 230 OEM]", None)]),
}


def capture_file(path: Path, tmp_path: Path) -> Path:
    """The capture as lspci printed it: the arch fixtures carry a header above the verbatim part."""
    text = path.read_text()
    if VERBATIM in text:
        out = tmp_path / path.name
        out.write_text(text.split(VERBATIM, 1)[1])
        return out
    return path


def empty_node(tmp_path: Path, lspci: Path) -> NodePaths:
    (tmp_path / "sys").mkdir(exist_ok=True)
    return NodePaths(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"), etc=str(tmp_path / "etc"),
                     cvmfs=str(tmp_path / "cvmfs"), lspci_output=str(lspci), live=False)


@pytest.mark.parametrize("node", list(CAPTURES))
def test_probe_and_site_map_read_the_captured_gpus(node: str, tmp_path: Path) -> None:
    path, expected = CAPTURES[node]
    lspci = capture_file(path, tmp_path)
    section = gpus(empty_node(tmp_path, lspci), str(PCI_IDS), None)
    assert section["source"] == f"lspci output {lspci}"
    assert [(g["pci_address"], g["vendor"], g["model"], g["arch"]) for g in section["gpus"]] == expected
    assert all(g["memory_mb"] is None for g in section["gpus"])  # lspci says nothing of memory
    # The site map lists them alike, and central takes it.
    found = _native.parse_lspci(lspci.read_text(), str(PCI_IDS))
    listed = [site_map_gpu(g, str(tmp_path / "sys")) for g in found]
    assert [(g["pci_address"], g["arch"]) for g in listed] == [(a, arch) for a, _, _, arch in expected]
    site = broker.parse_site_map(site_map(gpus=listed))
    assert [g.arch for g in site.gpus] == [arch for _, _, _, arch in expected]


#: Per captured node, jobs and whether its GPUs take them (the broker's clause when not).
JOBS = {
    "x86_64-intel": [({"GPUVendor": "Intel", "GPUArch": "Xe-LPG"}, True), ({"GPUArch": "Xe-HPC"}, False),
                     ({"GPUVendor": "Intel", "GPUCount": 2}, True), ({"GPU": "Meteor Lake"}, True)],
    "x86_64-amd": [({"GPUArch": "gfx1201"}, True), ({"GPU": "=Radeon RX 9070 XT"}, True),
                   ({"GPU": "=Radeon RX 9080"}, False), ({"GPUVendor": "NVIDIA"}, False)],
    "aarch64-nvidia": [({"GPUArch": "sm_89"}, True), ({"GPUArch": "sm_80"}, False),
                       ({"GPUVendor": "NVIDIA", "GPUCount": 2}, True), ({"GPUVendor": "NVIDIA", "GPUCount": 3}, False),
                       ({"GPU": "=RTX 4000 SFF Ada Generation", "GPUArch": "sm_89"}, True)],
    "riscv64-amd": [({"GPUVendor": "AMD"}, True), ({"GPU": "R5 230"}, True), ({"GPUArch": "gfx906"}, False)],
}


@pytest.mark.parametrize("node", list(JOBS))
def test_the_broker_on_the_captured_nodes(node: str, tmp_path: Path) -> None:
    lspci = capture_file(CAPTURES[node][0], tmp_path)
    listed = [site_map_gpu(g, str(tmp_path)) for g in _native.parse_lspci(lspci.read_text(), str(PCI_IDS))]
    site = broker.parse_site_map(site_map(gpus=listed))
    for keys, fits in JOBS[node]:
        needs = broker.needs_of(parse_job(jdl(**keys)))
        found = broker.misfit_clause(_Row(needs), site)
        assert (found is None) is fits, (keys, found)
        if found is not None:
            assert found[0] == "gpus"


class _Row:
    def __init__(self, needs: Any) -> None:
        self.__dict__.update(needs.__dict__, user="alice")


def kfd_node(root: Path, n: int, domain: int, bus: int, gfx: int, simd: int = 240) -> None:
    props = root / "sys/class/kfd/kfd/topology/nodes" / str(n) / "properties"
    props.parent.mkdir(parents=True)
    props.write_text(f"cpu_cores_count 0\nsimd_count {simd}\ngfx_target_version {gfx}\ndomain {domain}\n"
                     f"location_id {bus << 8}\nunique_id 0\n")


def test_an_amd_gpu_s_arch_comes_from_kfd_before_the_table(tmp_path: Path) -> None:
    """A node with an MI50 (in the table), a Navi 21 (1002:73bf, not in the table) and a Caicos (no KFD node, no
    table entry): KFD names the first two, the third stays unknown; amdgpu's VRAM file gives the memory."""
    mi50 = add_device(tmp_path, "0000:07:00.0", "0x030000", "0x1002", "0x66a1", "0", "amdgpu")
    (mi50 / "mem_info_vram_total").write_text(f"{32 << 30}\n")
    add_device(tmp_path, "0000:43:00.0", "0x030000", "0x1002", "0x73bf", "0", "amdgpu")
    add_device(tmp_path, "0000:81:00.0", "0x030000", "0x1002", "0x6779", "1", "radeon")
    cpu = tmp_path / "sys/class/kfd/kfd/topology/nodes/0/properties"
    cpu.parent.mkdir(parents=True)
    cpu.write_text("cpu_cores_count 64\nsimd_count 0\ngfx_target_version 0\n")
    kfd_node(tmp_path, 1, 0, 0x07, 90006)
    kfd_node(tmp_path, 2, 0, 0x43, 100300)
    sysfs = str(tmp_path / "sys")
    found = {g.pci_address: g for g in _native.list_gpus(sysfs=sysfs, pci_ids=str(PCI_IDS))}
    listed = {a: site_map_gpu(g, sysfs) for a, g in found.items()}
    assert {a: (m["arch"], m["memory_mb"]) for a, m in listed.items()} == {
        "0000:07:00.0": ("gfx906", 32768), "0000:43:00.0": ("gfx1030", None), "0000:81:00.0": (None, None)}
    # Without KFD (amdkfd not loaded) the table still knows the MI50.
    assert gpuarch.gpu_arch(found["0000:07:00.0"], str(tmp_path / "nowhere")) == "gfx906"
    assert gpuarch.gpu_arch(found["0000:43:00.0"], str(tmp_path / "nowhere")) is None


@pytest.mark.parametrize("version, name", [(90006, "gfx906"), (90008, "gfx908"), (90010, "gfx90a"),
                                           (90402, "gfx942"), (100300, "gfx1030"), (110000, "gfx1100"),
                                           (120001, "gfx1201"), (0, None), (91600, None)])
def test_kfd_target_versions_name_llvm_processors(version: int, name: Optional[str]) -> None:
    assert gpuarch.gfx_name(version) == name


def test_node_check_s_table_shows_each_gpu_s_arch(tmp_path: Path) -> None:
    """`gridpilot node check` on a terminal: the architecture the broker will match GPUArch on, "?" unknown."""
    lspci = capture_file(CAPTURES["aarch64-nvidia"][0], tmp_path)
    section = gpus(empty_node(tmp_path, lspci), str(PCI_IDS), None)
    texts = [text for name, text in gpu_rows(section) if name == "gpu"]
    assert texts[0].startswith("0000:01:00.0 NVIDIA GA102 [GeForce RTX 3090] (arch sm_86, driver -, from lspci")
    assert "(arch ?, driver -" in texts[1]

"""GPU terms end to end (issue 20, section 3; docs/gpus.md): a real JobRunner on a node of two H100 NVL (sysfs tree;
their architecture sm_90 from the table of PCI ids, as NVIDIA's compute capability is not in sysfs) and an AMD MI50
with amdgpu's KFD topology and VRAM file. Jobs asking for the vendor, the architecture and an exact model run on
the GPUs that answer to them, given by the agent as the broker counted them; one asking an architecture the node
lacks stays WAITING, and `why` names the gpus clause with what it asked and what the node had free."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from support.pilot import Pilot, payload_jdl, pilot_grid
from support.sysfs import PCI_IDS, UUID_NOT_YET, add_device, nvidia_information

H100S = ["0000:41:00.0", "0000:c1:00.0"]
MI50 = "0000:07:00.0"


@pytest.fixture
def pilot() -> Iterator[Pilot]:
    with pilot_grid() as p:
        yield p


def mixed_gpu_node(root: Path) -> Path:
    for minor, address in enumerate(H100S):
        add_device(root, address, "0x030200", "0x10de", "0x2321", "0", "nvidia")
        nvidia_information(root, address, UUID_NOT_YET, minor)
    mi50 = add_device(root, MI50, "0x038000", "0x1002", "0x66a1", "0", "amdgpu")
    (mi50 / "mem_info_vram_total").write_text(f"{32 << 30}\n")
    props = root / "sys/class/kfd/kfd/topology/nodes/1/properties"
    props.parent.mkdir(parents=True)
    props.write_text("simd_count 240\ngfx_target_version 90006\ndomain 0\nlocation_id 1792\nunique_id 0\n")
    return root / "sys"


def test_jobs_get_the_gpus_that_answer_to_their_terms(pilot: Pilot) -> None:
    sysfs = mixed_gpu_node(pilot.grid.state_dir / "node")
    by_arch = pilot.submit(payload_jdl("sleep", 1, GPUArch="sm_90", GPUCount=2), name="gpu-arch")
    by_exact = pilot.submit(payload_jdl("sleep", 1, GPU="=Radeon Instinct MI50", GPUArch="gfx906"),
                            name="gpu-exact")
    absent = pilot.submit(payload_jdl("sleep", 1, GPUVendor="NVIDIA", GPUArch="sm_80"), name="gpu-absent")
    pilot.start(cores=4, sysfs=str(sysfs), pci_ids=str(PCI_IDS))
    final = pilot.wait_final([by_arch, by_exact], timeout=90)
    assert [j["state"] for j in final] == ["DONE"] * 2, "\n".join(pilot.describe(j["id"]) for j in final)
    arch_trace = pilot.trace_text(by_arch)
    assert all(a in arch_trace for a in H100S) and MI50 not in arch_trace, arch_trace
    exact_trace = pilot.trace_text(by_exact)
    assert f"GPUs given to this job: {MI50} (AMD Vega 20" in exact_trace, exact_trace
    # The runner leaves after its empty matches; the job no GPU of the node answers to was never given to it.
    assert pilot.wait_runner_exit(timeout=60) == 0, pilot.runner_log()
    assert pilot.job(absent)["state"] == "WAITING", pilot.describe(absent)
    # One offer per shape the agents sent (the free GPUs differ while jobs hold some); each names the gpus clause.
    offers = pilot.grid.user.why(absent)["offers"]
    assert offers and all(o["clause"] == "gpus" for o in offers), offers
    assert all("needs 1 GPU(s) of vendor NVIDIA, arch sm_80, slot has 0" in o["reason"] for o in offers), offers
    assert any("2x NVIDIA GH100 [H100L 94GB] (sm_90)" in o["reason"] and "(gfx906)" in o["reason"] for o in offers), \
        offers
    pilot.assert_clean()

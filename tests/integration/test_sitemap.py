"""Slot resources from the batch system's environment, and the site map."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional

import orjson
from support.sysfs import NO_PCI_IDS, PCI_IDS, add_device

from gridpilot import _native
from gridpilot.central import broker
from gridpilot.pilot.sitemap import (
    batch_job_id,
    build_site_map,
    describe_gpus,
    disk_free_mb,
    node_gpus,
    site_map_gpu,
    slot_cores,
    slot_memory_mb,
)


def test_cores_from_each_batch_system(tmp_path):
    ad = tmp_path / "machine.ad"
    ad.write_text('Cpus = 8\nMemory = 16000\nName = "slot1@wn"\n')
    job = tmp_path / "job.ad"
    job.write_text('RequestCpus = 4\nGlobalJobId = "schedd#123.0#1700000000"\n')
    assert slot_cores({"SLURM_CPUS_ON_NODE": "12", "OMP_NUM_THREADS": "2"}) == 12
    assert slot_cores({"_CONDOR_MACHINE_AD": str(ad)}) == 8
    assert slot_cores({"_CONDOR_JOB_AD": str(job)}) == 4
    assert slot_cores({"OMP_NUM_THREADS": "3"}) == 3
    assert slot_cores({"SLURM_CPUS_ON_NODE": "junk"}) == len(os.sched_getaffinity(0))
    assert slot_memory_mb({"SLURM_MEM_PER_NODE": "4000"}) == 4000
    assert slot_memory_mb({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "3"}) == 3000
    assert slot_memory_mb({"_CONDOR_MACHINE_AD": str(ad)}) == 16000
    assert slot_memory_mb({}) > 0
    assert batch_job_id({"SLURM_JOB_ID": "77"}) == "slurm:77"
    assert batch_job_id({"_CONDOR_JOB_AD": str(job)}) == "htcondor:schedd#123.0#1700000000"
    assert batch_job_id({}) is None


def test_site_map_shape(tmp_path):
    cpu = _native.parse_cpuinfo(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel name\t: Old Xeon\nflags\t\t: fpu sse2\n"
    )
    m = build_site_map(
        site="S", ce="S::CE", partition="p", node="wn1", ttl_left=7200.9, free_cores=3, memory_mb=8000,
        disk_mb=disk_free_mb(str(tmp_path / "w")), cpu=cpu, gpus=[], close_se=["S::SE"],
    )
    assert m["ttl"] == 7200 and m["cores"] == 3 and m["arch"] == "x86_64" and m["platform"] == "Linux-x86_64"
    assert m["avx"] is False and m["gpus"] == [] and m["close_se"] == ["S::SE"]
    assert m["disk_mb"] > 0


def gpu_node(root: Path) -> str:
    """A sysfs with two H100 NVL (10de:2321) and the BMC's ASPEED display (1a03:2000), as the kernel lays them out."""
    add_device(root, "0000:41:00.0", "0x030200", "0x10de", "0x2321", "0", "nvidia")
    add_device(root, "0000:c1:00.0", "0x030200", "0x10de", "0x2321", "1", "nvidia")
    add_device(root, "0000:62:00.0", "0x030000", "0x1a03", "0x2000", "-1", "ast")
    return str(root / "sys")


def test_site_map_gpus_say_what_the_node_knows(tmp_path):
    """Named through a pci.ids: vendor, model, address. Without one: vendor, address and the PCI id, no model; and
    central takes both (a GPU of unknown model is not a bad site map)."""
    sysfs = gpu_node(tmp_path)
    named = [site_map_gpu(g, sysfs) for g in node_gpus(sysfs, str(PCI_IDS))]
    # The H100 NVL's arch comes from the table of PCI ids (NVIDIA's compute capability is not in sysfs); the BMC's
    # display is in no table; neither driver says its memory in sysfs.
    assert named[0] == {"vendor": "NVIDIA", "model": "GH100 [H100L 94GB]", "pci_address": "0000:41:00.0",
                        "arch": "sm_90", "memory_mb": None}
    assert named[1] == {"vendor": "other", "model": "ASPEED Graphics Family", "pci_address": "0000:62:00.0",
                        "arch": None, "memory_mb": None}
    unnamed = [site_map_gpu(g, sysfs) for g in node_gpus(sysfs, NO_PCI_IDS)]
    assert unnamed[0] == {"vendor": "NVIDIA", "pci_address": "0000:41:00.0", "pci_id": "10de:2321", "arch": "sm_90",
                          "memory_mb": None}
    assert unnamed[1] == {"vendor": "other", "pci_address": "0000:62:00.0", "pci_id": "1a03:2000", "arch": None,
                          "memory_mb": None}
    for gpus in (named, unnamed):
        assert len(broker.parse_site_map({"gpus": gpus}).gpus) == 3
    # lspci's placeholder for a device its pci.ids did not name carries the id; a name without ids, the name.
    (placeholder,) = _native.parse_lspci("41:00.0 3D controller: NVIDIA Corporation Device 2321 (rev a1)\n",
                                         pci_ids=NO_PCI_IDS)
    assert site_map_gpu(placeholder) == {"vendor": "NVIDIA", "pci_address": "0000:41:00.0", "pci_id": "10de:2321",
                                         "arch": "sm_90", "memory_mb": None}
    (by_name,) = _native.parse_lspci("41:00.0 3D controller: NVIDIA Corporation GH100 [H100L 94GB] (rev a1)\n",
                                     pci_ids=NO_PCI_IDS)
    # Plain lspci text gives no ids: the table cannot name the arch.
    assert site_map_gpu(by_name) == {"vendor": "NVIDIA", "model": "GH100 [H100L 94GB]", "pci_address": "0000:41:00.0",
                                     "arch": None, "memory_mb": None}
    no_ids = SimpleNamespace(vendor="other", model=None, pci_address="0000:01:00.0", vendor_id=0xFFFF, device_id=0xFFFF)
    assert site_map_gpu(no_ids) == {"vendor": "other", "pci_address": "0000:01:00.0", "arch": None, "memory_mb": None}


def test_the_runner_line_says_which_gpus_have_no_model_name(tmp_path):
    sysfs = gpu_node(tmp_path)
    assert describe_gpus(node_gpus(sysfs, str(PCI_IDS)), str(PCI_IDS)) == (
        "3 GPU(s): 2x NVIDIA GH100 [H100L 94GB]; other ASPEED Graphics Family")
    assert describe_gpus(node_gpus(sysfs, NO_PCI_IDS), None) == (
        "3 GPU(s): 2x NVIDIA 10de:2321, model unknown; other 1a03:2000, model unknown; 3 without a model name, not "
        "found in a pci.ids of the node (from pciutils or hwdata; or set pci_ids): jobs asking for a GPU model do "
        "not match them")
    assert describe_gpus([], None) == "0 GPU(s)"


def node_command(*args: str, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    out = subprocess.run([sys.executable, "-m", "gridpilot", "node", *args], capture_output=True, text=True,
                         env={**clean, **(env or {})}, timeout=120)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return orjson.loads(out.stdout)


def test_node_command_names_gpus_as_the_pilot_configuration_says(tmp_path):
    """`gridpilot node` reads pci_ids and sysfs as the runner does (file, GRIDPILOT_*, then its flags), and shows
    the site map's GPUs beside the native records."""
    sysfs = gpu_node(tmp_path)
    conf = tmp_path / "pilot.yaml"
    conf.write_text(f"sysfs: {sysfs}\npci_ids: {PCI_IDS}\n")
    by_file = node_command("--config", str(conf))
    assert [g["model"] for g in by_file["gpus"]] == ["GH100 [H100L 94GB]", "ASPEED Graphics Family",
                                                     "GH100 [H100L 94GB]"]
    assert by_file["site_map_gpus"][0] == {"vendor": "NVIDIA", "model": "GH100 [H100L 94GB]",
                                           "pci_address": "0000:41:00.0", "arch": "sm_90", "memory_mb": None}
    # The flag beats the file, as for the runner; so does GRIDPILOT_PCI_IDS. A pci.ids that names nothing on the
    # flag (one that is missing there is a typo the command refuses); a missing one in the settings, as the runner
    # takes it: no names.
    empty = tmp_path / "empty.ids"
    empty.write_text("")
    for unnamed in (node_command("--config", str(conf), "--pci-ids", str(empty)),
                    node_command("--sys", sysfs, env={"GRIDPILOT_PCI_IDS": NO_PCI_IDS}),
                    node_command(env={"GRIDPILOT_CONFIG": str(conf), "GRIDPILOT_PCI_IDS": NO_PCI_IDS})):
        assert [g["model"] for g in unnamed["gpus"]] == [None, None, None]
        assert unnamed["site_map_gpus"][0] == {"vendor": "NVIDIA", "pci_address": "0000:41:00.0",
                                               "pci_id": "10de:2321", "arch": "sm_90", "memory_mb": None}
    bad = tmp_path / "bad.yaml"
    bad.write_text("pci_ids: [a, b]\n")
    out = subprocess.run([sys.executable, "-m", "gridpilot", "node", "--config", str(bad)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"gridpilot node: {bad}:1: field 'pci_ids' must be a string, got ['a', 'b']\n"

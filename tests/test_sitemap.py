"""Slot resources from the batch system's environment, and the site map."""

from __future__ import annotations

import os

from gridpilot import _native
from gridpilot.pilot.sitemap import batch_job_id, build_site_map, disk_free_mb, slot_cores, slot_memory_mb


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

"""The node probe's digest (probedigest.py), which the pilot and central both use to tell a changed node from the
same node probed again: what moves between two probes of one node leaves it, what the node is changes it."""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict

import pytest

from gridpilot import probedigest

PROBE: Dict[str, Any] = {
    "boot_id": "b1", "seconds": 0.4, "cache": {"path": "/w/node-check.json", "hits": 3},
    "cpu": {"arch": "x86_64", "avx": True, "avx2": True, "avx512": [], "x86_64_level": "x86-64-v3",
            "logical_cpus": 64, "model": "AMD EPYC 7451"},
    "os": {"name": "AlmaLinux 9.4", "kernel": "5.14.0"},
    "memory": {"total_mb": 257000, "available_mb": 200000},
    "disk": {"workdir": "/pool/job1", "free_mb": 9000, "total_mb": 20000, "writable": True},
    "cgroups": {"version": "2", "path": "/sys/fs/cgroup/slurm/job_1", "controllers": ["cpu", "memory"]},
    "user_namespaces": {"unshare": {"works": True, "seconds": 0.01}},
    "runtimes": {"found": {"apptainer": {"found": True, "starts": True, "seconds": 2.5}}},
    "gpus": {"gpus": [{"model": "Vega 20 [Radeon Instinct MI50 32GB]", "vendor": "AMD"}], "source": "sysfs"},
    "cvmfs": {"repositories": [{"name": "alice.cern.ch", "revision": 1234}]},
    "central": {"reachable": True, "clock_offset_s": 0.0, "round_trip_s": 0.01},
    "ok": True, "fatal": [], "warnings": [], "pilot_version": "1.4.0",
}


def _at(d: Dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for k in parents:
        d = d[k]
    d[last] = value


SAME_NODE: Dict[str, Callable[[Dict[str, Any]], None]] = {
    "another boot": lambda d: _at(d, "boot_id", "b2"),
    "slower": lambda d: _at(d, "seconds", 3.0),
    "cache hits": lambda d: _at(d, "cache.hits", 0),
    "free memory": lambda d: _at(d, "memory.available_mb", 1),
    "free disk": lambda d: _at(d, "disk.free_mb", 1),
    "another work directory": lambda d: _at(d, "disk.workdir", "/pool/job2"),
    "another pilot cgroup": lambda d: _at(d, "cgroups.path", "/sys/fs/cgroup/slurm/job_2"),
    "runtime start time": lambda d: _at(d, "runtimes.found.apptainer.seconds", 9.0),
    "clock offset": lambda d: _at(d, "central", {"reachable": True, "clock_offset_s": 7.0}),
    "a warning": lambda d: _at(d, "warnings", ["clock is 70 s off central's"]),
}

CHANGED_NODE: Dict[str, Callable[[Dict[str, Any]], None]] = {
    "arch": lambda d: _at(d, "cpu.arch", "aarch64"),
    "x86 level": lambda d: _at(d, "cpu.x86_64_level", "x86-64-v4"),
    "a runtime stops starting": lambda d: _at(d, "runtimes.found.apptainer.starts", False),
    "a GPU gone": lambda d: _at(d, "gpus.gpus", []),
    "kernel upgraded": lambda d: _at(d, "os.kernel", "5.14.1"),
    "CVMFS revision": lambda d: _at(d, "cvmfs.repositories", [{"name": "alice.cern.ch", "revision": 1235}]),
    "pilot upgraded": lambda d: _at(d, "pilot_version", "1.5.0"),
    "not ok any more": lambda d: _at(d, "ok", False),
    "cgroup controllers": lambda d: _at(d, "cgroups.controllers", ["cpu"]),
    "memory added": lambda d: _at(d, "memory.total_mb", 514000),
}


@pytest.mark.parametrize("case", sorted(SAME_NODE))
def test_what_moves_between_two_probes_of_one_node_leaves_the_digest(case):
    other = copy.deepcopy(PROBE)
    SAME_NODE[case](other)
    assert other != PROBE
    assert probedigest.digest(other) == probedigest.digest(PROBE)


@pytest.mark.parametrize("case", sorted(CHANGED_NODE))
def test_what_the_node_is_changes_the_digest(case):
    other = copy.deepcopy(PROBE)
    CHANGED_NODE[case](other)
    assert probedigest.digest(other) != probedigest.digest(PROBE)


def test_the_digest_does_not_depend_on_key_order_and_leaves_the_probe_alone():
    reordered = dict(reversed(list(copy.deepcopy(PROBE).items())))
    before = copy.deepcopy(PROBE)
    assert probedigest.digest(reordered) == probedigest.digest(PROBE)
    assert PROBE == before

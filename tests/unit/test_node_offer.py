"""What a pilot offers the broker of its node (pilot/sitemap.py node_offer, build_site_map; config arch_override),
from real captured /proc/cpuinfo of x86_64, aarch64 and riscv64 nodes (tests/fixtures/arch, sources in its README):
the site map the agent would send is one central accepts, and the broker gives each node the jobs it can run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, Optional

import pytest
from support.central import jdl
from support.sysfs import ARCH_FIXTURES

from gridpilot import __version__, _native
from gridpilot.central import broker
from gridpilot.config import load_config
from gridpilot.errors import ConfigError
from gridpilot.jdl import parse_job
from gridpilot.pilot import nodecpu
from gridpilot.pilot.sitemap import arch_override_line, build_site_map, node_offer

BEGIN = "# ---- BEGIN CAPTURE"


def cpu_of(name: str) -> Any:
    raw = (ARCH_FIXTURES / name).read_bytes().decode()
    text = raw[raw.index("\n", raw.index(BEGIN)) + 1:]
    arch = name.split("-", 1)[0]
    return _native.parse_cpuinfo(text, arch), text


def site_map_of(name: str, arch_override: Optional[str] = None, containers: Optional[list] = None) -> Dict[str, Any]:
    cpu, text = cpu_of(name)
    probe: Dict[str, Any] = {"cpu": nodecpu.describe(cpu, text)}
    if containers is not None:
        probe["runtimes"] = {"found": {n: {"found": True, "starts": True} for n in containers} |
                                      {"bwrap": {"found": True, "starts": False}}}
    return build_site_map(site="S", ce="S::CE", partition="", node="wn1", ttl_left=86400, free_cores=8,
                          memory_mb=32000, disk_mb=100000, cpu=cpu, gpus=[], arch=arch_override,
                          offer=node_offer(probe, cpu, arch_override))


def clause(name: str, user: str = "alice", arch_override: Optional[str] = None, **job: Any) -> Optional[str]:
    site = broker.parse_site_map(site_map_of(name, arch_override, containers=["podman"]))
    needs = broker.needs_of(parse_job(jdl(**job)))
    row = SimpleNamespace(**needs.__dict__, user=user)
    found = broker.misfit_clause(row, site)
    return None if found is None else found[0]


@pytest.mark.parametrize("name, level, avx, features", [
    ("x86_64-xeon-e5345-clovertown-noavx-cpuinfo.txt", "x86-64-v1", False, []),
    ("x86_64-xeon-e7-4870-westmere-ex-noavx-cpuinfo.txt", "x86-64-v2", False, []),
    ("x86_64-epyc-7451-avx2-cpuinfo.txt", "x86-64-v3", True, ["avx", "avx2"]),
    ("x86_64-core-i7-1165g7-avx512-cpuinfo.txt", "x86-64-v4", True, ["avx", "avx2", "avx512f"]),
])
def test_an_x86_node_offers_its_level_and_avx(name, level, avx, features):
    sm = site_map_of(name)
    assert (sm["arch"], sm["x86_64_level"], sm["avx"]) == ("x86_64", level, avx)
    assert set(features) <= set(sm["cpu_features"]) and ("avx" in sm["cpu_features"]) == avx
    assert sm["pilot_version"] == __version__ and "containers" not in sm  # no probe of runtimes: not said
    assert broker.parse_site_map(sm).x86_64_level == int(level[-1])


def test_aarch64_and_riscv64_nodes_offer_their_features_and_isa():
    arm = site_map_of("aarch64-aws-graviton3-c7g.medium-cpuinfo.txt")
    assert arm["arch"] == "aarch64" and "x86_64_level" not in arm and "sve" in arm["cpu_features"]
    rv = site_map_of("riscv64-milkv-pioneer-sg2042-cpuinfo.txt")
    assert rv["arch"] == "riscv64" and rv["cpu_features"][0].startswith("rv64")
    for sm in (arm, rv):
        broker.parse_site_map(sm)


def test_containers_are_the_runtimes_that_started_one():
    sm = site_map_of("x86_64-epyc-7451-avx2-cpuinfo.txt", containers=["apptainer", "podman"])
    assert sm["containers"] == ["apptainer", "podman"]
    assert site_map_of("x86_64-epyc-7451-avx2-cpuinfo.txt", containers=[])["containers"] == []


def test_the_broker_gives_each_captured_node_the_jobs_it_can_run():
    noavx, v3 = "x86_64-xeon-e7-4870-westmere-ex-noavx-cpuinfo.txt", "x86_64-epyc-7451-avx2-cpuinfo.txt"
    arm, rv = "aarch64-nvidia-grace-neoverse-v2-single-block-cpuinfo.txt", "riscv64-milkv-pioneer-sg2042-cpuinfo.txt"
    assert clause(noavx) is None and clause(noavx, user="aliprod") == "avx"
    assert clause(noavx, CPULevel="x86-64-v3") == "cpu_level" and clause(v3, CPULevel="x86-64-v3") is None
    assert clause(v3, user="aliprod") is None and clause(v3, Arch="aarch64") == "arch"
    assert clause(arm) == "arch" and clause(arm, Platform="el9-aarch64", user="aliprod") is None
    assert clause(rv) == "arch" and clause(rv, Arch="riscv64") is None
    assert clause(v3, RequireContainer=True) is None


def test_arch_override_offers_the_named_arch_and_nothing_of_the_cpu():
    sm = site_map_of("x86_64-epyc-7451-avx2-cpuinfo.txt", arch_override="aarch64", containers=["podman"])
    assert (sm["arch"], sm["platform"], sm["avx"]) == ("aarch64", "Linux-aarch64", False)
    assert "x86_64_level" not in sm and "cpu_features" not in sm and sm["containers"] == ["podman"]
    v3 = "x86_64-epyc-7451-avx2-cpuinfo.txt"
    assert clause(v3, arch_override="aarch64") == "arch"
    assert clause(v3, arch_override="aarch64", Arch="aarch64") is None
    # Overriding with the CPU's own arch changes nothing.
    assert site_map_of(v3, arch_override="x86_64") == site_map_of(v3)
    assert arch_override_line(None, "x86_64") is None
    assert arch_override_line("aarch64", "x86_64") == ("Node architecture set by arch_override: aarch64, not the "
                                                       "CPU's x86_64; the broker matches jobs of aarch64")


def test_arch_override_in_the_configuration():
    assert load_config(environ={"GRIDPILOT_ARCH_OVERRIDE": "arm64"}).arch_override == "aarch64"
    assert load_config(environ={}).arch_override is None
    with pytest.raises(ConfigError, match=r"GRIDPILOT_ARCH_OVERRIDE: field 'arch_override' must be one of aarch64, "
                                          r"ppc64le, riscv64, x86_64, got 'sparc'"):
        load_config(environ={"GRIDPILOT_ARCH_OVERRIDE": "sparc"})

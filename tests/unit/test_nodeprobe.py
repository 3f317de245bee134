"""The node probe (pilot/nodeprobe.py, nodecpu.py, nodecheck.py) on captured nodes: an aarch64 Ampere Altra with two
NVIDIA GPUs and a riscv64 Milk-V Pioneer (SG2042) with an AMD card, laid out as procfs/sysfs/etc/cvmfs trees in
tmp_path from the captures in tests/fixtures/arch and tests/fixtures/nodes. Nothing is started (NodePaths.live is
False): what the probe reads from files alone."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from support.sysfs import ARCH_FIXTURES, PCI_IDS, add_device

from gridpilot import _native, cli_codes
from gridpilot.cli import main
from gridpilot.config import PilotConfig
from gridpilot.pilot import nodecpu
from gridpilot.pilot.nodeprobe import BootCache, NodePaths, gpus, probe

NODES = ARCH_FIXTURES.parent / "nodes"
AARCH64_LSPCI = NODES / "aarch64-ampere-altra-devkit-lspci-mm-nn-D.txt"
RISCV64_LSPCI = NODES / "riscv64-milkv-pioneer-sg2042-lspci-mm-nn-D.txt"
BOOT = "2f1d3c4e-0a6b-4c1e-9d2f-5b7a8c9d0e1f"


def capture(name: str) -> str:
    """The verbatim part of a tests/fixtures/arch capture (below its header)."""
    text = (ARCH_FIXTURES / name).read_text()
    return text.split("---- BEGIN CAPTURE (everything below this line is verbatim) ----\n", 1)[1]


def node_tree(root: Path, cpuinfo: str, os_release: str, *, cgroup_controllers: str = "cpu memory pids") -> NodePaths:
    """A node as the probe reads it: procfs (cpuinfo, meminfo, sysctls, boot id, this process's cgroup v2),
    sysfs (the cgroup directory), /etc/os-release and an empty /cvmfs."""
    proc, sysfs, etc, cvmfs = root / "proc", root / "sys", root / "etc", root / "cvmfs"
    for d in (proc / "sys/kernel/random", proc / "sys/user", proc / "self", etc, cvmfs):
        d.mkdir(parents=True, exist_ok=True)
    (proc / "cpuinfo").write_text(cpuinfo)
    (proc / "meminfo").write_text("MemTotal:       263842176 kB\nMemFree:        250000000 kB\n"
                                  "MemAvailable:   255000000 kB\n")
    (proc / "sys/kernel/osrelease").write_text("6.8.0-45-generic\n")
    (proc / "sys/kernel/random/boot_id").write_text(BOOT + "\n")
    (proc / "sys/user/max_user_namespaces").write_text("0\n")
    (proc / "self/mountinfo").write_text(
        "24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
        "29 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
        "rw,nsdelegate,memory_recursiveprot\n")
    (proc / "self/cgroup").write_text("0::/user.slice/user-1000.slice/user@1000.service/app.slice/pilot.scope\n")
    own = sysfs / "fs/cgroup/user.slice/user-1000.slice/user@1000.service/app.slice/pilot.scope"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(cgroup_controllers + "\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text("")
    (etc / "os-release").write_text(os_release)
    return NodePaths(proc=str(proc), sys=str(sysfs), etc=str(etc), cvmfs=str(cvmfs), live=False)


def run(paths: NodePaths, workdir: Path, **kw: Any) -> Dict[str, Any]:
    cfg = PilotConfig(workdir=str(workdir), sysfs=paths.sys, pci_ids=str(PCI_IDS))
    return probe(cfg, paths, **kw).to_dict()


@pytest.mark.parametrize("name, level", [
    ("x86_64-xeon-e5345-clovertown-noavx-cpuinfo.txt", "x86-64"),
    ("x86_64-xeon-e7-4870-westmere-ex-noavx-cpuinfo.txt", "x86-64-v2"),
    ("x86_64-epyc-7451-avx2-cpuinfo.txt", "x86-64-v3"),
    ("x86_64-xeon-silver-4108-avx512-cpuinfo.txt", "x86-64-v4"),
    ("x86_64-core-i7-1165g7-avx512-cpuinfo.txt", "x86-64-v4"),
])
def test_x86_64_level_and_avx_generations_of_captured_cpus(name: str, level: str) -> None:
    text = capture(name)
    cpu = nodecpu.describe(_native.parse_cpuinfo(text), text)
    assert cpu["x86_64_level"] == level
    assert cpu["avx"] is (level in ("x86-64-v3", "x86-64-v4"))
    assert cpu["avx2"] is (level in ("x86-64-v3", "x86-64-v4"))
    assert bool(cpu["avx512"]) is (level == "x86-64-v4") and ("avx512f" in cpu["avx512"]) is (level == "x86-64-v4")


def test_aarch64_node_features_os_cgroups_and_gpus_from_sysfs(tmp_path: Path) -> None:
    paths = node_tree(tmp_path, capture("aarch64-ampere-altra-max-cpuinfo.txt"),
                      'PRETTY_NAME="AlmaLinux 9.4 (Seafoam Ocelot)"\nID="almalinux"\nVERSION_ID="9.4"\n')
    add_device(tmp_path, "0000:01:00.0", "0x030000", "0x10de", "0x2204", driver="nvidia")
    add_device(tmp_path, "000c:01:00.0", "0x030000", "0x10de", "0x27b0", driver="nvidia")
    r = run(paths, tmp_path / "work")
    assert r["cpu"]["arch"] == "aarch64" and "x86_64_level" not in r["cpu"]
    assert {"asimd", "atomics", "fp"} <= set(r["cpu"]["features"])
    assert r["os"] == {"name": "AlmaLinux 9.4 (Seafoam Ocelot)", "id": "almalinux", "version_id": "9.4",
                       "kernel": "6.8.0-45-generic"}
    assert r["memory"] == {"total_mb": 263842176 // 1024, "available_mb": 255000000 // 1024}
    assert r["cgroups"]["version"] == "2" and r["cgroups"]["controllers"] == ["cpu", "memory", "pids"]
    assert r["cgroups"]["path"].endswith("pilot.scope")
    assert r["user_namespaces"] == {"sysctls": {"max_user_namespaces": 0}, "unshare": None}
    g = r["gpus"]
    assert g["source"] == "sysfs" and g["tried"] == ["sysfs"]
    assert [(x["pci_address"], x["vendor"], x["model"], x["driver"]) for x in g["gpus"]] == [
        ("0000:01:00.0", "NVIDIA", "GA102 [GeForce RTX 3090]", "nvidia"),
        ("000c:01:00.0", "NVIDIA", "AD104GL [RTX 4000 SFF Ada Generation]", "nvidia")]
    assert r["boot_id"] == BOOT and r["ok"] and r["fatal"] == []


def test_aarch64_node_without_sysfs_gpus_falls_back_to_lspci(tmp_path: Path) -> None:
    paths = node_tree(tmp_path, capture("aarch64-ampere-altra-max-cpuinfo.txt"), "NAME=Ubuntu\n")
    paths.lspci_output = str(AARCH64_LSPCI)
    g = run(paths, tmp_path / "work")["gpus"]
    assert g["tried"] == ["sysfs", f"lspci output {AARCH64_LSPCI}"] and g["source"] == g["tried"][-1]
    # The BMC's VGA function is a display device too: reported (vendor other), the broker ignores non-GPU vendors.
    assert [(x["pci_address"], x["vendor"]) for x in g["gpus"]] == [
        ("0000:01:00.0", "NVIDIA"), ("0004:02:00.0", "other"), ("000c:01:00.0", "NVIDIA")]
    assert g["gpus"][0]["vendor_id"] == 0x10de and g["gpus"][0]["device_id"] == 0x2204


def test_riscv64_node_isa_string_and_amd_card_from_lspci(tmp_path: Path) -> None:
    paths = node_tree(tmp_path, capture("riscv64-milkv-pioneer-sg2042-cpuinfo.txt"),
                      'PRETTY_NAME="Fedora Linux 38 (Thirty Eight)"\nID=fedora\nVERSION_ID=38\n')
    paths.lspci_output = str(RISCV64_LSPCI)
    r = run(paths, tmp_path / "work")
    assert r["cpu"]["arch"] == "riscv64" and r["cpu"]["isa"] == "rv64imafdcv"
    assert r["cpu"]["logical_cpus"] == 64 and "features" not in r["cpu"]
    assert [(x["vendor"], x["model"], x["device_id"]) for x in r["gpus"]["gpus"]] == [
        ("AMD", "Caicos [Radeon HD 6450/7450/8450 / R5 230 OEM]", 0x6779)]
    assert r["os"]["id"] == "fedora"


def test_no_gpu_anywhere_says_where_it_looked(tmp_path: Path) -> None:
    paths = node_tree(tmp_path, capture("riscv64-milkv-pioneer-sg2042-cpuinfo.txt"), "")
    no_gpu = tmp_path / "lspci.txt"
    no_gpu.write_text('0001:02:00.0 "Ethernet controller [0200]" "Realtek Semiconductor Co., Ltd. [10ec]" '
                      '"RTL8111/8168/8211/8411 PCI Express Gigabit Ethernet Controller [8168]" -r15 "" ""\n')
    paths.lspci_output = str(no_gpu)
    g = run(paths, tmp_path / "work")["gpus"]
    assert g == {"source": None, "tried": ["sysfs", f"lspci output {no_gpu}"], "gpus": []}


def _set_revision(path: Path, value: Optional[bytes]) -> None:
    if value is None:
        return
    try:
        os.setxattr(path, "user.revision", value)
    except OSError as e:
        pytest.skip(f"the file system of {path} takes no user.* attributes ({e.strerror}); CVMFS sets them itself")


def test_cvmfs_repositories_and_their_revisions(tmp_path: Path) -> None:
    paths = node_tree(tmp_path, capture("aarch64-ampere-altra-max-cpuinfo.txt"), "")
    for name, rev in (("alice.cern.ch", b"31337"), ("sft.cern.ch", b"2208"), ("unpublished.example.org", None)):
        (Path(paths.cvmfs) / name).mkdir()
        _set_revision(Path(paths.cvmfs) / name, rev)
    (Path(paths.cvmfs) / "README").write_text("not a repository\n")
    assert run(paths, tmp_path / "work")["cvmfs"]["repositories"] == [
        {"name": "alice.cern.ch", "revision": 31337}, {"name": "sft.cern.ch", "revision": 2208},
        {"name": "unpublished.example.org", "revision": None}]


def test_the_boot_cache_keeps_answers_for_one_boot_only(tmp_path: Path) -> None:
    calls = []

    def compute() -> Dict[str, Any]:
        calls.append(1)
        return {"works": True}

    f = tmp_path / "node-check.json"
    first = BootCache(f, "boot-a")
    assert first.get("unshare -U", compute) == {"works": True} and first.hits == 0
    first.save()
    again = BootCache(f, "boot-a")
    assert again.get("unshare -U", compute) == {"works": True} and again.hits == 1 and len(calls) == 1
    rebooted = BootCache(f, "boot-b")
    rebooted.get("unshare -U", compute)
    assert rebooted.hits == 0 and len(calls) == 2
    f.write_text("{half a file")
    assert BootCache(f, "boot-a").entries == {}
    assert BootCache(None, "boot-a").entries == {} and BootCache(f, None).entries == {}


def cli(argv: list) -> tuple:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def fixture_args(paths: NodePaths, workdir: Path) -> list:
    return ["node", "check", "--offline", "--proc", paths.proc, "--sys", paths.sys, "--etc", paths.etc,
            "--cvmfs", paths.cvmfs, "--workdir", str(workdir), "--pci-ids", str(PCI_IDS)]


def test_cli_json_table_and_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDPILOT_CENTRAL_URL", raising=False)
    monkeypatch.delenv("GRIDPILOT_CONFIG", raising=False)
    paths = node_tree(tmp_path, capture("riscv64-milkv-pioneer-sg2042-cpuinfo.txt"), "PRETTY_NAME=Fedora\n")
    args = fixture_args(paths, tmp_path / "work") + ["--lspci-output", str(RISCV64_LSPCI)]
    code, out = cli(args + ["--json"])
    r = json.loads(out)
    assert code == cli_codes.OK and r["ok"] and r["cpu"]["isa"] == "rv64imafdcv"
    code, out = cli(args)
    assert code == cli_codes.OK
    assert "isa              rv64imafdcv" in out and "AMD Caicos" in out and out.endswith(
        "verdict          ok: this node can run jobs\n")
    # A central that does not answer (nothing listens on port 1): no job can come, exit 1 with the reason.
    code, out = cli(args + ["--json", "--central", "http://127.0.0.1:1"])
    r = json.loads(out)
    assert code == cli_codes.FAILED and not r["ok"] and r["central"]["reachable"] is False
    assert r["fatal"] == [f"central http://127.0.0.1:1 unreachable: {r['central']['why']}"]


def test_cli_a_work_directory_on_a_full_disk_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDPILOT_CENTRAL_URL", raising=False)
    paths = node_tree(tmp_path, capture("aarch64-ampere-altra-max-cpuinfo.txt"), "")
    cfg = PilotConfig(workdir=str(tmp_path / "work"), sysfs=paths.sys, pci_ids=str(PCI_IDS))
    r = probe(cfg, paths, min_disk_mb=2**40).to_dict()
    assert not r["ok"] and len(r["fatal"]) == 1 and "MB free, less than" in r["fatal"][0]


def test_cli_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    paths = node_tree(tmp_path, capture("aarch64-ampere-altra-max-cpuinfo.txt"), "")
    base = fixture_args(paths, tmp_path / "work")
    assert cli(base + ["--lspci-output", str(tmp_path / "missing.txt")])[0] == cli_codes.USAGE
    assert cli(base[:4] + [str(tmp_path / "no-proc")] + base[5:])[0] == cli_codes.USAGE
    assert cli(base + ["--runtime-timeout", "0"])[0] == cli_codes.USAGE


def test_without_sysfs_gpus_or_host_lspci_the_container_s_lspci_is_asked(tmp_path: Path) -> None:
    """gpu.sh's last resort: a host without pciutils, lspci run in the container runtime. The container's output is
    handed in (the integration tests start real containers); no host lspci is run (the binary does not exist)."""
    sysfs = tmp_path / "sys"
    sysfs.mkdir()
    paths = NodePaths(sys=str(sysfs), lspci=str(tmp_path / "no-lspci"), live=True)
    asked = []

    def in_container() -> str:
        asked.append(1)
        return RISCV64_LSPCI.read_text()

    g = gpus(paths, str(PCI_IDS), in_container)
    assert asked == [1] and g["source"] == "lspci (container)"
    assert g["tried"] == ["sysfs", "lspci (host): not installed (pciutils)", "lspci (container)"]
    assert [x["vendor"] for x in g["gpus"]] == ["AMD"]
    # No runtime starts: nothing more to ask, and the probe says where it looked.
    assert gpus(paths, str(PCI_IDS), None) == {
        "source": None, "tried": ["sysfs", "lspci (host): not installed (pciutils)"], "gpus": []}

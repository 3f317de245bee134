"""CPU and GPU enumeration (gridpilot._native: cpu_info, parse_cpuinfo, list_gpus, parse_lspci).

Every capture in tests/fixtures/arch/ starts with `#` header lines stating its source and the expected result;
the tests read those headers and check the parser against them. Where a header states a fact in prose (which
addresses are GPUs, their vendors and names), the tables below restate it and each entry is checked to appear in
that header, so the assertions stay tied to the captures' documentation rather than to the code's output.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from gridpilot import _native
from gridpilot.errors import ParseError
from gridpilot.isolation import gpus as gpus_mod

from support.sysfs import ARCH_FIXTURES, H100_UUID, NO_PCI_IDS, PCI_IDS, UUID_NOT_YET, add_device, nvidia_information

FIXTURES = ARCH_FIXTURES
BEGIN = "# ---- BEGIN CAPTURE"
UNKNOWN_ID = 0xFFFF


@dataclass
class Fixture:
    name: str
    header: dict[str, list[str]]
    capture: str

    @property
    def expected(self) -> str:
        return " ".join(self.header.get("expected", []))

    @property
    def header_text(self) -> str:
        return " ".join(" ".join(v) for v in self.header.values())


def load(path: Path) -> Fixture:
    # Bytes, not read_text(): universal newlines would hide the CRLF captures.
    raw = path.read_bytes().decode("utf-8")
    header: dict[str, list[str]] = {}
    start = raw.index(BEGIN)
    # split("\n"): a header line of the CRLF capture quotes a "\r", which splitlines() would break on.
    for line in raw[:start].split("\n"):
        if not line.strip():
            continue
        key, _, value = line.lstrip("# ").partition(":")
        header.setdefault(key.strip(), []).append(value.strip())
    capture = raw[raw.index("\n", start) + 1 :]
    return Fixture(path.name, header, capture)


def fixtures(kind: str) -> list[Fixture]:
    found = [load(p) for p in sorted(FIXTURES.glob("*.txt"))]
    return [f for f in found if f.header["capture"][0].startswith(kind)]


CPUINFO = fixtures("cpuinfo")
LSPCI = fixtures("lspci")


def test_every_fixture_is_covered() -> None:
    names = sorted(p.name for p in FIXTURES.glob("*.txt"))
    assert len(names) == 37
    covered = {f.name for f in CPUINFO} | {f.name for f in LSPCI} | {PCI_IDS.name}
    assert covered == set(names)
    for f in CPUINFO + LSPCI:
        assert f.header["source"][0].startswith("https://"), f.name


# --------------------------------------------------------------------------------------------------------------
# cpuinfo


def stated(expected: str, key: str) -> Optional[str]:
    m = re.search(rf"\b{key}=(\S+)", expected)
    return m.group(1) if m else None


# Model facts stated in the header notes (matched with spaces and dashes ignored).
CPU_MODELS = {
    "aarch64-ampere-altra-max-cpuinfo.txt": ["Neoverse-N1"],
    "aarch64-ampereone-a192-32x-cpuinfo.txt": ["Ampere"],
    "aarch64-aws-graviton2-m6g.4xlarge-cpuinfo.txt": ["Neoverse-N1"],
    "aarch64-aws-graviton3-c7g.medium-cpuinfo.txt": ["Neoverse-V1"],
    "aarch64-cavium-thunderx2-cpuinfo.txt": ["ThunderX2"],
    "aarch64-kunpeng920-128core-cpuinfo.txt": ["Kunpeng 920"],
    "aarch64-kunpeng920-24core-cpuinfo.txt": ["Kunpeng 920"],
    "aarch64-nvidia-dgx-gb10-cpuinfo.txt": ["Cortex-X925", "Cortex-A725"],
    "aarch64-nvidia-grace-neoverse-v2-single-block-cpuinfo.txt": ["Neoverse-V2"],
    "aarch64-nvidia-jetson-agx-orin-cpuinfo.txt": ["Cortex-A78AE"],
    "riscv64-hifive-unmatched-fu740-linux6.12-cpuinfo.txt": ["sifive,bullet0"],
    "riscv64-sifive-unleashed-fu540-cpuinfo.txt": ["sifive,u54-mc"],
    "riscv64-spacemit-k1-cpuinfo.txt": ["Spacemit(R) X60"],
    "riscv64-u74-2hart-utillinux-cpuinfo.txt": ["sifive,u74-mc"],
    "x86_64-core-i5-m560-arrandale-noavx-cpuinfo.txt": ["M 560"],
    "x86_64-core-i7-1165g7-avx512-cpuinfo.txt": ["i7-1165G7"],
    "x86_64-epyc-7451-avx2-cpuinfo.txt": ["EPYC 7451"],
    "x86_64-xeon-e5345-clovertown-noavx-cpuinfo.txt": ["E5345"],
    "x86_64-xeon-e7-4870-westmere-ex-noavx-cpuinfo.txt": ["E7-4870"],
    "x86_64-xeon-platinum-8480-sapphirerapids-single-block-cpuinfo.txt": ["Platinum 8480+"],
    "x86_64-xeon-silver-4108-avx512-cpuinfo.txt": ["Silver 4108"],
}

# ISA extensions stated in the header notes.
RISCV_EXTENSIONS = {
    "riscv64-hifive-premier-p550-eic7700x-cpuinfo.txt": ["h"],
    "riscv64-milkv-pioneer-sg2042-cpuinfo.txt": list("imafdcv"),
}


def squash(s: str) -> str:
    return re.sub(r"[\s\-]+", "", s)


@pytest.mark.parametrize("fx", CPUINFO, ids=lambda f: f.name)
def test_cpuinfo_fixture(fx: Fixture) -> None:
    arch = stated(fx.expected, "arch")
    cpus = stated(fx.expected, "logical_cpus")
    avx = stated(fx.expected, "avx")
    assert arch and cpus and avx in ("yes", "no"), f"header of {fx.name} states arch, logical_cpus and avx"

    guessed = _native.parse_cpuinfo(fx.capture)
    forced = _native.parse_cpuinfo(fx.capture, arch=arch)
    for info in (guessed, forced):
        assert info.arch == arch
        assert info.logical_cpus == int(cpus)
        assert info.has_avx is (avx == "yes")
        assert info.model
        assert info.flags, "every capture lists its features"
        assert len(set(info.flags)) == len(info.flags)
    avx512f = stated(fx.expected, "avx512f")
    if avx512f is not None:
        assert ("avx512f" in guessed.flags) is (avx512f == "yes")
    if arch == "x86_64":
        assert guessed.mhz is not None and guessed.mhz > 0
        assert guessed.family
    if arch == "aarch64":
        assert guessed.family == "8"
        assert "asimd" in guessed.flags
    if arch == "riscv64":
        assert {"i", "m", "a"} <= set(guessed.flags)
    for name in CPU_MODELS.get(fx.name, []):
        assert squash(name) in squash(fx.header_text), f"{name!r} is stated in the header of {fx.name}"
        assert squash(name) in squash(guessed.model or "")
    for ext in RISCV_EXTENSIONS.get(fx.name, []):
        assert ext in guessed.flags
    d = guessed.to_dict()
    assert d["logical_cpus"] == int(cpus) and d["arch"] == arch and d["flags"] == guessed.flags
    assert repr(guessed).startswith("CpuInfo(arch='")


def test_cpuinfo_heterogeneous_model_names_both_core_kinds() -> None:
    (fx,) = [f for f in CPUINFO if f.name == "aarch64-nvidia-dgx-gb10-cpuinfo.txt"]
    assert "CPU part differs between processors" in fx.header_text
    assert " + " in (_native.parse_cpuinfo(fx.capture).model or "")


def test_cpuinfo_errors() -> None:
    with pytest.raises(ParseError):
        _native.parse_cpuinfo("")
    with pytest.raises(ValueError):
        _native.parse_cpuinfo("processor\t: 0\n", arch="sparc64")
    with pytest.raises(OSError):
        _native.cpu_info(proc="/nonexistent/proc")


def test_cpu_info_from_tree(tmp_path: Path) -> None:
    (fx,) = [f for f in CPUINFO if f.name == "aarch64-aws-graviton2-m6g.4xlarge-cpuinfo.txt"]
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(fx.capture)
    freq = tmp_path / "sys/devices/system/cpu/cpu0/cpufreq"
    freq.mkdir(parents=True)
    info = _native.cpu_info(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"), arch="aarch64")
    assert info.mhz is None, "aarch64 cpuinfo has no clock and there is no cpufreq"
    (freq / "scaling_cur_freq").write_text("1200000\n")
    assert _native.cpu_info(str(tmp_path / "proc"), str(tmp_path / "sys"), "aarch64").mhz == 1200.0
    (freq / "cpuinfo_max_freq").write_text("2500000\n")
    info = _native.cpu_info(str(tmp_path / "proc"), str(tmp_path / "sys"), "aarch64")
    assert (info.mhz, info.logical_cpus, info.model) == (2500.0, 16, "ARM Neoverse-N1")


def test_cpu_info_this_machine() -> None:
    info = _native.cpu_info()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine(), platform.machine())
    assert info.arch == (machine if machine in ("x86_64", "aarch64", "riscv64") else "other")
    assert info.logical_cpus == os.cpu_count()
    assert info.model
    assert info.mhz is None or info.mhz > 0
    if info.arch == "x86_64":
        assert "fpu" in info.flags


# --------------------------------------------------------------------------------------------------------------
# lspci


@dataclass
class ExpectedGpu:
    address: str  # as the header writes it
    class_id: int
    vendor: str
    vendor_id: int
    model: Optional[str]
    device_id: Optional[int] = None  # None: not stated for this capture format
    driver: Optional[str] = None

    @property
    def pci_address(self) -> str:
        return self.address if self.address.count(":") == 2 else "0000:" + self.address


def aspeed(address: str, device_id: Optional[int] = None, driver: Optional[str] = None) -> ExpectedGpu:
    """The BMC's display controller that server headers list among the GPU-class devices."""
    return ExpectedGpu(address, 0x0300, "other", 0x1A03, "ASPEED Graphics Family", device_id, driver)


def vega20(address: str, driver: Optional[str] = None) -> ExpectedGpu:
    return ExpectedGpu(address, 0x0300, "AMD", 0x1002, "Vega 20", None, driver)


MI50_ADDRESSES = ["07:00.0", "0a:00.0", "2a:00.0", "2d:00.0", "45:00.0", "48:00.0", "65:00.0", "68:00.0"]

# The GPU-class devices each lspci header lists. device_id is given where the capture carries ids (-nn) or the
# header states one; drivers are the "Kernel driver in use" lines of the -k capture.
LSPCI_GPUS = {
    "aarch64-ampere-altra-devkit-rtx3090-rtx4000ada-lspci-vvnn-headerlines.txt": [
        ExpectedGpu("0000:01:00.0", 0x0300, "NVIDIA", 0x10DE, "GA102 [GeForce RTX 3090]", 0x2204),
        ExpectedGpu("000c:01:00.0", 0x0300, "NVIDIA", 0x10DE, None, 0x27B0),
        aspeed("0004:02:00.0", device_id=0x2000),
    ],
    "x86_64-asrock-b850-rx9070-lspci-mm-nn.txt": [
        ExpectedGpu("03:00.0", 0x0300, "AMD", 0x1002, "Navi 48 [Radeon RX 9070/9070 XT/9070 GRE]", 0x7550),
    ],
    "x86_64-epyc-genoa-2x-h100nvl-lspci-plain.txt": [
        aspeed("62:00.0"),
        ExpectedGpu("c1:00.0", 0x0302, "NVIDIA", 0x10DE, "GH100 [H100L 94GB]"),
        ExpectedGpu("e1:00.0", 0x0302, "NVIDIA", 0x10DE, "GH100 [H100L 94GB]"),
    ],
    "x86_64-epyc-naples-8x-vega20-mi50-lspci-k.txt": [
        *(vega20(a, driver="amdgpu") for a in MI50_ADDRESSES),
        aspeed("24:00.0", driver="ast"),
    ],
    "x86_64-epyc-naples-8x-vega20-mi50-lspci-plain.txt": [*(vega20(a) for a in MI50_ADDRESSES), aspeed("24:00.0")],
}

# Ids the headers state "per pci.ids" for formats that print names only.
LSPCI_IDS_FROM_PCI_IDS = {
    ("x86_64-epyc-genoa-2x-h100nvl-lspci-plain.txt", "c1:00.0"): 0x2321,
    ("x86_64-epyc-genoa-2x-h100nvl-lspci-plain.txt", "e1:00.0"): 0x2321,
}
# Models the pci.ids excerpt gives where the capture's own pci.ids had none (stated in the vvnn header).
LSPCI_MODELS_FROM_PCI_IDS = {
    ("aarch64-ampere-altra-devkit-rtx3090-rtx4000ada-lspci-vvnn-headerlines.txt", "000c:01:00.0"): (
        "AD104GL [RTX 4000 SFF Ada Generation]"
    ),
}


def test_lspci_tables_restate_headers() -> None:
    assert set(LSPCI_GPUS) == {f.name for f in LSPCI}
    for fx in LSPCI:
        text = squash(fx.header_text)
        for gpu in LSPCI_GPUS[fx.name]:
            assert squash(gpu.address) in text, (fx.name, gpu.address)
            assert f"class{gpu.class_id:04x}" in text, (fx.name, gpu.class_id)
            # The MI50 headers name the BMC display's vendor without its id.
            assert f"{gpu.vendor_id:04x}" in text or (gpu.vendor_id == 0x1A03 and "ASPEED" in text), fx.name
            if gpu.device_id is not None:
                assert f"{gpu.device_id:04x}" in text, (fx.name, gpu.device_id)
            if gpu.model:
                # Stated in the header, or printed on the device's own line of the capture.
                line = next(ln for ln in fx.capture.splitlines() if squash(gpu.address) in squash(ln))
                assert squash(gpu.model) in text or gpu.model in line, (fx.name, gpu.model)
            if gpu.driver:
                assert f"Kernel driver in use: {gpu.driver}" in fx.capture


@pytest.mark.parametrize("with_pci_ids", [False, True], ids=["no-pci.ids", "pci.ids-excerpt"])
@pytest.mark.parametrize("fx", LSPCI, ids=lambda f: f.name)
def test_lspci_fixture(fx: Fixture, with_pci_ids: bool) -> None:
    m = re.search(r"GPU-class (?:devices|lines) \((\d+)\)", fx.expected)
    assert m, f"header of {fx.name} states the number of GPU-class devices"
    gpus = _native.parse_lspci(fx.capture, pci_ids=str(PCI_IDS) if with_pci_ids else NO_PCI_IDS)
    assert len(gpus) == int(m.group(1))
    expected = {g.pci_address: g for g in LSPCI_GPUS[fx.name]}
    assert {g.pci_address for g in gpus} == set(expected)
    # In the order lspci printed them.
    positions = [fx.capture.index(expected[g.pci_address].address + " ") for g in gpus]
    assert positions == sorted(positions)
    for gpu in gpus:
        want = expected[gpu.pci_address]
        assert (gpu.class_id, gpu.vendor, gpu.vendor_id) == (want.class_id, want.vendor, want.vendor_id)
        model = want.model
        device_id = want.device_id
        if with_pci_ids:
            model = LSPCI_MODELS_FROM_PCI_IDS.get((fx.name, want.address), model)
            device_id = LSPCI_IDS_FROM_PCI_IDS.get((fx.name, want.address), device_id)
        assert gpu.model == model
        if device_id is not None:
            assert gpu.device_id == device_id
        elif not with_pci_ids:
            # Plain lspci prints names only; without pci.ids the id is unknown, not guessed.
            assert gpu.device_id == UNKNOWN_ID
        assert gpu.driver == want.driver
        assert gpu.device_nodes == []
        assert gpu.numa_node is None


def test_lspci_stale_name_gives_no_device_id() -> None:
    (fx,) = [f for f in LSPCI if f.name == "x86_64-epyc-naples-8x-vega20-mi50-lspci-plain.txt"]
    assert "2019-era pci.ids" in fx.header_text and "names CHANGE" in load(PCI_IDS).header_text
    # Today's pci.ids has one device named plain "Vega 20" (66a2), but the 2019 capture's "Vega 20" were
    # MI50s (66a1 now carries a bracketed name): the name cannot tell which device it is.
    gpus = _native.parse_lspci(fx.capture, pci_ids=str(PCI_IDS))
    assert {g.device_id for g in gpus if g.vendor == "AMD"} == {UNKNOWN_ID}


def pci_ids_entries() -> list[tuple[int, int, str]]:
    """(vendor, device, name) of every device line of the pci.ids excerpt, read as the header describes it."""
    entries = []
    vendor = None
    for line in load(PCI_IDS).capture.splitlines():
        if line.startswith("C "):
            break
        if line.startswith("\t\t") or not line.strip():
            continue
        if line.startswith("\t"):
            device, name = line[1:].split("  ", 1)
            assert vendor is not None
            entries.append((vendor, int(device, 16), name))
        else:
            vendor = int(line.split("  ", 1)[0], 16)
    return entries


def test_pci_ids_excerpt_names_every_device() -> None:
    entries = pci_ids_entries()
    assert len(entries) > 150
    lines = [
        f'{n // 256:04x}:{n % 256:02x}:00.0 "Processing accelerators [1200]" "Vendor [{v:04x}]" "Device [{d:04x}]"'
        for n, (v, d, _) in enumerate(entries)
    ]
    gpus = _native.parse_lspci("\n".join(lines) + "\n", pci_ids=str(PCI_IDS))
    assert [(g.vendor_id, g.device_id, g.model) for g in gpus] == entries


def test_pci_ids_header_examples() -> None:
    header = load(PCI_IDS).header_text
    assert "66a1" in header and "Vega 20 [Radeon Pro VII/Radeon Instinct MI50]" in header
    text = "0000:c1:00.0 Display controller [0380]: Advanced Micro Devices, Inc. [AMD/ATI] Vega 20 [1002:66a1]\n"
    (gpu,) = _native.parse_lspci(text, pci_ids=str(PCI_IDS))
    assert (gpu.model, gpu.vendor, gpu.class_id) == ("Vega 20 [Radeon Pro VII/Radeon Instinct MI50]", "AMD", 0x0380)
    (gpu,) = _native.parse_lspci(text, pci_ids=NO_PCI_IDS)
    assert gpu.model == "Vega 20"


def test_lspci_without_gpus() -> None:
    assert _native.parse_lspci("") == []
    assert _native.parse_lspci("lspci: Cannot find any working access method.\n") == []


# --------------------------------------------------------------------------------------------------------------
# sysfs


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    add_device(tmp_path, "0000:41:00.0", "0x030200", "0x10de", "0x2321", "0", "nvidia")
    add_device(tmp_path, "0000:41:00.1", "0x040300", "0x10de", "0x22bc", "0", "snd_hda_intel")
    add_device(tmp_path, "0000:c1:00.0", "0x030200", "0x10de", "0x2321", "1", "nvidia")
    add_device(tmp_path, "0000:e1:00.0", "0x030000", "0x10de", "0x2204", "1", "nvidia")
    amd = add_device(tmp_path, "0000:03:00.0", "0x038000", "0x1002", "0x66a1", "-1", "amdgpu")
    (amd / "drm/renderD128").mkdir(parents=True)
    (amd / "drm/card0").mkdir(parents=True)
    add_device(tmp_path, "0000:62:00.0", "0x030000", "0x1a03", "0x2000", "-1", "ast")
    add_device(tmp_path, "0000:70:00.0", "0x120000", "0x1da3", "0x1020", "0", None)
    add_device(tmp_path, "0000:00:00.0", "0x060000", "0x1022", "0x14a4")
    info = tmp_path / "proc/driver/nvidia/gpus/0000:c1:00.0/information"
    info.parent.mkdir(parents=True)
    info.write_text("Model: \t\t NVIDIA H100 NVL\nBus Location: \t 0000:c1:00.0\nDevice Minor: \t 5\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/kfd").write_text("")
    return tmp_path


def test_list_gpus_fake_sysfs(fake_root: Path) -> None:
    dev = str(fake_root / "dev")
    gpus = _native.list_gpus(sysfs=str(fake_root / "sys"), pci_ids=str(PCI_IDS), dev=dev)
    by = {g.pci_address: g for g in gpus}
    assert [g.pci_address for g in gpus] == sorted(by) == [
        "0000:03:00.0",
        "0000:41:00.0",
        "0000:62:00.0",
        "0000:70:00.0",
        "0000:c1:00.0",
        "0000:e1:00.0",
    ]
    amd = by["0000:03:00.0"]
    assert (amd.vendor, amd.vendor_id, amd.device_id, amd.class_id) == ("AMD", 0x1002, 0x66A1, 0x0380)
    assert amd.model == "Vega 20 [Radeon Pro VII/Radeon Instinct MI50]"
    assert (amd.driver, amd.numa_node) == ("amdgpu", None)
    assert amd.device_nodes == [f"{dev}/dri/renderD128", f"{dev}/kfd"]

    h100 = by["0000:41:00.0"]
    assert (h100.vendor, h100.class_id, h100.model) == ("NVIDIA", 0x0302, "GH100 [H100L 94GB]")
    assert (h100.driver, h100.numa_node, h100.device_nodes) == ("nvidia", 0, [f"{dev}/nvidia0"])
    # The driver's information file gives the minor of this one; the next falls back to its rank.
    assert by["0000:c1:00.0"].device_nodes == [f"{dev}/nvidia5"]
    assert by["0000:e1:00.0"].device_nodes == [f"{dev}/nvidia2"]
    assert by["0000:e1:00.0"].model == "GA102 [GeForce RTX 3090]"

    aspeed = by["0000:62:00.0"]
    assert (aspeed.vendor, aspeed.driver, aspeed.device_nodes) == ("other", "ast", [])
    accel = by["0000:70:00.0"]
    assert (accel.class_id, accel.driver, accel.numa_node, accel.model) == (0x1200, None, 0, None)

    d = h100.to_dict()
    assert d == {
        "pci_address": "0000:41:00.0",
        "vendor_id": 0x10DE,
        "device_id": 0x2321,
        "vendor": "NVIDIA",
        "model": "GH100 [H100L 94GB]",
        "class_id": 0x0302,
        "driver": "nvidia",
        "numa_node": 0,
        "device_nodes": [f"{dev}/nvidia0"],
    }
    assert repr(h100).startswith("Gpu(pci_address='0000:41:00.0', vendor='NVIDIA'")
    assert type(h100).__module__ == "gridpilot._native" and type(h100).__name__ == "Gpu"
    with pytest.raises(AttributeError):
        h100.model = "x"  # type: ignore[misc]


def test_list_gpus_without_kfd_or_pci_ids(fake_root: Path) -> None:
    (fake_root / "dev/kfd").unlink()
    gpus = _native.list_gpus(str(fake_root / "sys"), NO_PCI_IDS, str(fake_root / "dev"))
    amd = next(g for g in gpus if g.vendor == "AMD")
    assert amd.device_nodes == [f"{fake_root}/dev/dri/renderD128"]
    assert all(g.model is None for g in gpus)


def test_list_gpus_without_sysfs(tmp_path: Path) -> None:
    assert _native.list_gpus(sysfs=str(tmp_path / "nothing")) == []
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    assert _native.list_gpus(sysfs=str(tmp_path / "sys")) == []


def test_list_gpus_this_machine() -> None:
    # The development VM has none: expect []. On a GPU node, the same devices a direct look at sysfs finds.
    gpu_classes = {0x0300, 0x0302, 0x0380, 0x1200}
    found = []
    for dev in sorted(Path("/sys/bus/pci/devices").glob("*")):
        if int((dev / "class").read_text(), 16) >> 8 in gpu_classes:
            found.append(dev.name)
    assert [g.pci_address for g in _native.list_gpus()] == found


# --------------------------------------------------------------------------------------------------------------
# Visible-device variables (gridpilot.isolation.gpus): UUIDs from the drivers, else indices, per runtime.
# The nodes are the captured ones: the Genoa host with 2x H100 NVL (c1:00.0, e1:00.0, and the BMC's ASPEED) and the
# Naples host with 8x MI50 (MI50_ADDRESSES), laid out in a fake sysfs/procfs as the kernel and drivers do.

H100_NODE = "x86_64-epyc-genoa-2x-h100nvl-lspci-plain.txt"


@pytest.fixture
def h100_node(tmp_path: Path) -> Path:
    header = load(FIXTURES / H100_NODE).expected
    for short in ("62:00.0", "c1:00.0", "e1:00.0"):
        assert short in header
    add_device(tmp_path, "0000:62:00.0", "0x030000", "0x1a03", "0x2000", "-1", "ast")
    add_device(tmp_path, "0000:c1:00.0", "0x030200", "0x10de", "0x2321", "1", "nvidia")
    add_device(tmp_path, "0000:e1:00.0", "0x030200", "0x10de", "0x2321", "1", "nvidia")
    nvidia_information(tmp_path, "0000:c1:00.0", H100_UUID, 0)
    nvidia_information(tmp_path, "0000:e1:00.0", UUID_NOT_YET, 1)
    return tmp_path


def kfd_node(root: Path, node: int, props: dict) -> None:
    """One node of the KFD topology, its properties one "name value" line each in decimal (kfd_topology.c), under
    /sys/devices/virtual/kfd/kfd with /sys/class/kfd/kfd linking to it, as on a real node."""
    real = root / "sys/devices/virtual/kfd/kfd"
    link = root / "sys/class/kfd/kfd"
    if not link.exists():
        link.parent.mkdir(parents=True)
        link.symlink_to(os.path.relpath(real, link.parent))
    d = real / "topology/nodes" / str(node)
    d.mkdir(parents=True)
    (d / "properties").write_text("".join(f"{k} {v}\n" for k, v in props.items()))


def mi50_props(address: str, render_minor: int, unique_id: Optional[int]) -> dict:
    domain, bus, dev_fn = address.split(":")
    dev, fn = (int(x, 16) for x in dev_fn.split("."))
    props = {"cpu_cores_count": 0, "simd_count": 240, "mem_banks_count": 1, "caches_count": 104,
             "io_links_count": 1, "gfx_target_version": 90006, "vendor_id": 0x1002, "device_id": 0x66A1,
             "location_id": int(bus, 16) << 8 | dev << 3 | fn, "domain": int(domain, 16),
             "drm_render_minor": render_minor, "hive_id": 0, "num_sdma_engines": 2, "local_mem_size": 34342961152}
    if unique_id is not None:  # older kernels and gfx8 GPUs have none
        props["unique_id"] = unique_id
    props["max_engine_clk_ccompute"] = 2400
    return props


#: KFD's unique_id of each MI50; the fourth has 0 (no UUID), the sixth no line at all.
MI50_UNIQUE = [0x2a5e8f4c1b3d7a01, 0x2a5e8f4c1b3d7a02, 0x2a5e8f4c1b3d7a03, 0, 0x2a5e8f4c1b3d7a05, None,
               0x2a5e8f4c1b3d7a07, 0x2a5e8f4c1b3d7a08]


@pytest.fixture
def mi50_node(tmp_path: Path) -> Path:
    header = load(FIXTURES / "x86_64-epyc-naples-8x-vega20-mi50-lspci-k.txt").expected
    kfd_node(tmp_path, 0, {"cpu_cores_count": 32, "simd_count": 0, "mem_banks_count": 1, "location_id": 0, "domain": 0})
    for i, short in enumerate(MI50_ADDRESSES):
        assert short in header
        address = "0000:" + short
        gpu = add_device(tmp_path, address, "0x030000", "0x1002", "0x66a1", "-1", "amdgpu")
        (gpu / "drm" / f"renderD{128 + i}").mkdir(parents=True)
        kfd_node(tmp_path, i + 1, mi50_props(address, 128 + i, MI50_UNIQUE[i]))
    return tmp_path


def by_address(gpus, *addresses: str):
    return [g for g in gpus if g.pci_address in addresses]


def test_nvidia_uuid_from_the_driver(h100_node: Path) -> None:
    proc = str(h100_node / "proc")
    assert gpus_mod.nvidia_uuid("0000:c1:00.0", proc) == H100_UUID
    assert gpus_mod.nvidia_uuid("0000:e1:00.0", proc) is None  # "GPU-????..." is no UUID
    assert gpus_mod.nvidia_uuid("0000:41:00.0", proc) is None  # no driver entry
    with pytest.raises(ValueError, match="'c1:00' is not a PCI address of the form dddd:bb:dd.f"):
        gpus_mod.nvidia_uuid("c1:00", proc)


@pytest.mark.parametrize("only_job_devices,e1_name", [(False, "1"), (True, "0")])
def test_cuda_visible_devices(h100_node: Path, only_job_devices: bool, e1_name: str) -> None:
    """c1 has a UUID: named by it everywhere. e1 has none yet: its index, which counts all of the node's NVIDIA GPUs
    in PCI order where all are visible (no container, Apptainer --nv), only the job's where only its device nodes
    are (Podman, bubblewrap). The BMC's ASPEED is no CUDA device and counts for nothing."""
    node = _native.list_gpus(sysfs=str(h100_node / "sys"), pci_ids=NO_PCI_IDS, dev=str(h100_node / "dev"))
    roots = {"sysfs": str(h100_node / "sys"), "procfs": str(h100_node / "proc")}

    def env(*addresses: str) -> dict:
        return gpus_mod.visible_devices(by_address(node, *addresses), node, only_job_devices=only_job_devices, **roots)

    assert env("0000:e1:00.0") == {"CUDA_VISIBLE_DEVICES": e1_name, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert env("0000:c1:00.0")["CUDA_VISIBLE_DEVICES"] == H100_UUID
    # In PCI order, whatever order the GPUs were given in; e1 comes after c1 in either count.
    assert env("0000:e1:00.0", "0000:c1:00.0")["CUDA_VISIBLE_DEVICES"] == f"{H100_UUID},1"
    assert env() == {}
    assert "ROCR_VISIBLE_DEVICES" not in env("0000:c1:00.0", "0000:62:00.0")


def test_kfd_topology_nodes(mi50_node: Path) -> None:
    nodes = gpus_mod.kfd_gpu_nodes(str(mi50_node / "sys"))
    assert [n.node for n in nodes] == list(range(1, 9))  # node 0 is the CPU
    assert [n.pci for n in nodes] == [gpus_mod.pci_key("0000:" + a) for a in MI50_ADDRESSES]
    # ROCr's form: GPU- and unique_id as 16 hex digits; unique_id 0 or missing: no UUID.
    assert [n.uuid for n in nodes] == ["GPU-2a5e8f4c1b3d7a01", "GPU-2a5e8f4c1b3d7a02", "GPU-2a5e8f4c1b3d7a03", None,
                                       "GPU-2a5e8f4c1b3d7a05", None, "GPU-2a5e8f4c1b3d7a07", "GPU-2a5e8f4c1b3d7a08"]
    assert gpus_mod.kfd_gpu_nodes(str(mi50_node / "nothing")) == []


@pytest.mark.parametrize("only_job_devices", [False, True])
def test_rocr_visible_devices(mi50_node: Path, only_job_devices: bool) -> None:
    node = _native.list_gpus(sysfs=str(mi50_node / "sys"), pci_ids=NO_PCI_IDS, dev=str(mi50_node / "dev"))
    roots = {"sysfs": str(mi50_node / "sys"), "procfs": str(mi50_node / "proc")}
    job = by_address(node, "0000:2a:00.0", "0000:2d:00.0", "0000:48:00.0")  # UUID, unique_id 0, no unique_id
    env = gpus_mod.visible_devices(job, node, only_job_devices=only_job_devices, **roots)
    # Indices in KFD node order: among all eight GPUs (3rd and 5th), or among the job's three (2nd and 3rd).
    assert env == {"ROCR_VISIBLE_DEVICES": "GPU-2a5e8f4c1b3d7a03," + ("1,2" if only_job_devices else "3,5")}


def test_rocr_partitioned_gpu_and_no_kfd(tmp_path: Path) -> None:
    """A GPU split into partitions (MI300 CPX) has one KFD node per partition, the partition's number in
    location_id bits 31-28: the job given the PCI function gets every partition. Without KFD (amdkfd not loaded),
    indices count the AMD GPUs in PCI order."""
    add_device(tmp_path, "0000:05:00.0", "0x120000", "0x1002", "0x74a1", "-1", "amdgpu")
    add_device(tmp_path, "0000:65:00.0", "0x120000", "0x1002", "0x74a1", "-1", "amdgpu")
    for partition in range(2):
        props = mi50_props("0000:65:00.0", 128 + partition, 0x1000 + partition)
        props["location_id"] |= partition << 28
        kfd_node(tmp_path, partition + 1, props)
    node = _native.list_gpus(sysfs=str(tmp_path / "sys"), pci_ids=NO_PCI_IDS)
    roots = {"sysfs": str(tmp_path / "sys"), "procfs": str(tmp_path / "proc")}
    env = gpus_mod.visible_devices(by_address(node, "0000:65:00.0"), node, only_job_devices=False, **roots)
    assert env == {"ROCR_VISIBLE_DEVICES": "GPU-0000000000001000,GPU-0000000000001001"}
    # 05:00.0 has no KFD node: after the KFD ones, so index 2 (the two partitions are 0 and 1).
    env = gpus_mod.visible_devices(by_address(node, "0000:05:00.0"), node, only_job_devices=False, **roots)
    assert env == {"ROCR_VISIBLE_DEVICES": "2"}
    no_kfd = {"sysfs": str(tmp_path / "nothing"), "procfs": str(tmp_path / "proc")}
    env = gpus_mod.visible_devices(by_address(node, "0000:65:00.0"), node, only_job_devices=False, **no_kfd)
    assert env == {"ROCR_VISIBLE_DEVICES": "1"}


def test_agent_gpu_environment_per_runtime(h100_node: Path) -> None:
    """The agent's variables for the same GPU in each runtime: its index among the node's GPUs where all are
    reachable, 0 where only its device nodes are; its PCI address in GRIDPILOT_GPUS in every one."""
    from gridpilot.isolation.runtimes import Apptainer, Bubblewrap, NoContainer, Podman
    from gridpilot.isolation.gpus import environment as gpu_environment

    sysfs = str(h100_node / "sys")
    e1 = by_address(_native.list_gpus(sysfs=sysfs, pci_ids=NO_PCI_IDS), "0000:e1:00.0")
    for runtime, index in ((NoContainer(), "1"), (Apptainer(), "1"), (Podman(), "0"), (Bubblewrap(), "0")):
        env = gpu_environment(e1, runtime, sysfs)
        assert env == {"CUDA_VISIBLE_DEVICES": index, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                       "GRIDPILOT_GPUS": "0000:e1:00.0"}, runtime.name
    assert gpu_environment([], NoContainer(), sysfs) == {}
    assert gpus_mod.procfs_beside(sysfs) == str(h100_node / "proc") and gpus_mod.procfs_beside("/sys") == "/proc"

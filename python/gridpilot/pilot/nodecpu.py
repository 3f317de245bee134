"""What the node's processor can run, from /proc/cpuinfo as _native.cpu_info reads it: the x86-64 micro-architecture
level and AVX generations (x86_64), the Features (aarch64), the ISA string (riscv64). The levels are those of the
x86-64 psABI; a broker gates jobs on them (issue 20, section 3)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

# The x86-64 psABI levels, each as the cpuinfo flags the kernel prints for its instructions ("abm" is the kernel's
# name for LZCNT; "pni" for SSE3). A level holds when its flags and every lower level's do.
X86_64_LEVELS = (
    ("x86-64-v2", ("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3")),
    ("x86-64-v3", ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")),
    ("x86-64-v4", ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")),
)


def x86_64_level(flags: List[str]) -> str:
    have = set(flags)
    level = "x86-64"
    for name, needs in X86_64_LEVELS:
        if not have.issuperset(needs):
            break
        level = name
    return level


def riscv_isa(cpuinfo_text: str) -> Optional[str]:
    """The first hart's `isa` line (all harts of the nodes we know print the same one)."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "isa":
            return value.strip()
    return None


def describe(cpu: Any, cpuinfo_text: str) -> Dict[str, Any]:
    """The CPU section of the probe: `cpu` a _native.CpuInfo, `cpuinfo_text` the file it was read from."""
    flags = list(cpu.flags)
    out: Dict[str, Any] = {"arch": cpu.arch, "model": cpu.model, "logical_cpus": cpu.logical_cpus, "mhz": cpu.mhz}
    if cpu.arch == "x86_64":
        have = set(flags)
        out.update(x86_64_level=x86_64_level(flags), avx="avx" in have, avx2="avx2" in have,
                   avx512=sorted(f for f in have if f.startswith("avx512")))
    elif cpu.arch == "aarch64":
        out["features"] = flags
    elif cpu.arch == "riscv64":
        out["isa"] = riscv_isa(cpuinfo_text)
        out["extensions"] = flags
    return out

"""The platform a job wants to run on: an OS family and major release (el7, el8, el9, debian12...) and optionally an
architecture. Written in the JDL as `Platform = "el9";` or `Platform = "el9-x86_64";`; without it, taken from the
release tag ALICE puts in package names (`...-slc9-alidist-...` is el9). The container image is chosen by it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

#: Names of the same binary-compatible family: Scientific Linux CERN, CentOS, CERN CentOS, AlmaLinux, Rocky, RHEL.
OS_ALIASES = {"slc": "el", "centos": "el", "cc": "el", "cs": "el", "alma": "el", "almalinux": "el", "rocky": "el",
              "rhel": "el", "el": "el"}
ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
                "riscv64": "riscv64", "ppc64le": "ppc64le"}

_PLATFORM = re.compile(r"^(?P<os>[a-z]+?)(?P<major>\d+)(?:[-_](?P<arch>[a-z0-9_]+))?$")
_PACKAGE_TAG = re.compile(r"(?:^|[-_.:@])(?P<os>slc|el|alma|cc|cs)(?P<major>\d+)(?=$|[-_.])")


@dataclass(frozen=True)
class Platform:
    os: str
    major: int
    arch: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.os}{self.major}" + (f"-{self.arch}" if self.arch else "")


def normalise_os(name: str) -> str:
    return OS_ALIASES.get(name, name)


def normalise_arch(name: str) -> Optional[str]:
    return ARCH_ALIASES.get(name)


def parse_platform(text: str) -> Platform:
    """"el9", "el9-x86_64", "alma9_aarch64", "debian12"; ValueError saying what is expected otherwise."""
    m = _PLATFORM.match(text.strip().lower())
    arch = normalise_arch(m.group("arch")) if m and m.group("arch") else None
    if m is None or (m.group("arch") and arch is None):
        raise ValueError(f"{text!r} is not a platform such as \"el9\" or \"el9-x86_64\" "
                         f"(architectures: {', '.join(sorted(set(ARCH_ALIASES.values())))})")
    return Platform(normalise_os(m.group("os")), int(m.group("major")), arch)


def platform_from_packages(packages: Iterable[str]) -> Optional[Platform]:
    """The highest OS release named in the packages' version tags (slc7, el9...), or None."""
    found = [Platform(normalise_os(m.group("os")), int(m.group("major")))
             for p in packages for m in _PACKAGE_TAG.finditer(p.lower())]
    return max(found, key=lambda p: p.major) if found else None


# -- the architecture and CPU level a job needs (the broker's arch and cpu_level columns; docs/broker.md) --

#: A job that says nothing of its architecture runs on x86_64, as every ALICE job did before aarch64 builds.
DEFAULT_ARCH = "x86_64"
#: The architectures a job or a node may name (aliases in ARCH_ALIASES).
KNOWN_ARCHES = tuple(sorted(set(ARCH_ALIASES.values())))
#: The x86-64 psABI levels a job may ask for with CPULevel, by number (1: baseline x86-64).
MAX_CPU_LEVEL = 4

# An architecture tag inside a package name or version: alibuild's "slc9_aarch64", "el9-x86-64", "osx_arm64"...
_PACKAGE_ARCH = re.compile(r"(?:^|[-_.:@/])(?:slc|el|alma|cc|cs|ubuntu|osx)\d*[-_](?P<arch>x86[-_]64|aarch64|arm64|"
                           r"riscv64|ppc64le)(?=$|[-_./])")
_CPU_LEVEL = re.compile(r"(?:x86[-_]64[-_])?v?(?P<n>[1-4])|x86[-_]64")


def parse_arch(text: str) -> str:
    """An architecture name normalised ("amd64" is x86_64, "arm64" aarch64); ValueError naming the known ones."""
    arch = normalise_arch(text.strip().lower()) if isinstance(text, str) else None
    if arch is None:
        raise ValueError(f"{str(text)[:40]!r} is not an architecture gridpilot knows ({', '.join(KNOWN_ARCHES)})")
    return arch


def parse_cpu_level(text: str) -> int:
    """"x86-64-v3" (or "v3", "3", or "x86-64" for v1) as its number 1..4; ValueError otherwise."""
    m = _CPU_LEVEL.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{str(text)[:40]!r} is not an x86-64 level: \"x86-64-v1\" to \"x86-64-v{MAX_CPU_LEVEL}\"")
    return int(m.group("n") or 1)


def cpu_level_name(level: int) -> str:
    return f"x86-64-v{level}"


def arch_from_packages(packages: Iterable[str]) -> Optional[str]:
    """The architecture named in the packages' tags ("..._slc9_aarch64-..."), or None when none names one. Two
    packages naming two architectures: None (the job cannot tell, and the caller says so)."""
    found = {parse_arch(m.group("arch").replace("-", "_")) for p in packages
             for m in _PACKAGE_ARCH.finditer(p.lower())}
    return found.pop() if len(found) == 1 else None

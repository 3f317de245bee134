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

"""The broker's table of architecture, x86-64 level, AVX, pilot version and container cases (issue 20, section 3):
one table, run pure (tests/unit/test_broker_arch.py) and through HTTP on SQLite and PostgreSQL
(tests/integration/test_central_arch.py), so both places are held to the same answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from support.central import Raw, site_map

#: Central's settings of each policy the table runs under (CentralSettings fields; broker.Policy).
POLICIES: Dict[str, Dict[str, Any]] = {
    # The defaults: aliprod's jobs need AVX, nothing else is gated centrally.
    "default": {"production_users": ("aliprod",)},
    # A grid that moved on: x86-64-v3 at least, pilots 2.0 or newer, every job in a container.
    "strict": {"min_x86_level": 3, "min_pilot_version": "2.0", "require_container": True},
}

#: What the table's nodes say unless a case says otherwise: a modern x86_64 node running pilot 1.5.0 with Podman.
NODE: Dict[str, Any] = {"x86_64_level": "x86-64-v3", "cpu_features": ["avx", "avx2"], "pilot_version": "1.5.0",
                        "containers": ["podman"]}
AARCH64: Dict[str, Any] = {"arch": "aarch64", "platform": "Linux-aarch64", "avx": False, "x86_64_level": None,
                           "cpu_features": ["fp", "asimd", "sve"]}
RISCV64: Dict[str, Any] = {"arch": "riscv64", "platform": "Linux-riscv64", "avx": False, "x86_64_level": None,
                           "cpu_features": ["rv64imafdc"]}


@dataclass(frozen=True)
class Case:
    name: str
    #: JDL keys of the job (support.central.jdl).
    job: Dict[str, Any]
    #: Site map keys over NODE (a None value: the key is left out).
    node: Dict[str, Any] = field(default_factory=dict)
    #: The clause `gridpilot why` names (None: the job matches).
    clause: Optional[str] = None
    user: str = "alice"
    policy: str = "default"

    def site_map(self, **where: Any) -> Dict[str, Any]:
        sm = site_map(**{**NODE, **self.node, **where})
        return {k: v for k, v in sm.items() if v is not None}


CASES = (
    Case("x86_64 job on an x86_64 node", {}),
    Case("x86_64 job (the default) never on aarch64", {}, AARCH64, "arch"),
    Case("Platform el9-aarch64 on aarch64", {"Platform": "el9-aarch64"}, AARCH64),
    Case("Arch aarch64 never on x86_64", {"Arch": "aarch64"}, {}, "arch"),
    Case("arch from the Packages' tag on aarch64", {"Packages": Raw('{"VO_ALICE@O2::v1-slc9_aarch64-1"}')}, AARCH64),
    Case("Arch riscv64 on riscv64", {"Arch": "riscv64"}, RISCV64),
    Case("x86_64 job never on riscv64", {"Platform": "el9"}, RISCV64, "arch"),
    Case("a node saying amd64 is x86_64", {"Arch": "x86_64"}, {"arch": "amd64"}),
    Case("CPULevel v3 on a v3 node", {"CPULevel": "x86-64-v3"}),
    Case("CPULevel v3 not on a v2 node", {"CPULevel": "x86-64-v3"}, {"x86_64_level": "x86-64-v2"}, "cpu_level"),
    Case("CPULevel v4 not on a node that says no level", {"CPULevel": "v4"}, {"x86_64_level": None}, "cpu_level"),
    Case("CPULevel v2 on a v4 node", {"CPULevel": 2}, {"x86_64_level": "x86-64-v4"}),
    Case("production job not on a node without AVX", {}, {"avx": False, "x86_64_level": "x86-64-v2"}, "avx",
         user="aliprod"),
    Case("production job on an AVX node", {}, {}, None, user="aliprod"),
    Case("a user's job on a node without AVX", {}, {"avx": False, "x86_64_level": "x86-64-v2"}),
    Case("production aarch64 job: the AVX gate is x86_64's", {"Arch": "aarch64"}, AARCH64, None, user="aliprod"),
    Case("MinPilotVersion 1.4 on pilot 1.5.0", {"MinPilotVersion": "1.4"}),
    Case("MinPilotVersion 2.0 not on pilot 1.5.0", {"MinPilotVersion": "2.0"}, {}, "pilot_version"),
    Case("MinPilotVersion 1.5.0rc1 on pilot 1.5.0", {"MinPilotVersion": "1.5.0rc1"}),
    Case("MinPilotVersion not on a pilot that says none", {"MinPilotVersion": "0.1"}, {"pilot_version": None},
         "pilot_version"),
    Case("RequireContainer where Podman starts one", {"RequireContainer": True}),
    Case("RequireContainer not where no runtime starts one", {"RequireContainer": True}, {"containers": []},
         "container"),
    Case("resources are named before the container", {"RequireContainer": True, "CPUCores": 64}, {"containers": []},
         "cores"),
    Case("Requirements other.AVX2 on an AVX2 node", {"Requirements": Raw("other.AVX2")}),
    Case("Requirements other.AVX2 not on a v2 node", {"Requirements": Raw("other.AVX2")},
         {"x86_64_level": "x86-64-v2", "cpu_features": ["avx"]}, "requirements"),
    Case("strict: a v3 node with pilot 2.1 and Apptainer", {}, {"pilot_version": "2.1", "containers": ["apptainer"]},
         policy="strict"),
    Case("strict: min_x86_level refuses a v2 node", {}, {"pilot_version": "2.1", "x86_64_level": "x86-64-v2"},
         "cpu_level", policy="strict"),
    Case("strict: min_pilot_version refuses pilot 1.9", {}, {"pilot_version": "1.9"}, "pilot_version",
         policy="strict"),
    Case("strict: require_container refuses a node without one", {}, {"pilot_version": "2.1", "containers": []},
         "container", policy="strict"),
    Case("strict: min_x86_level refuses a node that says no level", {}, {"pilot_version": "2.1", "x86_64_level": None},
         "cpu_level", policy="strict"),
    Case("strict: min_x86_level leaves aarch64 alone", {"Arch": "aarch64"}, {**AARCH64, "pilot_version": "2.1"},
         policy="strict"),
)

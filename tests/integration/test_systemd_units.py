"""deploy/systemd/: the units for central and the CE pass `systemd-analyze verify` without a warning, carry their
sandbox, and score as `systemd-analyze security` says. systemd need not run (pid 1 is not systemd here): verify reads
the files, and wants each ExecStart binary to exist, so the test checks copies whose ExecStart names this
environment's gridpilot. Debian package: systemd (systemd-analyze)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from support.require import require_or_skip
from support import paths

UNITS = paths.ROOT / "deploy" / "systemd"
INSTALLED = "/opt/gridpilot/bin/gridpilot"
#: The units as `systemctl` would name them (the CE's template with an instance), and the highest exposure
#: `systemd-analyze security` may give each, in tenths (its own scale: 0 safe ... 100 unprotected). The CE's is
#: higher: its local backend runs pilots and jobs inside it (see the unit's comments).
CHECKED = {"gridpilot-central.service": 20, "gridpilot-ce@site1.service": 40}


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        require_or_skip("no systemd-analyze (Debian package systemd)")
    return exe


@pytest.fixture
def units(tmp_path) -> Path:
    """The units with ExecStart pointing at this environment's gridpilot (verify wants the binary to exist)."""
    gridpilot = Path(sys.executable).parent / "gridpilot"
    assert gridpilot.exists(), f"{gridpilot}: the package's script, installed by `make setup`"
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        assert INSTALLED in text, f"{unit.name}: ExecStart should run {INSTALLED} (where docs/operators.md installs it)"
        (tmp_path / unit.name).write_text(text.replace(INSTALLED, str(gridpilot)))
    return tmp_path


def _verify(d: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([_analyze(), "verify", name], cwd=d, capture_output=True, text=True, timeout=120)


def test_the_units_are_the_ones_documented():
    assert sorted(p.name for p in UNITS.glob("*.service")) == ["gridpilot-ce@.service", "gridpilot-central.service"]


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_systemd_analyze_verify_passes_without_a_word(units, name):
    out = _verify(units, name)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr


def test_verify_does_report_a_mistake(units):
    # The check above can fail: a misspelt directive and a missing binary are reported.
    unit = units / "gridpilot-central.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    out = _verify(units, unit.name)
    assert "Unknown key 'NoNewPrivilege'" in out.stderr
    unit.write_text((UNITS / unit.name).read_text())
    out = _verify(units, unit.name)
    assert out.returncode != 0 and f"{INSTALLED} is not executable" in out.stderr


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_exposure_stays_low(units, name):
    out = subprocess.run([_analyze(), "security", "--offline=yes", f"--threshold={CHECKED[name]}", name],
                         cwd=units, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr


def directives(path: Path) -> Dict[str, List[str]]:
    """Key -> values of the [Service] section (a key may repeat), comments and continuation-free lines only."""
    out: Dict[str, List[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("unit", ["gridpilot-central.service", "gridpilot-ce@.service"])
def test_the_sandbox_is_there(unit):
    d = directives(UNITS / unit)

    def one(key: str) -> str:
        assert key in d, f"{unit}: no {key}="
        return d[key][-1]

    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectHome") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("StateDirectory").startswith("gridpilot")
    assert one("StateDirectoryMode") == "0700"
    assert one("UMask") == "0077"
    assert one("CapabilityBoundingSet") == "", "no capability at all"
    assert one("User") not in ("", "root", "0") and "DynamicUser" not in d
    assert one("Restart") == "on-failure"
    assert one("EnvironmentFile").lstrip("-").startswith("/etc/gridpilot/")
    assert set(one("RestrictAddressFamilies").split()) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    # Secrets reach the service through systemd's credentials, never its command line.
    assert all("token" not in v or "%d/" in v for v in d["ExecStart"])


def test_central_serves_https_with_its_credentials_and_the_ce_may_write_only_its_pilot_directories():
    central = directives(UNITS / "gridpilot-central.service")
    (exec_start,) = central["ExecStart"]
    assert "--certfile %d/central.crt --keyfile %d/central.key" in exec_start
    assert {v.split(":")[0] for v in central["LoadCredential"]} == {"central.crt", "central.key"}
    assert "ReadWritePaths" not in central, "central writes its state directory only"
    ce = directives(UNITS / "gridpilot-ce@.service")
    assert ce["ReadWritePaths"] == ["-/srv/gridpilot"]
    (exec_start,) = ce["ExecStart"]
    assert "--config /etc/gridpilot/ce-%i.yaml --token-file %d/ce.token" in exec_start

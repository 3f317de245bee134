"""A gridpilot installation that A-REX's mapped user (`nobody`) can run: what an ARC job's executable points at
(`<install_path>/bin/gridpilot`), as a site would publish it on CVMFS (pytest plugin, loaded from conftest.py).

This checkout's `.venv` will not do: its interpreter lives under /root (0700 here), which `nobody` cannot enter. So
the session's wheel (the `gridpilot_wheel` fixture of tests/integration/conftest.py: the ARC tests are integration
tests) is laid out by tools/cvmfs_tree.py over the node's own CPython, /usr/bin/python3, in a temp directory every
user can read, and checked by running `bin/gridpilot --version` as `nobody` before any test uses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.arex import MAPPED_GROUP, MAPPED_USER
from support.paths import ROOT
from support.require import require_or_skip
from support.wheels import WHEELHOUSE

#: The interpreter of the worker node (Debian's python3): world-readable, unlike this checkout's.
NODE_PYTHON = "/usr/bin/python3"


def _node_python_version() -> str:
    got = subprocess.run([NODE_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    return got.stdout.strip()


def _as_mapped_user(cmd: list) -> subprocess.CompletedProcess:
    """`cmd` as the user A-REX maps jobs to, with a clean environment (as an ARC job gets one)."""
    return subprocess.run(["setpriv", f"--reuid={MAPPED_USER}", f"--regid={MAPPED_GROUP}", "--clear-groups", "--",
                           "env", "-i", "PATH=/usr/bin:/bin", *cmd], capture_output=True, text=True, timeout=120,
                          cwd="/")


@pytest.fixture(scope="session")
def arc_node_install(gridpilot_wheel: Path) -> Iterator[Path]:
    """The install_path (a directory with bin/gridpilot) of a gridpilot installation `nobody` can run."""
    if not os.path.exists(NODE_PYTHON):
        require_or_skip(f"no {NODE_PYTHON} (Debian package python3) for an installation the mapped user can run")
    if shutil.which("setpriv") is None:
        require_or_skip("no setpriv (Debian package util-linux) to check the installation as the mapped user")
    if os.geteuid() != 0:
        require_or_skip("checking the installation as the mapped user needs root")
    # Under /tmp directly: pytest's tmp_path has parents private to root.
    base = Path(tempfile.mkdtemp(prefix="gridpilot-arcnode-"))
    try:
        os.chmod(base, 0o755)
        wheels = base / "wheels"
        wheels.mkdir()
        shutil.copy(gridpilot_wheel, wheels)
        root = base / "cvmfs"
        got = subprocess.run([sys.executable, str(ROOT / "tools" / "cvmfs_tree.py"), "--python",
                              _node_python_version(), "--node-python", NODE_PYTHON, "--root", str(root),
                              "--wheels", str(wheels), "--wheelhouse", str(WHEELHOUSE), "--fetch"],
                             capture_output=True, text=True, timeout=600)
        if got.returncode != 0 and "pip download failed" in got.stderr:
            require_or_skip(f"the dependency wheels could not be downloaded into {WHEELHOUSE}: {got.stderr[-500:]}")
        assert got.returncode == 0, got.stderr
        shutil.rmtree(wheels)
        arches = [p for p in (root / "latest").iterdir() if (p / "bin" / "gridpilot").exists()]
        assert len(arches) == 1, arches
        install = arches[0]
        ran = _as_mapped_user([str(install / "bin" / "gridpilot"), "--version"])
        assert ran.returncode == 0 and ran.stdout.startswith("gridpilot "), \
            f"{MAPPED_USER} cannot run {install}/bin/gridpilot: exit {ran.returncode}: {ran.stdout} {ran.stderr}"
        yield install
    finally:
        shutil.rmtree(base, ignore_errors=True)

"""What ships in the wheel: the extension, its stub and the py.typed marker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import require_or_skip

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_stub_and_marker(tmp_path):
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")
    if maturin is None:
        require_or_skip("maturin is not installed in this environment")
    out = subprocess.run(
        [maturin, "build", "--release", "--out", str(tmp_path), "-q"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("gridpilot-*.whl")
    assert "-cp39-abi3-" in wheel.name, "one abi3 wheel serves Python >= 3.9"
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"gridpilot/_native.pyi", "gridpilot/py.typed", "gridpilot/_native.abi3.so"} <= names


def test_only_the_abi3_extension_is_importable():
    # A stale per-version build (…cpython-311-….so) would shadow the abi3 one.
    from gridpilot import _native

    assert _native.__file__.endswith("_native.abi3.so")
    stale = [p.name for p in (ROOT / "python" / "gridpilot").glob("_native*.so") if "abi3" not in p.name]
    assert stale == []

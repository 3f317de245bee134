"""gridpilot's wheel for this machine, built once per test session by maturin (test_packaging.py looks inside it,
test_cvmfs_tree.py lays it out as a pilot installation)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from support.paths import ROOT
from support.require import require_or_skip


def build_wheel(out: Path) -> Path:
    """`maturin build --release` into `out`; the one wheel it made."""
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")
    if maturin is None:
        require_or_skip("maturin is not installed in this environment")
    done = subprocess.run([maturin, "build", "--release", "--out", str(out), "-q"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("gridpilot-*.whl")
    return wheel

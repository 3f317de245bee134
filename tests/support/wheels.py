"""gridpilot's wheel for this machine, built once per test session by maturin (test_packaging.py looks inside it,
test_cvmfs_tree.py lays it out as a pilot installation), and the same wheel under another version (reversioned:
test_ce_versions.py's second pilot version)."""

from __future__ import annotations

import base64
import os
import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict

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


def reversioned(wheel: Path, version: str, out: Path) -> Path:
    """A copy of `wheel` that says it is gridpilot `version` (its dist-info renamed, METADATA's Version and RECORD's
    hashes rewritten): a second pilot version for the CE's version tests, whose runner really reports `version`
    (gridpilot.__version__ comes from the installed metadata), without building the extension again."""
    old = wheel.name.split("-")[1]
    old_info, new_info = f"gridpilot-{old}.dist-info/", f"gridpilot-{version}.dist-info/"
    target = out / wheel.name.replace(f"gridpilot-{old}-", f"gridpilot-{version}-", 1)
    files: Dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            data = z.read(info)
            name = new_info + info.filename[len(old_info):] if info.filename.startswith(old_info) else info.filename
            if name == new_info + "METADATA":
                data = re.sub(rb"(?m)^Version: .*$", b"Version: " + version.encode(), data, count=1)
            files[name] = data
    record = new_info + "RECORD"
    lines = []
    for name, data in files.items():
        if name == record:
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    files[record] = ("\n".join(lines + [f"{record},,"]) + "\n").encode()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return target


#: tools/cvmfs_tree.py's dependency wheels, downloaded once per checkout (shared with `make cvmfs-tree`).
WHEELHOUSE = ROOT / ".cache" / "cvmfs" / "wheelhouse"
#: The node's interpreter a tree's venv links to: the one under the tests' (virtual) environment.
NODE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def lay_out_tree(root: Path, wheels: Path, *args: str) -> None:
    """tools/cvmfs_tree.py --root root --wheels wheels ARGS for this interpreter's CPython, fetching the dependency
    wheels into WHEELHOUSE when missing (a skip naming the download when it fails: no network)."""
    got = subprocess.run([sys.executable, str(ROOT / "tools" / "cvmfs_tree.py"), "--python",
                          "%d.%d" % sys.version_info[:2], "--node-python", NODE_PYTHON, "--root", str(root),
                          "--wheels", str(wheels), "--wheelhouse", str(WHEELHOUSE), "--fetch", *args],
                         capture_output=True, text=True, timeout=300)
    if got.returncode != 0 and "pip download failed" in got.stderr:
        require_or_skip(f"the dependency wheels could not be downloaded into {WHEELHOUSE}: {got.stderr[-500:]}")
    assert got.returncode == 0, got.stderr

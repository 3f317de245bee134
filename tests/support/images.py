"""A real image directory for the container tests: a minimal Debian 12 (`debootstrap --variant=minbase`) plus the
shared libraries the bind-mounted Python of the pilot needs (ldd of the interpreter and of the stdlib's _ssl,
_ctypes, _hashlib, _sqlite3, _lzma, _bz2, readline, _curses, _uuid, zlib), built once into .cache/images/ and reused.

Two test processes may build at once: each builds in a temporary directory beside the target and renames it into
place; the loser of the rename removes its copy and uses the winner's.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.paths import ROOT
from support.require import require_or_skip

CACHE = ROOT / ".cache" / "images"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: Libraries of the pilot's Python (pyenv's 3.11 here) that minbase lacks.
EXTRA_PACKAGES = ["libssl3", "libffi8", "libsqlite3-0", "libbz2-1.0", "liblzma5", "libncursesw6", "libreadline8",
                  "libuuid1", "zlib1g"]


def image_name() -> str:
    return f"debian12-{platform.machine()}"


def build_image(cache: Path = CACHE) -> Path:
    """The image directory, built when it is not there yet."""
    target = cache / image_name()
    if (target / "etc" / "debian_version").exists():
        return target
    if shutil.which("debootstrap") is None:
        require_or_skip("no debootstrap (Debian package debootstrap) to build the test image")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{image_name()}.", dir=cache))
    try:
        out = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=" + ",".join(EXTRA_PACKAGES), SUITE, str(work / "rootfs"),
             MIRROR],
            capture_output=True, timeout=1800,
        )
        if out.returncode != 0:
            pytest.fail(f"debootstrap failed ({out.returncode}): {out.stderr.decode(errors='replace')[-2000:]}")
        try:
            os.rename(work / "rootfs", target)
        except OSError:
            if not (target / "etc" / "debian_version").exists():
                raise  # not a lost race: something else is wrong
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def image_dir() -> Path:
    """A Debian 12 minbase image directory (.cache/images/debian12-<arch>), built on first use."""
    return build_image()

"""A directory no write reaches, even root's: mode 0555 for another user, the immutable attribute for root (chattr,
Debian's e2fsprogs), only on directories the test made, and always undone by the caller."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from support.require import require_or_skip


def make_unwritable(path: Path) -> Callable[[], None]:
    """Make the directory `path` unwritable even for root; returns the undo."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    if shutil.which("chattr") is None:
        require_or_skip("chattr (Debian package e2fsprogs) is needed to make a directory unwritable for root")
    out = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        require_or_skip(f"the immutable attribute cannot be set on {path} (its file system or the missing "
                        f"CAP_LINUX_IMMUTABLE): {out.stderr.strip()}")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
